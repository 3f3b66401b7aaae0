"""Classification scores, every number from scikit-learn: the per-epoch scores, the per-class report,
the full evaluation report, and the decision threshold of binary screening tasks."""

import numpy as np
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix, precision_recall_curve,
    precision_recall_fscore_support, roc_auc_score, top_k_accuracy_score,
)

from imgrec.errors import ImgrecError



def epoch_scores(y_true: np.ndarray, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 under `prefix/` (e.g. `val/acc`)."""
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        f"{prefix}/acc": float(accuracy_score(y_true, y_pred)),
        f"{prefix}/macro_precision": float(precision),
        f"{prefix}/macro_recall": float(recall),
        f"{prefix}/macro_f1": float(f1),
    }


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Per-class precision/recall/F1/support, macro and weighted averages, and the confusion matrix.

    Every class is scored, including one the split never contains or the model never predicts
    (its undefined precision or recall is 0, as scikit-learn's zero_division=0 has it).
    """
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    }
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(y_true))}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "num_samples": int(len(y_true)),
        "per_class": per_class,
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "class_names": list(class_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def format_report(report: dict) -> str:
    """The report as a fixed-width table, like scikit-learn's classification_report."""
    names = list(report["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    row = lambda name, s: f"{name:>{width}} {s['precision']:>9.4f} {s['recall']:>9.4f} {s['f1']:>9.4f} {s['support']:>9d}"  # noqa: E731
    lines += [row(name, report["per_class"][name]) for name in names]
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {report['accuracy']:>9.4f} {report['num_samples']:>9d}")
    lines.append(row("macro avg", report["macro_avg"]))
    lines.append(row("weighted avg", report["weighted_avg"]))
    return "\n".join(lines)


def _safe(score_fn, *args, **kwargs) -> float | None:
    """A ranking score, or None where it is undefined (a class absent from the split)."""
    try:
        value = float(score_fn(*args, **kwargs))
    except ValueError:
        return None
    return None if np.isnan(value) else value


def full_report(probabilities: np.ndarray, y_true: np.ndarray, class_names: list[str],
                y_pred: np.ndarray | None = None) -> dict:
    """classification_report (per class, macro, weighted, confusion matrix) plus top-5 and balanced
    accuracy, one-vs-rest ROC-AUC and average precision per class and macro, and the row-normalised
    confusion matrix. `y_pred` defaults to the most probable class (a binary threshold changes it)."""
    labels = np.arange(len(class_names))
    if y_pred is None:
        y_pred = probabilities.argmax(axis=1)
    report = classification_report(y_true, y_pred, class_names)
    report["balanced_accuracy"] = float(balanced_accuracy_score(y_true, y_pred))
    if len(class_names) > 5:
        report["top5_accuracy"] = float(top_k_accuracy_score(y_true, probabilities, k=5, labels=labels))
    counts = np.array(report["confusion_matrix"], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        report["confusion_matrix_normalized"] = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True)).tolist()
    one_hot = (y_true[:, None] == labels[None, :]).astype(int)
    for index, name in enumerate(class_names):
        present = 0 < one_hot[:, index].sum() < len(y_true)
        entry = report["per_class"][name]
        entry["roc_auc"] = _safe(roc_auc_score, one_hot[:, index], probabilities[:, index]) if present else None
        entry["average_precision"] = (
            _safe(average_precision_score, one_hot[:, index], probabilities[:, index]) if present else None
        )
    for key in ("roc_auc", "average_precision"):
        values = [entry[key] for entry in report["per_class"].values() if entry[key] is not None]
        # the mean over classes present in the split (scikit-learn's macro average would raise)
        report[f"macro_{key}"] = float(np.mean(values)) if values else None
    return report


def choose_threshold(positive_scores: np.ndarray, y_true: np.ndarray, target_recall: float | None) -> dict:
    """The decision threshold on P(positive) for a binary task, chosen on one split (validation):
    the highest threshold whose recall is at least `target_recall` (screening: miss few positives),
    or, with no target, the one with the best F1. Returns the threshold with its precision and recall."""
    if not (y_true == 1).any():
        raise ImgrecError("threshold=auto needs positive examples (class index 1) in the validation split")
    precision, recall, thresholds = precision_recall_curve(y_true, positive_scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if target_recall is not None:
        if not 0.0 < target_recall <= 1.0:
            raise ImgrecError(f"target_recall={target_recall} must be in (0, 1], e.g. 0.95")
        reaching = np.flatnonzero(recall >= target_recall)
        best = reaching[-1]  # recall falls as the threshold rises: the last that still reaches it
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        best = int(f1.argmax())
    return {"threshold": float(thresholds[best]), "precision": float(precision[best]), "recall": float(recall[best]),
            "target_recall": target_recall}


def binary_metrics_at(threshold: float, positive_scores: np.ndarray, y_true: np.ndarray) -> dict:
    predicted = (positive_scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 0.0,
        "true_positives": int(tp), "false_positives": int(fp), "false_negatives": int(fn), "true_negatives": int(tn),
    }
