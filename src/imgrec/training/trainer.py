"""The training loop, one class read top to bottom: fit -> train_epoch -> train_step, then evaluate,
logging, and the state a checkpoint holds. What differs between tasks (loss, metrics, reports) is asked
of `task` (imgrec.tasks); the settings come checked in a TrainerSettings."""

import logging
import math
import sys
import time

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.evaluation.inference import predict_batches
from imgrec.runtime import compiled, make_grad_scaler, resolve_device, set_cpu_threads
from imgrec.tasks.base import Evaluation, Gather, Task
from imgrec.training import distributed
from imgrec.training.callbacks import Callback
from imgrec.training.guard import make_guard
from imgrec.training.seeding import rng_state, set_rng_state
from imgrec.training.schedulers import step_scheduler
from imgrec.training.settings import TrainerSettings
from imgrec.training.signals import TrainingInterrupted, catch_stop_signals, restore_handlers

log = logging.getLogger("imgrec")


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,  # a factory: (optimizer, steps_per_epoch=, max_epochs=) -> LRScheduler
        task: Task,
        settings: TrainerSettings | None = None,
        callbacks: dict[str, Callback] | None = None,
        logger=None,
        device: torch.device | str | None = None,  # overrides settings.device (torchrun gives each process its GPU)
        dist_env=None,  # distributed.DistEnv under torchrun
        checkpoint_extras: dict | None = None,  # saved in every checkpoint: config, class names, normalisation
    ):
        self.settings = settings = settings or TrainerSettings()
        self.device = device if isinstance(device, torch.device) else resolve_device(device or settings.device)
        set_cpu_threads(settings.num_threads)
        self.model = model.to(self.device)  # a no-op when train.py built it there (before the optimizer)
        self.task = task
        task.loop_metrics = tuple(settings.loop_metrics)
        self.optimizer, self.scheduler_factory, self.scheduler = optimizer, scheduler, None
        self.schedule_per_step = True
        self.callbacks = dict(sorted((callbacks or {}).items(), key=lambda item: item[1].order))
        self.logger = logger
        self.max_epochs = settings.max_epochs
        self.amp_dtype = settings.autocast_dtype(self.device)
        self.scaler = make_grad_scaler(self.amp_dtype, self.device)
        self.guard = make_guard(settings.max_bad_steps, settings.bad_step_check, self.device, optimizer, self.scaler)
        self.channels_last = settings.channels_last
        if self.channels_last:
            # in place: the optimizer keeps pointing at the same parameters
            self.model.to(memory_format=torch.channels_last)
        self.ema = None
        if settings.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # batch-norm statistics are averaged too, so the EMA model evaluates with its own statistics
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True)
        self.dist = dist_env or distributed.DistEnv()
        self.ddp = None
        if self.dist.enabled:
            self.model, self.ddp = distributed.wrap_model(self.model, self.device, settings.sync_batchnorm)
        # training runs through DDP (gradients averaged over processes); evaluation uses the plain module,
        # each process predicting its own share, then gathered
        self.train_forward = compiled(self.ddp or self.model, settings.compile)
        evaluated = self.model if self.ema is None else self.ema.module
        # one compilation serves both when training and evaluation run the same module (no DDP, no EMA)
        self.eval_forward = self.train_forward if self.ddp is None and self.ema is None else compiled(evaluated, settings.compile)
        self.show_bar = settings.progress is True or (settings.progress == "auto" and sys.stderr.isatty())
        self.checkpoint_extras = checkpoint_extras or {}
        self.adversarial = self._adversarial_batches(settings.adversarial)
        self.epoch, self.step, self.should_stop = 0, 0, False
        self.resume_path = None  # the checkpoint file fit() resumed from, if any
        self.val_loader = None
        self.stop_signal: int | None = None
        self.epoch_seconds: float | None = None
        self.batch_in_epoch, self.resume_progress, self.epoch_sums = 0, None, None
        self.last_evaluations: dict[str, Evaluation] = {}  # prefix (val) -> the split's last evaluation
        self.first_batch_loss: float | None = None  # of the first batch this process trained (divergence warning)
        self.epochs_this_run = 0

    def _adversarial_batches(self, adversarial):
        if adversarial is None:
            return None
        from imgrec.training.adversarial import AdversarialBatches, check_adversarial

        check_adversarial(adversarial, self.task.name)
        normalization = self.checkpoint_extras.get("normalization")
        if normalization is None:
            raise ImgrecError("trainer.adversarial needs the loader's normalisation to attack [0, 1] pixels: pass "
                              "checkpoint_extras={'normalization': {'mean': [...], 'std': [...]}} to the Trainer")
        return AdversarialBatches(adversarial, normalization["mean"], normalization["std"], self.task.loss,
                                  self.amp_dtype)

    @property
    def eval_model(self) -> nn.Module:
        """What is validated, tested and saved as `model`: the EMA of the weights when it is on."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def metric_names(self) -> list[str]:
        return self.task.metric_names()

    def make_loader(self, data, mean: list[float], std: list[float], train: bool, seed: int = 0, augment=None,
                    repeats: int = 1):
        """A loader with this trainer's batch sizes, device, workers and batch limit; shuffled and augmented
        (and each sample served `repeats` times per epoch) when `train`."""
        from imgrec.data.loaders import make_loader

        settings = self.settings
        loader = make_loader(
            data, settings.batch_size if train else settings.eval_batch_size, mean, std, self.device, shuffle=train,
            seed=seed, limit_batches=settings.limit_batches, augment=augment if train else None,
            num_workers=settings.num_workers, repeats=repeats if train else 1,
        )
        if self.dist.enabled:
            loader.shard(self.dist.rank, self.dist.world_size)
        return loader

    # ---- the loop -------------------------------------------------------------------------------

    def fit(self, train_loader, val_loader, resume_state: dict | None = None, resume_path=None) -> dict[str, float]:
        """Train until max_epochs or a callback stops it; `resume_state` (read from `resume_path`) continues a run."""
        optimizer_steps_per_epoch = math.ceil(len(train_loader) / self.settings.accumulate_batches)
        self.scheduler = self.scheduler_factory(
            self.optimizer, steps_per_epoch=optimizer_steps_per_epoch, max_epochs=self.max_epochs
        )
        # a schedule that watches a metric moves once per epoch, every other one once per step
        monitor = getattr(self.scheduler, "monitor", None)
        self.schedule_per_step = monitor is None
        if monitor is not None:
            self.task.check_metric("scheduler.monitor", monitor)
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
            batch, accumulate = self.settings.batch_size, self.settings.accumulate_batches
            raise ImgrecError(
                f"out of GPU memory with trainer.batch_size={batch}: try trainer.batch_size={max(1, batch // 2)} (and "
                f"trainer.accumulate_batches={2 * accumulate} to keep the effective batch), "
                "trainer.precision=bf16-mixed, or a smaller model"
            ) from error
        finally:
            restore_handlers(handlers)
        self.warn_if_diverged(metrics)
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
            self.epochs_this_run += 1
            self.epoch_seconds = time.perf_counter() - started  # training + validation, shown in the log line
            self.epoch += 1
            if not self.schedule_per_step:
                step_scheduler(self.scheduler, metrics)
            self.log(metrics)
            if self.epochs_this_run == 1 and self.epoch < self.max_epochs:
                self.log_text(self.eta_text())
            self._emit("on_epoch_end", metrics)  # early stopping, then checkpointing
            if self.dist.enabled:  # rank 0 decides; every process stops together
                self.should_stop = distributed.from_main(self.should_stop)
                self.stop_signal = distributed.agreed_signal(self.stop_signal, self.device)
            if self.stop_signal is not None:  # arrived during validation or saving: last.pt is this epoch's end
                raise TrainingInterrupted(self.stop_signal, self._saved_checkpoint(), self.epoch, 0)
        return metrics

    def train_epoch(self, loader) -> dict[str, float] | None:
        """One epoch (or its rest, after a mid-epoch resume); None when a stop signal cut it short."""
        self.model.train()
        progress, self.resume_progress = self.resume_progress, None
        first = progress["batches"] if progress else 0
        loader.set_epoch(self.epoch, skip=first)
        # running sums stay on the device: no host sync per step
        sums, seen = self.task.new_sums(self.device), 0
        if self.adversarial is not None:  # train/adv_loss: the loss on the adversarial share of each batch
            sums.update(adv_loss_sum=torch.zeros((), device=self.device), adv_seen=torch.zeros((), device=self.device))
        if progress:
            sums.update({name: value.to(self.device) for name, value in progress["sums"].items()})
            seen = progress["seen"]
        bar = self._progress_bar(loader, done=seen)
        last_refresh = time.monotonic()
        last_batch = len(loader) - 1
        for batch, (images, targets) in enumerate(loader, start=first):
            # with accumulation, the optimizer steps every k batches and after the epoch's last one
            update = (batch + 1) % self.settings.accumulate_batches == 0 or batch == last_batch
            images, targets = self.task.train_batch(images, targets)
            attacked = 0
            if self.adversarial is not None:  # against the weights as they are now, before this step moves them
                images, attacked = self.adversarial.perturb(self.model, images, targets)
            step_before = self.step
            loss, outputs = self.train_step(images, targets, update=update)
            if self.first_batch_loss is None:
                self.first_batch_loss = loss.item()
            every = self.settings.log_every_n_steps
            if self.logger is not None and every and self.step != step_before and self.step % every == 0:
                self.logger.log_metrics({"train/loss_step": loss.item()}, step=self.step, flush=False)
            if attacked:
                adversarial_loss = loss if attacked == len(images) else \
                    self.task.loss(outputs[:attacked].detach(), targets[:attacked])
                sums["adv_loss_sum"] += adversarial_loss.detach() * attacked
                sums["adv_seen"] += attacked
            count = self.task.add_to_sums(sums, loss, outputs, targets)
            seen += count
            if bar is not None:
                bar.update(count)
                if time.monotonic() - last_refresh > 0.5:  # the .item() sync only when the bar redraws
                    bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                    last_refresh = time.monotonic()
            if self.dist.enabled and update:  # every process stops at the same step, whichever got the signal
                self.stop_signal = distributed.agreed_signal(self.stop_signal, self.device)
            # stop only where no gradients are half-accumulated, so the saved state is complete
            if self.stop_signal is not None and update and batch != last_batch:
                self.batch_in_epoch, self.epoch_sums = batch + 1, (sums, seen)
                if bar is not None:
                    bar.close()
                return None
        if bar is not None:
            bar.close()
        self.batch_in_epoch, self.epoch_sums = 0, None
        if self.dist.enabled:  # the epoch's sums over every process's samples
            *totals, seen_total = distributed.all_sum(*sums.values(), torch.tensor(seen, device=self.device))
            sums, seen = dict(zip(sums, totals)), int(seen_total.item())
        self.guard.poll(self._where(), saved=self._saved_checkpoint())  # a deferred guard's counts, once an epoch
        if self.guard.skipped:
            log.warning(f"{self.guard.skipped} optimizer step(s) skipped so far for a non-finite loss or gradient")
        totals = {name: value.item() for name, value in sums.items()}
        adversarial = {}
        if self.adversarial is not None:
            adversarial_seen = totals.pop("adv_seen")
            adversarial = {"train/adv_loss": totals.pop("adv_loss_sum") / max(adversarial_seen, 1)}
        return {**self.task.train_scores(totals, seen), **adversarial, "train/lr": self.scheduled_lr()}

    def scheduled_lr(self) -> float:
        """optimizer.lr as the schedule has moved it (a backbone group's scaled rate divided back)."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)

    def train_step(self, images: torch.Tensor, targets, update: bool = True):
        """Forward and backward one batch; with `update`, also step the optimizer (and a per-step schedule).
        Returns the loss and the model's outputs."""
        if self.channels_last and isinstance(images, torch.Tensor):  # detection's batches are lists
            images = images.contiguous(memory_format=torch.channels_last)
        self.guard.begin_window(self.model)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.train_forward(images)
            loss = self.task.loss(outputs, targets)
        accumulate = self.settings.accumulate_batches
        scaled = loss / accumulate if accumulate > 1 else loss
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
        return loss, outputs

    def optimizer_step(self, loss: torch.Tensor) -> bool:
        """Clip and step. False for a step not taken: a non-finite loss or gradient (the guard), or inf/NaN
        gradients a float16 GradScaler skipped; then the schedule and the EMA do not move either."""
        clip = self.settings.grad_clip_norm
        if self.scaler is not None:
            if not self._step_is_finite(loss, None):
                return False
            if clip is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale  # the scale only shrinks after a skipped step
        norm = None
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        elif self.guard.enabled:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
        if self.guard.deferred:  # decided on the device; the host learns of skipped steps at the next poll
            self.guard.step(self.optimizer, self._judged_loss(loss, norm), norm, self._where(),
                            saved=self._saved_checkpoint())
            return True
        if not self._step_is_finite(loss, norm):
            return False
        self.optimizer.step()
        return True

    def _judged_loss(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor | None:
        # under DDP the averaged gradients, and so their norm, agree on every process; the losses do not
        return None if (self.dist.enabled and grad_norm is not None) else loss

    def _where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step + 1}"

    def _step_is_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        return self.guard.check(self.model, self._judged_loss(loss, grad_norm), grad_norm, self._where(),
                                saved=self._saved_checkpoint())

    def warn_if_diverged(self, metrics: dict[str, float]) -> None:
        """An epoch loss that ends above the first batch's (the untrained network's) has diverged or learned
        nothing, even when nothing turned NaN: a huge lr can leave finite weights near 1e30 and chance predictions."""
        first, last = self.first_batch_loss, metrics.get("train/loss")
        if first is not None and last is not None and self.epochs_this_run >= 2 and not last < first:
            log.warning(f"train/loss ended at {last:.4g}, not below the first batch's {first:.4g}: training diverged "
                        "or learned nothing. Lower optimizer.lr (e.g. 10x), set trainer.grad_clip_norm, or check the labels")

    # ---- evaluation and logging -------------------------------------------------------------------

    def predict(self, loader) -> Evaluation:
        """The task's evaluation of every batch `loader` yields; under DDP every process gets the whole split's,
        in the split's order."""
        self.eval_model.eval()
        evaluator = self.task.evaluator()
        predict_batches(self.eval_forward, loader, evaluator.update, self.channels_last, self.amp_dtype)
        gather = distributed.SplitGather(loader.order()) if self.dist.enabled else Gather()
        return evaluator.finish(gather)

    def evaluate(self, loader, prefix: str) -> dict[str, float]:
        evaluation = self.predict(loader)
        self.last_evaluations[prefix] = evaluation
        scores = evaluation.scores(prefix)
        if prefix == "val" and self.adversarial is not None and self.settings.adversarial.val_steps is not None:
            scores[f"{prefix}/robust_acc"] = self.robust_accuracy(loader)
        return scores

    def robust_accuracy(self, loader) -> float:
        """Accuracy of the validated weights under PGD at the training eps, over every process's share."""
        correct, seen = self.adversarial.robust_accuracy(self.eval_model, loader)
        if self.dist.enabled:
            correct, seen = (int(total.item()) for total in distributed.all_sum(
                torch.tensor(correct, device=self.device), torch.tensor(seen, device=self.device)))
        return correct / max(seen, 1)

    def log(self, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.epoch)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name != "train/lr")
        seconds = f"  {self.epoch_seconds:.2f}s" if self.epoch_seconds is not None else ""
        self.log_text(f"epoch {self.epoch}/{self.max_epochs}  {shown}  lr {metrics['train/lr']:.2e}{seconds}")

    def eta_text(self) -> str:
        """After the first epoch: how long the rest takes at its pace (a compiled or warming-up first epoch
        overestimates it), and when that is on the clock."""
        remaining = self.max_epochs - self.epoch
        seconds = remaining * self.epoch_seconds
        finish = time.strftime("%H:%M", time.localtime(time.time() + seconds))
        spelled = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
            else f"{seconds:.0f} s"
        return (f"about {spelled} left for the other {remaining} epoch{'s' if remaining != 1 else ''} at this pace "
                f"(done around {finish}; early stopping may end it sooner)")

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

    def _saved_checkpoint(self):
        checkpoint = self.callbacks.get("model_checkpoint")
        return None if checkpoint is None else checkpoint.last_path

    # ---- what a checkpoint holds ------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        """Everything an exact resume needs, plus what evaluation needs to rebuild the model."""
        ema = {} if self.ema is None else {"train_model": self.model.state_dict(), "ema_updates": self.ema.n_averaged}
        progress = {}
        if self.batch_in_epoch:  # stopped mid-epoch: the batches done and the epoch's running sums so far
            sums, seen = self.epoch_sums
            progress = {"epoch_progress": {"batches": self.batch_in_epoch, "seen": seen,
                                           "sums": {name: value.detach().cpu() for name, value in sums.items()}}}
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
            **progress,
            "world_size": self.dist.world_size,
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
        part = "scheduler"
        try:  # each part as saved; a damaged one is named instead of surfacing as a KeyError deep inside torch
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and "grad_scaler" in state:
                part = "grad_scaler"
                self.scaler.load_state_dict(state["grad_scaler"])
            for name, callback in self.callbacks.items():
                if name in state["callbacks"]:
                    part = f"callbacks.{name}"
                    callback.load_state_dict(state["callbacks"][name])
            part = "rng"
            set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
            raise ImgrecError(f"the checkpoint's {part} state cannot be restored ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'damaged'}); it is damaged or was "
                              "written by another configuration") from error
        self.epoch, self.step = state["epoch"], state["step"]
        self.resume_progress = state.get("epoch_progress")  # train_epoch continues from that batch
        if self.resume_progress is not None:
            expected = set(self.task.new_sums(torch.device("cpu")))
            if self.adversarial is not None:
                expected |= {"adv_loss_sum", "adv_seen"}
            if set(self.resume_progress["sums"]) != expected:
                raise ImgrecError(f"the checkpoint's epoch_progress holds the sums {sorted(self.resume_progress['sums'])}, "
                                  f"but the {self.task.name} task keeps {sorted(expected)}; it is damaged or from "
                                  "another task")
        if self.resume_progress is not None and state.get("world_size", 1) != self.dist.world_size:
            log.warning(f"the checkpoint stopped mid-epoch with {state.get('world_size', 1)} process(es) and this run "
                        f"has {self.dist.world_size}: epoch {self.epoch + 1} restarts from its first batch")
            self.resume_progress = None
