"""Exclusive locks on folders imgrec writes into (run folders, checkpoint folders), held for the life of
the process: the operating system drops them when it ends, even after SIGKILL, so a lock never goes stale."""

import fcntl
import os
from pathlib import Path

from imgrec.errors import ImgrecError

LOCK_NAME = ".imgrec.lock"
_held: dict[Path, object] = {}  # folder -> its open lock file, kept open while the process lives


def lock_folder(folder: Path, setting: str) -> None:
    """Take the folder's lock, or raise naming the process that holds it. Locking a folder this process
    already holds, or one inside it (a run's checkpoints/), is a no-op."""
    folder = Path(folder)
    key = folder.resolve()
    if any(key.is_relative_to(held) for held in _held):
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")
    except OSError as error:
        raise ImgrecError(f"{setting}={folder} cannot be used: {error.strerror or error}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ImgrecError(f"{folder} is in use by another imgrec process (pid {holder}); wait for it to finish or "
                          f"choose another {setting}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = handle
