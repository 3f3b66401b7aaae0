"""Callbacks: code that reacts to the end of an epoch (early stopping, checkpoints, validation figures).
Four events only (fit start and end, epoch end, and an interrupted epoch); nothing hooks the batch loop."""

import math
from pathlib import Path

from imgrec.checkpoint import copy_checkpoint, remove_stale_temp_files, save_checkpoint
from imgrec.errors import ImgrecError
from imgrec.locking import lock_folder


def _check_monitor(owner: str, monitor: str, mode: str, metric_names: list[str]) -> None:
    if mode not in ("min", "max"):
        raise ImgrecError(f"{owner}.mode={mode!r} must be 'min' or 'max'")
    if monitor not in metric_names:
        raise ImgrecError(
            f"{owner}.monitor={monitor!r} is not a logged metric; choose one of: {', '.join(metric_names)}"
        )


class Callback:
    # callbacks run in ascending `order`; checkpointing goes last so it saves everyone's updated state
    order = 0

    def check(self, metric_names: list[str]) -> None:
        """Raise ImgrecError for settings that cannot work; train.py calls it before loading data."""

    def on_fit_start(self, trainer) -> None: ...

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer) -> None: ...

    def on_interrupt(self, trainer) -> None:
        """A stop signal cut an epoch short; the trainer stops right after this."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs."""

    def __init__(self, monitor: str, mode: str = "max", patience: int = 10, min_delta: float = 0.0):
        if patience < 1:
            raise ImgrecError(f"early_stopping.patience={patience} must be at least 1")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, abs(min_delta)
        self.sign = 1 if mode == "max" else -1
        self.best, self.bad_epochs = -math.inf, 0

    def check(self, metric_names: list[str]) -> None:
        _check_monitor("callbacks.early_stopping", self.monitor, self.mode, metric_names)

    def on_fit_start(self, trainer) -> None:
        self.check(trainer.metric_names)

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        score = self.sign * metrics[self.monitor]
        if score > self.best + self.min_delta:  # False for NaN: a NaN epoch counts as no improvement
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.should_stop = True
            trainer.log_text(
                f"early stopping: {self.monitor} has not improved for {self.bad_epochs} epochs "
                f"(best {self.sign * self.best:.4f})"
            )

    def state_dict(self) -> dict:  # saved in every checkpoint, so a resume continues the count
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class ModelCheckpoint(Callback):
    """Write `last.pt` every epoch, `best.pt` whenever `monitor` reaches a new best (never for NaN), and
    with `save_top_k` > 0 the k best epochs as `epoch_NNN.pt`. A new file is written before an old one
    is deleted; only files in this run's `dirpath` are ever deleted.

    `tie_break` (e.g. val/loss, `tie_break_mode` min) decides between epochs with the same `monitor` score:
    accuracy on a few hundred validation images moves in steps of one image, so ties are common, and the
    earliest of them is often the least trained. `auto`: the task's own (Task.tie_break); None: the earliest."""

    order = 100

    def __init__(self, dirpath: str, monitor: str, mode: str = "max", save_top_k: int = 0,
                 tie_break: str | None = "auto", tie_break_mode: str = "min"):
        if not isinstance(save_top_k, int) or save_top_k < 0:
            raise ImgrecError(f"callbacks.model_checkpoint.save_top_k={save_top_k!r} must be a whole number >= 0")
        self.dirpath, self.monitor, self.mode, self.save_top_k = Path(dirpath), monitor, mode, save_top_k
        self.sign = 1 if mode == "max" else -1
        self.set_tie_break(tie_break, tie_break_mode)
        self.best_score: float | None = None
        self.best_tie: float | None = None  # the best epoch's tie_break metric
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}  # every metric of the best epoch (sweep summaries)
        self.top_k: list[dict] = []  # {"score", "epoch", "path"}, best first

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dirpath / "best.pt"

    def set_tie_break(self, metric: str | None, mode: str) -> None:
        self.tie_break, self.tie_break_mode = metric, mode
        self.tie_sign = 1 if mode == "max" else -1

    def check(self, metric_names: list[str]) -> None:
        _check_monitor("callbacks.model_checkpoint", self.monitor, self.mode, metric_names)
        if self.tie_break_mode not in ("min", "max"):
            raise ImgrecError(f"callbacks.model_checkpoint.tie_break_mode={self.tie_break_mode!r} must be 'min' or 'max'")
        if self.tie_break not in (None, "auto") and self.tie_break not in metric_names:
            raise ImgrecError(f"callbacks.model_checkpoint.tie_break={self.tie_break!r} is not a logged metric; choose "
                              f"one of: {', '.join(metric_names)} (or null: the earliest of tied epochs)")

    def rank_key(self, score: float, tie: float | None, epoch: int) -> tuple:
        """Sorts best first: the monitored score, then the tie-break metric, then the earlier epoch."""
        tie_key = 0.0 if tie is None or not math.isfinite(tie) else -self.tie_sign * tie
        return (-self.sign * score, tie_key if self.tie_break is not None else 0.0, epoch)

    def on_fit_start(self, trainer) -> None:
        if self.tie_break == "auto":  # a trainer without a task (a stand-in) has no tie-break to offer
            task = getattr(trainer, "task", None)
            metric = getattr(task, "tie_break", None)
            # a task of the user's own may lack the base class's default (val/loss): then no tie-break
            self.set_tie_break(metric if metric in trainer.metric_names else None, getattr(task, "tie_break_mode", "min"))
        self.check(trainer.metric_names)
        # a folder outside the (locked) run folder is locked too: two runs never write the same best.pt
        lock_folder(self.dirpath, "callbacks.model_checkpoint.dirpath")
        remove_stale_temp_files(self.dirpath)
        check_free_space(self.dirpath, trainer)
        if trainer.resume_path is not None and self.best_score is not None:
            self._carry_best_over(trainer, Path(trainer.resume_path))
        if trainer.resume_path is not None and self.top_k:
            self._carry_top_k_over()

    def _carry_best_over(self, trainer, resume_path: Path) -> None:
        """A resumed run writes to a new run dir: bring the best weights so far, so best.pt stays the best."""
        if self.best_path.exists() or resume_path.resolve() == self.last_path.resolve():
            return
        earlier_best = resume_path.parent / "best.pt"
        if earlier_best.is_file():
            copy_checkpoint(earlier_best, self.best_path)
        elif trainer.epoch == self.best_epoch and getattr(trainer, "resume_progress", None) is None:
            # the file resumed from is itself the best so far (an end-of-epoch file, not a mid-epoch one)
            copy_checkpoint(resume_path, self.best_path)
        else:
            trainer.log_text(
                f"warning: no best.pt beside {resume_path}; best.pt will hold the best of the resumed epochs only"
            )
            self.best_score = self.best_epoch = self.best_tie = None
            self.best_metrics = {}

    def _carry_top_k_over(self) -> None:
        """Copies of the earlier run's top-k files, so this run's top-k list names files it owns."""
        kept = []
        for entry in self.top_k:
            source, destination = Path(entry["path"]), self.dirpath / Path(entry["path"]).name
            if destination.resolve() != source.resolve():
                if not source.is_file():
                    continue  # gone: it leaves the list rather than name a missing file
                copy_checkpoint(source, destination)
            kept.append({**entry, "path": str(destination)})
        self.top_k = kept

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        score = metrics[self.monitor]
        tie = metrics.get(self.tie_break) if self.tie_break is not None else None
        key = self.rank_key(score, tie, trainer.epoch)
        improved = math.isfinite(score) and (
            self.best_score is None or key < self.rank_key(self.best_score, self.best_tie, self.best_epoch)
        )
        if improved:
            self.best_score, self.best_tie, self.best_epoch = score, tie, trainer.epoch
            self.best_metrics = dict(metrics)
        enters_top_k = self.save_top_k > 0 and math.isfinite(score) and (
            len(self.top_k) < self.save_top_k
            or key < self.rank_key(self.top_k[-1]["score"], self.top_k[-1].get("tie"), self.top_k[-1]["epoch"])
        )
        evicted = []
        if enters_top_k:
            self.top_k.append({"score": score, "tie": tie, "epoch": trainer.epoch,
                               "path": str(self.dirpath / f"epoch_{trainer.epoch:03d}.pt")})
            # best first, ranked as best.pt is: score, then tie_break, then the earlier epoch
            self.top_k.sort(key=lambda entry: self.rank_key(entry["score"], entry.get("tie"), entry["epoch"]))
            evicted, self.top_k = self.top_k[self.save_top_k :], self.top_k[: self.save_top_k]
        state = trainer.checkpoint_state()  # taken after updating the bookkeeping, so files know their rank
        refuse_non_finite(state)
        save_checkpoint(state, self.last_path)
        if improved:
            save_checkpoint(state, self.best_path)
        if any(entry["epoch"] == trainer.epoch for entry in self.top_k):
            save_checkpoint(state, Path(self.top_k[[e["epoch"] for e in self.top_k].index(trainer.epoch)]["path"]))
        for entry in evicted:  # only after the new file is safely written
            self._delete(Path(entry["path"]), trainer)

    def _delete(self, path: Path, trainer) -> None:
        resume = getattr(trainer, "resume_path", None)
        if path.parent.resolve() != self.dirpath.resolve() or (resume and path.resolve() == Path(resume).resolve()):
            return  # never outside this run's folder, never the file this run resumed from
        path.unlink(missing_ok=True)

    def on_interrupt(self, trainer) -> None:
        path = self.save_last(trainer)
        trainer.log_text(f"saved {path} at epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}")

    def save_last(self, trainer) -> Path:
        """Write last.pt now, mid-epoch (an interrupted run): the state says where in the epoch it stopped."""
        state = trainer.checkpoint_state()
        refuse_non_finite(state)
        return save_checkpoint(state, self.last_path)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "top_k": self.top_k,
                "best_metrics": self.best_metrics, "best_tie": self.best_tie}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.best_tie = state.get("best_tie")  # absent in checkpoints written before tie_break existed
        self.top_k = list(state.get("top_k", []))
        self.best_metrics = dict(state.get("best_metrics") or {})


