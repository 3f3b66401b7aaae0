"""Classification: one class per image. Logits and labels, cross-entropy (or focal) loss with mixup and
CutMix, accuracy and macro precision/recall/F1 per epoch, scikit-learn's per-class report, and the
binary screening threshold."""

import numpy as np
import torch
import torch.nn.functional as F

from imgrec.errors import ImgrecError
from imgrec.tasks.base import (
    ConfusionMatrixFigure, Evaluation, Evaluator, Gather, ImageGridFigure, PRCurveFigure, PRPlotFigure, Report, Table,
    Task,
)
from imgrec.tasks.classification_scores import (
    binary_metrics_at, choose_threshold, classification_report, epoch_scores, format_report, full_report,
)
from imgrec.tasks.classification_losses import ClassificationLoss, check_class_weights
from imgrec.tasks.mixing import MixUpCutMix


class ClassificationEvaluation(Evaluation):
    """float32 logits (N, classes) and labels (N,) of a whole split, on the CPU, in the split's order."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor):
        self.logits, self.labels = logits, labels
        # imgrec-eval's calibration, when it applies one: logits (N, C) as numpy -> calibrated probabilities
        self.calibrate = None

    @property
    def probabilities(self) -> np.ndarray:
        if self.calibrate is not None:
            return self.calibrate(self.logits.numpy())
        return self.logits.softmax(dim=1).numpy()

    def scores(self, prefix: str) -> dict[str, float]:
        loss = F.cross_entropy(self.logits, self.labels).item()
        return {f"{prefix}/loss": loss, **epoch_scores(self.labels.numpy(), self.logits.argmax(dim=1).numpy(), prefix)}


class ClassificationEvaluator(Evaluator):
    def __init__(self):
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.logits.append(outputs.float())
        self.labels.append(targets)

    def finish(self, gather: Gather) -> ClassificationEvaluation:
        logits, labels = torch.cat(self.logits).cpu(), torch.cat(self.labels).cpu()
        return ClassificationEvaluation(*gather.in_order(logits, labels))


def mistakes_caption(names: list[str], true: int, predicted: int, confidence: float) -> str:
    return f"true {names[true]}\npred {names[predicted]} ({confidence:.2f})"


class ClassificationTask(Task):
    name = "classification"
    train_metrics = ("loss", "acc")
    eval_metrics = ("loss", "acc", "macro_precision", "macro_recall", "macro_f1")
    headline = "accuracy"
    predicts = "class_scores"
    output_description = "float32 (batch, classes) logits; softmax gives class probabilities"

    def __init__(self, monitor: str = "val/acc", mode: str = "max", loss: dict | None = None,
                 mixup: dict | None = None):
        super().__init__(monitor, mode)
        loss = dict(loss or {})
        self.class_weights = loss.pop("class_weights", None)
        check_class_weights(self.class_weights)
        self.criterion = ClassificationLoss(**loss)
        mixup = dict(mixup or {})
        self.mix = MixUpCutMix(**mixup) if mixup.get("mixup_alpha", 0) or mixup.get("cutmix_alpha", 0) else None
        self.class_names: list[str] = []

    def bind(self, class_names: list[str], class_counts: list[int] | None) -> None:
        self.class_names = list(class_names)
        self.criterion.set_class_weights(self.class_weights, class_counts)
        if self.mix is not None:
            self.mix.num_classes = len(class_names)

    def train_batch(self, images: torch.Tensor, labels: torch.Tensor):
        """Mixup / CutMix: targets become class probabilities (N, classes) when the batch is mixed."""
        return self.mix(images, labels) if self.mix is not None else (images, labels)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, targets)

    def new_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"loss_sum": torch.zeros((), device=device), "correct": torch.zeros((), dtype=torch.int64, device=device)}

    def add_to_sums(self, sums, loss, logits, targets) -> int:
        # a mixed batch's label is the class with the larger share of each image
        labels = targets.argmax(dim=1) if targets.ndim == 2 else targets
        sums["loss_sum"] += loss.detach() * len(labels)
        sums["correct"] += (logits.argmax(dim=1) == labels).sum()
        return len(labels)

    def train_scores(self, sums: dict[str, float], seen: int) -> dict[str, float]:
        return {"train/loss": sums["loss_sum"] / seen, "train/acc": sums["correct"] / seen}

    def evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator()

    def check_output(self, output, where: str) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != 1:
            shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ImgrecError(f"{where} returns {shape} for one image; a classifier must return (batch, num_classes) "
                              "logits: choose a classification model (small_cnn, resnet18 ...), or task=segmentation "
                              "for a model that labels every pixel")

    def validation_figures(self, evaluation: ClassificationEvaluation, images_at, epoch: int, max_images: int) -> list:
        """The confusion matrix, one PR curve per class, and the most confidently misclassified images."""
        from sklearn.metrics import confusion_matrix

        logits, labels = evaluation.logits, evaluation.labels
        probabilities = logits.softmax(dim=1)
        predicted = probabilities.argmax(dim=1)
        names = self.class_names or [str(i) for i in range(logits.shape[1])]
        counts = confusion_matrix(labels.numpy(), predicted.numpy(), labels=np.arange(len(names)))
        figures = [ConfusionMatrixFigure("val/confusion_matrix", counts, names, f"val, epoch {epoch}")]
        figures += [PRCurveFigure(f"val_pr/{name}", labels == index, probabilities[:, index])
                    for index, name in enumerate(names)]
        wrong = torch.nonzero(predicted != labels).flatten()
        if len(wrong) and images_at is not None:
            # the most confident mistakes first: the ones worth looking at
            wrong = wrong[probabilities[wrong, predicted[wrong]].argsort(descending=True)][:max_images].numpy()
            captions = [mistakes_caption(names, labels[i], predicted[i], probabilities[i, predicted[i]]) for i in wrong]
            figures.append(ImageGridFigure("val/misclassified", images_at(wrong), captions,
                                           f"misclassified val images, epoch {epoch}"))
        return figures

    def test_report(self, evaluation: ClassificationEvaluation, sample_ids: list[str] | None) -> Report:
        """test_report.json (scikit-learn's per-class report and the test scores), test_predictions.csv (every
        image, with its file when it came from one) and the printed table."""
        probabilities = evaluation.probabilities
        y_true, y_pred = evaluation.labels.numpy(), evaluation.logits.argmax(dim=1).numpy()
        rows = [[index, sample_ids[index] if sample_ids is not None else "", int(true), int(pred),
                 *(f"{p:.6g}" for p in probs)]
                for index, (true, pred, probs) in enumerate(zip(y_true, y_pred, probabilities))]
        table = Table("test_predictions.csv", ["index", "path", "true", "predicted",
                                               *(f"prob_{name}" for name in self.class_names)], rows)
        report = classification_report(y_true, y_pred, self.class_names)
        scores = epoch_scores(y_true, y_pred, prefix="test")
        report["scores"] = {key.removeprefix("test/"): value for key, value in scores.items()}
        report["scores"]["loss"] = float(F.cross_entropy(evaluation.logits, evaluation.labels))
        return Report(report, [table], "test split:\n" + format_report(report))

    # ---- imgrec-eval ----------------------------------------------------------------------------

    def predicted_classes(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1)

    def check_threshold_settings(self, threshold, target_recall) -> None:
        if threshold is None:
            if target_recall is not None:
                raise ImgrecError(f"target_recall={target_recall} is used with threshold=auto only")
            return
        if len(self.class_names) != 2:
            raise ImgrecError(f"threshold={threshold} applies to two-class tasks; this model has "
                              f"{len(self.class_names)} classes. Leave threshold=null")
        if threshold != "auto" and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                    or not 0.0 <= threshold <= 1.0):
            raise ImgrecError(f"threshold={threshold!r} must be null, auto or a probability between 0 and 1")
        if target_recall is not None and threshold != "auto":
            raise ImgrecError(f"target_recall={target_recall} is used with threshold=auto only")

    def chosen_threshold(self, val_evaluation: ClassificationEvaluation, target_recall: float | None) -> dict:
        """The binary decision threshold chosen on validation predictions (see choose_threshold)."""
        chosen = choose_threshold(val_evaluation.probabilities[:, 1], val_evaluation.labels.numpy(), target_recall)
        return {"threshold": chosen["threshold"], "chosen_on": "val", "target_recall": target_recall,
                "val_precision": chosen["precision"], "val_recall": chosen["recall"]}

    def eval_report(self, evaluation: ClassificationEvaluation, sample_ids: list[str], images_at, split_name: str,
                    threshold: dict | None, settings) -> tuple[Report, list]:
        """imgrec-eval's files: report.json, per_class.csv, predictions.csv, confusion_matrix.csv, and the
        confusion matrix, PR curves and most confident errors as pictures."""
        probabilities, labels = evaluation.probabilities, evaluation.labels.numpy()
        if threshold is None:
            predicted = probabilities.argmax(axis=1)
        else:
            predicted = (probabilities[:, 1] >= threshold["threshold"]).astype(int)
        names = self.class_names
        report = full_report(probabilities, labels, names, predicted)
        if threshold is not None:
            report["threshold"] = {**threshold, **binary_metrics_at(threshold["threshold"], probabilities[:, 1], labels)}
        columns = ["precision", "recall", "f1", "support", "roc_auc", "average_precision"]
        tables = [
            Table("per_class.csv", ["class", *columns],
                  [[name, *(report["per_class"][name][column] for column in columns)] for name in names]),
            Table("predictions.csv", ["id", "true", "predicted", "true_name", "predicted_name",
                                      *(f"prob_{n}" for n in names)],
                  [[ident, int(true), int(pred), names[true], names[pred], *(f"{p:.6g}" for p in probs)]
                   for ident, true, pred, probs in zip(sample_ids, labels, predicted, probabilities)]),
            Table("confusion_matrix.csv", ["true \\ predicted", *names],
                  [[name, *row] for name, row in zip(names, report["confusion_matrix"])]),
        ]
        wrong = np.flatnonzero(predicted != labels)
        wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:settings.errors_shown]
        figures = [
            ConfusionMatrixFigure("confusion_matrix", np.array(report["confusion_matrix"]), names,
                                  f"{split_name} confusion matrix"),
            PRPlotFigure("pr_curves", probabilities, labels, names, report.get("threshold")),
            ImageGridFigure("confident_errors", images_at(wrong),
                            [mistakes_caption(names, labels[i], predicted[i], probabilities[i, predicted[i]])
                             for i in wrong], f"most confident errors ({len(wrong)} shown)"),
        ]
        return Report(report, tables, format_report(report) + "\n" + summary_line(report, split_name)), figures


def summary_line(report: dict, split_name: str) -> str:
    parts = [f"balanced accuracy {report['balanced_accuracy']:.4f}"]
    if "top5_accuracy" in report:
        parts.append(f"top-5 accuracy {report['top5_accuracy']:.4f}")
    for key, label in (("macro_roc_auc", "macro ROC-AUC"), ("macro_average_precision", "macro average precision")):
        if report[key] is not None:
            parts.append(f"{label} {report[key]:.4f}")
    if "threshold" in report:
        t = report["threshold"]
        chosen = "chosen on val" if t["chosen_on"] == "val" else "given"
        parts.append(f"threshold {t['threshold']:.4f} ({chosen}): {split_name} precision {t['precision']:.4f}, "
                     f"{split_name} recall {t['recall']:.4f}")
    return "; ".join(parts)
