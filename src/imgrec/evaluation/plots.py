"""Precision-recall and verification ROC curves, with matplotlib's file-only Agg backend so they render on
servers without a display. The confusion matrix and error grid are drawn with Pillow
(imgrec.evaluation.rasters): a classification or segmentation training run imports no matplotlib."""

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


def curves_figure(curves: dict, title: str, x_label: str, y_label: str):
    """Each (x, y) curve of `curves` under its label, on [0, 1] axes."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    for label, (x_values, y_values) in curves.items():
        axes.plot(x_values, y_values, label=label, linewidth=1.2)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.set_title(title)
    if curves:
        axes.legend(loc="lower left", fontsize=8)
    else:
        axes.text(0.5, 0.5, "nothing to draw: no class has both true boxes and detections", ha="center")
    figure.tight_layout()
    return figure


def bars_figure(names: list[str], values: dict, title: str):
    """Grouped bars: for each of `names`, one bar per series of `values` ({series: [value per name]}), in [0, 1]."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4.5))
    width = 0.8 / max(1, len(values))
    positions = np.arange(len(names))
    for offset, (series, numbers) in enumerate(values.items()):
        bars = axes.bar(positions + (offset - (len(values) - 1) / 2) * width, numbers, width, label=series)
        axes.bar_label(bars, fmt="%.3f", fontsize=7)
    axes.set_xticks(positions, names)
    axes.set_ylim(0, 1.08)
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def roc_figure(genuine: np.ndarray, impostor: np.ndarray, marked: list[dict], title: str):
    """True-accept rate against false-accept rate (log scale: the low-FAR end is where access control
    lives), from every genuine and impostor pair score; `marked` points ({label, far, tar}) drawn on it."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    scores = np.r_[genuine, impostor]
    false_accept, true_accept, _ = roc_curve(labels, scores)
    floor = 1.0 / max(len(impostor), 1)  # the smallest FAR these pairs can measure
    figure, axes = plt.subplots(figsize=(7, 6))
    axes.plot(np.maximum(false_accept, floor / 2), true_accept, linewidth=1.4,
              label=f"AUC {roc_auc_score(labels, scores):.4f} ({len(genuine)} genuine, {len(impostor)} impostor pairs)")
    for point in marked:
        axes.scatter([max(point["far"], floor / 2)], [point["tar"]], zorder=3,
                     label=f"{point['label']}: FAR {point['far']:.4f}, TAR {point['tar']:.4f}")
    axes.set_xscale("log")
    axes.set_xlim(floor / 2, 1.0)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false-accept rate (impostor pairs accepted)")
    axes.set_ylabel("true-accept rate (genuine pairs accepted)")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def lr_curve_figure(lrs, losses, smoothed, marked: dict, config_lr: float | None, stopped_at: float | None):
    """The learning-rate range test: each step's loss and its moving average against the lr (log scale), each
    suggestion of `marked` ({label: lr}) on the average, the config's lr and where the test stopped as lines."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 5))
    axes.plot(lrs, losses, color="0.75", linewidth=0.8, label="loss of each step")
    axes.plot(lrs, smoothed, color="C0", linewidth=1.6, label="moving average")
    for (label, lr), color in zip(marked.items(), ("C3", "C2", "C4")):
        axes.scatter([lr], [np.interp(np.log(lr), np.log(lrs), smoothed)], color=color, zorder=3, label=label)
    if config_lr is not None:
        axes.axvline(config_lr, color="0.3", linestyle="--", linewidth=1, label=f"the config's optimizer.lr {config_lr:.1e}")
    if stopped_at is not None:
        axes.axvline(stopped_at, color="C1", linestyle=":", linewidth=1, label=f"diverged at {stopped_at:.1e}")
    # the blow-up at the end would squash the part worth reading: show up to halfway above the curve's start
    lowest, before_lowest = float(np.min(losses)), float(np.max(smoothed[: int(np.argmin(smoothed)) + 1]))
    axes.set_ylim(lowest - 0.05 * (before_lowest - lowest), before_lowest + 0.5 * (before_lowest - lowest) + 1e-12)
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (optimizer.lr)")
    axes.set_ylabel("training loss")
    axes.set_title("learning-rate range test")
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return figure


def figure_picture(figure):
    """A matplotlib figure as a Pillow image (for TensorBoard), the figure closed."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    _pyplot().close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def save_figure(figure, path) -> None:
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
