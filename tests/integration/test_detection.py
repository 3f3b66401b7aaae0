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


def test_a_detection_run_in_bfloat16_autocast_trains_and_keeps_float32_weights(compose_cfg, tmp_path):
    import math

    from imgrec.runtime import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no fast bfloat16 (the CUDA path is checked on a GPU in BENCHMARKS.md)")
    result = train(compose_cfg(*SMOKE, "trainer.max_epochs=1", "trainer.limit_batches=2",
                               "trainer.precision=bf16-mixed", "model.score_threshold=0.0", run_dir=tmp_path))
    assert math.isfinite(result["metrics"]["train/loss"])
    weights = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float32}
    with open(tmp_path / "test_detections.csv") as file:
        scores = [float(row["score"]) for row in csv.DictReader(file)]
    assert scores and all(0.0 <= score <= 1.0 for score in scores)  # detections came back as numbers, in float32


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
    with pytest.raises(ImgrecError, match=r"model=\S+ \(SmallCNN\) does not return detections .* choose a detection model"):
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


def test_eval_scores_a_split_at_a_threshold_chosen_on_val_and_stores_it_for_predict(compose_cfg, tmp_path, caplog,
                                                                                   monkeypatch):
    import numpy as np
    from PIL import Image

    from imgrec.checkpoint import store_decision_threshold
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.commands.predict import predict_images
    from imgrec.commands.features import extract_features
    from imgrec.tasks.detection import DetectionTask
    from tests.conftest import tool_cfg

    train(compose_cfg(*SMOKE, "trainer.max_epochs=1", "test=false", "model.score_threshold=0.0",
                      run_dir=tmp_path / "run"))
    checkpoint = f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"
    plain = evaluate_checkpoint(tool_cfg("eval", tmp_path / "plain", checkpoint))
    assert plain["split"] == "test" and plain["score_threshold"] == 0.5 and "threshold" not in plain
    chosen = evaluate_checkpoint(tool_cfg("eval", tmp_path / "auto", checkpoint, "threshold=auto"))
    assert chosen["threshold"]["chosen_on"] == "val" and chosen["score_threshold"] == chosen["threshold"]["threshold"]
    with open(tmp_path / "auto" / "operating_points.csv") as file:
        points = list(csv.DictReader(file))
    thresholds = [float(row["threshold"]) for row in points]
    assert thresholds == sorted(thresholds, reverse=True) and len(points) > 0  # test-split points, highest first
    for written in ("detections.png", "pr_curves.png", "confusion_matrix.png"):
        assert (tmp_path / "auto" / written).stat().st_size > 1000, written
    with open(tmp_path / "auto" / "confusion_matrix.csv") as file:
        matrix = list(csv.reader(file))
    assert [row[0] for row in matrix] == ["true \\ detected", "disc", "square", "triangle", "background"]
    for row in matrix[1:4]:  # every true box is found as some class or missed
        assert sum(int(v) for v in row[1:]) == chosen["per_class"][row[0]]["boxes"]
    stored = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True).get("decision_threshold")
    if chosen["threshold"]["val_recall"] > 0:
        assert stored["threshold"] == chosen["threshold"]["threshold"] and stored["target_recall"] is None
    else:  # a threshold that finds nothing right on val is not worth keeping
        assert stored is None and "so it is not stored in the checkpoint" in caplog.text
    finds_half = {"threshold": 0.42, "val_precision": 0.5, "val_recall": 0.5, "val_f1": 0.5, "chosen_on": "val",
                  "target_recall": None}
    monkeypatch.setattr(DetectionTask, "chosen_threshold", lambda *_: dict(finds_half))
    evaluate_checkpoint(tool_cfg("eval", tmp_path / "half", checkpoint, "threshold=auto"))
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["decision_threshold"] == finds_half
    monkeypatch.undo()
    store_decision_threshold(tmp_path / "run" / "checkpoints" / "last.pt", {"threshold": 0.3, "chosen_on": "val"})
    evaluate_checkpoint(tool_cfg("eval", tmp_path / "kept", checkpoint, "threshold=auto", "store_threshold=false"))
    stored = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["decision_threshold"]
    assert stored == {"threshold": 0.3, "chosen_on": "val"}
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / "a.png")
    applied = predict_images(tool_cfg("predict", tmp_path / "pred", checkpoint, f"inputs={images}"))
    every = predict_images(tool_cfg("predict", tmp_path / "pred0", checkpoint, f"inputs={images}", "score_threshold=0"))
    assert applied["predictions"] == [row for row in every["predictions"] if row["score"] >= 0.3]
    store_decision_threshold(tmp_path / "run" / "checkpoints" / "last.pt", {"threshold": 5, "chosen_on": "val"})
    with pytest.raises(ImgrecError, match=r"decision_threshold \{'threshold': 5, 'chosen_on': 'val'\} is damaged .* "
                                          r"give one \(detection: score_threshold=0.5\)"):
        predict_images(tool_cfg("predict", tmp_path / "pred5", checkpoint, f"inputs={images}"))
    given = predict_images(tool_cfg("predict", tmp_path / "pred6", checkpoint, f"inputs={images}", "score_threshold=0.3"))
    assert given["predictions"] == applied["predictions"]  # a threshold given is used without reading the stored one
    with pytest.raises(ImgrecError, match=r"threshold=2 must be null \(task.score_threshold\), auto"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "bad", checkpoint, "threshold=2"))
    with pytest.raises(ImgrecError, match=r"target_recall=0.9 needs threshold=auto"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "bad2", checkpoint, "target_recall=0.9"))
    with pytest.raises(ImgrecError, match=r"imgrec-features does not take detection checkpoints yet"):
        extract_features(tool_cfg("features", tmp_path / "features", checkpoint))


