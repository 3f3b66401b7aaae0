"""Classification scores, all from scikit-learn, in one place."""

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


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
