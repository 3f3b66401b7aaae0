"""The training loop: fit -> train_epoch -> train_step, evaluate, and the state a resume needs."""

import logging
import signal
import threading
from collections.abc import Mapping
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from imgrec import distributed
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
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl-C, kill / preemption, SLURM's warning


class TrainingInterrupted(Exception):
    """A stop signal arrived; `checkpoint` (None without a ModelCheckpoint) holds the state to resume from."""

    def __init__(self, signum: int, checkpoint, epoch: int, batch: int):
        self.signum, self.checkpoint, self.epoch, self.batch = signum, checkpoint, epoch, batch
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
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
        max_bad_steps: int | None = 3,  # non-finite steps in a row before stopping; None: no check (no per-step sync)
        num_classes: int | None = None,
        dist_env=None,  # distributed.DistEnv under torchrun
        sync_batchnorm: bool = False,
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
        if max_bad_steps is not None and (not isinstance(max_bad_steps, int) or max_bad_steps < 1):
            raise ImgrecError(f"trainer.max_bad_steps={max_bad_steps!r} must be null (no check) or a whole number >= 1")
        self.max_bad_steps, self.bad_steps_in_a_row, self.skipped_steps = max_bad_steps, 0, 0
        self._buffer_snapshot = None  # batch-norm statistics before the current step, restored if it goes bad
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
        self.dist = dist_env or distributed.DistEnv()
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if sync_batchnorm and self.device.type != "cuda":
                raise ImgrecError("trainer.sync_batchnorm=true needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                                  "kernel); use it with GPUs, or leave it false on CPU processes")
            if sync_batchnorm:  # the same Parameter objects: the optimizer still holds them
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        # training runs through DDP (gradients averaged over processes); evaluation uses the plain module,
        # each process predicting its own share, then gathered
        self.train_forward = compiled(self.ddp or self.model, compile)
        self.eval_forward = self.train_forward if self.ema is None else compiled(self.ema.module, compile)
        self.show_bar = progress is True or (progress == "auto" and sys.stderr.isatty())
        self.checkpoint_extras = checkpoint_extras or {}
        self.epoch, self.step, self.should_stop = 0, 0, False
        self.resume_path = None  # the checkpoint file fit() resumed from, if any
        self.val_loader = None
        self.stop_signal: int | None = None
        self.epoch_seconds: float | None = None
        self.batch_in_epoch, self.resume_progress, self._epoch_sums = 0, None, None
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
        loader = make_loader(
            data, self.batch_size if train else self.eval_batch_size, mean, std, self.device, shuffle=train,
            seed=seed, limit_batches=self.limit_batches, augment=augment if train else None, num_workers=self.num_workers,
        )
        if self.dist.enabled:
            loader.shard(self.dist.rank, self.dist.world_size)
        return loader

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
        handlers = self._catch_stop_signals()
        try:
            metrics = self._fit_epochs(train_loader, val_loader)
        except torch.OutOfMemoryError as error:
            raise ImgrecError(
                f"out of GPU memory with trainer.batch_size={self.batch_size}: try trainer.batch_size="
                f"{max(1, self.batch_size // 2)} (and trainer.accumulate_batches={2 * self.accumulate_batches} to keep "
                "the effective batch), trainer.precision=bf16-mixed, or a smaller model"
            ) from error
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        self._emit("on_fit_end")
        return metrics

    def _fit_epochs(self, train_loader, val_loader) -> dict[str, float]:
        metrics: dict[str, float] = {}
        while self.epoch < self.max_epochs and not self.should_stop:
            started = time.perf_counter()
            train_metrics = self.train_epoch(train_loader)
            if train_metrics is None:  # a stop signal mid-epoch: save where we are, then stop
                self._emit("on_interrupt")
                raise TrainingInterrupted(self.stop_signal, self._saved_checkpoint(), self.epoch, self.batch_in_epoch)
            metrics = {**train_metrics, **self.evaluate(val_loader, prefix="val")}
            self.epoch_seconds = time.perf_counter() - started  # training + validation, shown in the log line
            self.epoch += 1
            if not self.schedule_per_step:
                step_scheduler(self.scheduler, metrics)
            self.log(metrics)
            self._emit("on_epoch_end", metrics)  # early stopping, then checkpointing
            if self.dist.enabled:  # rank 0 decides; every process stops together
                self.should_stop = distributed.from_main(self.should_stop)
                self.stop_signal = distributed.agreed_signal(self.stop_signal, self.device)
            if self.stop_signal is not None:  # arrived during validation or saving: last.pt is this epoch's end
                raise TrainingInterrupted(self.stop_signal, self._saved_checkpoint(), self.epoch, 0)
        return metrics

    def _saved_checkpoint(self):
        checkpoint = self.callbacks.get("model_checkpoint")
        return None if checkpoint is None else checkpoint.last_path

    def _catch_stop_signals(self) -> dict:
        """Stop signals set a flag the loop reads at the next step boundary; returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only

        def on_signal(signum, frame):
            name = signal.Signals(signum).name
            if self.stop_signal is None:
                sys.stderr.write(f"\n{name} received: saving last.pt at the next step boundary, then stopping\n")
            else:
                sys.stderr.write(f"\n{name} received again: already stopping, wait for the checkpoint to be written\n")
            self.stop_signal = signum

        return {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    def train_epoch(self, loader) -> dict[str, float] | None:
        """One epoch (or its rest, after a mid-epoch resume); None when a stop signal cut it short."""
        self.model.train()
        progress, self.resume_progress = self.resume_progress, None
        first = progress["batches"] if progress else 0
        loader.set_epoch(self.epoch, skip=first)
        # running sums stay on the device: no host sync per step
        if progress:
            loss_sum, correct, seen = progress["loss_sum"].to(self.device), progress["correct"].to(self.device), progress["seen"]
        else:
            loss_sum = torch.zeros((), device=self.device)
            correct, seen = torch.zeros((), dtype=torch.int64, device=self.device), 0
        bar = self._progress_bar(loader, done=seen)
        last_refresh = time.monotonic()
        last_batch = len(loader) - 1
        for batch, (images, labels) in enumerate(loader, start=first):
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
            if self.dist.enabled and update:  # every process stops at the same step, whichever got the signal
                self.stop_signal = distributed.agreed_signal(self.stop_signal, self.device)
            # stop only where no gradients are half-accumulated, so the saved state is complete
            if self.stop_signal is not None and update and batch != last_batch:
                self.batch_in_epoch, self._epoch_sums = batch + 1, (loss_sum, correct, seen)
                if bar is not None:
                    bar.close()
                return None
        if bar is not None:
            bar.close()
        self.batch_in_epoch, self._epoch_sums = 0, None
        if self.dist.enabled:  # the epoch's loss and accuracy over every process's samples
            loss_sum, correct, seen_total = distributed.all_sum(
                loss_sum, correct, torch.tensor(seen, device=self.device))
            seen = int(seen_total.item())
        if self.skipped_steps:
            log.warning(f"{self.skipped_steps} optimizer step(s) skipped so far for a non-finite loss or gradient")
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
        if self.max_bad_steps is not None and self._buffer_snapshot is None:
            self._buffer_snapshot = self._snapshot_buffers()  # at the start of each accumulation window
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_forward(images)
            loss = self.criterion(logits, targets)
        scaled = loss / self.accumulate_batches if self.accumulate_batches > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if update:
            if self.optimizer_step(loss):
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                if self.schedule_per_step:
                    self.scheduler.step()
                self.step += 1
            self.optimizer.zero_grad(set_to_none=True)
            self._buffer_snapshot = None
        return loss, logits

    def optimizer_step(self, loss: torch.Tensor) -> bool:
        """Clip and step. False for a step not taken: a non-finite loss or gradient (the guard), or inf/NaN
        gradients a float16 GradScaler skipped; then the schedule and the EMA do not move either."""
        if self.scaler is not None:
            if not self._step_is_finite(loss, None):
                return False
            if self.grad_clip_norm is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale  # the scale only shrinks after a skipped step
        norm = None
        if self.grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        elif self.max_bad_steps is not None:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if not self._step_is_finite(loss, norm):
            return False
        self.optimizer.step()
        return True

    def _step_is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """The non-finite guard: one host sync per optimizer step (none when max_bad_steps is null)."""
        if self.max_bad_steps is None:
            return True
        # under DDP the gradients are already averaged, so their norm is the same on every process and all
        # skip together; a process's own loss is not, so it is not consulted there
        finite = torch.isfinite(loss.detach()) if not (self.dist.enabled and grad_norm is not None) else torch.tensor(True)
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm)
        if bool(finite):
            self.bad_steps_in_a_row = 0
            return True
        self.bad_steps_in_a_row += 1
        self.skipped_steps += 1
        self._restore_buffers()  # the bad forward pass also fed NaN into the batch-norm statistics
        loss_value = float(loss.detach())
        norm_text = "" if grad_norm is None else f", gradient norm {float(grad_norm)}"
        log.warning(f"epoch {self.epoch + 1}, step {self.step + 1}: loss {loss_value}{norm_text}; step skipped")
        if self.bad_steps_in_a_row >= self.max_bad_steps:
            raise ImgrecError(
                f"{self.bad_steps_in_a_row} optimizer steps in a row had a non-finite loss or gradient (last: loss "
                f"{loss_value}{norm_text}); none of them changed the weights, and last.pt holds the last good epoch. "
                "Lower optimizer.lr, set trainer.grad_clip_norm, use trainer.precision=32, or check the data "
                "(trainer.max_bad_steps sets how many are tolerated)"
            )
        return False

    def _snapshot_buffers(self) -> list[torch.Tensor]:
        return [buffer.detach().clone() for buffer in self.model.buffers() if buffer.is_floating_point()]

    def _restore_buffers(self) -> None:
        if self._buffer_snapshot is not None:
            floating = [buffer for buffer in self.model.buffers() if buffer.is_floating_point()]
            with torch.no_grad():
                for buffer, saved in zip(floating, self._buffer_snapshot):
                    buffer.copy_(saved)

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
        if self.dist.enabled:  # every process gets the whole split's predictions, in the split's order
            logits, labels = distributed.gather_in_order(logits, labels, loader.order()[: len(labels)])
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
        seconds = f"  {self.epoch_seconds:.2f}s" if self.epoch_seconds is not None else ""
        self.log_text(f"epoch {self.epoch}/{self.max_epochs}  {shown}  lr {metrics['train/lr']:.2e}{seconds}")

    def log_text(self, message: str) -> None:
        log.info(message)

    def _progress_bar(self, loader, done: int = 0):
        if not self.show_bar:
            return None
        from tqdm import tqdm

        total = min(loader.num_samples, len(loader) * loader.batch_size)
        return tqdm(
            total=total, initial=done, desc=f"epoch {self.epoch + 1}/{self.max_epochs}", unit="img",
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
            **self._progress_state(),
            "world_size": self.dist.world_size,
            **self.checkpoint_extras,
        }

    def _progress_state(self) -> dict:
        """Where in the epoch an interrupted run stopped: batches done and the running training sums."""
        if not self.batch_in_epoch:
            return {}
        loss_sum, correct, seen = self._epoch_sums
        return {"epoch_progress": {"batches": self.batch_in_epoch, "loss_sum": loss_sum.detach().cpu(),
                                   "correct": correct.detach().cpu(), "seen": seen}}

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
        self.resume_progress = state.get("epoch_progress")  # train_epoch continues from that batch
        if self.resume_progress is not None and state.get("world_size", 1) != self.dist.world_size:
            log.warning(f"the checkpoint stopped mid-epoch with {state.get('world_size', 1)} process(es) and this run "
                        f"has {self.dist.world_size}: epoch {self.epoch + 1} restarts from its first batch")
            self.resume_progress = None
        for name, callback in self.callbacks.items():
            if name in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][name])
        set_rng_state(state["rng"])
