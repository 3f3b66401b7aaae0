"""Figures people read: confusion matrix, precision-recall curves, and the images a model gets wrong.
matplotlib with the file-only Agg backend, so they render on servers without a display."""

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_figure(counts: list[list[int]], class_names: list[str], title: str = "confusion matrix"):
    """Row-normalised colours (recall per true class) with the raw counts written in each cell."""
    plt = _pyplot()
    counts = np.asarray(counts)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = min(2 + 0.45 * len(class_names), 24)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=90 if len(class_names) > 8 else 0)
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    if len(class_names) <= 30:  # beyond that the numbers are unreadable; the CSV has them
        for true in ticks:
            for predicted in ticks:
                axes.text(predicted, true, str(counts[true, predicted]), ha="center", va="center", fontsize=8,
                          color="white" if normalised[true, predicted] > 0.5 else "black")
    figure.tight_layout()
    return figure


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


def image_grid_figure(images: np.ndarray, captions: list[str], title: str, columns: int = 8):
    """uint8 images (N, C, H, W) in a grid, each with a caption such as 'true 3 / pred 8 (0.97)'.
    One axes holding one mosaic: dozens of subplots would take seconds to lay out."""
    plt = _pyplot()
    count, (channels, height, width) = len(images), images.shape[1:] if len(images) else (1, 8, 8)
    columns = max(1, min(columns, count))
    rows = max(1, (count + columns - 1) // columns)
    gap = max(2, height // 8)
    mosaic = np.full((rows * (height + gap), columns * (width + gap), channels), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        mosaic[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    cell = 1.7  # inches per image: room for a two-line caption at any pixel size
    figure = plt.figure(figsize=(columns * cell, rows * cell + 0.5))
    axes = figure.add_axes((0, 0, 1, rows * cell / (rows * cell + 0.5)))
    axes.imshow(mosaic[..., 0] if channels == 1 else mosaic, cmap="gray", vmin=0, vmax=255, aspect="auto")
    axes.axis("off")
    for index, caption in enumerate(captions):
        axes.text((index % columns) * (width + gap) + width / 2, (index // columns) * (height + gap) + 1, caption,
                  ha="center", va="top", fontsize=7, color="yellow",
                  bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    figure.suptitle(title)
    return figure


def save_figure(figure, path) -> None:
    figure.savefig(path, dpi=110)
    _pyplot().close(figure)
