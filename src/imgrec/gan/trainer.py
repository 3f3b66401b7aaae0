"""The GAN loop: per batch one discriminator step then one generator step, an exponential moving average
of the generator (what is sampled), and the state an exact resume needs.

Its own small loop rather than imgrec's Trainer: two networks whose optimizers take turns on one batch do
not fit the Trainer's one-model task seam (a task supplies a loss for one model's outputs). Everything
else a run needs is the Trainer's own machinery: atomic checkpoints, stop signals, the epoch order of the
loaders (so a resume sees the same batches), the RNG capture, the non-finite guard, loggers and the bar."""

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imgrec.checkpoint import save_checkpoint
from imgrec.errors import ImgrecError
from imgrec.gan.diffaugment import diff_augment
from imgrec.gan.losses import discriminator_loss, generator_loss
from imgrec.training.guard import NonFiniteGuard
from imgrec.training.seeding import rng_state, set_rng_state
from imgrec.training.signals import TrainingInterrupted, catch_stop_signals, restore_handlers

log = logging.getLogger("imgrec")
CHECKPOINT_KIND = "imgrec-gan"


def warmed_up_ema(decay: float):
    """An exponential moving average whose decay grows as min(decay, (1 + n) / (10 + n)) over the n updates so
    far: with a fixed 0.999, the average of a few hundred steps is still mostly the random initial weights
    (measured: pure noise after 300 steps while the trained generator already drew clothes)."""

    def update(averaged: list, current: list, updates) -> None:
        n = float(updates)
        weight = 1 - min(decay, (1 + n) / (10 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():  # batch norm's num_batches_tracked: a count, not averaged
                a.copy_(c)

    return update


class GanGuard(NonFiniteGuard):
    """The Trainer's non-finite guard, with the GAN's settings named in its stop message."""

    def stop(self, in_a_row: int, last: str, saved) -> None:
        kept = (f"{saved} holds the last good epoch" if saved is not None and saved.exists()
                else "no checkpoint had been written yet")
        raise ImgrecError(f"{in_a_row} steps in a row had a non-finite loss ({last}); none of them changed the weights, "
                          f"and {kept}. Lower gan.lr_generator and gan.lr_discriminator (e.g. 10x), keep "
                          "gan.spectral_norm=true, or check the data (trainer.max_bad_steps sets how many are tolerated)")


@dataclass
class GanSettings:
    """What the loop is told: `gan.*` settings (the networks' and losses') and the run's length."""

    loss: str = "hinge"
    diff_augment: tuple[str, ...] = ()
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = 0.999
    epochs: int = 20
    max_bad_steps: int = 3
    log_every_n_steps: int = 50
    grid_per_class: int = 8  # the fixed-noise grid: this many samples of each class, one row per class
    show_bar: bool = False


class GanTrainer:
    def __init__(self, generator: nn.Module, discriminator: nn.Module, settings: GanSettings, device: torch.device,
                 checkpoint_dir: Path, checkpoint_extras: dict, logger=None, judge=None, grid_seed: int = 0):
        from torch.optim.swa_utils import AveragedModel

        self.generator, self.discriminator = generator.to(device), discriminator.to(device)
        self.settings, self.device, self.logger, self.judge = settings, device, logger, judge
        self.g_optimizer = torch.optim.Adam(generator.parameters(), lr=settings.lr_generator, betas=settings.betas)
        self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=settings.lr_discriminator,
                                            betas=settings.betas)
        # the average's batch-norm statistics are averaged too, so the sampled generator uses its own
        self.ema = AveragedModel(generator, multi_avg_fn=warmed_up_ema(settings.ema_decay), use_buffers=True)
        self.g_guard, self.d_guard = GanGuard(settings.max_bad_steps), GanGuard(settings.max_bad_steps)
        self.checkpoint_dir, self.checkpoint_extras = Path(checkpoint_dir), checkpoint_extras
        num_classes, latent_dim = generator.num_classes, generator.latent_dim
        # the grid's noise comes from its own generator: the same images-to-be every epoch and in a resumed run
        noise = torch.Generator().manual_seed(grid_seed)
        self.grid_labels = torch.arange(num_classes).repeat_interleave(settings.grid_per_class)
        self.grid_noise = torch.randn(len(self.grid_labels), latent_dim, generator=noise)
        self.epoch, self.step, self.stop_signal = 0, 0, None
        self.resume_progress, self.history = None, []  # history: one row of metrics per finished epoch
        self.batch_in_epoch, self.epoch_sums = 0, None

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    # ---- the loop -------------------------------------------------------------------------------

    def fit(self, loader, resume_state: dict | None = None) -> dict[str, float]:
        if resume_state is not None:
            self.load_state_dict(resume_state)
            if self.resume_progress is not None and self.resume_progress["batches"] >= len(loader):
                raise ImgrecError(f"the checkpoint stopped after batch {self.resume_progress['batches']} of an epoch, "
                                  f"but an epoch here has {len(loader)} batches: resume with the batch size and data "
                                  "it was trained with")
            log.info(f"resumed at epoch {self.epoch} (step {self.step})")
        handlers = catch_stop_signals(self)
        metrics: dict[str, float] = {}
        try:
            while self.epoch < self.settings.epochs:
                started = time.perf_counter()
                sums = self.train_epoch(loader)
                if sums is None:  # a stop signal mid-epoch: save where we are, then stop
                    raise TrainingInterrupted(self.stop_signal, self.save(), self.epoch, self.batch_in_epoch)
                self.epoch += 1
                metrics = {**sums, **self.measure(), "time/epoch_seconds": time.perf_counter() - started}
                self.history.append({"epoch": self.epoch, **metrics})
                self.report(metrics)
                self.save()
                if self.stop_signal is not None and self.epoch < self.settings.epochs:  # after the last: just done
                    raise TrainingInterrupted(self.stop_signal, self.last_path, self.epoch, 0)
        finally:
            restore_handlers(handlers)
        return metrics

    def train_epoch(self, loader) -> dict[str, float] | None:
        """One epoch (or its rest after a mid-epoch resume): mean losses and logits, or None when stopped."""
        self.generator.train()
        self.discriminator.train()
        progress, self.resume_progress = self.resume_progress, None
        first = progress["batches"] if progress else 0
        loader.set_epoch(self.epoch, skip=first)
        sums = torch.zeros(4, dtype=torch.float64)  # d_loss, g_loss, d_real, d_fake summed over batches
        done = first
        if progress:
            sums += progress["sums"]
        bar = self._progress_bar(len(loader), first)
        last_batch = len(loader) - 1
        for batch, (images, labels) in enumerate(loader, start=first):
            step_values = self.train_step(images, labels)
            sums += step_values
            done += 1
            if bar is not None:
                bar.update(1)
            every = self.settings.log_every_n_steps
            if self.logger is not None and every and self.step % every == 0:
                self.logger.log_metrics({"train/d_loss_step": float(step_values[0]),
                                         "train/g_loss_step": float(step_values[1])}, step=self.step, flush=False)
            if self.stop_signal is not None and batch != last_batch:
                self.batch_in_epoch, self.epoch_sums = batch + 1, sums
                if bar is not None:
                    bar.close()
                return None
        if bar is not None:
            bar.close()
        self.batch_in_epoch, self.epoch_sums = 0, None
        d_loss, g_loss, d_real, d_fake = (sums / max(done, 1)).tolist()
        return {"train/d_loss": d_loss, "train/g_loss": g_loss, "train/d_real": d_real, "train/d_fake": d_fake}

    def train_step(self, real: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One discriminator step on real images and fakes of the same classes, then one generator step;
        returns (d_loss, g_loss, mean real logit, mean fake logit). A step whose loss is not finite is
        skipped (its network's statistics put back); max_bad_steps of them in a row stop the run."""
        settings, policy = self.settings, self.settings.diff_augment
        augment = (lambda images: diff_augment(images, policy)) if policy else (lambda images: images)
        latent = self.generator.latent_dim
        where = f"epoch {self.epoch + 1}, step {self.step + 1}"

        with torch.no_grad():
            fake = self.generator(torch.randn(len(labels), latent, device=self.device), labels)
        self.d_guard.begin_window(self.discriminator)  # spectral norm's power-iteration vectors are buffers
        real_logits = self.discriminator(augment(real), labels)
        fake_logits = self.discriminator(augment(fake), labels)
        d_loss = discriminator_loss(settings.loss, real_logits, fake_logits)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        if self.d_guard.check(self.discriminator, d_loss, None, f"{where} (discriminator)", saved=self.last_path):
            self.d_optimizer.step()
        self.d_guard.end_window()

        self.g_guard.begin_window(self.generator)
        self.discriminator.requires_grad_(False)  # the generator's step needs no gradient of D's weights
        try:
            fake = self.generator(torch.randn(len(labels), latent, device=self.device), labels)
            g_loss = generator_loss(settings.loss, self.discriminator(augment(fake), labels))
            self.g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
        finally:
            self.discriminator.requires_grad_(True)
        if self.g_guard.check(self.generator, g_loss, None, f"{where} (generator)", saved=self.last_path):
            self.g_optimizer.step()
            self.ema.update_parameters(self.generator)
        self.g_guard.end_window()
        self.step += 1
        return torch.stack([d_loss.detach(), g_loss.detach(), real_logits.detach().mean(),
                            fake_logits.detach().mean()]).double().cpu()

    # ---- samples, measures and logs ------------------------------------------------------------

    def sampler(self) -> nn.Module:
        """The generator that is sampled: the moving average, in eval mode (its averaged statistics)."""
        return self.ema.module.eval()

    def grid(self):
        """The fixed-noise samples as one Pillow image: a row per class."""
        from torchvision.utils import make_grid

        from imgrec.gan.sampling import generate

        images = generate(self.sampler(), self.grid_noise, self.grid_labels, self.device)
        picture = make_grid(images, nrow=self.settings.grid_per_class, padding=2, pad_value=255)
        from PIL import Image

        return Image.fromarray(picture.permute(1, 2, 0).numpy().squeeze(-1) if picture.shape[0] == 1
                               else picture.permute(1, 2, 0).numpy())

    def measure(self) -> dict[str, float]:
        """The judge's measures of this epoch's generator (nothing without a judge)."""
        if self.judge is None:
            return {}
        try:
            report = self.judge.measure(self.sampler(), self.device)
        except ImgrecError as error:  # a measure that cannot be taken this epoch must not cost the epoch's training
            log.warning(f"epoch {self.epoch}: the judge's measures failed ({error}); recorded as NaN")
            nan = float("nan")
            return {"quality/frechet_distance": nan, "quality/precision": nan, "quality/recall": nan,
                    "quality/class_accuracy": nan}
        return {"quality/frechet_distance": report["frechet_distance"], "quality/precision": report["precision"],
                "quality/recall": report["recall"], "quality/class_accuracy": report["class_accuracy"]["mean"]}

    def report(self, metrics: dict[str, float]) -> None:
        grid = self.grid()
        grid_folder = self.checkpoint_dir.parent / "samples"
        grid_folder.mkdir(parents=True, exist_ok=True)
        grid.convert("RGB").save(grid_folder / f"epoch_{self.epoch:03d}.png")
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.epoch)
            self.logger.log_image("samples/fixed_noise", grid, step=self.epoch)
        shown = "  ".join(f"{name.split('/')[-1]} {value:.4f}" for name, value in metrics.items()
                          if not name.startswith("time/"))
        log.info(f"epoch {self.epoch}/{self.settings.epochs}  {shown}  {metrics['time/epoch_seconds']:.1f}s")

    def _progress_bar(self, total: int, done: int):
        if not self.settings.show_bar:
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=done, desc=f"epoch {self.epoch + 1}/{self.settings.epochs}", unit="step",
                    leave=False, dynamic_ncols=True, file=sys.stderr)

    # ---- what a checkpoint holds ----------------------------------------------------------------

    def save(self) -> Path:
        return save_checkpoint(self.state_dict(), self.last_path)

    def state_dict(self) -> dict:
        progress = {}
        if self.batch_in_epoch:
            progress = {"epoch_progress": {"batches": self.batch_in_epoch, "sums": self.epoch_sums.clone()}}
        return {
            "kind": CHECKPOINT_KIND,
            "generator": self.ema.module.state_dict(),  # what sampling uses
            "train_generator": self.generator.state_dict(),  # what training continues from
            "discriminator": self.discriminator.state_dict(),
            "ema_updates": self.ema.n_averaged.detach().cpu(),
            "g_optimizer": self.g_optimizer.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": rng_state(),
            "history": list(self.history),
            "bad_steps": {"generator": self.g_guard.skipped, "discriminator": self.d_guard.skipped},
            **progress,
            **self.checkpoint_extras,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.generator.load_state_dict(state["train_generator"])
            self.ema.module.load_state_dict(state["generator"])
            self.ema.n_averaged.copy_(state["ema_updates"])
            self.discriminator.load_state_dict(state["discriminator"])
            self.g_optimizer.load_state_dict(state["g_optimizer"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
            set_rng_state(state["rng"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.history = [dict(row) for row in state.get("history", [])]
            self.g_guard.skipped, self.d_guard.skipped = (int(state.get("bad_steps", {}).get(name, 0))
                                                          for name in ("generator", "discriminator"))
            progress = state.get("epoch_progress")
            if progress is not None:
                sums = progress["sums"].to(torch.float64)
                if sums.shape != (4,) or int(progress["batches"]) < 1:
                    raise ValueError(f"epoch_progress {progress!r} is not batches >= 1 and four running sums")
                self.resume_progress = {"batches": int(progress["batches"]), "sums": sums}
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            raise ImgrecError(f"the checkpoint's training state cannot be restored ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else 'damaged'}); it is damaged or was "
                              "trained with other gan settings") from error
