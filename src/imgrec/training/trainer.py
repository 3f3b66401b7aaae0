"""The training loop: fit -> train_epoch -> train_step. Evaluation and logging: trainer_reporting.py;
checkpoint state: trainer_state.py; settings checks: trainer_settings.py."""

import logging
import math
import sys
import time

import torch
from torch import nn

from imgrec.training import distributed
from imgrec.training.callbacks import Callback
from imgrec.data.loaders import make_loader
from imgrec.errors import ImgrecError
from imgrec.training.guard import NonFiniteGuard
from imgrec.training.losses import build_loss
from imgrec.training.mixing import MixUpCutMix
from imgrec.runtime import autocast_dtype, compiled, make_grad_scaler, resolve_device, set_cpu_threads
from imgrec.training.stopping import TrainingInterrupted, catch_stop_signals, restore_handlers
from imgrec.training.trainer_reporting import TrainerReporting
from imgrec.training.settings import check_trainer_settings, logged_metric_names, step_scheduler
from imgrec.training.trainer_state import TrainerState

log = logging.getLogger("imgrec")


class Trainer(TrainerState, TrainerReporting):
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
        num_threads: int | str = "auto",  # CPU threads for tensor operations (trainer_settings.set_cpu_threads)
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
        log_every_n_steps: int | None = 50,  # train/loss_step to the logger every N optimizer steps (one sync)
    ):
        check_trainer_settings(max_epochs, batch_size, eval_batch_size, limit_batches, progress, num_workers,
                               log_every_n_steps)
        self.device = resolve_device(device)
        set_cpu_threads(num_threads)
        self.model = model.to(self.device)  # a no-op when train.py built it there (before the optimizer)
        self.optimizer, self.scheduler_factory, self.scheduler = optimizer, scheduler, None
        self.callbacks = dict(sorted((callbacks or {}).items(), key=lambda item: item[1].order))
        self.logger = logger
        self.log_every_n_steps = log_every_n_steps
        self.max_epochs, self.batch_size, self.eval_batch_size = max_epochs, batch_size, eval_batch_size
        self.limit_batches, self.num_workers = limit_batches, num_workers
        self.criterion = loss if isinstance(loss, nn.Module) else build_loss(**(loss or {}))
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ImgrecError(f"trainer.grad_clip_norm={grad_clip_norm} must be null or > 0")
        if not isinstance(accumulate_batches, int) or accumulate_batches < 1:
            raise ImgrecError(f"trainer.accumulate_batches={accumulate_batches!r} must be a whole number >= 1")
        self.grad_clip_norm, self.accumulate_batches = grad_clip_norm, accumulate_batches
        self.guard = NonFiniteGuard(max_bad_steps)
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
            self.model, self.ddp = distributed.wrap_model(self.model, self.device, sync_batchnorm)
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
        self.first_batch_loss: float | None = None  # of the first batch this process trained (divergence warning)
        self.epochs_this_run = 0

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
            if self.resume_progress is not None and self.resume_progress["batches"] >= len(train_loader):
                raise ImgrecError(
                    f"ckpt_path {resume_path} stopped after batch {self.resume_progress['batches']} of an epoch, but "
                    f"an epoch here has {len(train_loader)} batches: resume with the batch size and data it was "
                    "trained with"
                )
            log.info(f"resumed from {resume_path} at epoch {self.epoch} (step {self.step})")
        self.val_loader = val_loader  # for callbacks that draw validation images
        self._emit("on_fit_start")
        handlers = catch_stop_signals(self)
        try:
            metrics = self._fit_epochs(train_loader, val_loader)
        except torch.OutOfMemoryError as error:
            raise ImgrecError(
                f"out of GPU memory with trainer.batch_size={self.batch_size}: try trainer.batch_size="
                f"{max(1, self.batch_size // 2)} (and trainer.accumulate_batches={2 * self.accumulate_batches} to keep "
                "the effective batch), trainer.precision=bf16-mixed, or a smaller model"
            ) from error
        finally:
            restore_handlers(handlers)
        self.warn_if_diverged(metrics)
        self._emit("on_fit_end")
        return metrics

    def warn_if_diverged(self, metrics: dict[str, float]) -> None:
        """An epoch loss that ends above the first batch's (the untrained network's) has diverged or learned
        nothing, even when nothing turned NaN: a huge lr can leave finite weights near 1e30 and chance predictions."""
        first, last = self.first_batch_loss, metrics.get("train/loss")
        if first is not None and last is not None and self.epochs_this_run >= 2 and not last < first:
            log.warning(f"train/loss ended at {last:.4g}, not below the first batch's {first:.4g}: training diverged "
                        "or learned nothing. Lower optimizer.lr (e.g. 10x), set trainer.grad_clip_norm, or check the labels")

    def _fit_epochs(self, train_loader, val_loader) -> dict[str, float]:
        metrics: dict[str, float] = {}
        while self.epoch < self.max_epochs and not self.should_stop:
            started = time.perf_counter()
            train_metrics = self.train_epoch(train_loader)
            if train_metrics is None:  # a stop signal mid-epoch: save where we are, then stop
                self._emit("on_interrupt")
                raise TrainingInterrupted(self.stop_signal, self._saved_checkpoint(), self.epoch, self.batch_in_epoch)
            metrics = {**train_metrics, **self.evaluate(val_loader, prefix="val")}
            self.epochs_this_run += 1
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

    def train_epoch(self, loader) -> dict[str, float] | None:
        """One epoch (or its rest, after a mid-epoch resume); None when a stop signal cut it short."""
        self.model.train()
        progress, self.resume_progress = self.resume_progress, None
        first = progress["batches"] if progress else 0
        loader.set_epoch(self.epoch, skip=first)
        # running sums stay on the device: no host sync per step
        if progress:
            sums = progress["sums"]
            loss_sum, correct, seen = sums["loss_sum"].to(self.device), sums["correct"].to(self.device), progress["seen"]
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
            step_before = self.step
            loss, logits = self.train_step(images, targets, update=update)
            if self.first_batch_loss is None:
                self.first_batch_loss = loss.item()
            if (self.logger is not None and self.log_every_n_steps and self.step != step_before
                    and self.step % self.log_every_n_steps == 0):
                self.logger.log_metrics({"train/loss_step": loss.item()}, step=self.step, flush=False)
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
        if self.guard.skipped:
            log.warning(f"{self.guard.skipped} optimizer step(s) skipped so far for a non-finite loss or gradient")
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
        self.guard.begin_window(self.model)
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
            self.guard.end_window()
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
        elif self.guard.enabled:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if not self._step_is_finite(loss, norm):
            return False
        self.optimizer.step()
        return True

    def _step_is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        # under DDP the averaged gradients, and so their norm, agree on every process; the losses do not
        judged_loss = None if (self.dist.enabled and grad_norm is not None) else loss
        return self.guard.check(self.model, judged_loss, grad_norm, f"epoch {self.epoch + 1}, step {self.step + 1}",
                                saved=self._saved_checkpoint())

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks.values():
            getattr(callback, event)(self, *args)
