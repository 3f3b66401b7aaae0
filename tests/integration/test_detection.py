"""task=detection through imgrec-train: a run on the built-in shapes writes COCO scores and per-class files,
resumes to the weights of an unbroken run, and refuses what does not fit it in one line."""

import csv
import json

import pytest
import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.commands.train import train
from imgrec.errors import ImgrecError

def annotated_folder(root, layout: str, count: int = 9):
    """`count` grey 48 x 40 images with one or two boxes (classes cat, dog) in `layout`'s default folders."""
    import numpy as np
    from PIL import Image

    images = root / ("JPEGImages" if layout == "voc" else "images")
    images.mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    for index in range(count):
        Image.fromarray(np.full((40, 48), 20 * index, np.uint8)).save(images / f"{index}.png")
        boxes = [(index % 2, 2 + index, 3, 20 + index, 30)] + ([(1, 30, 5, 46, 38)] if index % 3 == 0 else [])
        if layout == "voc":
            objects = "".join(f"<object><name>{('cat', 'dog')[k]}</name><bndbox><xmin>{x1 + 1}</xmin>"
                              f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                              for k, x1, y1, x2, y2 in boxes)
            (root / "Annotations").mkdir(exist_ok=True)
            (root / "Annotations" / f"{index}.xml").write_text(
                f"<annotation><filename>{index}.png</filename><size><width>48</width><height>40</height></size>"
                f"{objects}</annotation>")
        elif layout == "yolo":
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{index}.txt").write_text("".join(
                f"{k} {(x1 + x2) / 96} {(y1 + y2) / 80} {(x2 - x1) / 48} {(y2 - y1) / 40}\n"
                for k, x1, y1, x2, y2 in boxes))
        else:
            coco["images"].append({"id": index + 1, "file_name": f"{index}.png", "width": 48, "height": 40})
            coco["annotations"] += [{"id": len(coco["annotations"]) + n + 1, "image_id": index + 1,
                                     "category_id": k + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0}
                                    for n, (k, x1, y1, x2, y2) in enumerate(boxes)]
    if layout == "coco":
        (root / "annotations.json").write_text(json.dumps(coco))
    return root


SMOKE = ["experiment=det_smoke", "dataset.size=24", "trainer.batch_size=4", "~callbacks.validation_figures"]