class ValidationFigures(Callback):
    """What TensorBoard shows besides curves, as the task describes it (for classification: the confusion
    matrix, a PR curve per class, the most confidently misclassified images). After the last epoch, and
    every `every_n_epochs` epochs when set; needs a logger (nothing to draw on otherwise)."""

    order = 50  # after early stopping, which decides whether this epoch is the last

    def __init__(self, every_n_epochs: int | None = None, max_images: int = 32):
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
            raise ImgrecError(f"callbacks.validation_figures.every_n_epochs={every_n_epochs!r} must be null (after the "
                              "last epoch only) or a whole number >= 1")
        self.every_n_epochs, self.max_images = every_n_epochs, max_images

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        last = trainer.epoch >= trainer.max_epochs or trainer.should_stop
        if trainer.logger is None or "val" not in trainer.last_evaluations:
            return
        periodic = self.every_n_epochs is not None and trainer.epoch % self.every_n_epochs == 0
        if not (periodic or last):
            return
        from imgrec.data.files import images_at
        from imgrec.evaluation.figures import to_logger

        loader = trainer.val_loader
        split_images = (lambda indices: images_at(loader.data, indices)) if loader is not None else None
        for spec in trainer.task.validation_figures(trainer.last_evaluations["val"], split_images, trainer.epoch,
                                                    self.max_images):
            to_logger(trainer.logger, spec, trainer.epoch)


