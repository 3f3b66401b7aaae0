"""Precision-recall curves for `imgrec-eval`, with matplotlib's file-only Agg backend so they render on
servers without a display. The confusion matrix and error grid are drawn with Pillow
(imgrec.evaluation.rasters): no matplotlib import in a training run."""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def pr_curves_figure(probabilities: np.ndarray, y_true: np.ndarray, class_names: list[str],
                     marked: dict | None = None):
    """One-vs-rest precision-recall curve per class present; `marked` ({precision, recall, threshold})
    puts the chosen operating point on the positive class's curve."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    # a binary task is about its positive class; a multi-class one about every class
    shown = [1] if len(class_names) == 2 else range(len(class_names))
    for index in shown:
        positives = (y_true == index).astype(int)
        if 0 < positives.sum() < len(positives):
            precision, recall, _ = precision_recall_curve(positives, probabilities[:, index])
            ap = average_precision_score(positives, probabilities[:, index])
            axes.plot(recall, precision, label=f"{class_names[index]} (AP {ap:.3f})", linewidth=1.2)
    if marked is not None:
        axes.scatter([marked["recall"]], [marked["precision"]], color="red", zorder=3,
                     label=f"threshold {marked['threshold']:.3f}: P {marked['precision']:.3f}, R {marked['recall']:.3f}")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.set_title("precision-recall, one class vs the rest")
    if len(class_names) <= 12 or marked is not None:
        axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


def save_figure(figure, path) -> None:
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
