"""Segmentation: a class for every pixel. Per-pixel logits, cross-entropy / Dice / focal losses, and the
scores the field reads: per-class IoU and Dice, their means, pixel accuracy, the pixel confusion matrix,
and each image's Dice. Every score comes from one confusion matrix accumulated over the whole split
(never averaged over batches) and summed over processes under torchrun."""

import numpy as np
import torch
import torch.nn.functional as F

from imgrec.data.splits import IGNORE
from imgrec.errors import ImgrecError
from imgrec.tasks.base import ConfusionMatrixFigure, Evaluation, Evaluator, Gather, ImageGridFigure, Report, Table, Task
from imgrec.tasks.segmentation_losses import SegmentationLoss

# class colours of masks drawn over images: class 0 (background) is left uncoloured
COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
                    [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], dtype=np.float64)


def confusion(true: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(classes, classes) pixel counts, rows the true class, over the pixels whose truth is not IGNORE."""
    valid = true != IGNORE
    index = true[valid].long() * num_classes + predicted[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class IoU, Dice (F1), precision, recall and support from a confusion matrix; NaN where a class
    is in neither the truth nor the prediction."""
    matrix = matrix.astype(np.float64)
    true_positive = np.diag(matrix)
    false_positive, false_negative = matrix.sum(0) - true_positive, matrix.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "iou": true_positive / (true_positive + false_positive + false_negative),
            "dice": 2 * true_positive / (2 * true_positive + false_positive + false_negative),
            "precision": true_positive / (true_positive + false_positive),
            "recall": true_positive / (true_positive + false_negative),
            "support": matrix.sum(1),
        }


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float("nan")


def foreground_dice(dice: np.ndarray) -> float:
    """The mean Dice of the foreground classes present in the truth or the prediction; 1.0 when none is
    (nothing to find, nothing found), as each image's Dice is scored, so a split without foreground
    still has a monitor value."""
    present = dice[1:][~np.isnan(dice[1:])]
    return float(present.mean()) if len(present) else 1.0


def shown(value) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{value:.4f}"


def image_dice(true: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each image's mean Dice over the foreground classes in its truth or prediction (1.0 for an image with
    none in either: nothing to find, nothing found)."""
    scores = []
    for truth, guess in zip(true, predicted):
        valid = truth != IGNORE
        per_class = []
        for class_id in range(1, num_classes):
            in_truth, in_guess = (truth == class_id) & valid, (guess == class_id) & valid
            total = int(in_truth.sum() + in_guess.sum())
            if total:
                per_class.append(2 * float((in_truth & in_guess).sum()) / total)
        scores.append(sum(per_class) / len(per_class) if per_class else 1.0)
    return torch.tensor(scores, dtype=torch.float64)


class SegmentationEvaluation(Evaluation):
    """A split's pixel confusion matrix, its cross-entropy, and every image's Dice and predicted mask."""

    def __init__(self, matrix: torch.Tensor, loss_sum: float, pixels: int, dice: torch.Tensor, predicted: torch.Tensor,
                 truth: torch.Tensor):
        self.matrix, self.loss_sum, self.pixels = matrix.cpu().numpy(), loss_sum, pixels
        self.dice, self.predicted, self.truth = dice, predicted, truth

    def scores(self, prefix: str) -> dict[str, float]:
        per_class = class_scores(self.matrix)
        total = self.matrix.sum()
        return {f"{prefix}/loss": self.loss_sum / max(self.pixels, 1),
                f"{prefix}/pixel_acc": float(np.trace(self.matrix) / total) if total else float("nan"),
                f"{prefix}/miou": _mean(per_class["iou"]),
                f"{prefix}/dice": foreground_dice(per_class["dice"])}


class SegmentationEvaluator(Evaluator):
    def __init__(self, task: "SegmentationTask"):
        self.task = task
        self.matrix = None
        self.loss_sum, self.pixels = None, 0
        self.dice, self.predicted, self.truth = [], [], []

    def update(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        predicted = self.task.predicted_classes(logits)
        masks = masks.to(predicted.device)
        batch_matrix = confusion(masks, predicted, self.task.num_classes)
        self.matrix = batch_matrix if self.matrix is None else self.matrix + batch_matrix
        loss = self.task.plain_loss(logits, masks)
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.pixels += int((masks != IGNORE).sum())
        self.dice.append(image_dice(masks.cpu(), predicted.cpu(), self.task.num_classes))
        self.predicted.append(predicted.to(torch.uint8).cpu())
        self.truth.append(masks.to(torch.uint8).cpu())

    def finish(self, gather: Gather) -> SegmentationEvaluation:
        device = self.matrix.device
        matrix, loss_sum, pixels = gather.sum(self.matrix, self.loss_sum.detach().reshape(1).double(),
                                              torch.tensor([self.pixels], device=device))
        dice, predicted, truth = gather.in_order(torch.cat(self.dice), torch.cat(self.predicted), torch.cat(self.truth))
        return SegmentationEvaluation(matrix, float(loss_sum.item()), int(pixels.item()), dice, predicted, truth)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB (3, H, W): the image in grey or colour with each non-background class tinted."""
    rgb = image.astype(np.float64)
    if rgb.shape[0] == 1:
        rgb = rgb.repeat(3, axis=0)
    colours = COLOURS[np.minimum(mask, len(COLOURS) - 1)].transpose(2, 0, 1)
    tinted = (mask > 0) & (mask != IGNORE)
    rgb = np.where(tinted, (1 - alpha) * rgb + alpha * colours, rgb)
    return rgb.round().clip(0, 255).astype(np.uint8)


