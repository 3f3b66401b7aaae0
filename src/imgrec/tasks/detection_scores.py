"""Detection scores: COCO's mAP family from pycocotools itself, and precision / recall / F1 at one score
threshold (the study's `vehicle_prob > THRESHOLD`) by greedy matching at IoU 0.5.

Inputs are one record per image: predictions {boxes (M, 4) x1 y1 x2 y2 pixels, scores (M,), labels (M,)} and
ground truth {boxes (N, 4), labels (N,)}, labels 0-based class indices. COCO wants category ids, which here
are the index + 1 (id 0 is easy to mistake for "none" in COCO tooling), boxes as x, y, w, h, and areas for its
small / medium / large split (the box area: there are no masks).
"""

import contextlib
import io
import math

import numpy as np
import torch

# pycocotools' COCOeval.stats, in its order (maxDets 100 unless named)
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
              "mar_small", "mar_medium", "mar_large")


def _coco_ground_truth(targets: list[dict], num_classes: int):
    from pycocotools.coco import COCO

    images, annotations = [], []
    for image_id, target in enumerate(targets, start=1):
        images.append({"id": image_id})
        for box, label in zip(np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4),
                              np.asarray(target["labels"]).reshape(-1)):
            width, height = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [box[0], box[1], width, height], "area": width * height, "iscrowd": 0})
    ground_truth = COCO()
    ground_truth.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": index + 1} for index in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        ground_truth.createIndex()
    return ground_truth