def test_a_threshold_for_best_f1_or_a_target_recall_comes_from_every_score():
    import numpy as np

    from imgrec.tasks.detection import DetectionEvaluation, DetectionTask

    truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float),
              "labels": np.array([0, 0, 0])}]
    # hits at 0.9 and 0.5, a false alarm at 0.7, the third object found only at 0.2
    found = [{"boxes": np.array([[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 30, 30], [40, 40, 50, 50]], float),
              "scores": np.array([0.9, 0.7, 0.5, 0.2]), "labels": np.array([0, 0, 0, 0])}]
    task = DetectionTask()
    task.bind(["a"], None)
    evaluation = DetectionEvaluation(found, truth, ["a"], 0.5)
    best = task.chosen_threshold(evaluation, None)  # F1 at 0.9: 0.5; 0.7: 0.4; 0.5: 0.667; 0.2: 0.857
    assert best["threshold"] == 0.2 and best["val_recall"] == 1.0 and best["val_f1"] == pytest.approx(6 / 7)
    enough = task.chosen_threshold(evaluation, 0.6)  # recall 2/3 first reached at 0.5
    assert enough["threshold"] == 0.5 and enough["val_precision"] == pytest.approx(2 / 3)
    with pytest.raises(ImgrecError, match="no threshold reaches it on val"):
        task.chosen_threshold(DetectionEvaluation([{**found[0], "scores": found[0]["scores"][:1],
                                                    "boxes": found[0]["boxes"][:1], "labels": found[0]["labels"][:1]}],
                                                  truth, ["a"], 0.5), 0.9)


def test_backbone_weights_name_their_own_key_and_refuse_files(tmp_path, monkeypatch):
    from imgrec.models.detectors import torchvision_detector

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    missing = r"^model.backbone_weights=MobileNet_V3_Large_Weights.IMAGENET1K_V1: needs https://\S+, but IMGREC_OFFLINE"
    with pytest.raises(ImgrecError, match=missing) as raised:
        torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, backbone_weights="default")
    assert str(raised.value).endswith(".pth")  # no "or pass its path": this setting takes no file
    with pytest.raises(ImgrecError, match=r"model.backbone_weights='/x/mobilenet.pth' takes a torchvision weights name"):
        torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, backbone_weights="/x/mobilenet.pth")


