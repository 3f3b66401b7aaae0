"""A task defined here, not in imgrec (regressing each digit's value from its image), trained by the same
Trainer, checkpointed and resumed: what a new task needs is a Task subclass, never an edit of trainer.py."""

import logging

import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.data.datasets import digits
from imgrec.evaluation.reports import write_report
from imgrec.models.small_cnn import SmallCNN
from imgrec.training.callbacks import Callback, ModelCheckpoint
from imgrec.training.schedulers import warmup_cosine
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer
from tests.integration.digit_value_task import DigitValueRegression


class StopAfter(Callback):
    """Ends the run after `epochs` epochs, as a crash would, without changing its schedule."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, trainer, metrics) -> None:
        trainer.should_stop |= trainer.epoch >= self.epochs


def fit(run_dir, stop_after: int = 4, resume=None):
    torch.manual_seed(0)
    splits = digits(image_size=8)
    model = SmallCNN(1, 1, widths=[8, 16], hidden=[16], dropout=0.0)
    callbacks = {"stop": StopAfter(stop_after),
                 "model_checkpoint": ModelCheckpoint(dirpath=str(run_dir), monitor="val/mae", mode="min")}
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=3e-3), warmup_cosine, DigitValueRegression(),
                      TrainerSettings(device="cpu", max_epochs=4, batch_size=64, progress=False), callbacks=callbacks)
    loaders = [trainer.make_loader(getattr(splits, split), splits.mean, splits.std, train=split == "train")
               for split in ("train", "val", "test")]
    metrics = trainer.fit(loaders[0], loaders[1], load_checkpoint(resume) if resume else None, resume)
    return trainer, metrics, loaders[2]


def test_a_task_defined_outside_imgrec_trains_checkpoints_and_resumes_exactly(tmp_path):
    trainer, metrics, test_loader = fit(tmp_path / "whole")
    assert set(metrics) == {"train/loss", "train/mae", "train/lr", "val/loss", "val/mae"}
    # it learned: the digits' values spread over 0-9, so guessing their mean is off by about 2.5
    assert metrics["val/mae"] < 1.5
    best = load_checkpoint(tmp_path / "whole" / "best.pt")
    assert best["callbacks"]["model_checkpoint"]["best_score"] <= metrics["val/mae"]  # min mode: lower is better

    fit(tmp_path / "first", stop_after=2)
    fit(tmp_path / "second", resume=str(tmp_path / "first" / "last.pt"))
    whole, again = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(tmp_path / "second" / "last.pt")
    assert again["epoch"] == whole["epoch"] == 4
    assert all(torch.equal(again["model"][name], tensor) for name, tensor in whole["model"].items())

    report = trainer.task.test_report(trainer.predict(test_loader), None)
    write_report(report, tmp_path / "report", "test_report.json", logging.getLogger("test"))
    assert (tmp_path / "report" / "test_predictions.csv").read_text().count("\n") == len(test_loader.data) + 1
