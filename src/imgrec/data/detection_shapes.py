"""A built-in detection set made in memory: discs, squares and triangles on textured noise, with exact boxes.

Nothing to download and the same for the same seed, for smoke runs and tests. The shapes are drawn by the
segmentation `shapes` set's own outlines, so the two built-in sets show the same three classes. Each box is
the extent of the object's pixels as they ended up in the image, in the convention of
`detection_annotations` (pixel i covers [i, i + 1], so x2 = last column + 1): a later object that covers
part of an earlier one shrinks the earlier one's box to what is still visible.
"""

from dataclasses import dataclass

import numpy as np

# The outline drawer is private to segmentation.py; reused rather than copied so both sets draw alike.
from imgrec.data.segmentation import SHAPE_NAMES, shape_mask
from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

CLASS_NAMES = SHAPE_NAMES[1:]  # no background class: detection labels are 0-based object classes
# Every background channel stays at or below BACKGROUND_MAX and every object has one channel at OBJECT_MIN or
# above, in one flat colour: no background pixel can pass for an object, and the tests find objects by colour.
BACKGROUND_MAX, OBJECT_MIN = 127, 160
# Radius 5 makes the smallest shape (a square: side 1.7 x radius) at least 8 px across.
MIN_RADIUS, MAX_RADIUS_FRACTION = 5.0, 0.25
# A new object may hide at most half of any earlier one: a detector should not be asked to find, nor be
# punished for finding, a sliver. Placements that would hide more are redrawn, up to PLACEMENT_TRIES times,
# and the object is left out when none fits (so crowded small images hold fewer than max_objects).
MIN_VISIBLE, PLACEMENT_TRIES = 0.5, 10


@dataclass
class ShapeDetections:
    images: np.ndarray  # (size, channels, image_size, image_size) uint8
    boxes: list[np.ndarray]  # per image: (N, 4) float32 x1, y1, x2, y2 in pixels; N may be 0
    labels: list[np.ndarray]  # per image: (N,) int64 indices into class_names
    class_names: list[str]


def detection_shapes(size: int = 300, image_size: int = 64, max_objects: int = 4, seed: int = 0,
                     channels: int = 3, empty_fraction: float = 0.05) -> ShapeDetections:
    """`size` images, each with 1..max_objects shapes of random class, size and colour (uniform count), or
    with none for about `empty_fraction` of them (images without objects are part of real detection data)."""
    _check_settings(size, image_size, max_objects, seed, channels, empty_fraction)
    rng = np.random.default_rng(seed)
    images = np.empty((size, channels, image_size, image_size), np.uint8)
    boxes, labels = [], []
    for index in range(size):
        count = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
        images[index], image_boxes, image_labels = _draw_image(rng, image_size, channels, count)
        boxes.append(image_boxes)
        labels.append(image_labels)
    return ShapeDetections(images, boxes, labels, list(CLASS_NAMES))


def _check_settings(size, image_size, max_objects, seed, channels, empty_fraction) -> None:
    if not is_whole(size, 1):
        raise ImgrecError(f"dataset.size={size!r} must be a whole number of images of at least 1, e.g. 300")
    if not is_whole(image_size, 16):
        raise ImgrecError(f"dataset.image_size={image_size!r} must be a whole number of at least 16 (pixels per "
                          "side; the smallest shape is 8 px across), e.g. 64")
    if not is_whole(max_objects, 1):
        raise ImgrecError(f"dataset.max_objects={max_objects!r} must be a whole number of at least 1 (objects per "
                          "image at most), e.g. 4; images without objects come from dataset.empty_fraction")
    if not is_whole(seed, 0):
        raise ImgrecError(f"dataset.seed={seed!r} must be a whole number of at least 0 (which shapes are drawn)")
    if not is_whole(channels, 1) or channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels!r} must be 1 (grey) or 3 (colour)")
    if not is_number(empty_fraction) or not 0.0 <= empty_fraction < 1.0:
        raise ImgrecError(f"dataset.empty_fraction={empty_fraction!r} must be from 0 to below 1 (the share of "
                          "images without objects), e.g. 0.05")


def _background(rng: np.random.Generator, image_size: int, channels: int) -> np.ndarray:
    """Blotchy noise, as in the segmentation set, with a per-image tint, kept at or below BACKGROUND_MAX."""
    blocks = image_size // 8 + 1
    texture = rng.normal(0, 1, (blocks, blocks)).repeat(8, 0).repeat(8, 1)[:image_size, :image_size]
    tint = rng.uniform(40, 90, (channels, 1, 1))
    pixels = tint + 20 * texture + rng.normal(0, 10, (channels, image_size, image_size))
    return np.clip(pixels, 0, BACKGROUND_MAX).astype(np.uint8)


def _draw_image(rng: np.random.Generator, image_size: int, channels: int, count: int):
    """One image with up to `count` objects, and the boxes and labels of those drawn."""
    image = _background(rng, image_size, channels)
    owner = np.full((image_size, image_size), -1)  # which object shows at each pixel; -1: background
    kinds, drawn_sizes = [], []
    max_radius = max(MIN_RADIUS, image_size * MAX_RADIUS_FRACTION)
    for _ in range(count):
        kind = int(rng.integers(1, len(SHAPE_NAMES)))  # drawn once, so failed placements do not skew the classes
        for _try in range(PLACEMENT_TRIES):
            radius = rng.uniform(MIN_RADIUS, max_radius)
            cy, cx = rng.uniform(radius, image_size - radius, 2)
            inside = shape_mask(kind, image_size, image_size, cy, cx, radius)
            still_visible = np.bincount(owner[~inside & (owner >= 0)], minlength=len(kinds))
            if (still_visible >= MIN_VISIBLE * np.array(drawn_sizes, dtype=np.int64)).all():
                owner[inside] = len(kinds)
                kinds.append(kind)
                drawn_sizes.append(int(inside.sum()))
                break
    boxes = np.zeros((len(kinds), 4), np.float32)
    for number in range(len(kinds)):
        colour = rng.integers(0, 256, channels)
        colour[rng.integers(channels)] = rng.integers(OBJECT_MIN, 256)
        shown = owner == number
        image[:, shown] = colour[:, None]
        rows, cols = np.nonzero(shown)
        boxes[number] = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    return image, boxes, np.array(kinds, dtype=np.int64) - 1
