"""imgrec-gan study: for k real training images per class and several seeds, a GAN trained on those images
only, then a classifier trained on them alone and with generated images; one table of test accuracies."""

import csv
import json
import logging
import statistics
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from imgrec.commands.entry import hydra_command, run_command
from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

log = logging.getLogger("imgrec")
ARMS = ("real", "real+gan")


def check_study(cfg: DictConfig) -> None:
    study = cfg.study
    for key in ("per_class", "seeds"):
        values = study.get(key)
        if not values or not all(is_whole(v, 1 if key == "per_class" else 0) for v in values):
            raise ImgrecError(f"study.{key}={values!r} must be a non-empty list of whole numbers, e.g. [10, 50, 100]")
    if not is_number(study.ratio) or not 0 < study.ratio < 1:
        raise ImgrecError(f"study.ratio={study.ratio!r} must be in (0, 1): the share of each training set that is "
                          "generated (0.5: as many generated images as real ones)")
    if not is_whole(study.judge_epochs, 1):
        raise ImgrecError(f"study.judge_epochs={study.judge_epochs!r} must be a whole number >= 1")
    if not isinstance(study.get("match_steps"), bool):
        raise ImgrecError(f"study.match_steps={study.get('match_steps')!r} must be true or false")
    smallest = min(study.per_class)
    if round(study.ratio / (1 - study.ratio) * smallest) < 1:
        raise ImgrecError(f"study.ratio={study.ratio} adds no generated image to {smallest} real ones per class; "
                          "raise the ratio or the smallest k")
    if not cfg.test:
        raise ImgrecError("test=false: the study compares test accuracies; leave test=true")
    # the GAN's settings, before the judge spends its epochs
    from imgrec.commands.gan import check_gan_section, check_quality_settings, check_trainer_section
    from imgrec.gan.models import check_image_size

    gan = check_gan_section(OmegaConf.to_container(cfg.gan, resolve=True))
    check_trainer_section(cfg.gan_trainer)
    check_quality_settings(cfg.quality)
    check_image_size(cfg.dataset.image_size, gan["upsamplings"])


def classifier_cfg(cfg: DictConfig, run_dir: Path, seed: int, per_class: int | None, synthetic_root=None,
                   ratio: float = 0.0, epochs: int | None = None) -> DictConfig:
    """imgrec-train's config for one classifier run of the study."""
    run = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(run):
        for key in ("study", "gan", "gan_trainer", "quality"):
            run.pop(key, None)
        run.paths.output_dir = str(run_dir)
        run.seed = seed
        run.dataset.split_seed = seed  # another draw of the k images (and of validation) per seed
        run.dataset.train_per_class = per_class
        run.dataset.synthetic = {"root": None if synthetic_root is None else str(synthetic_root), "ratio": ratio}
        run.trainer.progress = False
        run.task_name = "train"
        if epochs is not None:
            run.trainer.max_epochs = epochs
    return run


