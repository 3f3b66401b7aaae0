"""Object detection: boxes, classes and scores for every object, with torchvision's detectors, scored by
COCO's mAP (pycocotools) and by precision / recall / F1 at a score threshold.

Batches are lists (images of a batch may differ in size). Labels are 0-based everywhere in imgrec; torchvision
reserves 0 for the background, so training targets are shifted up by one on their way in and detections down
by one on their way out (a RetinaNet / FCOS detection of label 0, a class no annotation has, is dropped).
"""

import math

import numpy as np
import torch

from imgrec.errors import ImgrecError
from imgrec.models.detectors import DetectionInputs
from imgrec.tasks.base import (ConfusionMatrixFigure, CurvesPlotFigure, Evaluation, Evaluator, Gather, ImageGridFigure,
                               Report, Table, Task)
from imgrec.tasks.detection_scores import (class_confusion, coco_scores, matches_at, operating_points,
                                           precision_recall_f1)

SCORED = ("map", "map50", "map75", "mar_100")


class DetectionEvaluation(Evaluation):
    def __init__(self, predictions: list[dict], targets: list[dict], class_names: list[str], score_threshold: float):
        self.predictions, self.targets, self.class_names = predictions, targets, class_names
        self.score_threshold = score_threshold
        self._coco = None

    @property
    def coco(self) -> dict:
        if self._coco is None:  # pycocotools' evaluation runs once per split, whatever asks first
            self._coco = coco_scores(self.predictions, self.targets, len(self.class_names))
        return self._coco

    def at_threshold(self) -> dict[str, float]:
        return precision_recall_f1(*matches_at(self.predictions, self.targets, self.score_threshold))

    def scores(self, prefix: str) -> dict[str, float]:
        return {**{f"{prefix}/{name}": self.coco[name] for name in SCORED},
                **{f"{prefix}/{name}": value for name, value in self.at_threshold().items()}}

    def test_scores(self) -> dict[str, float]:
        return {name.removeprefix("test/"): value for name, value in self.scores("test").items()}


class DetectionEvaluator(Evaluator):
    def __init__(self, class_names: list[str], score_threshold: float):
        self.class_names, self.score_threshold = class_names, score_threshold
        self.predictions: list[dict] = []
        self.targets: list[dict] = []

    def update(self, outputs: list[dict], targets: list[dict]) -> None:
        for found, truth in zip(outputs, targets):
            real = found["labels"] > 0  # 0 is torchvision's background
            self.predictions.append({"boxes": found["boxes"][real].float().cpu().numpy(),
                                     "scores": found["scores"][real].float().cpu().numpy(),
                                     "labels": (found["labels"][real] - 1).cpu().numpy()})
            self.targets.append({"boxes": truth["boxes"].cpu().numpy(), "labels": truth["labels"].cpu().numpy()})

    def finish(self, gather: Gather) -> DetectionEvaluation:
        pairs = gather.objects_in_order(list(zip(self.predictions, self.targets)))  # under torchrun: every process's
        return DetectionEvaluation([found for found, _ in pairs], [truth for _, truth in pairs], self.class_names,
                                   self.score_threshold)


