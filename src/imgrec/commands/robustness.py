"""imgrec-robustness: a classifier's accuracy under FGSM, PGD and APGD-CE at each budget, and under the common
corruptions at each severity, on a fixed sample of its test split."""

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config, resolve_checkpoint_shortcut
from imgrec.errors import ImgrecError
from imgrec.values import as_list, is_whole

log = logging.getLogger("imgrec")
ATTACKS = ("fgsm", "pgd", "apgd")


def check_settings(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """The attacks and corruptions asked for, every budget and severity checked before anything is loaded."""
    from imgrec.robustness.attacks import check_budget
    from imgrec.robustness.corruptions import CORRUPTIONS

    attacks = as_list(cfg.attacks, "attacks", "attacks=[pgd] (or [] for none)")
    unknown = [name for name in attacks if name not in ATTACKS]
    if unknown:
        raise ImgrecError(f"attacks={attacks} has {unknown}; choose among {', '.join(ATTACKS)} (or [] for none)")
    budgets = as_list(cfg.eps, "eps", "eps=[0.05,0.1]")
    if attacks and not budgets:
        raise ImgrecError(f"eps=[] leaves attacks={attacks} nothing to do: give budgets, e.g. eps=[0.05,0.1], or "
                          "attacks=[] for corruptions only")
    iterative = "pgd" in attacks or "apgd" in attacks  # both attack in pgd.norm: one eps list, one norm
    for eps in budgets:
        check_budget(eps, cfg.pgd.norm if iterative else "linf", cfg.pgd.steps, cfg.pgd.step_size, eps_key="eps",
                     prefix="pgd.")
        if "fgsm" in attacks:  # FGSM is L-inf whatever pgd.norm says: an L2 eps above 1 would stop it mid-run
            check_budget(eps, eps_key="eps (fgsm is L-inf)", prefix="pgd.")
    if not is_whole(cfg.apgd.steps, 1):
        raise ImgrecError(f"apgd.steps={cfg.apgd.steps!r} must be a whole number >= 1 (AutoAttack runs 100)")
    if not is_whole(cfg.apgd.restarts, 1):
        raise ImgrecError(f"apgd.restarts={cfg.apgd.restarts!r} must be a whole number >= 1 (AutoAttack's "
                          "standard version runs 1)")
    corruptions = list(CORRUPTIONS) if cfg.corruptions == "all" else \
        as_list(cfg.corruptions, "corruptions", "corruptions=[contrast] (or all, or [] for none)")
    unknown = [name for name in corruptions if name not in CORRUPTIONS]
    if unknown:
        raise ImgrecError(f"corruptions has {unknown}; choose all, [] or among {', '.join(CORRUPTIONS)}")
    severities = as_list(cfg.severities, "severities", "severities=[1,3,5]")
    if any(isinstance(s, bool) or s not in (1, 2, 3, 4, 5) for s in severities):
        raise ImgrecError(f"severities={severities} must each be 1, 2, 3, 4 or 5")
    if corruptions and not severities:
        raise ImgrecError("severities=[] leaves the corruptions nothing to do: give some, e.g. severities=[1,3,5], "
                          "or corruptions=[] for attacks only")
    if cfg.max_images is not None and not is_whole(cfg.max_images, 1):
        raise ImgrecError(f"max_images={cfg.max_images!r} must be a whole number >= 1, or null for the whole split")
    if not is_whole(cfg.shown_images, 0):
        raise ImgrecError(f"shown_images={cfg.shown_images!r} must be a whole number >= 0")
    if not is_whole(cfg.seed, 0):
        raise ImgrecError(f"seed={cfg.seed!r} must be a whole number >= 0")
    if cfg.split not in ("test", "val", "all"):
        raise ImgrecError(f"split={cfg.split!r} must be test, val or all")
    return attacks, corruptions


def accuracy_of(model, pixels, labels, batch_size: int, change=None) -> float:
    """Accuracy on [0, 1] pixels, each batch first passed through `change(batch, labels)` (an attack)."""
    import torch

    correct = 0
    for start in range(0, len(labels), batch_size):
        batch, truth = pixels[start:start + batch_size], labels[start:start + batch_size]
        if change is not None:
            batch = change(batch, truth)
        with torch.no_grad():
            correct += int((model(batch).argmax(1) == truth).sum())
    return correct / len(labels)


def robustness_report(cfg: DictConfig) -> dict:
    import numpy as np
    import torch

    from imgrec.commands.eval import stored_dataset
    from imgrec.data.building import build_dataset
    from imgrec.data.files import images_at
    from imgrec.evaluation.inference import inference_device, load_trained
    from imgrec.evaluation.reports import csv_text, write_whole
    from imgrec.robustness.attacks import PixelModel
    from imgrec.robustness.corruptions import corrupt, corruption_errors

    check_tool_config(cfg)
    resolve_checkpoint_shortcut(cfg)
    attacks, corruptions = check_settings(cfg)
    device = inference_device(cfg)
    trained = load_trained(cfg.ckpt_path, device)
    if trained.task.name != "classification":
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} was trained for the {trained.task.name} task; "
                          "imgrec-robustness scores classifiers (one class per image)")
    dataset_cfg = cfg.dataset if cfg.get("dataset") else stored_dataset(trained.state["config"].get("dataset"))
    if "image_size" in dataset_cfg:
        dataset_cfg.image_size, dataset_cfg.channels = trained.image_size, trained.channels
    splits = build_dataset(dataset_cfg, "classification")
    split = splits.everything() if cfg.split == "all" else getattr(splits, cfg.split)
    order = np.random.default_rng(cfg.seed).permutation(len(split))
    chosen = np.sort(order[: cfg.max_images] if cfg.max_images else order)
    pixels = torch.from_numpy(images_at(split, chosen)).float().div(255).to(device)
    labels = split.labels[torch.as_tensor(chosen)].to(device)
    model = PixelModel(trained.model, trained.mean, trained.std).to(device).eval()
    clean = accuracy_of(model, pixels, labels, cfg.batch_size)
    log.info(f"{len(labels)} {cfg.split} images; clean accuracy {clean:.4f}")

    attack_rows = []
    generator = torch.Generator().manual_seed(cfg.seed)
    apgd_settings = {**OmegaConf.to_container(cfg.apgd), "norm": cfg.pgd.norm}  # one norm for the one eps list
    settings = {"pgd": OmegaConf.to_container(cfg.pgd), "apgd": apgd_settings}
    for name in attacks:
        for eps in cfg.eps:
            def attack(batch, truth, name=name, eps=eps):
                return run_attack(name, model, batch, truth, eps, settings, generator)
            robust = accuracy_of(model, pixels, labels, cfg.batch_size, attack)
            norm = "linf" if name == "fgsm" else cfg.pgd.norm
            attack_rows.append({"attack": name, "norm": norm, "eps": float(eps), "accuracy": robust})
            log.info(f"{name} ({norm}) eps {eps:.5f}: accuracy {robust:.4f}")
    corruption_accuracy: dict[str, dict[int, float]] = {}
    rng = np.random.default_rng(cfg.seed)
    host_pixels = pixels.cpu().numpy()
    for name in corruptions:
        for severity in cfg.severities:
            corrupted = torch.from_numpy(corrupt(host_pixels, name, severity, rng)).to(device)
            corruption_accuracy.setdefault(name, {})[int(severity)] = accuracy_of(model, corrupted, labels,
                                                                                 cfg.batch_size)
        log.info(f"{name}: accuracy by severity " + ", ".join(f"{s}: {a:.4f}" for s, a in
                                                              corruption_accuracy[name].items()))
    summary = {"checkpoint": str(cfg.ckpt_path), "split": cfg.split, "images": len(labels), "clean_accuracy": clean,
               "attacks": attack_rows, **settings, "corruptions": corruption_accuracy,
               **(corruption_errors(clean, corruption_accuracy) if corruption_accuracy else {})}
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_whole(run_dir / "robustness.json", json.dumps(summary, indent=2))
    attack_table = [[row["attack"], row["norm"], row["eps"], row["accuracy"]] for row in attack_rows]
    write_whole(run_dir / "attacks.csv", csv_text(["attack", "norm", "eps", "accuracy"], attack_table))
    write_whole(run_dir / "corruptions.csv", csv_text(
        ["corruption", "severity", "accuracy"],
        [[name, severity, value] for name, by in corruption_accuracy.items() for severity, value in by.items()]))
    draw_curves(run_dir, clean, attack_rows, corruption_accuracy)
    if attacks and cfg.shown_images:
        draw_examples(run_dir, model, pixels[: cfg.shown_images], labels[: cfg.shown_images], trained.class_names,
                      attacks[-1], max(cfg.eps), settings, generator)
    log_to_tensorboard(run_dir, clean, attack_rows, corruption_accuracy)
    if corruption_accuracy:
        log.info(f"mean corruption accuracy {summary['mean_corruption_accuracy']:.4f} (clean {clean:.4f})")
    log.info(f"robustness report saved in {run_dir.resolve()}")
    return summary