def _coco_detections(predictions: list[dict]) -> np.ndarray:
    """pycocotools' loadRes array form: image_id, x, y, w, h, score, category_id per row."""
    rows = []
    for image_id, prediction in enumerate(predictions, start=1):
        boxes = np.asarray(prediction["boxes"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(prediction["scores"]).reshape(-1),
                                     np.asarray(prediction["labels"]).reshape(-1)):
            rows.append([image_id, box[0], box[1], box[2] - box[0], box[3] - box[1], score, int(label) + 1])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def coco_scores(predictions: list[dict], targets: list[dict], num_classes: int) -> dict:
    """{map, map50, map75, map_small ..., mar_100 ..., per_class_ap: [AP@[.5:.95] per class], per_class_ap50,
    pr_curves: {class index: (recall, precision) at IoU 0.5}}; NaN where COCO has nothing to average (no
    ground truth of that kind). No detections at all scores 0 wherever there is ground truth."""
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    ground_truth = _coco_ground_truth(targets, num_classes)
    detections = _coco_detections(predictions)
    has_truth = len(ground_truth.dataset["annotations"]) > 0
    if len(detections) == 0:
        empty = {name: (0.0 if has_truth else math.nan) for name in COCO_STATS}
        per_class = [0.0 if _count(targets, k) else math.nan for k in range(num_classes)]
        return {**empty, "per_class_ap": per_class, "per_class_ap50": list(per_class), "pr_curves": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    scores = {name: (float(value) if value >= 0 else math.nan) for name, value in zip(COCO_STATS, evaluation.stats)}
    # precision: [IoU thresholds, recall points, classes, area ranges, max detections]; -1 where undefined
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    recall_points = evaluation.params.recThrs
    per_class, per_class50, curves = [], [], {}
    for index in range(num_classes):
        everywhere, at50 = precision[:, :, index], precision[0, :, index]
        per_class.append(float(everywhere[everywhere > -1].mean()) if (everywhere > -1).any() else math.nan)
        per_class50.append(float(at50[at50 > -1].mean()) if (at50 > -1).any() else math.nan)
        if (at50 > -1).any():
            curves[index] = (recall_points.tolist(), np.where(at50 > -1, at50, 0.0).tolist())
    return {**scores, "per_class_ap": per_class, "per_class_ap50": per_class50, "pr_curves": curves}


def _count(targets: list[dict], label: int) -> int:
    return sum(int((np.asarray(t["labels"]).reshape(-1) == label).sum()) for t in targets)


def match_flags(predictions: list[dict], targets: list[dict], iou_threshold: float = 0.5):
    """(scores, true_positive flags, number of true boxes) over every detection: per image and class, highest
    score first, each detection takes the unmatched true box of its class it overlaps most if that IoU
    reaches `iou_threshold` (PASCAL VOC's rule). Dropping the detections below any score threshold leaves
    the others' matches as they are, so one matching serves every threshold."""
    from torchvision.ops import box_iou

    scores, flags, truths = [], [], 0
    for prediction, target in zip(predictions, targets):
        boxes = torch.as_tensor(np.asarray(prediction["boxes"]), dtype=torch.float64).reshape(-1, 4)
        labels = torch.as_tensor(np.asarray(prediction["labels"])).reshape(-1)
        found_scores = torch.as_tensor(np.asarray(prediction["scores"]), dtype=torch.float64).reshape(-1)
        truth_boxes = torch.as_tensor(np.asarray(target["boxes"]), dtype=torch.float64).reshape(-1, 4)
        truth_labels = torch.as_tensor(np.asarray(target["labels"])).reshape(-1)
        truths += len(truth_labels)
        for label in set(labels.tolist()):
            mine, theirs = labels == label, truth_labels == label
            order = found_scores[mine].argsort(descending=True, stable=True)
            overlaps = box_iou(boxes[mine][order], truth_boxes[theirs])
            taken = torch.zeros(int(theirs.sum()), dtype=torch.bool)
            for score, row in zip(found_scores[mine][order].tolist(), overlaps):
                row = row.masked_fill(taken, -1.0)
                hit = bool(len(row)) and float(row.max()) >= iou_threshold
                if hit:
                    taken[row.argmax()] = True
                scores.append(score)
                flags.append(hit)
    return np.asarray(scores, dtype=np.float64), np.asarray(flags, dtype=bool), truths


def matches_at(predictions: list[dict], targets: list[dict], score_threshold: float,
               iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of the detections scoring at least the threshold."""
    scores, hits, truths = match_flags(predictions, targets, iou_threshold)
    kept = scores >= score_threshold
    true_positives = int((hits & kept).sum())
    return true_positives, int((~hits & kept).sum()), truths - true_positives


def operating_points(predictions: list[dict], targets: list[dict], iou_threshold: float = 0.5) -> dict:
    """Precision, recall and F1 at every distinct detection score (as the threshold), highest first."""
    scores, hits, truths = match_flags(predictions, targets, iou_threshold)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    true_positives, found = np.cumsum(hits), np.arange(1, len(hits) + 1)
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)  # one point per score
    precision = true_positives / found
    recall = true_positives / truths if truths else np.full(len(found), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"threshold": scores[last], "precision": precision[last], "recall": recall[last], "f1": f1[last],
            "truths": truths}


def precision_recall_f1(true_positives: int, false_positives: int, false_negatives: int) -> dict[str, float]:
    found, present = true_positives + false_positives, true_positives + false_negatives
    precision = true_positives / found if found else math.nan
    recall = true_positives / present if present else math.nan
    f1 = 2 * precision * recall / (precision + recall) if found and present and precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def class_confusion(predictions: list[dict], targets: list[dict], num_classes: int, score_threshold: float,
                    iou_threshold: float = 0.5) -> np.ndarray:
    """(classes + 1) x (classes + 1) counts, rows the true class, columns the detected one, the last of each
    `background`: per image, the detections scoring at least the threshold and the true boxes are paired
    whatever their classes, highest IoU first, when the IoU reaches `iou_threshold`. A pair counts at (true,
    detected); a true box left alone at (true, background), a missed object; a detection left alone at
    (background, detected), a false alarm. The diagonal are the correct detections."""
    from torchvision.ops import box_iou

    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for prediction, target in zip(predictions, targets):
        kept = np.asarray(prediction["scores"]).reshape(-1) >= score_threshold
        boxes = torch.as_tensor(np.asarray(prediction["boxes"]).reshape(-1, 4)[kept], dtype=torch.float64)
        labels = np.asarray(prediction["labels"]).reshape(-1)[kept].astype(int)
        truth_boxes = torch.as_tensor(np.asarray(target["boxes"]).reshape(-1, 4), dtype=torch.float64)
        truth_labels = np.asarray(target["labels"]).reshape(-1).astype(int)
        overlaps = box_iou(truth_boxes, boxes).numpy() if len(boxes) and len(truth_boxes) else np.zeros((0, 0))
        truth_free, found_free = np.ones(len(truth_labels), bool), np.ones(len(labels), bool)
        for flat in np.argsort(-overlaps, axis=None, kind="stable"):
            truth, found = np.unravel_index(flat, overlaps.shape)
            if overlaps[truth, found] < iou_threshold:
                break
            if truth_free[truth] and found_free[found]:
                truth_free[truth] = found_free[found] = False
                counts[truth_labels[truth], labels[found]] += 1
        np.add.at(counts, (truth_labels[truth_free], num_classes), 1)
        np.add.at(counts, (num_classes, labels[found_free]), 1)
    return counts
