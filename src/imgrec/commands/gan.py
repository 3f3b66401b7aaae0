"""imgrec-gan: train a class-conditional GAN on a dataset's training split; `imgrec-gan sample` draws an
image folder from it, `imgrec-gan study` measures whether its images help a small-data classifier."""

import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import build, check_tool_config
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

log = logging.getLogger("imgrec")
# what a checkpoint's `gan` section may hold: the numbers and names the networks are rebuilt from
ARCHITECTURE_KEYS = ("latent_dim", "width", "upsamplings", "spectral_norm")
MAX_PER_CLASS = 50_000


# ---- settings, checked before any data is read ----------------------------------------------------------

def check_gan_section(gan: dict, where: str = "gan") -> dict:
    """The `gan` settings (from the config, or from a checkpoint: data, not code), checked; returns them."""
    from imgrec.gan.diffaugment import check_policy
    from imgrec.gan.losses import check_loss

    unknown = sorted(set(gan) - {*ARCHITECTURE_KEYS, "loss", "diff_augment", "ema_decay", "lr_generator",
                                 "lr_discriminator", "betas"})
    if unknown:
        raise ImgrecError(f"{where} has unknown settings {unknown}; see configs/gan/dcgan.yaml for the ones there are")
    for key, low in (("latent_dim", 1), ("width", 16)):
        if not is_whole(gan.get(key), low):
            raise ImgrecError(f"{where}.{key}={gan.get(key)!r} must be a whole number >= {low}")
    if not isinstance(gan.get("spectral_norm"), bool):
        raise ImgrecError(f"{where}.spectral_norm={gan.get('spectral_norm')!r} must be true or false")
    check_loss(gan.get("loss"))
    check_policy(gan.get("diff_augment"))
    for key in ("lr_generator", "lr_discriminator"):
        if not is_number(gan.get(key)) or not 0 < gan[key] <= 1:
            raise ImgrecError(f"{where}.{key}={gan.get(key)!r} must be a number in (0, 1], e.g. 2.0e-4")
    if not is_number(gan.get("ema_decay")) or not 0 <= gan["ema_decay"] < 1:
        raise ImgrecError(f"{where}.ema_decay={gan.get('ema_decay')!r} must be in [0, 1), e.g. 0.999")
    betas = gan.get("betas")
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)):
        raise ImgrecError(f"{where}.betas={betas!r} must be two numbers in [0, 1), e.g. [0.0, 0.99]")
    return gan


def check_trainer_section(trainer: DictConfig) -> None:
    for key, low in (("epochs", 1), ("batch_size", 2), ("max_bad_steps", 1), ("grid_per_class", 1),
                     ("log_every_n_steps", 0)):
        if not is_whole(trainer.get(key), low):
            raise ImgrecError(f"trainer.{key}={trainer.get(key)!r} must be a whole number >= {low}")
    steps = trainer.get("steps_per_epoch")
    if steps is not None and not is_whole(steps, 1):
        raise ImgrecError(f"trainer.steps_per_epoch={steps!r} must be null (one pass over the data) or a whole number >= 1")
    if trainer.progress not in ("auto", True, False):
        raise ImgrecError(f"trainer.progress={trainer.progress!r} must be auto, true or false")


def check_dataset_serves_classification(dataset_cfg: DictConfig) -> None:
    declared = dataset_cfg.get("task", "classification")
    if declared != "classification":
        target = str(dataset_cfg.get("_target_", "?")).rsplit(".", 1)[-1]
        raise ImgrecError(f"imgrec-gan trains on a classification dataset (one class per image), but dataset {target} "
                          f"serves the {declared} task; choose one like dataset=fashion_mnist, digits or image_folder")


def build_networks(gan: dict, num_classes: int, channels: int, image_size: int):
    from imgrec.gan.models import Discriminator, Generator, check_image_size

    check_image_size(image_size, gan["upsamplings"])
    generator = Generator(num_classes, channels, image_size, latent_dim=gan["latent_dim"], width=gan["width"],
                          upsamplings=gan["upsamplings"])
    discriminator = Discriminator(num_classes, channels, image_size, width=gan["width"],
                                  downsamplings=gan["upsamplings"], spectral_norm=gan["spectral_norm"])
    return generator, discriminator