def gan_cfg(cfg: DictConfig, run_dir: Path, seed: int, per_class: int, judge_ckpt: Path) -> DictConfig:
    """imgrec-gan's config for the GAN of one (k, seed): the study's dataset and gan settings."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    dataset.update(split_seed=seed, train_per_class=per_class, synthetic={"root": None, "ratio": 0.0})
    return OmegaConf.create({
        "task_name": "gan", "allowed_targets": list(cfg.allowed_targets), "seed": seed, "ckpt_path": None,
        "print_config": False, "dataset": dataset, "gan": OmegaConf.to_container(cfg.gan, resolve=True),
        "trainer": OmegaConf.to_container(cfg.gan_trainer, resolve=True),
        "quality": {"ckpt_path": str(judge_ckpt), **OmegaConf.to_container(cfg.quality, resolve=True)},
        "logger": OmegaConf.to_container(cfg.logger, resolve=False) if cfg.get("logger") else None,
        "paths": {"data_dir": cfg.paths.data_dir, "log_dir": cfg.paths.log_dir, "output_dir": str(run_dir)},
    })


def test_accuracy(result: dict) -> float:
    return float(result["test"]["scores"]["acc"])


def run_study(cfg: DictConfig) -> dict:
    from imgrec.commands.gan import sample, train_gan
    from imgrec.commands.train import train

    check_study(cfg)
    study, root = cfg.study, Path(cfg.paths.output_dir)
    started = time.perf_counter()
    judge_ckpt = study.judge_ckpt
    if judge_ckpt is None:
        log.info(f"the judge: this classifier on every real training image, {study.judge_epochs} epochs")
        judged = train(classifier_cfg(cfg, root / "judge", seed=0, per_class=None, epochs=study.judge_epochs))
        judge_ckpt = root / "judge" / "checkpoints" / "best.pt"
        log.info(f"judge test accuracy {test_accuracy(judged):.4f} ({judge_ckpt})")
    rows = []
    for per_class in study.per_class:
        for seed in study.seeds:
            name = f"k{per_class}_seed{seed}"
            log.info(f"---- {name}: GAN on {per_class} real images per class")
            gan = train_gan(gan_cfg(cfg, root / name / "gan", seed, per_class, Path(judge_ckpt)))
            needed = round(study.ratio / (1 - study.ratio) * per_class)
            samples = root / name / "samples"
            sample(OmegaConf.create({
                "allowed_targets": [], "ckpt_path": str(gan["checkpoint"]), "per_class": needed, "out": str(samples),
                "seed": seed, "generator": "ema", "device": cfg.trainer.device, "num_threads": "auto",
                "quality": {"ckpt_path": None, "k": 3}, "paths": {"output_dir": str(root / name)},
            }))
            quality = gan["history"][-1] if gan["history"] else {}
            for arm in ARMS:
                log.info(f"---- {name}: classifier on {arm}")
                synthetic = samples if arm == "real+gan" else None
                epochs = None
                if synthetic is not None and study.match_steps:  # (1 - ratio) x the epochs on 1 / (1 - ratio) x the images
                    epochs = max(1, round(cfg.trainer.max_epochs * (1 - study.ratio)))
                result = train(classifier_cfg(cfg, root / name / arm.replace("+", "_"), seed, per_class, synthetic,
                                              study.ratio if synthetic else 0.0, epochs=epochs))
                rows.append({"per_class": per_class, "seed": seed, "arm": arm, "test_acc": test_accuracy(result),
                             "gan_seconds": round(gan["seconds"], 1),
                             "frechet_distance": quality.get("quality/frechet_distance"),
                             "generated_class_accuracy": quality.get("quality/class_accuracy"),
                             "precision": quality.get("quality/precision"), "recall": quality.get("quality/recall")})
                write_tables(rows, study, root)
    summary = write_tables(rows, study, root)
    log.info(f"study done in {(time.perf_counter() - started) / 60:.1f} min:\n{(root / 'study.md').read_text()}")
    return summary


def summarise(rows: list[dict], study) -> list[dict]:
    """Per k: each arm's mean and standard deviation over seeds, and the paired difference (GAN - real)."""
    table = []
    for per_class in dict.fromkeys(row["per_class"] for row in rows):
        chosen = [row for row in rows if row["per_class"] == per_class]
        scores = {arm: {row["seed"]: row["test_acc"] for row in chosen if row["arm"] == arm} for arm in ARMS}
        paired = [scores["real+gan"][s] - scores["real"][s] for s in scores["real"] if s in scores["real+gan"]]
        entry = {"per_class": per_class, "seeds": len(scores["real"])}
        for arm in ARMS:
            values = list(scores[arm].values())
            entry[f"{arm}_mean"] = statistics.fmean(values) if values else None
            entry[f"{arm}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        entry["difference_mean"] = statistics.fmean(paired) if paired else None
        entry["difference_std"] = statistics.stdev(paired) if len(paired) > 1 else 0.0 if paired else None
        gan_rows = [row for row in chosen if row["arm"] == "real+gan" and row["frechet_distance"] is not None]
        for key in ("frechet_distance", "generated_class_accuracy", "gan_seconds"):
            entry[key] = statistics.fmean(row[key] for row in gan_rows) if gan_rows else None
        table.append(entry)
    return table


def write_tables(rows: list[dict], study, root: Path) -> dict:
    table = summarise(rows, study)
    with open(root / "study.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda mean, std: "-" if mean is None else f"{mean:.4f} ± {std:.4f}"  # noqa: E731
    steps = ("the same number of optimizer steps (the real+gan arm trains (1 - ratio) x the epochs)"
             if study.get("match_steps") else "the same number of epochs (the real+gan arm takes more steps)")
    lines = [f"Test accuracy, mean ± standard deviation over seeds; real+gan adds generated images as "
             f"{study.ratio:.0%} of the training set; both arms train for {steps}.", "",
             "| real images per class | seeds | real only | real + GAN | difference (paired) | Fréchet distance "
             "| generated images' class accuracy | GAN seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in table:
        number = lambda key, digits: "-" if entry[key] is None else f"{entry[key]:.{digits}f}"  # noqa: E731
        lines.append(f"| {entry['per_class']} | {entry['seeds']} | {fmt(entry['real_mean'], entry['real_std'])} | "
                     f"{fmt(entry['real+gan_mean'], entry['real+gan_std'])} | "
                     f"{fmt(entry['difference_mean'], entry['difference_std'])} | {number('frechet_distance', 2)} | "
                     f"{number('generated_class_accuracy', 3)} | {number('gan_seconds', 0)} |")
    (root / "study.md").write_text("\n".join(lines) + "\n")
    summary = {"ratio": study.ratio, "table": table, "runs": rows}
    (root / "study.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@hydra_command("gan_study", task_name="gan_study")
def study_main(cfg: DictConfig) -> None:
    import sys

    from imgrec.training.signals import TrainingInterrupted

    try:
        run_command(run_study, cfg)
    except TrainingInterrupted as stop:
        log.warning(f"{stop}: the study stopped; the runs it finished are in study.csv / study.md of "
                    f"{cfg.paths.output_dir}. Run it again to start over (each run is short)")
        sys.exit(stop.exit_code)
