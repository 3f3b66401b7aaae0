"""Files a run leaves for people: class lists and the test report."""

import csv
import json
from pathlib import Path

import torch

from imgrec.evaluation.classification import classification_report, epoch_scores, format_report

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
    log.info(
        f"{len(splits.class_names)} classes; images train/val/test = "
        f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)}; train images per class {min(train_counts)}..{max(train_counts)}"
    )
    if min(train_counts) == 0 or max(train_counts) > IMBALANCE_WARNING_RATIO * min(train_counts):
        log.warning(
            f"class imbalance: the largest class has {max(train_counts)} training images, the smallest "
            f"{min(train_counts)}; accuracy will flatter the model, so read macro F1 and per-class recall"
        )


def write_test_report(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], run_dir: Path, log,
                      paths: list[str] | None = None) -> dict:
    """test_predictions.csv (with each image's file when it came from one), test_report.json and the printed
    table. Returns the report."""
    probabilities = logits.softmax(dim=1).numpy()
    y_true, y_pred = labels.numpy(), logits.argmax(dim=1).numpy()
    with open(run_dir / "test_predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["index", "path", "true", "predicted", *(f"prob_{name}" for name in class_names)])
        for index, (true, pred, probs) in enumerate(zip(y_true, y_pred, probabilities)):
            path = paths[index] if paths is not None else ""
            writer.writerow([index, path, int(true), int(pred), *(f"{p:.6g}" for p in probs)])
    report = classification_report(y_true, y_pred, class_names)
    scores = epoch_scores(y_true, y_pred, prefix="test")
    report["scores"] = {key.removeprefix("test/"): value for key, value in scores.items()}
    report["scores"]["loss"] = float(torch.nn.functional.cross_entropy(logits, labels))
    (run_dir / "test_report.json").write_text(json.dumps(report, indent=2))
    log.info("test split:\n" + format_report(report))
    return report


RECORDED_PACKAGES = ("imgrec", "torch", "torchvision", "hydra-core", "omegaconf", "numpy", "scikit-learn", "pillow",
                     "albumentations", "tensorboard", "timm", "onnx", "onnxruntime")


def record_environment(run_dir: Path) -> dict:
    """environment.json: the imgrec source commit (and whether its tree had uncommitted changes), the command
    line, Python, the versions of the packages a result depends on, and the accelerator, so that a run can
    be reproduced or its difference from another explained."""
    import platform
    import subprocess
    import sys
    from importlib import metadata

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    info = {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "environment.json").write_text(json.dumps(info, indent=2))
    return info
