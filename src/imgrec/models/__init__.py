"""Networks; each module builds one family from config keys."""
