"""What every imgrec command does around its work: the checks before Hydra runs, one-line errors with
exit status 2, Ctrl-C before training starts, and the garbage-collector policy (collections off while
torch imports, skipped at exit)."""

import atexit
import gc
import logging
import sys
from contextlib import contextmanager
from typing import Callable

from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
INTERRUPTED_EXIT = 130  # the shell's convention for SIGINT


def hydra_command(config_name: str, task_name: str,
                  interrupted_note: str = "any checkpoint already written is intact"):
    """Turn a Hydra task function into a console entry point: the command line is checked (and the run
    folder locked) by imgrec.commands.preflight before Hydra acts on it."""

    def decorate(task_function: Callable):
        def main():
            try:  # the imports too: a Ctrl-C while they run is the same one line, not a traceback
                from imgrec.training.signals import remember_ctrl_c_in_startup, stop_if_ctrl_c_was_swallowed

                remember_ctrl_c_in_startup()
                import hydra

                from imgrec.commands.preflight import preflight
                from imgrec.config import CONFIG_DIR

                hydra_main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR),
                                        config_name=config_name)(task_function)
                sys.argv[1:] = preflight(config_name, sys.argv[1:], task_name)
                stop_if_ctrl_c_was_swallowed()
                return hydra_main()
            except ImgrecError as error:  # raised before Hydra set up logging: print it ourselves
                sys.stderr.write(f"error: {error}\n")
                sys.exit(2)
            except KeyboardInterrupt:
                sys.stderr.write(f"\ninterrupted (Ctrl-C); {interrupted_note}\n")
                sys.exit(INTERRUPTED_EXIT)

        main.task_function = task_function
        return main

    return decorate


def run_command(work: Callable, cfg, record_command: bool = True):
    """`work(cfg)`; bad input (an ImgrecError) is logged as one line and exits 2, without a traceback.
    The interpreter's final garbage collections are skipped (about a second after a torch import)."""
    from pathlib import Path

    from imgrec.evaluation.reports import record_environment
    from imgrec.training.signals import stop_if_ctrl_c_was_swallowed

    skip_collection_at_exit()
    run_dir = Path(cfg.paths.output_dir)
    try:
        record_environment(run_dir, record_command)
        stop_if_ctrl_c_was_swallowed()
        return work(cfg)
    except ImgrecError as error:
        log.error(f"error: {error}")
        sys.exit(2)
    except OSError as error:  # a full disk or a quota while writing the command's files: files are written whole
        import shutil

        free = shutil.disk_usage(run_dir if run_dir.exists() else Path.cwd()).free / 2**20
        log.error(f"error: could not write {error.filename or run_dir}: {error.strerror or error} ({free:.1f} MiB free "
                  "there); free some space and run the command again")
        sys.exit(2)


# Python's cyclic garbage collector in a process that has imported torch.
#
# Importing torch, with the torch._dynamo that torch.optim's first optimizer pulls in (and sympy with
# it), leaves about 350,000 Python objects that live as long as the process. Every full collection
# walks all of them. Measured on the default digits run (issue #7): six full collections during the
# imports cost 0.5-0.6 s, and the collections of interpreter shutdown another 1.0-1.3 s, of a 30 s run.
# So the collector is off while imports and setup build that long-lived heap, the heap is then frozen
# (moved out of the collector's view; reference counting still frees its objects), and at exit the
# interpreter's final collections are skipped. The hand-written loop in scripts/bench pays all of it.


def pause_collection_during_setup() -> None:
    """Imports and setup make objects that live for the whole run, not garbage: collecting is wasted."""
    gc.disable()


@contextmanager
def setup_objects_frozen():
    """Around training: setup's objects frozen, the collector on for what training makes. Unfrozen
    afterwards, so that in a sweep running many jobs in one process a finished job's cycles are freed."""
    gc.freeze()
    gc.enable()
    try:
        yield
    finally:
        gc.unfreeze()


def skip_collection_at_exit() -> None:
    """At exit, after the other exit handlers (log flushes, closes), the OS reclaims the whole heap at
    once: the interpreter's final collections over it would only cost time."""
    atexit.unregister(gc.freeze)  # once, however many sweep jobs ask
    atexit.register(gc.freeze)  # exit handlers run last-registered first: registered early, this runs late