def run_attack(name: str, model, batch, truth, eps: float, settings: dict, generator):
    """The named attack's adversarial batch; `settings` holds the pgd and apgd config groups (apgd with pgd.norm)."""
    from imgrec.robustness.apgd import apgd
    from imgrec.robustness.attacks import fgsm, pgd

    if name == "fgsm":
        return fgsm(model, batch, truth, eps)
    if name == "pgd":
        return pgd(model, batch, truth, eps, generator=generator, **settings["pgd"])
    return apgd(model, batch, truth, eps, generator=generator, **settings["apgd"])


def draw_curves(run_dir: Path, clean: float, attack_rows: list[dict], corruption_accuracy: dict) -> None:
    from imgrec.evaluation.plots import _pyplot, save_figure

    plt = _pyplot()
    if attack_rows:
        figure, axes = plt.subplots(figsize=(6, 4.5))
        for name in dict.fromkeys(row["attack"] for row in attack_rows):
            rows = [row for row in attack_rows if row["attack"] == name]
            axes.plot([0] + [r["eps"] for r in rows], [clean] + [r["accuracy"] for r in rows], marker="o", label=name)
        axes.set(xlabel="eps ([0, 1] pixels)", ylabel="accuracy", ylim=(0, 1.01), title="accuracy under attack")
        axes.legend()
        save_figure(figure, run_dir / "accuracy_vs_eps.png")
    if corruption_accuracy:
        figure, axes = plt.subplots(figsize=(6, 4.5))
        for name, by in corruption_accuracy.items():
            axes.plot([0, *by], [clean, *by.values()], marker=".", label=name)
        axes.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1.01), title="accuracy under corruptions")
        axes.legend(fontsize=7)
        save_figure(figure, run_dir / "accuracy_vs_severity.png")


