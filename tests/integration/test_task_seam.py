"""A task defined here, not in imgrec (regressing each digit's value from its image), trained by the same
Trainer, checkpointed and resumed: what a new task needs is a Task subclass, never an edit of trainer.py."""

import logging

import torch
import torch.nn.functional as F

from imgrec.checkpoint import load_checkpoint
from imgrec.data.datasets import digits
from imgrec.evaluation.reports import write_report
from imgrec.models.small_cnn import SmallCNN
from imgrec.tasks.base import Evaluation, Evaluator, Report, Table, Task
from imgrec.training.callbacks import Callback, ModelCheckpoint
from imgrec.training.schedulers import warmup_cosine
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer


class DigitValueEvaluation(Evaluation):
    def __init__(self, predicted: torch.Tensor, values: torch.Tensor):
        self.predicted, self.values = predicted, values

    def scores(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/loss": F.mse_loss(self.predicted, self.values).item(),
                f"{prefix}/mae": (self.predicted - self.values).abs().mean().item()}


class DigitValueEvaluator(Evaluator):
    def __init__(self):
        self.predicted, self.values = [], []

    def update(self, outputs, targets) -> None:
        self.predicted.append(outputs.squeeze(1).float().cpu())
        self.values.append(targets.float().cpu())

    def finish(self, gather) -> DigitValueEvaluation:
        return DigitValueEvaluation(*gather.in_order(torch.cat(self.predicted), torch.cat(self.values)))


class DigitValueRegression(Task):
    """One output per image: the digit's value (0-9) as a number, mean squared error."""

    name = "digit_value"
    train_metrics = ("loss", "mae")
    eval_metrics = ("loss", "mae")

    def __init__(self):
        super().__init__(monitor="val/mae", mode="min")

    def loss(self, outputs, targets):
        return F.mse_loss(outputs.squeeze(1), targets.float())

    def new_sums(self, device):
        return {"loss_sum": torch.zeros((), device=device), "abs_error": torch.zeros((), device=device)}

    def add_to_sums(self, sums, loss, outputs, targets) -> int:
        sums["loss_sum"] += loss.detach() * len(targets)
        sums["abs_error"] += (outputs.detach().squeeze(1) - targets.float()).abs().sum()
        return len(targets)

    def train_scores(self, sums, seen):
        return {"train/loss": sums["loss_sum"] / seen, "train/mae": sums["abs_error"] / seen}

    def evaluator(self):
        return DigitValueEvaluator()

    def test_report(self, evaluation, sample_ids):
        rows = [[i, f"{p:.4f}", int(v)] for i, (p, v) in enumerate(zip(evaluation.predicted.tolist(),
                                                                       evaluation.values.tolist()))]
        return Report(evaluation.scores("test"), [Table("test_predictions.csv", ["index", "predicted", "value"], rows)],
                      "digit values")


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
