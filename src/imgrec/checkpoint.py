"""Checkpoint files: atomic writes and safe loads."""

import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from imgrec.errors import ImgrecError

FORMAT = "imgrec-checkpoint"
FORMAT_VERSION = 1
TEMP_SUFFIX = ".tmp"


class CheckpointError(ImgrecError):
    """A checkpoint could not be written or read."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, flush it to disk, then rename it over `path`.

    Same folder means same file system, so the rename is atomic: a crash at any moment leaves either
    the old file or the new one, never a mix. Raises OSError; the temp file never outlives a failure.
    """
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_dir(path.parent)
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` (plus the imgrec format marker) to `path` atomically."""
    path = Path(path)
    try:
        _write_atomically(path, lambda file: torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, file))
    except OSError as error:
        raise CheckpointError(
            f"could not write checkpoint {path}: {error}. Free disk space or fix the folder's permissions; "
            f"any earlier {path.name} there is intact."
        ) from error
    return path


def copy_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Copy a checkpoint file with the same all-or-nothing guarantee as save_checkpoint."""
    source, destination = Path(source), Path(destination)

    def copy(file) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, file)

    try:
        _write_atomically(destination, copy)
    except OSError as error:
        raise CheckpointError(f"could not copy checkpoint {source} to {destination}: {error}") from error
    return destination


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temp files a killed save left behind (they are never valid checkpoints)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> dict:
    """Read an imgrec checkpoint without executing any code stored in it (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path '{path}' does not exist; give the path of a checkpoint imgrec wrote, "
            "e.g. ckpt_path=outputs/train/runs/<timestamp>/checkpoints/last.pt"
        )
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (not a zip archive torch.save writes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests switching the safety off; the useful part is the line naming the blocked global
        reason = next((line for line in str(error).splitlines() if "GLOBAL" in line), "unsupported object")
        raise CheckpointError(
            f"refused to load '{path}': it holds objects other than tensors and plain containers, and "
            f"unpickling them could run code ({reason.strip()}). imgrec loads only checkpoints it wrote."
        ) from error
    except Exception as error:  # truncated zip, random bytes, a directory ...: torch raises many types
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not an imgrec checkpoint (it has no format='{FORMAT}' marker); "
            "ckpt_path takes files imgrec wrote, e.g. <run_dir>/checkpoints/last.pt"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer imgrec (format {state['format_version']} > {FORMAT_VERSION}); upgrade imgrec"
        )
    return state
