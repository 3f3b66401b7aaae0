"""A task defined outside imgrec (regressing each digit's value from its image), for test_task_seam.py. It lives
in its own module because a Task's `test_report` method would read as a test in a test module."""

import torch
import torch.nn.functional as F

from imgrec.tasks.base import Evaluation, Evaluator, Report, Table, Task


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