def refuse_non_finite(state: dict) -> None:
    """Never write weights with NaN or Inf in them as a checkpoint: they would be resumed or shipped."""
    import torch

    for name, tensor in state.get("model", {}).items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ImgrecError(
                f"the model's {name} holds NaN or Inf values, so no checkpoint was written over the last good one; "
                "training diverged: lower optimizer.lr, set trainer.grad_clip_norm, or use trainer.precision=32"
            )


def check_free_space(directory: Path, trainer) -> None:
    """Fail before training when the checkpoint folder's disk cannot hold two checkpoints (last.pt and
    best.pt, or a new last.pt beside the old one while it is written). A checkpoint is about the weights,
    two optimizer slots per weight (Adam's moments; SGD's momentum needs one), and an EMA copy if any."""
    import shutil

    model = getattr(trainer, "model", None)
    if model is None:
        return
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    buffers = sum(t.numel() * t.element_size() for t in model.buffers())
    copies = 2 if getattr(trainer, "ema", None) is not None else 1
    checkpoint_size = copies * (weights + buffers) + 2 * weights
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < 2 * checkpoint_size:
        raise ImgrecError(
            f"only {free / 2**20:.1f} MiB free on the disk of {directory}, less than the {2 * checkpoint_size / 2**20:.1f} MiB "
            f"two checkpoints of this model need (about {checkpoint_size / 2**20:.1f} MiB each with the optimizer state); "
            "free space or set callbacks.model_checkpoint.dirpath to another disk"
        )
