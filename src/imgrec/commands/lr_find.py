"""imgrec-lr-find: the learning-rate range test on the model, data and optimizer imgrec-train builds from the
same overrides; writes the loss-vs-lr curve and prints the suggested optimizer.lr as an imgrec-train line."""

import csv
import json
import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import build, check_tool_config
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


def find_lr(cfg: DictConfig) -> dict:
    """Run the range test as `cfg` says, write lr_find.csv/.json/.png into the run folder (and the curve to the
    configured logger) and return what lr_find.json holds. Nothing else is written: no checkpoint, no weights."""
    from imgrec.commands.train import bind_task_and_build_model, training_augment
    from imgrec.runtime import resolve_device
    from imgrec.training.lr_finder import check_range_settings, exponential_lrs, range_test, suggestions
    from imgrec.training.optim import build_optimizer, check_optimizer_settings
    from imgrec.training.seeding import seed_everything
    from imgrec.training.trainer import Trainer

    check_tool_config(cfg)
    settings = OmegaConf.to_container(cfg.lr_find, resolve=True)
    known = ("min_lr", "max_lr", "num_steps", "smoothing", "diverge_factor", "method")
    unknown = sorted(set(settings) - set(known))
    if unknown:  # `+lr_find.x=...` adds a key the config does not have
        raise ImgrecError(f"lr_find has no key {', '.join(unknown)}; its keys are {', '.join(known)}")
    check_range_settings(**settings)
    if cfg.get("ckpt_path"):
        raise ImgrecError(f"ckpt_path={cfg.ckpt_path}: imgrec-lr-find tests the lr from freshly built weights, as a new "
                          "run starts; leave ckpt_path out")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ImgrecError("imgrec-lr-find runs in one process: start it without torchrun (the lr it suggests is per "
                          "process batch, trainer.batch_size)")
    task, trainer_settings = build(cfg.task), build(cfg.trainer)
    check_optimizer_settings(cfg.optimizer)
    device = resolve_device(trainer_settings.device)
    trainer_settings.autocast_dtype(device, warn=False)
    augment = training_augment(cfg, task)

    seed_everything(cfg.seed)
    splits = build_dataset(cfg.dataset, task.name)
    augment, model = bind_task_and_build_model(cfg, task, splits, augment, device)
    trainer = Trainer(model=model, optimizer=build_optimizer(cfg.optimizer, model), scheduler=None, task=task,
                      settings=trainer_settings, device=device,
                      checkpoint_extras={"normalization": {"mean": splits.mean, "std": splits.std}})
    trainer.schedule_per_step = False  # the range test sets each step's lr itself; no schedule runs
    loader = trainer.make_loader(splits.train, splits.mean, splits.std, train=True, seed=cfg.seed, augment=augment,
                                 repeats=splits.patches_per_image)
    if len(loader) == 0:
        raise ImgrecError("the dataset's train split gives no batch to step on: add images, or lower trainer.batch_size")

    lrs = exponential_lrs(settings["min_lr"], settings["max_lr"], settings["num_steps"])
    batches = f" x {trainer_settings.accumulate_batches} batches" if trainer_settings.accumulate_batches > 1 else ""
    log.info(f"range test of {type(model).__name__} on {device}: {len(lrs)} steps of {trainer_settings.batch_size} "
             f"images{batches}, lr {lrs[0]:.1e} to {lrs[-1]:.1e}")
    test = range_test(training_step(trainer, loader), lrs, settings["smoothing"], settings["diverge_factor"])
    if len(test.lrs) < 2:
        raise ImgrecError(f"the loss diverged within the first two steps (at lr {test.stopped_at:.1e}), leaving no "
                          f"curve: lower lr_find.min_lr (now {settings['min_lr']}), or check the data and "
                          "trainer.precision")
    summary = describe(cfg, test, suggestions(test, settings["num_steps"]), settings["method"])
    run_dir = Path(cfg.paths.output_dir)
    write_results(run_dir, test, summary)
    if cfg.get("logger"):
        log_curve(build(cfg.logger), cfg, test, run_dir)
    report(summary, run_dir)
    return summary


def training_step(trainer, loader):
    """step(lr): one optimizer step at `lr` through trainer.train_step (autocast, channels_last, the task's loss,
    gradient clipping and accumulation as imgrec-train has them), returning its loss; inf for a step the
    non-finite guard refused, which ends the test as diverged rather than the command."""
    import torch

    batches = endless(loader)
    accumulate = trainer.settings.accumulate_batches
    trainer.model.train()

    def step(lr: float) -> float:
        for group in trainer.optimizer.param_groups:  # a backbone group keeps its share of the rate
            group["lr"] = lr * group.get("lr_scale", 1.0)
        refused, losses = trainer.guard.skipped, []
        for batch in range(accumulate):
            images, targets = trainer.task.train_batch(*next(batches))
            if trainer.adversarial is not None:  # as Trainer.train_epoch does, against the weights as they are now
                images, _ = trainer.adversarial.perturb(trainer.model, images, targets)
            try:
                loss, _ = trainer.train_step(images, targets, update=batch == accumulate - 1)
            except ImgrecError:
                if trainer.guard.in_a_row:
                    return math.inf  # trainer.max_bad_steps=1: the guard's stop is this test's divergence
                raise
            losses.append(loss.detach().float())
        return math.inf if trainer.guard.skipped > refused else torch.stack(losses).mean().item()

    return step


