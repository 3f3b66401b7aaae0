"""The face gallery: enrolled people's embeddings in a SQLite file, matched against new faces (issue #18)."""
