"""Checkpoint files: atomic writes and safe loads."""

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

FORMAT = "imgrec-checkpoint"
FORMAT_VERSION = 1
MAX_CHANNELS, MAX_SIDE = 16, 8192  # the largest input a checkpoint may ask images to be decoded at
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
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a full disk as a RuntimeError
        raise CheckpointError(
            f"could not write checkpoint {path} ({_reason(error)}; {_free_space(path.parent)}). Free disk space or "
            f"fix the folder's permissions, then resume; any earlier {path.name} there is intact"
        ) from error
    return path


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return "free space unknown"


def copy_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Copy a checkpoint file with the same all-or-nothing guarantee as save_checkpoint."""
    source, destination = Path(source), Path(destination)

    def copy(file) -> None:
        with open(source, "rb") as original:
            shutil.copyfileobj(original, file)

    try:
        _write_atomically(destination, copy)
    except OSError as error:
        raise CheckpointError(f"could not copy checkpoint {source} to {destination} ({_reason(error)}; "
                              f"{_free_space(destination.parent)})") from error
    return destination


def store_decision_threshold(path: str | Path, threshold: dict) -> None:
    """Write a decision threshold chosen by imgrec-eval into the checkpoint at `path` (rewritten atomically:
    a crash leaves the old file), so imgrec-predict applies it. Training that rewrites the file drops it,
    since a threshold belongs to the weights it was chosen for."""
    state = load_checkpoint(path, purpose="inference")
    state["decision_threshold"] = {key: value for key, value in threshold.items()
                                   if value is None or isinstance(value, (str, int, float))}
    save_checkpoint(state, path)


def store_calibration(path: str | Path, calibration: dict) -> None:
    """Write a calibration imgrec-eval fitted on validation (temperature, Platt or isotonic; plain numbers and
    lists) into the checkpoint at `path`, atomically, so imgrec-predict and imgrec-export apply it. Training
    that rewrites the file drops it: it belongs to the weights it was fitted for."""
    state = load_checkpoint(path, purpose="inference")
    state["calibration"] = calibration
    save_checkpoint(state, path)


def stored_decision_threshold(state: dict) -> float | None:
    """The threshold imgrec-eval stored in a checkpoint, checked (a number in [0, 1]), or None."""
    stored = state.get("decision_threshold")
    if stored is None:
        return None
    value = stored.get("threshold") if isinstance(stored, dict) else None
    if not is_number(value) or not 0 <= value <= 1:
        raise CheckpointError(f"the checkpoint's decision_threshold {stored!r} is damaged (not a number in [0, 1]); run "
                              "imgrec-eval threshold=auto again, or give one (detection: score_threshold=0.5)")
    return float(value)


# what _write_atomically names its temp files: `.<checkpoint name>.<8 random characters>.tmp`
TEMP_NAME = re.compile(r"^\.(last|best|epoch_\d+)\.pt\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temp files a killed save left behind (they are never valid checkpoints); only files named as
    imgrec names its temp checkpoints, never anything else in the folder."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if p.is_file() and TEMP_NAME.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


SHORTCUTS = ("last", "best")


def resolve_ckpt_path(ckpt_path, runs_root: str | Path) -> str | None:
    """`ckpt_path=last` / `best`: that file of the newest run under `runs_root` (e.g. outputs/train), by the
    time it was written; any other value is returned as given."""
    if ckpt_path not in SHORTCUTS:
        return ckpt_path
    root = Path(runs_root)
    found = [p for p in root.glob(f"**/checkpoints/{ckpt_path}.pt") if p.is_file()] if root.is_dir() else []
    if not found:
        raise CheckpointError(f"ckpt_path={ckpt_path}: no run under {root} has a checkpoints/{ckpt_path}.pt; give the "
                              "file's path, e.g. ckpt_path=outputs/train/runs/<timestamp>/checkpoints/last.pt")
    return str(max(found, key=lambda p: p.stat().st_mtime))


def load_checkpoint(path: str | Path, purpose: str | None = None) -> dict:
    """Read an imgrec checkpoint without executing any code stored in it (`weights_only=True`); with a
    `purpose` ("inference" or "resume"), also check that it holds what that needs (check_contents)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path  # a run folder: its checkpoints
        inside = sorted(p.name for p in folder.glob("*.pt"))
        hint = f"; {folder} holds {', '.join(inside)}" if inside else ""
        raise CheckpointError(f"ckpt_path '{path}' is a folder, not a checkpoint file{hint}: give the file, "
                              f"e.g. ckpt_path={folder / (inside[0] if inside else 'last.pt')}")
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
    if not is_whole(state.get("format_version", 0)):
        raise CheckpointError(f"'{path}' is damaged: its format_version is {state.get('format_version')!r}, not a whole "
                              "number; use another checkpoint imgrec wrote")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer imgrec (format {state['format_version']} > {FORMAT_VERSION}); upgrade imgrec"
        )
    upgrade(state)
    if purpose is not None:
        check_contents(state, path, purpose)
    return state


