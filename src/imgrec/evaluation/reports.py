"""Files a run leaves for people: class lists, the environment it ran in, and a task's reports."""

import csv
import io
import json
import os
from pathlib import Path

import torch

IMBALANCE_WARNING_RATIO = 10


def record_dataset(splits, run_dir: Path, log) -> None:
    """Write classes.json (names, index map, counts per split) and skipped_images.txt; warn about imbalance."""
    counts = {split: splits.class_counts(split) for split in ("train", "val", "test")}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "classes.json").write_text(
        json.dumps(
            {
                "class_names": splits.class_names,
                "class_to_idx": {name: i for i, name in enumerate(splits.class_names)},
                "counts": counts,
            },
            indent=2,
        )
    )
    if splits.skipped:
        lines = [f"{path}\t{reason}" for path, reason in splits.skipped]
        (run_dir / "skipped_images.txt").write_text("\n".join(lines) + "\n")
        log.warning(f"{len(splits.skipped)} image(s) were skipped; the list is in {run_dir / 'skipped_images.txt'}")
    train_counts = counts["train"]
    if splits.people:
        in_split = {split: sum(1 for count in counts[split] if count) for split in counts}
        log.info(f"{len(splits.class_names)} people; images train/val/test = {len(splits.train)}/{len(splits.val)}/"
                 f"{len(splits.test)}; people train/val/test = {in_split['train']}/{in_split['val']}/{in_split['test']}")
        return
    unit = getattr(splits, "counted", None) or ("pixels" if splits.train.labels.ndim > 1 else "images")
    log.info(
        f"{len(splits.class_names)} classes; images train/val/test = "
        f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)}; train {unit} per class {min(train_counts)}..{max(train_counts)}"
    )
    if unit == "images" and (min(train_counts) == 0 or max(train_counts) > IMBALANCE_WARNING_RATIO * min(train_counts)):
        log.warning(
            f"class imbalance: the largest class has {max(train_counts)} training images, the smallest "
            f"{min(train_counts)}; accuracy will flatter the model, so read macro F1 and per-class recall"
        )


def write_whole(path: Path, text: str | bytes) -> None:
    """Write `text` to a temp file beside `path`, then rename it: a full disk leaves no half-written file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if isinstance(text, bytes):
            temporary.write_bytes(text)
        else:
            temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def csv_text(header: list, rows: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def json_safe(value):
    """`value` with NaN and infinities as null: strict JSON readers (jq, JavaScript) refuse Python's bare NaN."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_report(report, run_dir: Path, json_name: str, log) -> None:
    """A task's Report as files: its summary as `json_name`, its tables as CSV files, its text in the log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for table in report.tables:
        write_whole(run_dir / table.name, csv_text(table.header, table.rows))
    write_whole(run_dir / json_name, json.dumps(json_safe(report.summary), indent=2))
    if report.text:
        log.info(report.text)


RECORDED_PACKAGES = ("imgrec", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "scikit-learn", "pillow",
                     "albumentations", "tensorboard", "timm", "onnx", "onnxruntime")


def source_version() -> tuple[str | None, bool | None]:
    """The commit of the imgrec source that is running and whether its tree has uncommitted changes; (None,
    None) outside a git checkout (an installed wheel)."""
    import subprocess

    def git(*args: str) -> str | None:
        # no configuration from the environment or the user's files: a GIT_CONFIG_* variable (which a job's
        # env_set could set) or a repository's core.fsmonitor would otherwise make `git status` run a program
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull, "HOME": os.devnull, "LC_ALL": "C"}
        try:
            done = subprocess.run(["git", "-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null",
                                   "-C", str(Path(__file__).parent), *args], capture_output=True, text=True,
                                  timeout=10, env=env)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return commit, None if status is None else bool(status)


def record_environment(run_dir: Path, record_command: bool = True) -> dict:
    """environment.json: the imgrec source commit (and whether its tree had uncommitted changes), the command
    line, Python, the versions of the packages a result depends on, and the accelerator, so that a run can
    be reproduced or its difference from another explained."""
    import platform
    import sys
    from importlib import metadata

    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit, dirty = source_version()
    info = {
        "git_commit": commit,
        "git_dirty": dirty,
        # as typed (sys.argv holds the run folder imgrec pinned); a gallery's names people and their images
        "command": sys.orig_argv[1:] if record_command else "not recorded (it may name people)",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "environment.json").write_text(json.dumps(info, indent=2))
    return info
