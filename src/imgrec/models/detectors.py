"""torchvision's detectors by name (Faster R-CNN, RetinaNet, FCOS, SSDlite), sized for the dataset, with
weights from local files or torchvision's (downloaded into the torch hub cache when missing).

`num_classes` counts torchvision's background class (the detection task passes classes + 1 and shifts labels
by one). RetinaNet and FCOS score every class with a sigmoid and have no real background: they can still
output label 0, which the task drops as a class no annotation has. imgrec's loader normalises images as for
every task, so the detector's own normalisation (its GeneralizedRCNNTransform) is set to do nothing unless
image_mean / image_std are given; its resizing to min_size / max_size stays. Boxes come back in the pixels of
the images given.
"""

import logging

from typing import NamedTuple

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.models.backbones import _resolve_weights, load_weights

log = logging.getLogger("imgrec")

# name -> (family, the backbone weights torchvision would use, max trainable backbone layers)
DETECTORS = {
    "fasterrcnn_mobilenet_v3_large_fpn": ("rcnn", "MobileNet_V3_Large_Weights.IMAGENET1K_V1", 6),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("rcnn", "MobileNet_V3_Large_Weights.IMAGENET1K_V1", 6),
    "fasterrcnn_resnet50_fpn_v2": ("rcnn", "ResNet50_Weights.IMAGENET1K_V1", 5),
    "retinanet_resnet50_fpn_v2": ("dense", "ResNet50_Weights.IMAGENET1K_V1", 5),
    "fcos_resnet50_fpn": ("dense", "ResNet50_Weights.IMAGENET1K_V1", 5),
    "ssdlite320_mobilenet_v3_large": ("ssd", "MobileNet_V3_Large_Weights.IMAGENET1K_V1", 6),
}
# what each family calls the score floor and the per-image cap of its detections
SCORE_AND_CAP = {"rcnn": ("box_score_thresh", "box_detections_per_img"),
                 "dense": ("score_thresh", "detections_per_img"), "ssd": ("score_thresh", "detections_per_img")}


class DetectionInputs(NamedTuple):
    """A training batch: images and their targets travel together, since a detector in train mode needs both
    to return its losses."""

    images: list[torch.Tensor]
    targets: list[dict]


class DetectorNet(nn.Module):
    """A torchvision detector behind imgrec's one-argument forward: DetectionInputs in train mode gives the
    loss of each part; images (a list, or a batch tensor) in eval mode give detections per image."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, inputs):
        if isinstance(inputs, DetectionInputs):
            return self.detector(list(inputs.images), list(inputs.targets))
        return self.detector(list(inputs.unbind(0)) if isinstance(inputs, torch.Tensor) else list(inputs))


def torchvision_detector(name: str, num_classes: int, in_channels: int = 3, min_size: int = 800,
                         max_size: int = 1333, trainable_backbone_layers: int | None = None,
                         backbone_weights: str | None = None, weights: str | None = None,
                         image_mean: list[float] | None = None, image_std: list[float] | None = None,
                         score_threshold: float = 0.05, detections_per_image: int = 100) -> DetectorNet:
    """`backbone_weights`: a torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V1, or `default` for
    the one the detector was designed with) from the torch hub cache, downloaded when missing; with them,
    `trainable_backbone_layers` stages train (torchvision's rule; null: its default of 3), without them all
    do. `weights`: a whole detector's weights (a local file or a torchvision name); a box predictor
    for another number of classes starts afresh. SSDlite always works at 320 x 320 (min/max_size unused)."""
    from torchvision.models import detection, get_weight

    if name not in DETECTORS:
        raise ImgrecError(f"model.name={name!r} is not a detector imgrec builds; choose one of {', '.join(DETECTORS)}")
    family, default_backbone, most_layers = DETECTORS[name]
    if in_channels != 3:
        raise ImgrecError(f"model.in_channels={in_channels}: torchvision's detectors take RGB images; detection "
                          "datasets are read as RGB (grey images are repeated over three channels)")
    if trainable_backbone_layers is not None and not (isinstance(trainable_backbone_layers, int)
                                                      and 0 <= trainable_backbone_layers <= most_layers):
        raise ImgrecError(f"model.trainable_backbone_layers={trainable_backbone_layers!r} must be null or "
                          f"0-{most_layers} for {name}")
    for key, value in (("min_size", min_size), ("max_size", max_size), ("detections_per_image", detections_per_image)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImgrecError(f"model.{key}={value!r} must be a whole number >= 1")
    if max_size < min_size:
        raise ImgrecError(f"model.max_size={max_size} must be at least model.min_size={min_size}")
    if not isinstance(score_threshold, (int, float)) or not 0 <= score_threshold < 1:
        raise ImgrecError(f"model.score_threshold={score_threshold!r} must be in [0, 1): detections scoring less "
                          "are dropped before evaluation (COCO's mAP wants them low, e.g. 0.05)")
    backbone = None
    if backbone_weights:
        chosen = default_backbone if backbone_weights == "default" else str(backbone_weights)
        if chosen.endswith((".pt", ".pth", ".safetensors")) or "/" in chosen:
            raise ImgrecError(f"model.backbone_weights={backbone_weights!r} takes a torchvision weights name (default: "
                              f"{default_backbone}) read from the local torch hub cache, not a file: put the file in "
                              f"{torch.hub.get_dir()}/checkpoints/ under torchvision's file name")
        try:
            _resolve_weights(chosen, key="model.backbone_weights")  # in the torch hub cache, downloaded if need be
        except ImgrecError as error:  # this setting takes no file, so the error must not offer one
            raise ImgrecError(str(error).replace(", or pass its path as model.backbone_weights", "")) from None
        backbone = get_weight(chosen)  # torchvision then reads that cached file
    elif trainable_backbone_layers is not None:
        log.warning(f"model.trainable_backbone_layers={trainable_backbone_layers} has no effect without "
                    "model.backbone_weights: a backbone trained from scratch trains every layer")
        trainable_backbone_layers = None
    score_key, cap_key = SCORE_AND_CAP[family]
    options = {score_key: float(score_threshold), cap_key: detections_per_image}
    if family != "ssd":
        options.update(min_size=min_size, max_size=max_size)
    options.update(image_mean=list(image_mean or [0.0, 0.0, 0.0]), image_std=list(image_std or [1.0, 1.0, 1.0]))
    model = getattr(detection, name)(weights=None, weights_backbone=backbone, num_classes=num_classes,
                                     trainable_backbone_layers=trainable_backbone_layers if backbone else None,
                                     **options)
    net = DetectorNet(model)
    if weights:
        path = _resolve_weights(weights)
        try:  # imgrec's own checkpoints name the detector's tensors detector.*; torchvision's do not
            load_weights(net, path)
        except ImgrecError:
            load_weights(model, path)
    return net