def upgrade(state: dict) -> None:
    """Checkpoints of earlier imgrec versions, in today's shape (in place): the running sums of a mid-epoch
    stop under `sums`, and a classification `task` section holding what `trainer.loss` and `trainer.mixup`
    held before tasks existed. (Renamed `_target_` paths are mapped by imgrec.registry.RENAMED.)"""
    if state.get("kind") == "imgrec-gan":  # its own shape since it was first written
        return
    progress = state.get("epoch_progress")
    if isinstance(progress, dict) and "sums" not in progress and "loss_sum" in progress:
        progress["sums"] = {"loss_sum": progress.pop("loss_sum"), "correct": progress.pop("correct", None)}
    config = state.get("config")
    if isinstance(config, dict) and "task" not in config and isinstance(config.get("trainer"), dict):
        trainer = config["trainer"]
        config["task"] = {"_target_": "imgrec.tasks.classification.ClassificationTask",
                          "monitor": config.get("optimized_metric", "val/acc"), "mode": config.get("optimized_mode", "max"),
                          "loss": trainer.pop("loss", {}) or {}, "mixup": trainer.pop("mixup", {}) or {}}


def _is_numbers(value, length: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == length
            and all(is_number(v) for v in value))


def check_contents(state: dict, path: Path, purpose: str) -> None:
    """A damaged checkpoint that kept the format marker is named with what is missing or wrong, instead of
    failing later with a KeyError or a ZeroDivisionError. "inference" needs the weights (finite), the
    config, class names, input shape and normalisation; "resume" also the training state."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint '{path}' is damaged: {what}; use another checkpoint imgrec wrote "
                               "(last.pt and best.pt of the same run hold the same kind of state)")

    if state.get("kind") == "imgrec-gan":
        raise CheckpointError(f"'{path}' is an imgrec-gan checkpoint (a generator, not a trained classifier): draw "
                              f"images from it with imgrec-gan sample ckpt_path={path} out=<folder>")
    weights = state.get("model")
    if not isinstance(weights, dict) or not weights or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise bad("'model' (the weights) is missing or not a dict of tensors")
    for name, tensor in weights.items():
        # imgrec saves plain tensors: one whose elements outnumber its stored bytes (a zero stride) would
        # be blown up to its full size by the first operation on it
        if tensor.untyped_storage().nbytes() < tensor.numel() * tensor.element_size():
            raise bad(f"weight {name} of shape {list(tensor.shape)} is not a plain tensor imgrec wrote")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise bad(f"the weights hold NaN or Inf values (first in {name}), so their predictions would be meaningless")
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise bad("'config' (the settings it was trained with) or its 'model' section is missing")
    for section in ("task", "dataset"):  # absent in old checkpoints; a section when present
        if section in config and not isinstance(config[section], dict):
            raise bad(f"its config's '{section}' section is {type(config[section]).__name__}, not a section of settings")
    names = state.get("class_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise bad("'class_names' is missing or not a list of at least two names")
    shape = state.get("input_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(is_whole(v, 1) for v in shape)
            and shape[0] <= MAX_CHANNELS and max(shape[1:]) <= MAX_SIDE):
        raise bad(f"'input_shape' is {shape!r}, not [channels, height, width] with at most {MAX_CHANNELS} channels "
                  f"and sides of at most {MAX_SIDE} px")
    normalization = state.get("normalization")
    if not (isinstance(normalization, dict) and _is_numbers(normalization.get("mean"), shape[0])
            and _is_numbers(normalization.get("std"), shape[0])
            and all(1e-6 <= s <= 1e3 for s in normalization["std"]) and all(abs(m) <= 1e3 for m in normalization["mean"])):
        raise bad(f"'normalization' is {normalization!r}, not {shape[0]} mean and {shape[0]} std values "
                  "(in [0, 1] pixel units: std between 1e-6 and 1000)")
    if not is_whole(state.get("epoch")):
        raise bad(f"'epoch' is {state.get('epoch')!r}, not a whole number >= 0")
    if purpose != "resume":
        return
    if not is_whole(state.get("step")):
        raise bad(f"'step' is {state.get('step')!r}, not a whole number >= 0")
    for key in ("optimizer", "scheduler", "callbacks", "rng"):
        if not isinstance(state.get(key), dict):
            raise bad(f"'{key}' is missing, so training cannot continue where it stopped")
    rng = state["rng"]
    python, numpy, torch_state = rng.get("python"), rng.get("numpy"), rng.get("torch")
    if not (isinstance(python, (list, tuple)) and len(python) == 3 and isinstance(python[1], (list, tuple))
            and isinstance(numpy, dict) and isinstance(numpy.get("keys"), torch.Tensor)
            and isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
        raise bad("'rng' does not hold the python, numpy and torch generator states imgrec saves")
    progress = state.get("epoch_progress")
    if progress is not None and not (
        isinstance(progress, dict) and is_whole(progress.get("batches"), 1) and is_whole(progress.get("seen"), 1)
        and isinstance(progress.get("sums"), dict) and all(isinstance(v, torch.Tensor) for v in progress["sums"].values())
    ):
        raise bad(f"'epoch_progress' (where in an epoch it stopped) is {progress!r}, not batches >= 1, seen >= 1 "
                  "and the running sums")
