"""The training loop: fit -> train_epoch -> train_step, evaluate, and the state a resume needs."""

import logging
from collections.abc import Mapping
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.callbacks import Callback
from imgrec.data.loaders import make_loader
from imgrec.errors import ImgrecError
from imgrec.losses import build_loss
from imgrec.metrics import epoch_scores
from imgrec.mixing import MixUpCutMix
from imgrec.precision import autocast_dtype, make_grad_scaler
from imgrec.seeding import rng_state, set_rng_state

log = logging.getLogger("imgrec")

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


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ImgrecError(f"trainer.device={device!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgrecError(
                f"trainer.device={device} but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use trainer.device=cpu or auto"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ImgrecError(
                f"trainer.device={device} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif resolved.type != "cpu":
        raise ImgrecError(f"trainer.device={device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


def check_trainer_settings(max_epochs, batch_size, eval_batch_size, limit_batches, progress, num_workers="auto") -> None:
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


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,  # a factory: (optimizer, steps_per_epoch=, max_epochs=) -> LRScheduler
        callbacks: dict[str, Callback] | None = None,
        logger=None,
        device: str = "auto",
        max_epochs: int = 20,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        limit_batches: int | None = None,
        progress: str | bool = "auto",
        num_workers: int | str = "auto",
        loss=None,  # a loss module, or the trainer.loss settings
        grad_clip_norm: float | None = None,
        accumulate_batches: int = 1,
        ema_decay: float | None = None,
        precision: str | int = "32",
        channels_last: bool = False,
        compile: bool | dict = False,
        mixup: dict | None = None,  # MixUpCutMix settings (they need num_classes)
        num_classes: int | None = None,
        checkpoint_extras: dict | None = None,
    ):
        check_trainer_settings(max_epochs, batch_size, eval_batch_size, limit_batches, progress, num_workers)
        self.device = resolve_device(device)
        self.model = model.to(self.device)  # a no-op when train.py built it there (before the optimizer)
        self.optimizer, self.scheduler_factory, self.scheduler = optimizer, scheduler, None
        self.callbacks = dict(sorted((callbacks or {}).items(), key=lambda item: item[1].order))
        self.logger = logger
        self.max_epochs, self.batch_size, self.eval_batch_size = max_epochs, batch_size, eval_batch_size
        self.limit_batches, self.num_workers = limit_batches, num_workers
        self.criterion = loss if isinstance(loss, nn.Module) else build_loss(**(loss or {}))
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ImgrecError(f"trainer.grad_clip_norm={grad_clip_norm} must be null or > 0")
        if not isinstance(accumulate_batches, int) or accumulate_batches < 1:
            raise ImgrecError(f"trainer.accumulate_batches={accumulate_batches!r} must be a whole number >= 1")
        self.grad_clip_norm, self.accumulate_batches = grad_clip_norm, accumulate_batches
        self.amp_dtype = autocast_dtype(precision, self.device)
        self.scaler = make_grad_scaler(self.amp_dtype, self.device)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # in place: the optimizer keeps pointing at the same parameters
            self.model.to(memory_format=torch.channels_last)
        self.mix = None
        if mixup and (mixup.get("mixup_alpha", 0) or mixup.get("cutmix_alpha", 0)):
            if num_classes is None:
                raise ImgrecError("trainer.mixup needs the Trainer's num_classes")
            self.mix = MixUpCutMix(num_classes=num_classes, **mixup)
        self.ema = None
        if ema_decay is not None:
            if not 0.0 < ema_decay < 1.0:
                raise ImgrecError(f"trainer.ema_decay={ema_decay} must be null or between 0 and 1, e.g. 0.999")
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # batch-norm statistics are averaged too, so the EMA model evaluates with its own statistics
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.train_forward = compiled(self.model, compile)
        self.eval_forward = self.train_forward if self.ema is None else compiled(self.ema.module, compile)
        self.show_bar = progress is True or (progress == "auto" and sys.stderr.isatty())
        self.checkpoint_extras = checkpoint_extras or {}
        self.epoch, self.step, self.should_stop = 0, 0, False
        self.resume_path = None  # the checkpoint file fit() resumed from, if any
        self.val_loader = None
        self.last_predictions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # prefix -> (logits, labels)

    @property
    def eval_model(self) -> nn.Module:
        """What is validated, tested and saved as `model`: the EMA of the weights when it is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def metric_names(self) -> list[str]:
        return logged_metric_names()

    def make_loader(self, data, mean: list[float], std: list[float], train: bool, seed: int = 0, augment=None):
        """A loader with this trainer's batch sizes, device, workers and batch limit; shuffled and augmented when `train`."""
        return make_loader(
            data, self.batch_size if train else self.eval_batch_size, mean, std, self.device, shuffle=train,
            seed=seed, limit_batches=self.limit_batches, augment=augment if train else None, num_workers=self.num_workers,
        )

    # ---- the loop -------------------------------------------------------------------------------

    def fit(self, train_loader, val_loader, resume_state: dict | None = None, resume_path=None) -> dict[str, float]:
        """Train until max_epochs or a callback stops it; `resume_state` (read from `resume_path`) continues a run."""
        optimizer_steps_per_epoch = math.ceil(len(train_loader) / self.accumulate_batches)
        self.scheduler = self.scheduler_factory(
            self.optimizer, steps_per_epoch=optimizer_steps_per_epoch, max_epochs=self.max_epochs
        )
        # a schedule that watches a metric moves once per epoch, every other one once per step
        monitor = getattr(self.scheduler, "monitor", None)
        self.schedule_per_step = monitor is None
        if monitor is not None and monitor not in self.metric_names:
            raise ImgrecError(f"scheduler.monitor={monitor!r} is not a logged metric; choose one of: {', '.join(self.metric_names)}")
        if resume_state is not None:
            self.load_state_dict(resume_state)
            self.resume_path = resume_path
            log.info(f"resumed from {resume_path} at epoch {self.epoch} (step {self.step})")
        self.val_loader = val_loader  # for callbacks that draw validation images
        self._emit("on_fit_start")
        metrics: dict[str, float] = {}
        while self.epoch < self.max_epochs and not self.should_stop:
            metrics = {**self.train_epoch(train_loader), **self.evaluate(val_loader, prefix="val")}
            self.epoch += 1
            if not self.schedule_per_step:
                step_scheduler(self.scheduler, metrics)
            self.log(metrics)
            self._emit("on_epoch_end", metrics)  # early stopping, then checkpointing
        self._emit("on_fit_end")
        return metrics

    def train_epoch(self, loader) -> dict[str, float]:
        self.model.train()
        loader.set_epoch(self.epoch)
        # running sums stay on the device: no host sync per step
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        bar = self._progress_bar(loader)
        last_refresh = time.monotonic()
        last_batch = len(loader) - 1
        for batch, (images, labels) in enumerate(loader):
            # with accumulation, the optimizer steps every k batches and after the epoch's last one
            update = (batch + 1) % self.accumulate_batches == 0 or batch == last_batch
            if self.mix is not None:
                images, targets = self.mix(images, labels)
                if targets.ndim == 2:  # a mixed batch: accuracy against each image's larger share
                    labels = targets.argmax(dim=1)
            else:
                targets = labels
            loss, logits = self.train_step(images, targets, update=update)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            if bar is not None:
                bar.update(len(labels))
                if time.monotonic() - last_refresh > 0.5:  # the .item() sync only when the bar redraws
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                    last_refresh = time.monotonic()
        if bar is not None:
            bar.close()
        return {
            "train/loss": loss_sum.item() / seen,
            "train/acc": correct.item() / seen,
            "train/lr": self.optimizer.param_groups[0]["lr"],
        }

    def train_step(self, images: torch.Tensor, targets: torch.Tensor, update: bool = True):
        """Forward and backward one batch; with `update`, also step the optimizer (and a per-step schedule).
        `targets` are class indices, or class probabilities for a mixed batch."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_forward(images)
            loss = self.criterion(logits, targets)
        scaled = loss / self.accumulate_batches if self.accumulate_batches > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if update:
            if self.optimizer_step():
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                if self.schedule_per_step:
                    self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        return loss, logits

    def optimizer_step(self) -> bool:
        """Clip and step; False when a float16 GradScaler skipped the step for inf/NaN gradients, so the
        schedule and the EMA do not move for an update that did not happen."""
        if self.scaler is None:
            if self.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            self.optimizer.step()
            return True
        if self.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale only shrinks after a skipped step

    @torch.inference_mode()
    def predict(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32) and labels of every batch `loader` yields, on the CPU."""
        self.eval_model.eval()
        outputs = []
        for images, labels in loader:
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs.append((self.eval_forward(images).float(), labels))
        logits = torch.cat([o[0] for o in outputs]).cpu()
        labels = torch.cat([o[1] for o in outputs]).cpu()
        return logits, labels

    def evaluate(self, loader, prefix: str) -> dict[str, float]:
        logits, labels = self.predict(loader)
        self.last_predictions[prefix] = (logits, labels)
        loss = F.cross_entropy(logits, labels).item()
        return {f"{prefix}/loss": loss, **epoch_scores(labels.numpy(), logits.argmax(dim=1).numpy(), prefix)}

    # ---- reporting ------------------------------------------------------------------------------

    def log(self, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.epoch)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name != "train/lr")
        self.log_text(f"epoch {self.epoch}/{self.max_epochs}  {shown}  lr {metrics['train/lr']:.2e}")

    def log_text(self, message: str) -> None:
        log.info(message)

    def _progress_bar(self, loader):
        if not self.show_bar:
            return None
        from tqdm import tqdm

        total = min(loader.num_samples, len(loader) * loader.batch_size)
        return tqdm(
            total=total, desc=f"epoch {self.epoch + 1}/{self.max_epochs}", unit="img",
            leave=False, dynamic_ncols=True, file=sys.stderr,
        )

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks.values():
            getattr(callback, event)(self, *args)

    # ---- state ----------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        """Everything an exact resume needs, plus what evaluation needs to rebuild the model."""
        ema = {} if self.ema is None else {"train_model": self.model.state_dict(), "ema_updates": self.ema.n_averaged}
        return {
            "model": self.eval_model.state_dict(),  # the weights to evaluate and ship
            **ema,  # with EMA on, the raw weights that training continues from
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "callbacks": {name: callback.state_dict() for name, callback in self.callbacks.items()},
            "rng": rng_state(),
            **({} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}),
            **self.checkpoint_extras,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            if self.ema is not None:
                self.model.load_state_dict(state["train_model"])
                self.ema.module.load_state_dict(state["model"])
                self.ema.n_averaged.copy_(state["ema_updates"])
            else:
                self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ImgrecError(
                f"the checkpoint's model/optimizer do not fit this configuration: {str(error).splitlines()[0]}. "
                "Resume with the same model and optimizer settings the checkpoint was trained with."
            ) from error
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        for name, callback in self.callbacks.items():
            if name in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][name])
        set_rng_state(state["rng"])
