import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.data.splits import ImageTensors
from imgrec.tasks.classification import ClassificationEvaluation, ClassificationTask
from imgrec.training.callbacks import ValidationFigures


class RecordingLogger:
    def __init__(self):
        self.figures, self.pr_curves = [], []

    def log_image(self, tag, image, step):
        self.figures.append((tag, step))

    def log_pr_curve(self, tag, positives, scores, step):
        self.pr_curves.append((tag, step))


class StandIn:
    """The attributes of a Trainer the callback reads."""

    def __init__(self, logger):
        self.logger, self.max_epochs, self.should_stop, self.epoch = logger, 7, False, 0
        self.task = ClassificationTask()
        self.task.bind(["a", "b", "c"], None)
        split = ImageTensors(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2, 1, 1, 0]))
        self.val_loader = type("Loader", (), {"data": split})()
        logits = torch.tensor([[3.0, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0], [0, 3, 0], [0, 0, 3]])
        self.last_evaluations = {"val": ClassificationEvaluation(logits, split.labels)}  # two wrong


def test_drawn_every_n_epochs_and_after_the_last():
    logger = RecordingLogger()
    trainer, callback = StandIn(logger), ValidationFigures(every_n_epochs=3)
    for epoch in range(1, 8):
        trainer.epoch = epoch
        callback.on_epoch_end(trainer, {})
    assert sorted({step for _, step in logger.figures}) == [3, 6, 7]
    assert ("val/misclassified", 7) in logger.figures and ("val/confusion_matrix", 3) in logger.figures
    assert {tag for tag, _ in logger.pr_curves} == {"val_pr/a", "val_pr/b", "val_pr/c"}


def test_by_default_drawn_after_the_last_epoch_only():
    logger = RecordingLogger()
    trainer, callback = StandIn(logger), ValidationFigures()
    for epoch in range(1, 8):
        trainer.epoch = epoch
        callback.on_epoch_end(trainer, {})
    assert sorted({step for _, step in logger.figures}) == [7]


def test_an_early_stop_draws_that_epoch_and_no_logger_draws_nothing():
    logger = RecordingLogger()
    trainer = StandIn(logger)
    trainer.epoch, trainer.should_stop = 4, True
    ValidationFigures(every_n_epochs=5).on_epoch_end(trainer, {})
    assert {step for _, step in logger.figures} == {4}
    quiet = StandIn(None)
    quiet.epoch = 5
    ValidationFigures(every_n_epochs=5).on_epoch_end(quiet, {})  # no logger: a no-op, no error
    with pytest.raises(ImgrecError, match=r"every_n_epochs=0 must be null \(after the last epoch only\) or a whole number >= 1"):
        ValidationFigures(every_n_epochs=0)