def test_reports_write_json_that_strict_readers_accept(tmp_path):
    from imgrec.evaluation.reports import write_report
    from imgrec.tasks.base import Report

    write_report(Report({"precision": float("nan"), "nested": [float("inf"), 0.5]}), tmp_path, "r.json", None)
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda name: pytest.fail(name)) == \
        {"precision": None, "nested": [None, 0.5]}


@pytest.mark.parametrize("export_format", ["safetensors", "torchscript", "onnx"])
def test_export_keeps_a_detector_only_when_it_finds_what_pytorch_finds(compose_cfg, tmp_path, export_format):
    from imgrec.commands.export import export_checkpoint
    from imgrec.evaluation.detector_export import check_images
    from tests.conftest import tool_cfg

    pytest.importorskip("onnxruntime")
    train(compose_cfg(*SMOKE, "trainer.max_epochs=1", "test=false", "model.score_threshold=0.0",
                      "trainer.limit_batches=1", "model.max_size=96", run_dir=tmp_path / "run"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    metadata = export_checkpoint(tool_cfg("export", tmp_path / "out", f"ckpt_path={checkpoint}",
                                          f"format={export_format}"))  # the default: four images
    assert metadata["detections_compared"] > 0 and metadata["check_images"] == [[3, 64, 64], [3, 64, 80],
                                                                                 [3, 96, 64], [3, 64, 64]]
    assert json.loads((tmp_path / "out" / "model.json").read_text())["class_names"] == ["disc", "square", "triangle"]
    from imgrec.evaluation.inference import load_trained

    trained = load_trained(str(checkpoint), torch.device("cpu"))
    image = check_images(trained.model.detector, 3)[2]  # a size the check did not use: 96 x 64
    assert tuple(image.shape) == (3, 96, 64)
    with torch.no_grad():
        expected = trained.model([image])[0]
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
        boxes, labels, scores = session.run(None, {"image": image.numpy()})
        assert sorted(scores.tolist()) == pytest.approx(sorted(expected["scores"].tolist()), abs=1e-4)
        assert sorted(labels.tolist()) == sorted(expected["labels"].tolist())
    elif export_format == "torchscript":
        found = torch.jit.load(str(tmp_path / "out" / "model.torchscript.pt"))([image])[1][0]
        assert torch.allclose(found["boxes"], expected["boxes"], atol=1e-3)


def test_an_export_that_differs_from_pytorch_is_not_kept():
    from imgrec.evaluation.detector_export import unmatched

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    expected = {"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}
    reordered = {key: value.flip(0) for key, value in expected.items()}
    assert unmatched(expected, reordered) is None  # the same set in another order
    rounded = {**reordered, "boxes": reordered["boxes"] + 0.05}  # ONNX Runtime's rounding, amplified
    assert unmatched(expected, rounded) is None
    moved = {**reordered, "boxes": reordered["boxes"] + torch.tensor([0.0, 0.0, 0.5, 0.0])}
    assert unmatched(expected, moved) == ("2 detection(s) without a PyTorch twin; PyTorch's [0.0, 0.0, 10.0, 10.0] "
                                          "(label 1, score 0.90000) is nearest to [0.0, 0.0, 10.5, 10.0] (label 1, "
                                          "score 0.90000)")
    relabelled = {**expected, "labels": torch.tensor([1, 1])}
    assert unmatched(expected, relabelled).startswith("1 detection(s) without a PyTorch twin; PyTorch's [5.0, 5.0")
    fewer = {key: value[:1] for key, value in expected.items()}
    assert unmatched(expected, fewer) == "1 detections instead of PyTorch's 2"