# ---- imgrec-gan (training) ---------------------------------------------------------------------------------

def train_gan(cfg: DictConfig) -> dict:
    """Train as `cfg` says; returns the last epoch's metrics, the history, the checkpoint path and the wall time."""
    from imgrec.checkpoint import load_checkpoint
    from imgrec.data.loaders import InMemoryLoader
    from imgrec.data.splits import ImageTensors
    from imgrec.evaluation.run_summary import announce_config
    from imgrec.gan.trainer import GanSettings, GanTrainer
    from imgrec.runtime import resolve_device, set_cpu_threads
    from imgrec.training.seeding import seed_everything

    started = time.perf_counter()
    check_tool_config(cfg)
    gan = check_gan_section(OmegaConf.to_container(cfg.gan, resolve=True))
    check_trainer_section(cfg.trainer)
    check_dataset_serves_classification(cfg.dataset)
    if (cfg.dataset.get("synthetic") or {}).get("ratio"):
        raise ImgrecError("dataset.synthetic adds generated images to the training split: a GAN trains on real images "
                          "only; set dataset.synthetic.ratio=0")
    from imgrec.gan.models import check_image_size

    check_image_size(cfg.dataset.image_size, gan["upsamplings"])  # before the data is read
    device = resolve_device(cfg.trainer.device)
    set_cpu_threads(cfg.trainer.num_threads)
    resume_state = None
    if cfg.ckpt_path:
        resume_state = load_checkpoint(cfg.ckpt_path)
        check_gan_checkpoint(resume_state, cfg.ckpt_path)
        check_resume(resume_state, gan, cfg)
    run_dir = Path(cfg.paths.output_dir)
    if resume_state is None and (run_dir / "checkpoints" / "last.pt").exists():
        raise ImgrecError(f"{run_dir / 'checkpoints' / 'last.pt'} exists: this run folder holds another GAN. Resume it "
                          f"with ckpt_path={run_dir / 'checkpoints' / 'last.pt'}, or use a new folder")
    check_quality_settings(cfg.quality)
    announce_config(cfg, run_dir, log, show=cfg.get("print_config", True))

    seed_everything(cfg.seed)
    splits = build_dataset(cfg.dataset, "classification")
    train = splits.train
    if not isinstance(train, ImageTensors):
        raise ImgrecError("imgrec-gan needs the training images in memory; this dataset reads them from files each "
                          "epoch (use a dataset held in memory, e.g. dataset=image_folder with its default settings)")
    if resume_state is not None and resume_state["class_names"] != splits.class_names:
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} was trained on classes {resume_state['class_names']} but the "
                          f"dataset has {splits.class_names}; resume with the dataset it was trained on")
    batch_size = cfg.trainer.batch_size
    if len(train) < batch_size:
        raise ImgrecError(f"trainer.batch_size={batch_size} is more than the {len(train)} training images; set "
                          f"trainer.batch_size={max(2, len(train) // 2)} or less")
    generator, discriminator = build_networks(gan, len(splits.class_names), splits.channels, splits.image_size)
    steps = cfg.trainer.steps_per_epoch
    repeats = 1 if steps is None else math.ceil(steps * batch_size / len(train))
    # every batch full (drop_last): batch norm in the generator misbehaves on a batch of one or two
    loader = InMemoryLoader(train, batch_size, [0.5] * splits.channels, [0.5] * splits.channels, device,
                            shuffle=True, drop_last=True, seed=cfg.seed, limit_batches=steps, repeats=repeats)
    judge = make_judge(cfg, splits, device)
    logger = build(cfg.logger) if cfg.get("logger") else None
    if logger is not None:
        logger.start({"seed": cfg.seed, **{f"gan.{key}": value for key, value in gan.items()
                                          if not isinstance(value, list)}})
    settings = GanSettings(
        loss=gan["loss"], diff_augment=tuple(check_policy_names(gan["diff_augment"])),
        lr_generator=gan["lr_generator"], lr_discriminator=gan["lr_discriminator"], betas=tuple(gan["betas"]),
        ema_decay=gan["ema_decay"], epochs=cfg.trainer.epochs, max_bad_steps=cfg.trainer.max_bad_steps,
        log_every_n_steps=cfg.trainer.log_every_n_steps, grid_per_class=cfg.trainer.grid_per_class,
        show_bar=cfg.trainer.progress is True or (cfg.trainer.progress == "auto" and sys.stderr.isatty()),
    )
    from imgrec.data.synthetic import split_record

    extras = {
        "gan": gan, "class_names": list(splits.class_names), "input_shape": list(splits.input_shape),
        "config": OmegaConf.to_container(cfg, resolve=True), "seed": cfg.seed, "train_images": len(train),
        # which images were the training split: samples may be mixed only into runs with this same split
        "dataset_split": split_record(OmegaConf.to_container(cfg.dataset, resolve=True)),
    }
    trainer = GanTrainer(generator, discriminator, settings, device, run_dir / "checkpoints", extras, logger=logger,
                         judge=judge, grid_seed=cfg.seed)
    log.info(f"training a conditional GAN on the {len(train)} training images of {len(splits.class_names)} classes "
             f"({splits.image_size}x{splits.image_size}, {splits.channels} channel(s)) on {device} for "
             f"{settings.epochs} epochs of {len(loader)} steps; val and test images are not used"
             + (" (val only as the judge's real set)" if judge is not None else ""))
    try:
        metrics = trainer.fit(loader, resume_state)
    finally:
        if logger is not None:
            logger.close()
    write_history(trainer.history, run_dir / "gan_history.csv")
    seconds = time.perf_counter() - started
    log.info(f"GAN trained in {seconds:.0f} s; samples per epoch in {run_dir / 'samples'}. Draw an image folder with:\n"
             f"  imgrec-gan sample ckpt_path={trainer.last_path} per_class=<images per class> out=<folder>")
    return {"metrics": metrics, "history": trainer.history, "checkpoint": trainer.last_path, "seconds": seconds,
            "train_images": len(train)}