def comparison(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """One strip per image: the image, the truth over it, the prediction over it, and the errors (red:
    pixels predicted wrong, grey: ignored), side by side with a 2-pixel gap."""
    errors = overlay(image, np.zeros_like(truth))
    wrong = (truth != predicted) & (truth != IGNORE)
    errors[:, wrong] = np.array([255, 0, 0])[:, None]
    errors[:, truth == IGNORE] = 128
    panels = [overlay(image, np.zeros_like(truth)), overlay(image, truth), overlay(image, predicted), errors]
    gap = np.full((3, image.shape[1], 2), 255, np.uint8)
    return np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=2)


class SegmentationTask(Task):
    name = "segmentation"
    train_metrics = ("loss", "pixel_acc")
    eval_metrics = ("loss", "pixel_acc", "miou", "dice")
    headline = "mean_dice"
    predicts = "masks"
    spatial_output = True
    output_description = ("float32 (batch, classes, height, width) logits per pixel at the input's size (one channel "
                          "for a binary bce model: sigmoid > 0.5 is the foreground); argmax over classes gives the mask")

    def __init__(self, monitor: str = "val/dice", mode: str = "max", loss: dict | None = None, shown_images: int = 4):
        super().__init__(monitor, mode)
        self.criterion = SegmentationLoss(**dict(loss or {}))
        if not isinstance(shown_images, int) or shown_images < 0:
            raise ImgrecError(f"task.shown_images={shown_images!r} must be a whole number >= 0")
        self.shown_images = shown_images
        self.class_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def num_outputs(self, num_classes: int) -> int:
        """Logits per pixel: one for the binary losses (bce), else one per class."""
        if self.criterion.binary and num_classes != 2:
            raise ImgrecError(f"task.loss.name={self.criterion.name} is for two classes (background and foreground); "
                              f"this dataset has {num_classes}: use ce_dice")
        return 1 if self.criterion.binary else num_classes

    def bind(self, class_names: list[str], class_counts: list[int] | None) -> None:
        self.class_names = list(class_names)
        self.criterion.set_class_weights(class_counts)

    def predicted_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, H, W) class ids from (N, outputs, H, W) logits."""
        if logits.shape[1] == 1:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

    def plain_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Summed per-pixel cross-entropy (binary or not), whatever the training loss: val/loss compares runs."""
        logits, target = logits.float(), masks.long()
        valid = target != IGNORE
        if logits.shape[1] == 1:
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], (target == 1).float(), reduction="none")
            return (per_pixel * valid).sum()
        return F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, masks)

    def new_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return {"loss_sum": torch.zeros((), device=device), "correct_pixels": zero, "valid_pixels": zero.clone()}

    def add_to_sums(self, sums, loss, logits, masks) -> int:
        valid = masks != IGNORE
        sums["loss_sum"] += loss.detach() * len(masks)
        sums["correct_pixels"] += ((self.predicted_classes(logits.detach()) == masks) & valid).sum()
        sums["valid_pixels"] += valid.sum()
        return len(masks)

    def train_scores(self, sums: dict[str, float], seen: int) -> dict[str, float]:
        return {"train/loss": sums["loss_sum"] / seen,
                "train/pixel_acc": sums["correct_pixels"] / max(sums["valid_pixels"], 1)}

    def evaluator(self) -> SegmentationEvaluator:
        return SegmentationEvaluator(self)

    def check_output(self, output, where: str) -> None:
        expected = self.num_outputs(self.num_classes) if self.class_names else None
        if not isinstance(output, torch.Tensor) or output.ndim != 4 or output.shape[0] != 1 or (
                expected is not None and output.shape[1] != expected):
            shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ImgrecError(f"{where} returns {shape} for one image; a segmentation model must return (batch, "
                              f"{expected or 'classes'}, height, width) logits: choose model=unet (or fcn_resnet50, "
                              "deeplabv3_*, lraspp_mobilenet_v3_large, smp_unet)")

    # ---- reports and pictures -----------------------------------------------------------------------

    def report(self, evaluation: SegmentationEvaluation, prefix: str, sample_ids: list[str] | None) -> Report:
        per_class = class_scores(evaluation.matrix)
        names = self.class_names
        dice = evaluation.dice.numpy()
        ids = sample_ids if sample_ids is not None else [str(i) for i in range(len(dice))]
        worst = np.argsort(dice, kind="stable")[: min(5, len(dice))]

        def number(value):
            return None if np.isnan(value) else float(value)

        summary = {
            "num_images": int(len(dice)),
            "pixels": int(evaluation.matrix.sum()),
            "pixel_accuracy": number(np.trace(evaluation.matrix) / max(evaluation.matrix.sum(), 1)),
            "mean_iou": number(_mean(per_class["iou"])),
            "mean_iou_foreground": number(_mean(per_class["iou"][1:])),
            "mean_dice": foreground_dice(per_class["dice"]),
            "mean_dice_with_background": number(_mean(per_class["dice"])),
            "per_class": {name: {key: number(per_class[key][i]) for key in ("iou", "dice", "precision", "recall")}
                          | {"support": int(per_class["support"][i])} for i, name in enumerate(names)},
            "per_image_dice": {"mean": number(dice.mean()) if len(dice) else None,
                               "median": number(np.median(dice)) if len(dice) else None,
                               "worst": [{"id": ids[i], "dice": float(dice[i])} for i in worst]},
            "class_names": names,
            "confusion_matrix": evaluation.matrix.tolist(),
            "scores": {key.split("/", 1)[1]: value for key, value in evaluation.scores(prefix).items()},
        }
        tables = [
            Table("per_class.csv", ["class", "iou", "dice", "precision", "recall", "support_pixels"],
                  [[name, *(f"{per_class[key][i]:.6g}" for key in ("iou", "dice", "precision", "recall")),
                    int(per_class["support"][i])] for i, name in enumerate(names)]),
            Table("per_image.csv", ["index", "path", "dice"],
                  [[i, ids[i] if sample_ids is not None else "", f"{d:.6g}"] for i, d in enumerate(dice)]),
        ]
        width = max(12, *(len(n) for n in names))
        lines = [f"{'':>{width}} {'iou':>9} {'dice':>9} {'precision':>9} {'recall':>9} {'pixels':>11}"]
        for i, name in enumerate(names):
            lines.append(f"{name:>{width}} " + " ".join(f"{shown(per_class[key][i]):>9}" for key in
                                                        ("iou", "dice", "precision", "recall"))
                         + f" {int(per_class['support'][i]):>11d}")
        lines.append(f"pixel accuracy {shown(summary['pixel_accuracy'])}; mean IoU {shown(summary['mean_iou'])}; "
                     f"mean Dice (foreground) {shown(summary['mean_dice'])}; per-image Dice median "
                     f"{shown(summary['per_image_dice']['median'])}, worst {shown(dice.min() if len(dice) else None)}")
        return Report(summary, tables, "\n".join(lines))

    def test_report(self, evaluation: SegmentationEvaluation, sample_ids: list[str] | None) -> Report:
        report = self.report(evaluation, "test", sample_ids)
        report.text = "test split:\n" + report.text
        return report

    def comparison_figure(self, evaluation: SegmentationEvaluation, images_at, tag: str, title: str, count: int):
        """The `count` worst and best images by Dice: image, truth, prediction, errors."""
        dice = evaluation.dice.numpy()
        order = np.argsort(dice, kind="stable")
        if len(order) <= 2 * count:  # a small split: every image, worst first
            chosen = list(order)
            captions = [f"dice {dice[i]:.3f} ({rank + 1} of {len(order)}, worst first)" for rank, i in enumerate(chosen)]
        else:
            chosen = [*order[:count], *order[::-1][:count]]
            captions = [f"{'worst' if rank < count else 'best'}: dice {dice[i]:.3f}" for rank, i in enumerate(chosen)]
        if not chosen or images_at is None:
            return []
        images = images_at(np.array(chosen))
        strips = np.stack([comparison(image, evaluation.truth[i].numpy(), evaluation.predicted[i].numpy())
                           for image, i in zip(images, chosen)])
        # one strip (four panels) per row, each panel up to 256 px: the errors of a 512 px scan stay visible
        return [ImageGridFigure(tag, strips, captions, title, max_side=1024, columns=1)]

    def validation_figures(self, evaluation: SegmentationEvaluation, images_at, epoch: int, max_images: int) -> list:
        count = min(self.shown_images, max_images // 2)
        return [ConfusionMatrixFigure("val/confusion_matrix", evaluation.matrix, self.class_names,
                                      f"val pixels, epoch {epoch}"),
                *self.comparison_figure(evaluation, images_at, "val/worst_and_best",
                                        f"image | truth | prediction | errors, epoch {epoch}", count)]

    def eval_report(self, evaluation: SegmentationEvaluation, sample_ids: list[str], images_at, split_name: str,
                    threshold, settings) -> tuple[Report, list]:
        report = self.report(evaluation, split_name, sample_ids)
        figures = [ConfusionMatrixFigure("confusion_matrix", evaluation.matrix, self.class_names,
                                         f"{split_name} pixel confusion matrix"),
                   *self.comparison_figure(evaluation, images_at, "worst_and_best",
                                           "image | truth | prediction | errors", max(1, min(8, settings.errors_shown // 2)))]
        return report, figures