def draw_examples(run_dir: Path, model, pixels, labels, class_names, attack: str, eps: float, settings: dict,
                  generator) -> None:
    """adversarial_examples.png: rows of clean image, adversarial image and the perturbation (amplified to the
    full grey range), each captioned with the model's prediction."""
    import numpy as np
    import torch

    from imgrec.evaluation.figures import to_file
    from imgrec.tasks.base import ImageGridFigure

    adversarial = run_attack(attack, model, pixels, labels, eps, settings, generator)
    with torch.no_grad():
        clean_guess, adversarial_guess = model(pixels).argmax(1), model(adversarial).argmax(1)
    change = adversarial - pixels
    amplified = 0.5 + change / (2 * change.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12))
    tiles, captions = [], []
    for index in range(len(labels)):
        tiles += [pixels[index], adversarial[index], amplified[index]]
        captions += [f"true {class_names[labels[index]]}\npred {class_names[clean_guess[index]]}",
                     f"{attack} eps {eps:.3g}\npred {class_names[adversarial_guess[index]]}", "perturbation"]
    images = (torch.stack(tiles).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().astype(np.uint8)
    to_file(ImageGridFigure("adversarial_examples", images, captions, f"clean | {attack} eps {eps:.3g} | "
                            "perturbation (amplified)", columns=6), run_dir)


def log_to_tensorboard(run_dir: Path, clean: float, attack_rows: list[dict], corruption_accuracy: dict) -> None:
    """The curves as TensorBoard scalars: robustness/<attack> by eps in thousandths, corruption/<name> by
    severity (0: clean), and the two PNG curves as images."""
    from PIL import Image

    from imgrec.training.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(run_dir / "tensorboard"), run_name="robustness")
    for row in attack_rows:
        tag = f"robustness/{row['attack']}_{row['norm']}"
        if row is next(r for r in attack_rows if r["attack"] == row["attack"]):
            logger.log_metrics({tag: clean}, step=0)  # every curve starts at the clean accuracy
        logger.log_metrics({tag: row["accuracy"]}, step=round(row["eps"] * 1000))
    for name, by in corruption_accuracy.items():
        logger.log_metrics({f"corruption/{name}": clean}, step=0)
        for severity, value in by.items():
            logger.log_metrics({f"corruption/{name}": value}, step=int(severity))
    for picture in ("accuracy_vs_eps.png", "accuracy_vs_severity.png", "adversarial_examples.png"):
        if (run_dir / picture).is_file():
            with Image.open(run_dir / picture) as image:
                logger.log_image(picture.removesuffix(".png"), image.copy(), step=0)
    logger.close()


@hydra_command("robustness", task_name="robustness")
def main(cfg: DictConfig) -> None:
    run_command(robustness_report, cfg)


if __name__ == "__main__":
    main()