def check_policy_names(policy) -> list[str]:
    from imgrec.gan.diffaugment import check_policy

    return list(check_policy(policy) or [])


def make_judge(cfg: DictConfig, splits, device):
    """The classifier that measures each epoch's generator against the real validation images, when given."""
    if not cfg.quality.ckpt_path:
        return None
    from imgrec.gan.judge import Judge

    reference = getattr(splits, cfg.quality.reference)
    return Judge(cfg.quality.ckpt_path, reference.images, reference.labels, splits.class_names,
                 per_class=cfg.quality.per_class, k=cfg.quality.k, seed=cfg.seed, device=device)


def check_quality_settings(quality) -> None:
    for key in ("per_class", "k"):
        if key in quality and not is_whole(quality.get(key), 1):
            raise ImgrecError(f"quality.{key}={quality.get(key)!r} must be a whole number >= 1")
    if quality.get("per_class") is not None and quality.get("k") is not None and quality.k >= quality.per_class:
        raise ImgrecError(f"quality.k={quality.k} must be smaller than quality.per_class={quality.per_class}")
    if quality.get("reference", "val") not in ("val", "test"):
        raise ImgrecError(f"quality.reference={quality.get('reference')!r} must be val or test: the real images "
                          "generated ones are compared with (never the GAN's training images)")


# what a resume may change: how long, where and how it reports; everything else would train another GAN
RESUME_MAY_CHANGE = ("trainer.epochs", "trainer.device", "trainer.num_threads", "trainer.progress",
                     "trainer.log_every_n_steps", "trainer.max_bad_steps", "quality.", "logger.", "paths.", "ckpt_path",
                     "print_config", "allowed_targets", "hydra")


