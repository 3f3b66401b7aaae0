"""What the Trainer checks before it runs: its settings and options, the metric names, and how a
schedule takes a step."""

from collections.abc import Mapping

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.runtime import autocast_dtype, compiled
from imgrec.training.mixing import MixUpCutMix

TRAIN_METRICS = ("train/loss", "train/acc", "train/lr")
EVAL_METRICS = ("loss", "acc", "macro_precision", "macro_recall", "macro_f1")


def step_scheduler(scheduler, metrics: dict[str, float] | None = None) -> None:
    """Advance a schedule by one of its own steps: a `monitor`ing one (plateau) reads its metric."""
    monitor = getattr(scheduler, "monitor", None)
    if monitor is None:
        scheduler.step()
    else:
        scheduler.step(metrics[monitor])


def logged_metric_names() -> list[str]:
    """Every key `fit` logs each epoch: what `monitor` and `optimized_metric` may name."""
    return [*TRAIN_METRICS, *(f"val/{name}" for name in EVAL_METRICS)]


def check_trainer_settings(max_epochs, batch_size, eval_batch_size, limit_batches, progress, num_workers="auto",
                           log_every_n_steps=None) -> None:
    """Raise on settings that would fail or silently misbehave later; called before any data is loaded."""
    for name, value in (("max_epochs", max_epochs), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImgrecError(f"trainer.{name}={value!r} must be a whole number >= 1")
    if limit_batches is not None and (not isinstance(limit_batches, int) or limit_batches < 1):
        raise ImgrecError(f"trainer.limit_batches={limit_batches!r} must be null (all batches) or a whole number >= 1")
    if progress not in ("auto", True, False):
        raise ImgrecError(f"trainer.progress={progress!r} must be auto, true or false")
    if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
        raise ImgrecError(f"trainer.num_workers={num_workers!r} must be auto or a whole number >= 0")
    if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 1):
        raise ImgrecError(f"trainer.log_every_n_steps={log_every_n_steps!r} must be null or a whole number >= 1")


def check_training_options(device: torch.device, precision="32", compile=False, mixup=None) -> None:
    """The Trainer's own checks of these options, run by train.py before any data is loaded."""
    autocast_dtype(precision, device, warn=False)
    if compile not in (True, False, None) and not isinstance(compile, Mapping):
        compiled(nn.Identity(), compile)  # raises the message
    if mixup:
        MixUpCutMix(num_classes=2, **mixup)