class DetectionTask(Task):
    name = "detection"
    train_metrics = ("loss",)
    eval_metrics = (*SCORED, "precision", "recall", "f1")
    tie_break, tie_break_mode = "val/map", "max"  # no val/loss
    headline = "map50"
    predicts = "boxes"
    served_by = ("eval", "predict", "export")
    any_image_size = True  # the detector resizes each image itself: imgrec-eval reads them as they are
    classes_from_checkpoint = True  # a batch of new images seldom holds every class
    output_description = "per image: boxes (x1, y1, x2, y2 pixels), scores and 0-based labels"

    def __init__(self, monitor: str = "val/map50", mode: str = "max", score_threshold: float = 0.5):
        super().__init__(monitor, mode)
        if not isinstance(score_threshold, (int, float)) or isinstance(score_threshold, bool) \
                or not 0 <= score_threshold <= 1:
            raise ImgrecError(f"task.score_threshold={score_threshold!r} must be in [0, 1]: detections scoring at "
                              "least this count in precision / recall / F1 (mAP uses every score)")
        self.score_threshold = float(score_threshold)
        self.class_names: list[str] = []

    def num_outputs(self, num_classes: int) -> int:
        return num_classes + 1  # torchvision's background

    def bind(self, class_names: list[str], class_counts: list[int] | None) -> None:
        self.class_names = list(class_names)

    def train_batch(self, images: list[torch.Tensor], targets: list[dict]):
        shifted = [{"boxes": target["boxes"], "labels": target["labels"] + 1} for target in targets]
        return DetectionInputs(images, shifted), targets

    def loss(self, outputs: dict[str, torch.Tensor], targets) -> torch.Tensor:
        return sum(outputs.values())

    def add_to_sums(self, sums, loss, outputs, targets) -> int:
        sums["loss_sum"] += loss.detach() * len(targets)
        return len(targets)

    def train_scores(self, sums: dict[str, float], seen: int) -> dict[str, float]:
        return {"train/loss": sums["loss_sum"] / seen}

    def evaluator(self) -> DetectionEvaluator:
        return DetectionEvaluator(self.class_names, self.score_threshold)

    def check_output(self, output, where: str) -> None:
        if not (isinstance(output, list) and output and isinstance(output[0], dict) and "boxes" in output[0]):
            raise ImgrecError(f"{where} does not return detections (a list of boxes, labels and scores per image): "
                              "choose a detection model, e.g. model=fasterrcnn_mobilenet_v3_large_320_fpn")

    def validation_figures(self, evaluation: DetectionEvaluation, images_at, epoch: int, max_images: int) -> list:
        """The first validation images with their true boxes (green) and the detections scoring at least
        task.score_threshold (red, with class and score)."""
        count = min(len(evaluation.targets), max_images, 16)
        if count == 0 or images_at is None:
            return []
        return [ImageGridFigure("val/detections", boxes_drawn(images_at(range(count)), evaluation, self.class_names,
                                                               evaluation.score_threshold),
                                [f"{len(evaluation.targets[i]['labels'])} true, "
                                 f"{int((evaluation.predictions[i]['scores'] >= evaluation.score_threshold).sum())} found"
                                 for i in range(count)],
                                f"truth (green) and detections >= {evaluation.score_threshold:g} (red), epoch {epoch}",
                                max_side=256, columns=4)]

    def test_report(self, evaluation: DetectionEvaluation, sample_ids: list[str]) -> Report:
        coco, at_threshold = evaluation.coco, evaluation.at_threshold()
        sample_ids = sample_ids or [str(index) for index in range(len(evaluation.predictions))]
        boxes = [int(sum((np.asarray(t["labels"]) == k).sum() for t in evaluation.targets))
                 for k in range(len(self.class_names))]
        per_class = [[name, coco["per_class_ap"][k], coco["per_class_ap50"][k], boxes[k]]
                     for k, name in enumerate(self.class_names)]
        detections = [[sample, self.class_names[int(label)], float(score), *map(float, box)]
                      for sample, found in zip(sample_ids, evaluation.predictions)
                      for box, score, label in zip(found["boxes"], found["scores"], found["labels"])]
        summary = {"num_samples": len(sample_ids), "scores": evaluation.test_scores(),
                   **{name: coco[name] for name in SCORED},
                   **{name: coco[name] for name in ("map_small", "map_medium", "map_large", "mar_1", "mar_10")},
                   "score_threshold": evaluation.score_threshold, **at_threshold,
                   "per_class": {row[0]: {"ap": row[1], "ap50": row[2], "boxes": row[3]} for row in per_class}}
        lines = [f"{'class':>20} {'AP':>7} {'AP50':>7} {'boxes':>6}"]
        lines += [f"{name:>20} {_shown(ap)} {_shown(ap50)} {count:>6}" for name, ap, ap50, count in per_class]
        lines.append(f"mAP@[.5:.95] {_shown(coco['map'])}; mAP@.5 {_shown(coco['map50'])}; at score >= "
                     f"{evaluation.score_threshold:g}: precision {_shown(at_threshold['precision'])}, recall "
                     f"{_shown(at_threshold['recall'])}, F1 {_shown(at_threshold['f1'])}")
        return Report(summary, [Table("per_class.csv", ["class", "ap", "ap50", "boxes"], per_class),
                                Table("test_detections.csv", ["image", "class", "score", "x1", "y1", "x2", "y2"],
                                      detections)], "\n".join(lines))

    def check_threshold_settings(self, threshold, target_recall) -> None:
        """imgrec-eval's score threshold: null (task.score_threshold), auto (chosen on val: best F1, or the
        highest whose recall reaches target_recall), or a number in [0, 1]."""
        is_score = isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1
        if threshold not in (None, "auto") and not is_score:
            raise ImgrecError(f"threshold={threshold!r} must be null (task.score_threshold), auto (chosen on val) or a "
                              "score in [0, 1]")
        if target_recall is not None and (threshold != "auto" or not isinstance(target_recall, (int, float))
                                          or isinstance(target_recall, bool) or not 0 < target_recall <= 1):
            raise ImgrecError(f"target_recall={target_recall!r} needs threshold=auto and a value in (0, 1], e.g. 0.9")

    def chosen_threshold(self, evaluation: DetectionEvaluation, target_recall: float | None) -> dict:
        """The score threshold on `evaluation` (the val split) with the best F1, or the highest whose recall
        reaches target_recall (the most precise one that finds enough)."""
        points = operating_points(evaluation.predictions, evaluation.targets)
        if not len(points["threshold"]):
            raise ImgrecError("threshold=auto: the model found nothing on the val split to choose a threshold from; "
                              "train it longer, or give a threshold (e.g. threshold=0.3)")
        if target_recall is None:
            index = int(np.nanargmax(points["f1"]))
        else:
            reaching = np.flatnonzero(points["recall"] >= target_recall)
            if not len(reaching):
                raise ImgrecError(f"target_recall={target_recall}: no threshold reaches it on val (at most "
                                  f"{np.nanmax(points['recall']):.3f}, with every detection kept)")
            index = int(reaching[0])  # thresholds fall as recall rises: the first is the highest
        return {"threshold": float(points["threshold"][index]), "val_precision": float(points["precision"][index]),
                "val_recall": float(points["recall"][index]), "val_f1": float(points["f1"][index]),
                "chosen_on": "val", "target_recall": target_recall}

    def eval_report(self, evaluation: DetectionEvaluation, sample_ids, images_at, split_name, threshold, settings):
        """The test report's numbers at the chosen score threshold, the precision / recall / F1 at every
        threshold (operating_points.csv), and the first images with their boxes."""
        if threshold is not None:
            evaluation.score_threshold = threshold["threshold"]
        report = self.test_report(evaluation, sample_ids)
        figures = self.validation_figures(evaluation, images_at, 0, 16)
        if threshold is not None:
            report.summary["threshold"] = threshold
        points = operating_points(evaluation.predictions, evaluation.targets)
        report.tables.append(Table("operating_points.csv", ["threshold", "precision", "recall", "f1"],
                                   [list(map(float, row)) for row in zip(points["threshold"], points["precision"],
                                                                         points["recall"], points["f1"])]))
        for figure in figures:
            figure.tag, figure.title = "detections", figure.title.replace(", epoch 0", f", {split_name} split")
        curves = {f"{self.class_names[index]} (AP50 {evaluation.coco['per_class_ap50'][index]:.3f})": curve
                  for index, curve in sorted(evaluation.coco["pr_curves"].items())}
        figures.append(CurvesPlotFigure("pr_curves", curves, f"PR per class, IoU 0.5 (COCO's), {split_name} split",
                                        "recall", "precision"))
        names = [*self.class_names, "background"]
        counts = class_confusion(evaluation.predictions, evaluation.targets, len(self.class_names),
                                 evaluation.score_threshold)
        report.summary["confusion_matrix"] = counts.tolist()
        report.tables.append(Table("confusion_matrix.csv", ["true \\ detected", *names],
                                   [[name, *row] for name, row in zip(names, counts.tolist())]))
        figures.append(ConfusionMatrixFigure("confusion_matrix", counts, names,
                                             f"boxes paired at IoU >= 0.5, score >= {evaluation.score_threshold:.3g}: "
                                             "background = missed / false alarm"))
        return report, figures


