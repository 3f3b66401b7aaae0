"""The built-in detection shapes: exact boxes, the same for a seed, empty images, balanced classes."""

import numpy as np
import pytest

from imgrec.data.detection_shapes import BACKGROUND_MAX, OBJECT_MIN, detection_shapes
from imgrec.errors import ImgrecError


@pytest.fixture(scope="module")
def colour_set():
    return detection_shapes(size=300, image_size=64, max_objects=4, seed=0, channels=3)


def _extent(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def _overlaps(boxes: np.ndarray) -> bool:
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            if min(boxes[a, 2], boxes[b, 2]) > max(boxes[a, 0], boxes[b, 0]) and \
                    min(boxes[a, 3], boxes[b, 3]) > max(boxes[a, 1], boxes[b, 1]):
                return True
    return False


def test_records_have_the_annotation_shapes_and_types(colour_set):
    assert colour_set.images.shape == (300, 3, 64, 64) and colour_set.images.dtype == np.uint8
    assert colour_set.class_names == ["disc", "square", "triangle"]
    assert len(colour_set.boxes) == len(colour_set.labels) == 300
    for boxes, labels in zip(colour_set.boxes, colour_set.labels):
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4) and labels.dtype == np.int64
        assert ((labels >= 0) & (labels < 3)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        if len(boxes) == 1:  # a partly hidden object's box may be thinner than the 8 px a shape is drawn
            assert (boxes[:, 2] - boxes[:, 0] >= 8).all() and (boxes[:, 3] - boxes[:, 1] >= 8).all()


def test_boxes_are_the_exact_extent_of_each_separate_object(colour_set):
    checked = 0
    for image, boxes in zip(colour_set.images, colour_set.boxes):
        if _overlaps(boxes):
            continue
        is_object = image.max(0) >= OBJECT_MIN
        in_some_box = np.zeros_like(is_object)
        for x1, y1, x2, y2 in boxes.astype(int):
            inside = is_object[y1:y2, x1:x2]
            assert _extent(inside) == [0, 0, x2 - x1, y2 - y1]  # the shape touches all four edges
            colours = image[:, y1:y2, x1:x2][:, inside]
            assert (colours == colours[:, :1]).all()  # one flat colour: one object
            in_some_box[y1:y2, x1:x2] = True
            checked += 1
        assert not (is_object & ~in_some_box).any()  # no object pixel outside every box
        assert (image[:, ~is_object] <= BACKGROUND_MAX).all()
    assert checked > 150


def test_partly_hidden_objects_are_boxed_by_what_stays_visible(colour_set):
    overlapping = 0
    for image, boxes in zip(colour_set.images, colour_set.boxes):
        if not _overlaps(boxes):
            continue
        overlapping += 1
        colour_codes = image.astype(np.int64)
        codes = colour_codes[0] * 65536 + colour_codes[1] * 256 + colour_codes[2]
        codes[image.max(0) < OBJECT_MIN] = -1
        for box in boxes.astype(int).tolist():
            x1, y1, x2, y2 = box
            candidates = [code for code in np.unique(codes[y1:y2, x1:x2]) if code >= 0]
            # some colour in the box is exactly one object's visible pixels, spanning exactly the box
            matches = [code for code in candidates if _extent(codes == code) == box]
            assert matches, f"no object spans box {box}"
            visible = max((codes == code).sum() for code in matches)
            assert visible >= 0.2 * (x2 - x1) * (y2 - y1)  # at least half of a shape that fills ~half its box
    assert overlapping > 20  # the occlusion path is exercised


def test_same_seed_same_set_and_another_seed_another():
    first, again = detection_shapes(size=40, seed=3), detection_shapes(size=40, seed=3)
    other = detection_shapes(size=40, seed=4)
    assert np.array_equal(first.images, again.images)
    assert all(np.array_equal(a, b) for a, b in zip(first.boxes, again.boxes))
    assert all(np.array_equal(a, b) for a, b in zip(first.labels, again.labels))
    assert not np.array_equal(first.images, other.images)


def test_some_images_are_empty_and_classes_are_balanced(colour_set):
    counts = np.array([len(labels) for labels in colour_set.labels])
    assert 3 <= (counts == 0).sum() <= 35  # about 5% of 300
    assert counts.max() == 4
    per_class = np.bincount(np.concatenate(colour_set.labels), minlength=3)
    assert (per_class > 0.25 * per_class.sum()).all()


def test_grey_small_images_still_hold_objects():
    grey = detection_shapes(size=30, image_size=16, max_objects=3, channels=1, seed=1)
    assert grey.images.shape == (30, 1, 16, 16)
    assert sum(len(labels) for labels in grey.labels) >= 20
    for image, boxes in zip(grey.images, grey.boxes):
        for x1, y1, x2, y2 in boxes.astype(int):  # each box's own object touches its four edges
            assert _extent(image[0, y1:y2, x1:x2] >= OBJECT_MIN) == [0, 0, x2 - x1, y2 - y1]


def test_no_empty_images_when_asked():
    assert all(len(labels) > 0 for labels in detection_shapes(size=60, empty_fraction=0.0).labels)


@pytest.mark.parametrize("key, value", [("size", 0), ("image_size", 8), ("image_size", 64.0), ("max_objects", 0),
                                        ("channels", 2), ("channels", 3.0), ("seed", -1), ("empty_fraction", 1.0)])
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(ImgrecError, match=rf"dataset\.{key}={value!r}"):
        detection_shapes(**{key: value})
