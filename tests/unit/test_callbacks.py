import math

import pytest
import torch

from imgrec.training.callbacks import EarlyStopping, ModelCheckpoint
from imgrec.checkpoint import load_checkpoint
from imgrec.errors import ImgrecError
from imgrec.locking import LOCK_NAME


class StandInTrainer:
    """Just what callbacks read and write on a trainer."""

    metric_names = ["train/loss", "val/acc", "val/loss"]
    resume_path = None

    def __init__(self):
        self.should_stop, self.epoch, self.messages = False, 0, []

    def log_text(self, message):
        self.messages.append(message)

    def checkpoint_state(self):
        return {"epoch": self.epoch, "weights": torch.full((2,), float(self.epoch))}



def files(folder) -> list[str]:
    """The checkpoint files in a folder (its lock file aside)."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)

def run_epochs(callback, trainer, values, key="val/acc"):
    stopped_at = None
    for value in values:
        trainer.epoch += 1
        callback.on_epoch_end(trainer, {key: value})
        if trainer.should_stop and stopped_at is None:
            stopped_at = trainer.epoch
    return stopped_at


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    trainer = StandInTrainer()
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=2)
    stopper.on_fit_start(trainer)
    # 0.6 -> 0.6 is not an improvement; 0.59 neither: two bad epochs after the best at epoch 2
    assert run_epochs(stopper, trainer, [0.5, 0.6, 0.6, 0.59, 0.9]) == 4
    assert "has not improved for 2 epochs" in trainer.messages[0]


def test_early_stopping_min_mode_min_delta_and_nan():
    trainer = StandInTrainer()
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=3, min_delta=0.1)
    # 0.95 is better than 1.0 by less than min_delta: not an improvement; NaN never is
    assert run_epochs(stopper, trainer, [1.0, 0.95, math.nan, 0.5, 0.45, 0.44, 0.43], key="val/loss") == 7
    assert stopper.state_dict() == {"best": -0.5, "bad_epochs": 3}


def test_early_stopping_state_round_trip_continues_the_count():
    first = EarlyStopping(monitor="val/acc", patience=3)
    trainer = StandInTrainer()
    run_epochs(first, trainer, [0.7, 0.6, 0.6])
    resumed = EarlyStopping(monitor="val/acc", patience=3)
    resumed.load_state_dict(first.state_dict())
    assert run_epochs(resumed, trainer, [0.65]) == trainer.epoch  # third bad epoch in a row stops


def test_early_stopping_rejects_a_metric_that_is_not_logged():
    with pytest.raises(ImgrecError, match=r"monitor='val/accuracy' is not a logged metric; choose one of: .*val/acc"):
        EarlyStopping(monitor="val/accuracy").on_fit_start(StandInTrainer())


def test_model_checkpoint_never_calls_nan_best_and_keeps_last(tmp_path):
    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), monitor="val/acc", mode="max")
    checkpoint.on_fit_start(trainer)
    run_epochs(checkpoint, trainer, [math.nan, 5.0, 7.0, 3.0])
    assert files((tmp_path / "checkpoints")) == ["best.pt", "last.pt"]
    assert load_checkpoint(checkpoint.best_path)["epoch"] == 3
    assert load_checkpoint(checkpoint.last_path)["epoch"] == 4
    assert checkpoint.state_dict() == {"best_score": 7.0, "best_epoch": 3, "top_k": [], "best_metrics": {"val/acc": 7.0},
                                      "best_tie": None}


def test_model_checkpoint_writes_no_best_while_every_score_is_nan(tmp_path):
    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path), monitor="val/loss", mode="min")
    run_epochs(checkpoint, trainer, [math.nan, math.nan], key="val/loss")
    assert checkpoint.last_path.is_file() and not checkpoint.best_path.exists()


def test_a_resumed_run_carries_the_earlier_best_over_to_its_own_dir(tmp_path):
    trainer = StandInTrainer()
    first = ModelCheckpoint(dirpath=str(tmp_path / "first"), monitor="val/acc")
    run_epochs(first, trainer, [0.9, 0.5])  # best at epoch 1, last at epoch 2
    resumed = ModelCheckpoint(dirpath=str(tmp_path / "second"), monitor="val/acc")
    resumed.load_state_dict(first.state_dict())
    trainer.resume_path = first.last_path
    resumed.on_fit_start(trainer)
    assert load_checkpoint(resumed.best_path)["epoch"] == 1
    assert first.best_path.read_bytes() == resumed.best_path.read_bytes()
    run_epochs(resumed, trainer, [0.8])  # not better than 0.9: best.pt stays the carried-over one
    assert load_checkpoint(resumed.best_path)["epoch"] == 1


def test_without_an_earlier_best_the_resumed_best_starts_afresh(tmp_path):
    trainer = StandInTrainer()
    first = ModelCheckpoint(dirpath=str(tmp_path / "first"), monitor="val/acc")
    run_epochs(first, trainer, [0.9, 0.5])
    first.best_path.unlink()  # the user copied only last.pt
    resumed = ModelCheckpoint(dirpath=str(tmp_path / "second"), monitor="val/acc")
    resumed.load_state_dict(first.state_dict())
    trainer.resume_path = first.last_path
    resumed.on_fit_start(trainer)
    assert "no best.pt beside" in trainer.messages[-1] and resumed.best_score is None
    run_epochs(resumed, trainer, [0.6])
    assert load_checkpoint(resumed.best_path)["epoch"] == 3


def test_top_2_of_nan_5_7_3_keeps_exactly_those_files_also_after_a_resume(tmp_path):
    first = tmp_path / "run1" / "checkpoints"
    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(first), monitor="val/acc", mode="max", save_top_k=2)
    checkpoint.on_fit_start(trainer)
    run_epochs(checkpoint, trainer, [math.nan, 5.0, 7.0, 3.0])
    assert files(first) == ["best.pt", "epoch_002.pt", "epoch_003.pt", "last.pt"]
    assert load_checkpoint(first / "epoch_002.pt")["epoch"] == 2
    # stop after epoch 2 and resume in a new run dir from its last.pt: the same files result there
    run_a = tmp_path / "a" / "checkpoints"
    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(run_a), monitor="val/acc", save_top_k=2)
    checkpoint.on_fit_start(trainer)
    run_epochs(checkpoint, trainer, [math.nan, 5.0])
    saved = checkpoint.state_dict()
    run_b = tmp_path / "b" / "checkpoints"
    resumed = ModelCheckpoint(dirpath=str(run_b), monitor="val/acc", save_top_k=2)
    resumed.load_state_dict(saved)
    trainer.resume_path = str(run_a / "last.pt")
    resumed.on_fit_start(trainer)
    run_epochs(resumed, trainer, [7.0, 3.0])
    assert files(run_b) == ["best.pt", "epoch_002.pt", "epoch_003.pt", "last.pt"]
    assert files(run_a) == ["best.pt", "epoch_002.pt", "last.pt"]  # untouched
    assert [e["epoch"] for e in resumed.state_dict()["top_k"]] == [3, 2]


def test_eviction_writes_the_new_file_first_and_never_deletes_outside_the_run_dir(tmp_path):
    trainer = StandInTrainer()
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"keep me")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/acc", save_top_k=1)
    checkpoint.on_fit_start(trainer)
    checkpoint.top_k = [{"score": 1.0, "epoch": 0, "path": str(outside)}]
    run_epochs(checkpoint, trainer, [2.0])
    assert outside.read_bytes() == b"keep me"
    assert [e["epoch"] for e in checkpoint.top_k] == [1]


def test_a_failed_save_stops_with_a_clear_error_and_the_previous_file_intact(tmp_path, monkeypatch):
    import errno
    import os

    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/acc")
    checkpoint.on_fit_start(trainer)
    run_epochs(checkpoint, trainer, [1.0])
    before = checkpoint.last_path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(ImgrecError, match=r"could not write checkpoint .*last.pt \(No space left on device; [0-9.]+ MiB free there\)"):
        run_epochs(checkpoint, trainer, [2.0])
    monkeypatch.undo()
    assert checkpoint.last_path.read_bytes() == before
    assert not [p for p in checkpoint.dirpath.iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_non_finite_weights_are_never_written(tmp_path):
    trainer = StandInTrainer()
    trainer.checkpoint_state = lambda: {"epoch": trainer.epoch, "model": {"w": torch.tensor([1.0, float("nan")])}}
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/acc")
    with pytest.raises(ImgrecError, match="the model's w holds NaN or Inf values, so no checkpoint was written"):
        run_epochs(checkpoint, trainer, [1.0])
    assert not checkpoint.last_path.exists()


def test_too_little_disk_is_refused_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from imgrec.training.callbacks import check_free_space

    from types import SimpleNamespace

    # 3.82 MiB of weights: a checkpoint holds them and two optimizer slots (11.5 MiB), and two must fit
    trainer = SimpleNamespace(model=torch.nn.Linear(1000, 1000), ema=None)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 20 * 2**20, 20 * 2**20))
    with pytest.raises(ImgrecError, match=r"only 20.0 MiB free on the disk of .*, less than the 22.9 MiB two "
                                          r"checkpoints of this model need \(about 11.5 MiB each"):
        check_free_space(tmp_path / "not" / "yet" / "made", trainer)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 23 * 2**20, 23 * 2**20))
    check_free_space(tmp_path, trainer)


def test_an_equal_score_goes_to_the_epoch_with_the_lower_validation_loss(tmp_path):
    """val/acc on a small split ties often; best.pt is the tied epoch with the lowest val/loss, not the first."""
    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/acc", save_top_k=2,
                                 tie_break="val/loss", tie_break_mode="min")
    checkpoint.on_fit_start(trainer)
    for acc, loss in [(0.9, 0.5), (0.99, 0.30), (0.98, 0.10), (0.99, 0.20), (0.99, 0.25)]:
        trainer.epoch += 1
        checkpoint.on_epoch_end(trainer, {"val/acc": acc, "val/loss": loss})
    assert checkpoint.best_epoch == 4 and checkpoint.best_tie == 0.20
    assert load_checkpoint(tmp_path / "ck" / "best.pt")["epoch"] == 4
    assert [entry["epoch"] for entry in checkpoint.top_k] == [4, 5]  # ranked as best.pt is
    assert files(tmp_path / "ck") == ["best.pt", "epoch_004.pt", "epoch_005.pt", "last.pt"]


def test_without_a_tie_break_the_earliest_tied_epoch_stays_best(tmp_path):
    trainer = StandInTrainer()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val/acc", tie_break=None)
    checkpoint.on_fit_start(trainer)
    run_epochs(checkpoint, trainer, [0.5, 0.9, 0.9])
    assert checkpoint.best_epoch == 2


def test_auto_takes_the_task_s_tie_break_and_a_missing_metric_is_refused(tmp_path):
    from imgrec.tasks.classification import ClassificationTask
    from imgrec.tasks.detection import DetectionTask

    trainer = StandInTrainer()
    trainer.task = ClassificationTask()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "a"), monitor="val/acc")
    checkpoint.on_fit_start(trainer)
    assert (checkpoint.tie_break, checkpoint.tie_break_mode) == ("val/loss", "min")
    assert (DetectionTask.tie_break, DetectionTask.tie_break_mode) == ("val/map", "max")
    with pytest.raises(ImgrecError, match="tie_break='val/nope' is not a logged metric; choose one of"):
        ModelCheckpoint(dirpath=str(tmp_path / "b"), monitor="val/acc", tie_break="val/nope").check(
            StandInTrainer.metric_names)