def _shown(value: float) -> str:
    return f"{value:7.4f}" if not math.isnan(value) else f"{'n/a':>7}"


def boxes_drawn(images: np.ndarray, evaluation: DetectionEvaluation, class_names: list[str],
                score_threshold: float) -> np.ndarray:
    """uint8 (N, 3, H, W) images with each one's true boxes in green and its detections in red."""
    from torchvision.utils import draw_bounding_boxes

    # small images are enlarged (whole pixels) first, so that box outlines and captions stay legible
    zoom = max(1, 256 // max(images.shape[2:]))
    drawn = []
    for index, image in enumerate(images):
        picture = torch.from_numpy(np.ascontiguousarray(image)).repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
        truth = evaluation.targets[index]
        if len(truth["boxes"]):
            picture = draw_bounding_boxes(picture, torch.as_tensor(truth["boxes"], dtype=torch.float32) * zoom,
                                          colors="lime", width=max(1, zoom // 2))
        found = evaluation.predictions[index]
        keep = found["scores"] >= score_threshold
        if keep.any():
            labels = [f"{class_names[int(k)]} {s:.2f}" for k, s in zip(found["labels"][keep], found["scores"][keep])]
            picture = draw_bounding_boxes(picture, torch.as_tensor(found["boxes"][keep], dtype=torch.float32) * zoom,
                                          labels=labels, colors="red", width=max(1, zoom // 2))
        drawn.append(picture.numpy())
    return np.stack(drawn)
