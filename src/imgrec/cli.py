"""What every imgrec command does around its work: the checks before Hydra runs, one-line errors with
exit status 2, and Ctrl-C before training starts."""

import logging
import sys
from typing import Callable

from imgrec.errors import ImgrecError
from imgrec.heap import skip_collection_at_exit

log = logging.getLogger("imgrec")
INTERRUPTED_EXIT = 130  # the shell's convention for SIGINT


def hydra_command(config_name: str, task_name: str):
    """Turn a Hydra task function into a console entry point: the command line is checked (and the run
    folder locked) by imgrec.preflight before Hydra acts on it."""
    import hydra

    from imgrec.config import CONFIG_DIR

    def decorate(task_function: Callable):
        hydra_main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task_function)

        def main():
            from imgrec.preflight import preflight

            try:
                sys.argv[1:] = preflight(config_name, sys.argv[1:], task_name)
                return hydra_main()
            except ImgrecError as error:  # raised before Hydra set up logging: print it ourselves
                sys.stderr.write(f"error: {error}\n")
                sys.exit(2)
            except KeyboardInterrupt:
                sys.stderr.write("\ninterrupted (Ctrl-C); any checkpoint already written is intact\n")
                sys.exit(INTERRUPTED_EXIT)

        main.task_function = task_function
        return main

    return decorate


def run_command(work: Callable, cfg):
    """`work(cfg)`; bad input (an ImgrecError) is logged as one line and exits 2, without a traceback.
    The interpreter's final garbage collections are skipped (about a second after a torch import)."""
    from pathlib import Path

    from imgrec.reporting import record_environment

    skip_collection_at_exit()
    try:
        record_environment(Path(cfg.paths.output_dir))
        return work(cfg)
    except ImgrecError as error:
        log.error(f"error: {error}")
        sys.exit(2)
