"""What the Trainer checks and resolves before it runs: device, settings, options, metric names,
torch.compile, and how a schedule takes a step."""

from collections.abc import Mapping

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.mixing import MixUpCutMix
from imgrec.precision import autocast_dtype

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


def resolve_device(device: str, setting: str = "trainer.device") -> torch.device:
    """`auto` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ImgrecError(f"{setting}={device!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgrecError(
                f"{setting}={device} but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use {setting}=cpu or auto"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ImgrecError(
                f"{setting}={device} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif resolved.type != "cpu":
        raise ImgrecError(f"{setting}={device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


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


def compiled(model: nn.Module, settings: bool | dict) -> nn.Module:
    """`model` through torch.compile when `settings` is true or a dict of torch.compile arguments.
    The compiled wrapper shares the model's parameters; checkpoints save the plain model's state dict."""
    if settings is False or settings is None:
        return model
    if settings is True:
        settings = {}
    if not isinstance(settings, Mapping):
        raise ImgrecError(f"trainer.compile={settings!r} must be true, false or a dict of torch.compile arguments, "
                          "e.g. {mode: max-autotune}")
    return torch.compile(model, **dict(settings))


def check_training_options(device: torch.device, precision="32", compile=False, mixup=None) -> None:
    """The Trainer's own checks of these options, run by train.py before any data is loaded."""
    autocast_dtype(precision, device, warn=False)
    if compile not in (True, False, None) and not isinstance(compile, Mapping):
        compiled(nn.Identity(), compile)  # raises the message
    if mixup:
        MixUpCutMix(num_classes=2, **mixup)


def set_cpu_threads(setting, name: str = "trainer.num_threads") -> int:
    """trainer.num_threads: a whole number sets torch's intra-op threads; auto keeps torch's choice, which
    follows OMP_NUM_THREADS (set per job by the parallel launcher, by SLURM or by the user)."""
    check_num_threads(setting, name)
    if setting != "auto":
        torch.set_num_threads(setting)
    return torch.get_num_threads()


def check_num_threads(setting, name: str = "trainer.num_threads") -> None:
    if setting != "auto" and (not isinstance(setting, int) or isinstance(setting, bool) or setting < 1):
        raise ImgrecError(f"{name}={setting!r} must be auto or a whole number >= 1")