def endless(loader):
    """The loader's batches, epoch after epoch (each shuffled as imgrec-train's would be)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def describe(cfg: DictConfig, test, suggested: dict, method: str) -> dict:
    """What lr_find.json holds: the suggestions, the config's lr and what it means under its schedule, and the
    imgrec-train line that uses the suggestion."""
    lr = suggested[method]
    return {
        "suggested_lr": lr,
        "method": method,
        "suggestions": suggested,
        "config_lr": float(cfg.optimizer.lr),
        "config_lr_role": lr_role(cfg.scheduler),
        "stopped_at": test.stopped_at,
        "steps_taken": len(test.lrs),
        "settings": OmegaConf.to_container(cfg.lr_find, resolve=True),
        "batch_size": int(cfg.trainer.batch_size),
        "train_command": None if lr is None else train_command(lr),
    }


def lr_role(scheduler_cfg) -> str:
    """What optimizer.lr is under the configured schedule: every schedule imgrec ships starts at it or peaks at it."""
    target = str((scheduler_cfg or {}).get("_target_", "")).rsplit(".", 1)[-1]
    return {"onecycle": "the one-cycle peak (the run warms up to it from lr / div_factor, then anneals)",
            "warmup_cosine": "the peak after the warm-up, from which the cosine decays",
            "constant": "the rate of every step",
            "plateau": "the starting rate, lowered when the monitored metric stalls"}.get(
        target, f"the starting rate the {target or 'configured'} schedule decays from")


def train_command(lr: float) -> str:
    """imgrec-train with this command's own overrides and optimizer.lr set to `lr`: a line to paste."""
    import shlex

    from imgrec.training.loggers import command_line_overrides

    overrides = [o for o in command_line_overrides()
                 if not o.lstrip("+~").startswith(("lr_find.", "lr_find=", "optimizer.lr="))]
    return " ".join(["imgrec-train", *(shlex.quote(o) for o in overrides), f"optimizer.lr={lr:.1e}"])


def write_results(run_dir: Path, test, summary: dict) -> None:
    """lr_find.csv (every step), lr_find.json (the summary) and lr_find.png."""
    from imgrec.evaluation.plots import lr_curve_figure, save_figure

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "lr_find.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows([step, f"{lr:.6g}", f"{loss:.6g}", f"{smooth:.6g}"]
                         for step, (lr, loss, smooth) in enumerate(zip(test.lrs, test.losses, test.smoothed)))
    (run_dir / "lr_find.json").write_text(json.dumps(summary, indent=2) + "\n")
    marked = {f"{method} {lr:.1e}": lr for method, lr in summary["suggestions"].items() if lr is not None}
    save_figure(lr_curve_figure(test.lrs, test.losses, test.smoothed, marked, summary["config_lr"], test.stopped_at),
                run_dir / "lr_find.png")


def log_curve(logger, cfg: DictConfig, test, run_dir: Path) -> None:
    """The curve by step (lr_find/loss, lr_find/smoothed_loss, lr_find/lr), the picture and the three files to
    the configured logger (TensorBoard unless logger=... says otherwise)."""
    from PIL import Image

    from imgrec.commands.train_checks import hyperparameters

    logger.start(hyperparameters(cfg))
    for step, (lr, loss, smooth) in enumerate(zip(test.lrs, test.losses, test.smoothed)):
        logger.log_metrics({"lr_find/loss": loss, "lr_find/smoothed_loss": smooth, "lr_find/lr": lr}, step=step,
                           flush=False)
    with Image.open(run_dir / "lr_find.png") as picture:
        logger.log_image("lr_find", picture, step=0)
    logger.log_artifacts([run_dir / name for name in ("lr_find.csv", "lr_find.json", "lr_find.png")])
    logger.close()


def report(summary: dict, run_dir: Path) -> None:
    suggested, config_lr = summary["suggested_lr"], summary["config_lr"]
    others = ", ".join(f"{method} {lr:.1e}" for method, lr in summary["suggestions"].items()
                       if method != summary["method"] and lr is not None)
    stopped = "did not diverge" if summary["stopped_at"] is None else f"diverged at lr {summary['stopped_at']:.1e}"
    log.info(f"range test: {summary['steps_taken']} steps, {stopped}; curve in {(run_dir / 'lr_find.png').resolve()}")
    if suggested is None:
        log.warning(f"no {summary['method']} suggestion: the smoothed loss never fell over the steps it is read from"
                    f"{' (' + others + ')' if others else ''}; see lr_find.png, and widen the range (lr_find.min_lr, "
                    "lr_find.max_lr) or raise lr_find.num_steps")
        return
    log.info(f"suggested lr {suggested:.1e} ({summary['method']}{'; ' + others if others else ''}; the config uses "
             f"{config_lr:.1e}, {summary['config_lr_role']}): {summary['train_command']}")


@hydra_command("lr_find", task_name="lr_find")
def main(cfg: DictConfig) -> None:
    run_command(find_lr, cfg)


if __name__ == "__main__":
    main()
