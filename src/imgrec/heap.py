"""Python's cyclic garbage collector in a process that has imported torch.

Importing torch, with the torch._dynamo that torch.optim's first optimizer pulls in (and sympy with
it), leaves about 350,000 Python objects that live as long as the process. Every full collection
walks all of them. Measured on the default digits run (issue #7): six full collections during the
imports cost 0.5-0.6 s, and the collections of interpreter shutdown another 1.0-1.3 s, of a 30 s run.
So the collector is off while imports and setup build that long-lived heap, the heap is then frozen
(moved out of the collector's view; reference counting still frees its objects), and at exit the
interpreter's final collections are skipped. The hand-written loop in scripts/bench pays all of it.
"""

import atexit
import gc
from contextlib import contextmanager


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
