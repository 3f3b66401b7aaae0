"""What every imgrec command other than imgrec-train does around its work."""

import logging
import sys
from typing import Callable

from imgrec.errors import ImgrecError
from imgrec.heap import skip_collection_at_exit

log = logging.getLogger("imgrec")


def run_command(work: Callable, cfg):
    """`work(cfg)`; bad input (an ImgrecError) is logged as one line and exits 2, without a traceback.
    The interpreter's final garbage collections are skipped (about a second after a torch import)."""
    skip_collection_at_exit()
    try:
        return work(cfg)
    except ImgrecError as error:
        log.error(f"error: {error}")
        sys.exit(2)