def flattened(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    items: dict = {}
    for key, value in tree.items():
        items.update(flattened(value, f"{prefix}{key}."))
    return items


def check_resume(state: dict, gan: dict, cfg: DictConfig) -> None:
    stored = flattened(state.get("config") or {})
    current = flattened(OmegaConf.to_container(cfg, resolve=True))
    changed = [key for key in sorted(stored.keys() | current.keys())
               if not key.startswith(RESUME_MAY_CHANGE) and stored.get(key) != current.get(key)]
    if changed:
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} was trained with " + ", ".join(
            f"{key}={stored.get(key)!r}" for key in changed[:4]) + (" ..." if len(changed) > 4 else "")
            + f" (this run: {', '.join(f'{key}={current.get(key)!r}' for key in changed[:4])}); resume with the "
            "settings it was trained with (the command line it printed when it stopped)")
    if state["epoch"] >= cfg.trainer.epochs and "epoch_progress" not in state:
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} already trained {state['epoch']} epochs and trainer.epochs="
                          f"{cfg.trainer.epochs}: set trainer.epochs={state['epoch'] + 10} (say) to train further")


def check_gan_checkpoint(state: dict, path) -> None:
    """A checkpoint imgrec-gan wrote, with settings that rebuild its networks (checked as data)."""
    from imgrec.gan.trainer import CHECKPOINT_KIND

    if state.get("kind") != CHECKPOINT_KIND:
        what = "a classifier (or other task) checkpoint from imgrec-train" if "model" in state else "not a GAN checkpoint"
        raise ImgrecError(f"ckpt_path {path} is {what}; give the checkpoints/last.pt of an imgrec-gan run")
    if not isinstance(state.get("gan"), dict):
        raise ImgrecError(f"ckpt_path {path} is damaged: its 'gan' settings are missing")
    check_gan_section(state["gan"], where=f"ckpt_path {path}: gan")
    names, shape = state.get("class_names"), state.get("input_shape")
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise ImgrecError(f"ckpt_path {path} is damaged: 'class_names' is not a list of at least two names")
    if not (isinstance(shape, list) and len(shape) == 3 and all(is_whole(v, 1) for v in shape) and shape[0] in (1, 3)
            and shape[1] == shape[2] and shape[1] <= 1024):
        raise ImgrecError(f"ckpt_path {path} is damaged: 'input_shape' is {shape!r}, not [1 or 3, side, side]")
    if not is_whole(state.get("epoch")) or not is_whole(state.get("step")):
        raise ImgrecError(f"ckpt_path {path} is damaged: 'epoch'/'step' are not whole numbers")
    if state["gan"]["latent_dim"] > 4096 or state["gan"]["width"] > 4096:
        raise ImgrecError(f"ckpt_path {path}: gan.latent_dim={state['gan']['latent_dim']} / gan.width="
                          f"{state['gan']['width']} is beyond any network imgrec-gan builds (4096); it is damaged")
    import torch

    for part in ("generator", "train_generator", "discriminator"):
        weights = state.get(part)
        if not (isinstance(weights, dict) and weights and all(isinstance(t, torch.Tensor) for t in weights.values())):
            raise ImgrecError(f"ckpt_path {path} is damaged: '{part}' is not a dict of tensors")
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in weights.values()):
            raise ImgrecError(f"ckpt_path {path} is damaged: '{part}' holds NaN or Inf weights")


def write_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


@hydra_command("gan_train", task_name="gan")
def train_main(cfg: DictConfig) -> None:
    from imgrec.training.signals import TrainingInterrupted

    try:
        run_command(train_gan, cfg)
    except TrainingInterrupted as stop:
        where = f"in epoch {stop.epoch + 1} after batch {stop.batch}" if stop.batch else f"after epoch {stop.epoch}"
        from imgrec.commands.train import resume_command

        log.warning(f"{stop} {where}; saved {stop.checkpoint}. Resume with:\n  "
                    f"{resume_command(stop.checkpoint, 'imgrec-gan')}")
        sys.exit(stop.exit_code)


# ---- imgrec-gan sample ----------------------------------------------------------------------------------