def test_a_detection_run_writes_coco_scores_and_its_files(compose_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with_figures = [o for o in SMOKE if o != "~callbacks.validation_figures"]
    result = train(compose_cfg(*with_figures, "trainer.max_epochs=1", run_dir=tmp_path))
    events = EventAccumulator(str(next((tmp_path / "tensorboard").iterdir())))
    events.Reload()
    assert "val/detections" in events.Tags()["images"] and "val/map50" in events.Tags()["scalars"]
    assert {"train/loss", "val/map", "val/map50", "val/map75", "val/mar_100", "val/precision", "val/recall",
            "val/f1"} <= set(result["metrics"])
    report = json.loads((tmp_path / "test_report.json").read_text())
    assert report["num_samples"] == 4  # 24 images: round(3.6) = 4 for test
    assert set(report["per_class"]) == {"disc", "square", "triangle"}
    assert report["scores"]["map50"] == report["map50"] == result["test"]["map50"]
    with open(tmp_path / "per_class.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["class"] for row in rows] == ["disc", "square", "triangle"]
    assert sum(int(row["boxes"]) for row in rows) == sum(v["boxes"] for v in report["per_class"].values()) > 0
    with open(tmp_path / "test_detections.csv") as file:
        header = next(csv.reader(file))
    assert header == ["image", "class", "score", "x1", "y1", "x2", "y2"]
    classes = json.loads((tmp_path / "classes.json").read_text())
    assert classes["class_names"] == ["disc", "square", "triangle"] and sum(classes["counts"]["train"]) > 0
    best = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert best["config"]["model"]["num_classes"] == 4  # three classes and torchvision's background


def test_a_resumed_detection_run_ends_where_an_unbroken_one_does(compose_cfg, tmp_path):
    run = [*SMOKE, "box_augment=detection_classic"]
    straight = train(compose_cfg(*run, "trainer.max_epochs=2", "test=false", run_dir=tmp_path / "straight"))
    train(compose_cfg(*run, "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "first"))
    resumed = train(compose_cfg(*run, "trainer.max_epochs=2", "test=false",
                                f"ckpt_path={tmp_path / 'first/checkpoints/last.pt'}", run_dir=tmp_path / "resumed"))
    assert straight["metrics"] == resumed["metrics"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("overrides, message", [
    (["augment=basic"], r"augment=\.\.\. transforms pixels without moving boxes; for task=detection use box_augment="),
    (["dataset=digits"], r"dataset digits serves the classification task but task=detection"),
    (["task.score_threshold=2"], r"task.score_threshold=2 must be in \[0, 1\]"),
    (["model.min_size=0"], r"model.min_size=0 must be a whole number >= 1"),
])
def test_what_does_not_fit_detection_is_named(compose_cfg, tmp_path, overrides, message):
    with pytest.raises(ImgrecError, match=message):
        train(compose_cfg(*SMOKE, *overrides, run_dir=tmp_path))


def test_a_classifier_is_no_detector(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match=r"model=SmallCNN does not return detections .* choose a detection model"):
        train(compose_cfg("task=detection", "model=small_cnn", "dataset.size=24", run_dir=tmp_path))


def test_box_augment_is_refused_for_other_tasks(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match=r"box_augment moves detection boxes; task=classification has none"):
        train(compose_cfg("dataset=fake", "box_augment=detection_basic", run_dir=tmp_path))


@pytest.mark.parametrize("layout", ["voc", "coco", "yolo"])
def test_each_annotation_layout_reads_the_same_boxes(tmp_path, layout):
    from imgrec.data.detection_datasets import detection_folder

    root = annotated_folder(tmp_path / layout, layout)
    splits = detection_folder(str(root), format=layout, class_names=["cat", "dog"] if layout == "yolo" else None,
                              val_fraction=0.2, test_fraction=0.2)
    everything = splits.everything()
    found = {path.name: (boxes.round(3).tolist(), labels.tolist())
             for path, boxes, labels in zip(everything.paths, everything.boxes, everything.labels)}
    assert splits.class_names == ["cat", "dog"] and len(found) == 9
    assert found["3.png"] == ([[5.0, 3.0, 23.0, 30.0], [30.0, 5.0, 46.0, 38.0]], [1, 1])
    assert found["4.png"] == ([[6.0, 3.0, 24.0, 30.0]], [0])


def test_predict_writes_boxes_as_csv_coco_json_and_drawn_images(compose_cfg, tmp_path):
    import numpy as np
    from PIL import Image

    from imgrec.commands.predict import predict_images
    from tests.conftest import tool_cfg

    train(compose_cfg(*SMOKE, "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "run"))
    inputs = tmp_path / "new"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(inputs / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(inputs / "b.png")  # grey: read as RGB
    (inputs / "broken.png").write_bytes(b"not an image")
    result = predict_images(tool_cfg("predict", tmp_path / "out", f"ckpt_path={tmp_path / 'run/checkpoints/last.pt'}",
                                     f"inputs={inputs}", "score_threshold=0.0"))
    out = tmp_path / "out"
    coco = json.loads((out / "detections.json").read_text())
    assert [(image["file_name"].rsplit("/", 1)[-1], image["width"], image["height"]) for image in coco["images"]] == \
        [("a.png", 70, 50), ("b.png", 64, 64)]
    assert [c["name"] for c in coco["categories"]] == ["disc", "square", "triangle"]
    with open(out / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(coco["annotations"]) == len(result["predictions"])
    for row, box in zip(rows, coco["annotations"]):
        assert row["class"] == coco["categories"][box["category_id"] - 1]["name"]
        assert float(row["x2"]) - float(row["x1"]) == pytest.approx(box["bbox"][2], abs=0.01)
    assert sorted(p.name for p in (out / "drawn").iterdir()) == ["a.png", "b.png"]
    assert Image.open(out / "drawn" / "a.png").size == (210, 150)  # small images are drawn enlarged (3 times)
    assert "broken.png" in (out / "skipped.csv").read_text()
    higher = predict_images(tool_cfg("predict", tmp_path / "out2", f"ckpt_path={tmp_path / 'run/checkpoints/last.pt'}",
                                     f"inputs={inputs}", "score_threshold=0.99"))
    assert all(row["score"] >= 0.99 for row in higher["predictions"])
    assert len(higher["predictions"]) <= len(result["predictions"])


def test_the_commands_that_cannot_take_a_detection_checkpoint_yet_say_so(compose_cfg, tmp_path):
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.commands.export import export_checkpoint
    from tests.conftest import tool_cfg

    train(compose_cfg(*SMOKE, "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "run"))
    checkpoint = f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"
    for command, run in (("eval", evaluate_checkpoint), ("export", export_checkpoint)):  # predict takes it
        with pytest.raises(ImgrecError, match=rf"imgrec-{command} does not take detection checkpoints yet"):
            run(tool_cfg(command, tmp_path / command, checkpoint))


def test_validation_images_are_drawn_with_true_and_found_boxes():
    import numpy as np

    from imgrec.tasks.detection import DetectionEvaluation, boxes_drawn

    truth = [{"boxes": np.array([[2.0, 2.0, 12.0, 12.0]]), "labels": np.array([0])}]
    found = [{"boxes": np.array([[20.0, 4.0, 30.0, 14.0], [1.0, 1.0, 5.0, 5.0]]), "scores": np.array([0.9, 0.1]),
              "labels": np.array([1, 0])}]
    images = np.zeros((1, 3, 320, 400), np.uint8)  # large enough to be drawn as it is
    truth[0]["boxes"], found[0]["boxes"] = truth[0]["boxes"] * 10, found[0]["boxes"] * 10
    drawn = boxes_drawn(images, DetectionEvaluation(found, truth, ["a", "b"], 0.5), ["a", "b"], 0.5)[0]
    green, red = (drawn[1] > 100) & (drawn[0] < 100), (drawn[0] > 100) & (drawn[1] < 100)
    assert green[20, 20:120].all() and green[20:120, 20].all()  # the true box's outline
    assert red[40, 200:300].any() and not red[10:50, 10].any()  # the detection above the threshold, not below
    small = boxes_drawn(images[:, :, :32, :40], DetectionEvaluation(found, truth, ["a", "b"], 0.5), ["a", "b"], 0.5)
    assert small.shape == (1, 3, 192, 240)  # enlarged 6 times (whole pixels) to be legible
