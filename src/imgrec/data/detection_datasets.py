"""The detection datasets a config can name: annotated folders (Pascal VOC, COCO, YOLO) and the offline
synthetic shapes."""

import logging
from pathlib import Path

import numpy as np

from imgrec.data.detection import DetectionSplit, DetectionSplits, split_indices
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
FORMATS = ("voc", "coco", "yolo")
# where each layout keeps images and annotations under dataset.root unless dataset.images / annotations say
DEFAULT_LAYOUT = {"voc": ("JPEGImages", "Annotations"), "coco": ("images", "annotations.json"),
                  "yolo": ("images", "labels")}
# torchvision's detector backbones were pretrained on images normalised with ImageNet's statistics
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def detection_folder(root: str, format: str = "voc", images: str | None = None, annotations: str | None = None,
                     class_names: list[str] | None = None, bad_boxes: str = "drop", val_fraction: float = 0.15,
                     test_fraction: float = 0.15, seed: int = 0, mean: list[float] | None = None,
                     std: list[float] | None = None, num_classes: int | None = None,
                     channels: int = 3) -> DetectionSplits:
    """Every annotated image under `root`, split at random (from `seed`) into train / val / test.
    `num_classes`, when given, must be what the annotations (or class_names) hold; images are read as RGB."""
    from imgrec.data import detection_annotations

    _check_rgb(channels)

    if format not in FORMATS:
        raise ImgrecError(f"dataset.format={format!r} must be one of {', '.join(FORMATS)}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ImgrecError(f"dataset.root={root!r} is not a folder; point it at the folder holding "
                          f"{' and '.join(DEFAULT_LAYOUT[format])}")
    image_place = base / (images or DEFAULT_LAYOUT[format][0])
    annotation_place = base / (annotations or DEFAULT_LAYOUT[format][1])
    for place, key in ((image_place, "images"), (annotation_place, "annotations")):
        if not place.exists():
            raise ImgrecError(f"dataset.{key}: {place} does not exist; set dataset.{key}=<path under dataset.root> "
                              f"(a {format} dataset keeps {' and '.join(DEFAULT_LAYOUT[format])} by default)")
    if format == "voc":
        read = detection_annotations.read_voc(image_place, annotation_place, class_names, bad_boxes)
    elif format == "coco":
        read = detection_annotations.read_coco(annotation_place, image_place, class_names, bad_boxes)
    else:
        if not class_names:
            raise ImgrecError("dataset.class_names must list the classes for a YOLO dataset (its label files hold "
                              "class numbers only), e.g. dataset.class_names=[car,person]")
        read = detection_annotations.read_yolo(image_place, annotation_place, list(class_names), bad_boxes)
    if not read.images:
        raise ImgrecError(f"dataset.root={root!r}: no annotated images found in {image_place}")
    if read.dropped_boxes or read.clipped_boxes:
        log.warning(f"{read.dropped_boxes} box(es) dropped and {read.clipped_boxes} clipped to their image "
                    f"(dataset.bad_boxes={bad_boxes}); the first: {read.first_bad_box}")
    _check_class_count(num_classes, read.class_names)
    everything = DetectionSplit([item.boxes for item in read.images], [item.labels for item in read.images],
                                paths=[item.path for item in read.images])
    train, val, test = split_indices(len(everything), val_fraction, test_fraction, seed)
    return DetectionSplits(everything.subset(train), everything.subset(val), everything.subset(test),
                           list(read.class_names), list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD),
                           dropped_boxes=read.dropped_boxes, clipped_boxes=read.clipped_boxes)


def shapes_detection(size: int = 300, image_size: int = 64, max_objects: int = 4, channels: int = 3,
                     empty_fraction: float = 0.05, seed: int = 0, val_fraction: float = 0.15,
                     test_fraction: float = 0.15, num_classes: int | None = None) -> DetectionSplits:
    """Synthetic discs, squares and triangles with exact boxes (data/detection_shapes.py), made offline in
    well under a second: smoke runs and tests. The mean and std are the training images' own."""
    from imgrec.data.detection_shapes import detection_shapes

    made = detection_shapes(size=size, image_size=image_size, max_objects=max_objects, seed=seed, channels=channels,
                            empty_fraction=empty_fraction)
    _check_class_count(num_classes, made.class_names)
    everything = DetectionSplit(list(made.boxes), list(made.labels), images=made.images)
    train, val, test = split_indices(size, val_fraction, test_fraction, seed)
    pixels = made.images[train].astype(np.float64) / 255
    mean = pixels.mean(axis=(0, 2, 3)).tolist()
    std = pixels.std(axis=(0, 2, 3)).clip(1e-3).tolist()
    if channels == 1:  # served as RGB (DetectionSplit.pixels repeats grey)
        mean, std = mean * 3, std * 3
    return DetectionSplits(everything.subset(train), everything.subset(val), everything.subset(test),
                           list(made.class_names), mean, std)


def _check_rgb(channels) -> None:
    if channels != 3:
        raise ImgrecError(f"dataset.channels={channels!r}: detection images are read as RGB (grey ones repeated over "
                          "three channels), which torchvision's detectors take; leave it at 3")


def _check_class_count(num_classes, class_names: list[str]) -> None:
    if num_classes is not None and num_classes != len(class_names):
        raise ImgrecError(f"dataset.num_classes={num_classes} but the data holds {len(class_names)} classes "
                          f"({', '.join(class_names)}); set dataset.num_classes=null to take them as found")
