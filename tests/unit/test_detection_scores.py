"""Detection scores against pycocotools run directly on JSON files, against torchmetrics, and on cases whose
answer is worked out by hand."""

import json
import math

import numpy as np
import pytest
import torch

from imgrec.tasks.detection_scores import coco_scores, matches_at, precision_recall_f1

pytest.importorskip("pycocotools")


def random_case(seed: int, images: int = 12, classes: int = 3):
    """Ground truth, and predictions that are the truth jittered, some missed, some invented."""
    rng = np.random.default_rng(seed)
    targets, predictions = [], []
    for _ in range(images):
        count = rng.integers(0, 5)
        corners = rng.uniform(0, 80, (count, 2))
        sizes = rng.uniform(8, 40, (count, 2))
        boxes = np.concatenate([corners, corners + sizes], axis=1).astype(np.float32)
        labels = rng.integers(0, classes, count)
        targets.append({"boxes": boxes, "labels": labels})
        found = rng.random(count) < 0.8
        jittered = boxes[found] + rng.normal(0, 3, (int(found.sum()), 4)).astype(np.float32)
        invented_corners = rng.uniform(0, 80, (2, 2))
        invented = np.concatenate([invented_corners, invented_corners + 20], axis=1).astype(np.float32)
        kept = int(found.sum())
        guessed = np.where(rng.random(kept) < 0.9, labels[found], rng.integers(0, classes, kept))
        predictions.append({"boxes": np.concatenate([jittered, invented]),
                            "scores": rng.uniform(0.05, 1.0, len(jittered) + 2),
                            "labels": np.concatenate([guessed, rng.integers(0, classes, 2)])})
    return predictions, targets


def pycocotools_from_files(predictions, targets, classes, tmp_path) -> list[float]:
    """What a user running pycocotools on exported COCO JSON gets: stats of COCOeval over the two files."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (prediction, target) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": image_id, "width": 128, "height": 128, "file_name": f"{image_id}.png"})
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
        for box, score, label in zip(prediction["boxes"].tolist(), prediction["scores"].tolist(),
                                     prediction["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": label + 1, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    (tmp_path / "truth.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(classes)]}))
    (tmp_path / "results.json").write_text(json.dumps(results))
    truth = COCO(str(tmp_path / "truth.json"))
    evaluation = COCOeval(truth, truth.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_scores_are_pycocotools_run_on_json_files(seed, tmp_path):
    predictions, targets = random_case(seed)
    ours = coco_scores(predictions, targets, num_classes=3)
    stats = pycocotools_from_files(predictions, targets, 3, tmp_path)
    for name, value in zip(("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_1", "mar_10",
                            "mar_100"), stats):
        assert (math.isnan(ours[name]) and value == -1) or ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0.2 < ours["map50"] < 1.0  # a case with something to score


def test_per_class_ap_is_torchmetrics_class_metrics():
    MeanAveragePrecision = pytest.importorskip("torchmetrics.detection").MeanAveragePrecision

    predictions, targets = random_case(3, images=20)
    ours = coco_scores(predictions, targets, num_classes=3)
    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, backend="pycocotools")
    metric.update([{name: torch.as_tensor(value) for name, value in p.items()} for p in predictions],
                  [{name: torch.as_tensor(value) for name, value in t.items()} for t in targets])
    reference = metric.compute()
    assert ours["map"] == pytest.approx(float(reference["map"]), abs=1e-6)
    assert ours["per_class_ap"] == pytest.approx(reference["map_per_class"].tolist(), abs=1e-6)


def test_one_hit_one_miss_and_one_false_alarm_give_cocos_101_point_ap():
    truth = [{"boxes": np.array([[10, 10, 30, 30], [50, 50, 70, 70]], np.float32), "labels": np.array([0, 0])}]
    found = [{"boxes": np.array([[10, 10, 30, 30], [100, 100, 120, 120]], np.float32),
              "scores": np.array([0.9, 0.8]), "labels": np.array([0, 0])}]
    scores = coco_scores(found, truth, num_classes=2)
    # precision 1 up to recall 0.5 (the hit ranks first), nothing beyond: 51 of COCO's 101 recall points
    assert scores["map"] == scores["map50"] == scores["map75"] == pytest.approx(51 / 101)
    assert scores["mar_100"] == pytest.approx(0.5)
    assert scores["per_class_ap"][0] == pytest.approx(51 / 101) and math.isnan(scores["per_class_ap"][1])
    assert matches_at(found, truth, score_threshold=0.85) == (1, 0, 1)
    assert matches_at(found, truth, score_threshold=0.5) == (1, 1, 1)
    assert precision_recall_f1(1, 1, 1) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}


def test_a_second_detection_of_one_object_is_a_false_positive_and_labels_must_agree():
    truth = [{"boxes": np.array([[0, 0, 20, 20]], np.float32), "labels": np.array([1])}]
    twice = [{"boxes": np.array([[0, 0, 20, 20], [1, 1, 21, 21]], np.float32), "scores": np.array([0.9, 0.95]),
              "labels": np.array([1, 1])}]
    assert matches_at(twice, truth, 0.5) == (1, 1, 0)
    wrong_class = [{"boxes": np.array([[0, 0, 20, 20]], np.float32), "scores": np.array([0.9]),
                    "labels": np.array([0])}]
    assert matches_at(wrong_class, truth, 0.5) == (0, 1, 1)
    assert coco_scores(wrong_class, truth, num_classes=2)["map"] == 0.0


def test_no_detections_score_zero_where_there_is_truth_and_nan_where_there_is_none():
    truth = [{"boxes": np.array([[0, 0, 20, 20]], np.float32), "labels": np.array([0])},
             {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}]
    nothing = [{"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}] * 2
    scores = coco_scores(nothing, truth, num_classes=2)
    assert scores["map"] == 0.0 and scores["per_class_ap"][0] == 0.0 and math.isnan(scores["per_class_ap"][1])
    assert matches_at(nothing, truth, 0.5) == (0, 0, 1)
    assert precision_recall_f1(0, 0, 1)["f1"] == 0.0


def test_class_confusion_pairs_boxes_whatever_their_class_and_counts_misses_and_false_alarms():
    from imgrec.tasks.detection_scores import class_confusion

    truth = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float), "labels": np.array([0, 1, 1])}
    found = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 31], [60, 60, 70, 70], [40, 40, 50, 50]], float),
             "labels": np.array([0, 0, 1, 1]), "scores": np.array([0.9, 0.8, 0.7, 0.1])}
    empty_truth = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}
    alarm = {"boxes": np.array([[1, 1, 5, 5]], float), "labels": np.array([1]), "scores": np.array([0.6])}
    counts = class_confusion([found, alarm], [truth, empty_truth], num_classes=2, score_threshold=0.5)
    assert counts.tolist() == [[1, 0, 0],   # class 0: found as class 0
                               [1, 0, 1],   # class 1: one found as class 0, one missed (its box scored 0.1)
                               [0, 2, 0]]   # background: two class-1 false alarms
    everything = class_confusion([found], [truth], num_classes=2, score_threshold=0.0)
    assert everything.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 0]]  # at 0 the low box finds its object
