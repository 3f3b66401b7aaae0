"""Callbacks: code that reacts to the end of an epoch. Three events only; nothing hooks the batch loop."""

import math
from pathlib import Path

from imgrec.checkpoint import copy_checkpoint, remove_stale_temp_files, save_checkpoint
from imgrec.errors import ImgrecError


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
    """Write `last.pt` every epoch and `best.pt` whenever `monitor` reaches a new best (never for NaN)."""

    order = 100

    def __init__(self, dirpath: str, monitor: str, mode: str = "max"):
        self.dirpath, self.monitor, self.mode = Path(dirpath), monitor, mode
        self.sign = 1 if mode == "max" else -1
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dirpath / "best.pt"

    def check(self, metric_names: list[str]) -> None:
        _check_monitor("callbacks.model_checkpoint", self.monitor, self.mode, metric_names)

    def on_fit_start(self, trainer) -> None:
        self.check(trainer.metric_names)
        remove_stale_temp_files(self.dirpath)
        if trainer.resume_path is not None and self.best_score is not None:
            self._carry_best_over(trainer, Path(trainer.resume_path))

    def _carry_best_over(self, trainer, resume_path: Path) -> None:
        """A resumed run writes to a new run dir: bring the best weights so far, so best.pt stays the best."""
        if self.best_path.exists() or resume_path.resolve() == self.last_path.resolve():
            return
        earlier_best = resume_path.parent / "best.pt"
        if earlier_best.is_file():
            copy_checkpoint(earlier_best, self.best_path)
        elif trainer.epoch == self.best_epoch:  # the file resumed from is itself the best so far
            copy_checkpoint(resume_path, self.best_path)
        else:
            trainer.log_text(
                f"warning: no best.pt beside {resume_path}; best.pt will hold the best of the resumed epochs only"
            )
            self.best_score = self.best_epoch = None

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        score = metrics[self.monitor]
        improved = math.isfinite(score) and (
            self.best_score is None or self.sign * score > self.sign * self.best_score
        )
        if improved:
            self.best_score, self.best_epoch = score, trainer.epoch
        state = trainer.checkpoint_state()  # taken after updating best_score, so best.pt knows it is best
        save_checkpoint(state, self.last_path)
        if improved:
            save_checkpoint(state, self.best_path)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