def sample(cfg: DictConfig) -> dict:
    """Draw cfg.per_class images of every class into cfg.out; returns the manifest."""
    from imgrec.checkpoint import load_checkpoint
    from imgrec.data.archives import content_digest
    from imgrec.gan.sampling import draw, write_samples
    from imgrec.runtime import resolve_device, set_cpu_threads

    check_tool_config(cfg)
    if not cfg.ckpt_path:
        raise ImgrecError("ckpt_path is required: ckpt_path=outputs/gan/runs/<timestamp>/checkpoints/last.pt")
    if not is_whole(cfg.per_class, 1):
        raise ImgrecError(f"per_class={cfg.per_class!r} must be a whole number >= 1")
    if not is_whole(cfg.seed):
        raise ImgrecError(f"seed={cfg.seed!r} must be a whole number >= 0")
    if cfg.per_class > MAX_PER_CLASS:
        raise ImgrecError(f"per_class={cfg.per_class} is more than {MAX_PER_CLASS} images of each class in one folder; "
                          "sample in several folders with different seeds")
    if cfg.generator not in ("ema", "train"):
        raise ImgrecError(f"generator={cfg.generator!r} must be ema (the moving average) or train (the raw weights)")
    if OmegaConf.is_missing(cfg, "out") or not cfg.out:
        raise ImgrecError("out is required: the new folder the images go to, e.g. out=data/generated")
    check_quality_settings(cfg.quality)
    out = Path(str(cfg.out)).expanduser()
    if out.exists() and not out.is_dir():
        raise ImgrecError(f"out={out} is a file; give a new folder for the images")
    if out.exists() and any(out.iterdir()):
        raise ImgrecError(f"out={out} is not an empty folder; give a new one (samples are never written over others)")
    device = resolve_device(cfg.device, "device")
    set_cpu_threads(cfg.num_threads, "num_threads")
    state = load_checkpoint(cfg.ckpt_path)
    check_gan_checkpoint(state, cfg.ckpt_path)
    channels, side, _ = state["input_shape"]
    generator, _ = build_networks(state["gan"], len(state["class_names"]), channels, side)
    try:
        generator.load_state_dict(state["generator" if cfg.generator == "ema" else "train_generator"])
    except (RuntimeError, KeyError) as error:
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} is damaged: its generator does not fit its own settings "
                          f"({str(error).splitlines()[0]})") from error
    generator = generator.to(device)
    judge = sample_judge(cfg, state, device) if cfg.quality.ckpt_path else None  # a bad judge fails before any file
    images, labels = draw(generator, cfg.per_class, cfg.seed, device)
    provenance = {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "checkpoint_sha256": content_digest(Path(cfg.ckpt_path)),
                  "epoch": int(state["epoch"]), "step": int(state["step"]), "generator": cfg.generator,
                  "seed": int(cfg.seed), "per_class": int(cfg.per_class), "gan": state["gan"],
                  "train_images": state.get("train_images"), "generated_from": state.get("dataset_split")}
    manifest = write_samples(images, labels, list(state["class_names"]), out, provenance)
    log.info(f"wrote {len(images)} images ({cfg.per_class} per class, {len(state['class_names'])} classes) to {out}; "
             f"mix them into training with dataset.synthetic.root={out} dataset.synthetic.ratio=0.5")
    if judge is not None:
        report = judge.measure(generator, device)
        path = Path(cfg.paths.output_dir) / "quality.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        log.info(f"quality against {cfg.quality.ckpt_path}: Fréchet distance {report['frechet_distance']:.3f}, "
                 f"precision {report['precision']:.3f}, recall {report['recall']:.3f}, class accuracy "
                 f"{report['class_accuracy']['mean']:.3f}; written to {path}")
    return manifest


def sample_judge(cfg: DictConfig, state: dict, device):
    """The judge of per_class drawn images per class, against the real val (or test) images of the dataset the
    GAN was trained on (its stored dataset config, checked as data before it is built; never downloads)."""
    from imgrec.commands.eval import stored_dataset
    from imgrec.gan.judge import Judge

    if cfg.quality.k >= cfg.per_class:
        raise ImgrecError(f"quality.k={cfg.quality.k} must be smaller than per_class={cfg.per_class}")
    splits = build_dataset(stored_dataset((state.get("config") or {}).get("dataset")), "classification")
    reference = getattr(splits, cfg.quality.get("reference", "val"))
    return Judge(cfg.quality.ckpt_path, reference.images, reference.labels, list(state["class_names"]),
                 per_class=cfg.per_class, k=cfg.quality.k, seed=cfg.seed, device=device)


@hydra_command("gan_sample", task_name="gan_sample")
def sample_main(cfg: DictConfig) -> None:
    run_command(sample, cfg)
