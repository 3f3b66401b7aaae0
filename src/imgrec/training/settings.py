"""The `trainer` config group as one checked object: every loop setting validated once, when the config
is read (before any data is loaded), and the device-dependent ones (precision) resolved once for the
device the run uses."""

import math
from dataclasses import dataclass

import torch

from imgrec.errors import ImgrecError
from imgrec.runtime import autocast_dtype, check_compile, check_num_threads, check_precision


def _whole(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass
class TrainerSettings:
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N
    max_epochs: int = 20
    batch_size: int = 64  # per process: under torchrun with N processes the global batch is N x this
    eval_batch_size: int = 512
    limit_batches: int | None = None  # batches per epoch in every split (smoke runs); None: all
    progress: str | bool = "auto"  # a bar on a terminal, log lines otherwise
    num_threads: int | str = "auto"  # CPU threads for tensor operations (runtime.set_cpu_threads)
    num_workers: int | str = "auto"  # DataLoader workers for datasets read from files each epoch
    grad_clip_norm: float | None = None
    accumulate_batches: int = 1  # batches whose gradients add up to one optimizer step
    ema_decay: float | None = None  # validate, test and save an exponential moving average of the weights
    precision: str | int = "32"  # 32 | bf16-mixed | 16-mixed
    channels_last: bool = False
    compile: bool | dict = False  # true, or a dict of torch.compile arguments
    max_bad_steps: int | None = 3  # non-finite steps in a row before stopping; None: no check (no per-step sync)
    bad_step_check: str = "auto"  # auto | every_step | deferred (training.guard.make_guard)
    sync_batchnorm: bool = False  # under torchrun: batch-norm statistics over every process's batch
    log_every_n_steps: int | None = 50  # train/loss_step to the logger every N optimizer steps (one sync)
    adversarial: dict | None = None  # training on adversarial images (training.adversarial.AdversarialSettings)

    def __post_init__(self):
        for name in ("max_epochs", "batch_size", "eval_batch_size", "accumulate_batches"):
            if not _whole(getattr(self, name), 1):
                raise ImgrecError(f"trainer.{name}={getattr(self, name)!r} must be a whole number >= 1")
        for name, meaning in (("limit_batches", "null (all batches)"), ("max_bad_steps", "null (no check)"),
                              ("log_every_n_steps", "null (epoch curves only)")):
            value = getattr(self, name)
            if value is not None and not _whole(value, 1):
                raise ImgrecError(f"trainer.{name}={value!r} must be {meaning} or a whole number >= 1")
        if self.bad_step_check not in ("auto", "every_step", "deferred"):
            raise ImgrecError(f"trainer.bad_step_check={self.bad_step_check!r} must be auto, every_step or deferred")
        if self.progress not in ("auto", True, False):
            raise ImgrecError(f"trainer.progress={self.progress!r} must be auto, true or false")
        if self.num_workers != "auto" and not _whole(self.num_workers, 0):
            raise ImgrecError(f"trainer.num_workers={self.num_workers!r} must be auto or a whole number >= 0")
        check_num_threads(self.num_threads)
        if self.grad_clip_norm is not None and not (isinstance(self.grad_clip_norm, (int, float))
                                                    and math.isfinite(self.grad_clip_norm) and self.grad_clip_norm > 0):
            raise ImgrecError(f"trainer.grad_clip_norm={self.grad_clip_norm!r} must be null or a number > 0")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, float) and 0.0 < self.ema_decay < 1.0):
            raise ImgrecError(f"trainer.ema_decay={self.ema_decay!r} must be null or between 0 and 1, e.g. 0.999")
        check_precision(self.precision)
        check_compile(self.compile)
        if self.adversarial is not None:
            self.adversarial = adversarial_settings(self.adversarial)
        for name in ("channels_last", "sync_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise ImgrecError(f"trainer.{name}={getattr(self, name)!r} must be true or false")

    @property
    def loop_metrics(self) -> list[str]:
        """Metrics the loop itself adds to the task's (what optimized_metric and the callbacks may also name)."""
        return self.adversarial.metric_names if self.adversarial is not None else []

    def autocast_dtype(self, device: torch.device, warn: bool = True) -> torch.dtype | None:
        """The dtype forward passes run in on `device` (None: float32); raises for one the device lacks."""
        return autocast_dtype(self.precision, device, warn=warn)


def adversarial_settings(values):
    from dataclasses import fields

    from omegaconf import DictConfig, OmegaConf

    from imgrec.training.adversarial import AdversarialSettings

    if isinstance(values, AdversarialSettings):
        return values
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, dict):
        raise ImgrecError(f"trainer.adversarial={values!r} must be null or a mapping, e.g. "
                          "trainer.adversarial={method:pgd,eps:0.1}")
    known = [field.name for field in fields(AdversarialSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ImgrecError(f"trainer.adversarial has unknown key(s) {unknown}; the keys are {', '.join(known)}")
    return AdversarialSettings(**values)
