"""torchvision's detectors built by name offline: they train (a loss per part) and detect (boxes, labels,
scores) at a small size, take whole-detector weights from a file, and refuse bad settings in one line."""

import math

import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.models.detectors import DETECTORS, DetectionInputs, torchvision_detector


def two_images():
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 72)]  # detectors take images of different sizes
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 20.0, 30.0], [30.0, 5.0, 70.0, 45.0]]),
                "labels": torch.tensor([3, 2])}]
    return images, targets


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_detector_trains_and_detects_offline(name):
    model = torchvision_detector(name, num_classes=4, min_size=64, max_size=96, score_threshold=0.0,
                                 detections_per_image=10, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    images, targets = two_images()
    losses = model.train()(DetectionInputs(images, targets))
    assert losses and all(math.isfinite(value.item()) for value in losses.values())
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        found = model.eval()(images)
        assert len(model(torch.stack([images[0], images[0]]))) == 2  # a batch tensor is a list of images too
    assert len(found) == 2
    for image, detections in zip(images, found):
        assert detections["boxes"].shape[1] == 4 and len(detections["boxes"]) <= 10
        assert (detections["labels"] <= 3).all()
        if DETECTORS[name][0] != "dense":  # a softmax over background + classes never predicts the background
            assert (detections["labels"] >= 1).all()
        assert (detections["boxes"][:, 2] <= image.shape[2] + 1e-3).all()  # boxes in the input's own pixels
    if name != "ssdlite320_mobilenet_v3_large":
        assert model.detector.transform.min_size == (64,) and model.detector.transform.max_size == 96
    assert model.detector.transform.image_mean == [0.5] * 3
    plain = torchvision_detector(name, num_classes=4)
    assert plain.detector.transform.image_mean == [0.0] * 3 and plain.detector.transform.image_std == [1.0] * 3


def test_whole_detector_weights_load_and_a_head_for_other_classes_starts_afresh(tmp_path, caplog):
    trained = torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=4)
    torch.save(trained.state_dict(), tmp_path / "detector.pt")
    caplog.set_level("INFO", logger="imgrec")
    other = torchvision_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=6,
                                 weights=str(tmp_path / "detector.pt"))
    backbone = "detector.backbone.body.0.0.weight"
    assert torch.equal(other.state_dict()[backbone], trained.state_dict()[backbone])
    assert "roi_heads.box_predictor.cls_score.weight" in caplog.text  # named as starting from a fresh init


@pytest.mark.parametrize("settings, message", [
    ({"name": "yolov8"}, r"model.name='yolov8' is not a detector imgrec builds; choose one of fasterrcnn_"),
    ({"in_channels": 1}, r"model.in_channels=1: torchvision's detectors take RGB images"),
    ({"trainable_backbone_layers": 7}, r"model.trainable_backbone_layers=7 must be null or 0-6"),
    ({"min_size": 0}, r"model.min_size=0 must be a whole number >= 1"),
    ({"min_size": 400, "max_size": 300}, r"model.max_size=300 must be at least model.min_size=400"),
    ({"score_threshold": 1.5}, r"model.score_threshold=1.5 must be in \[0, 1\)"),
    ({"backbone_weights": "NoSuch_Weights.X"}, r"model.backbone_weights='NoSuch_Weights.X' is neither a file nor"),
])
def test_bad_settings_are_named(settings, message):
    arguments = {"name": "fasterrcnn_mobilenet_v3_large_320_fpn", "num_classes": 3, **settings}
    with pytest.raises(ImgrecError, match=message):
        torchvision_detector(**arguments)


def test_backbone_weights_missing_from_the_cache_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ImgrecError, match="IMGREC_OFFLINE=1 forbids downloads. Download it on a machine with internet "
                                          "and put it at"):
        torchvision_detector("fcos_resnet50_fpn", num_classes=3, backbone_weights="default")
