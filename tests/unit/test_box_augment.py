"""Detection augmentation: boxes stay on their objects through flips, resizes, crops and colour changes."""

import pytest
import torch
import yaml

from imgrec.config import CONFIG_DIR
from imgrec.data.box_augment import DEFAULTS, BoxAugment, build_box_augment
from imgrec.errors import ImgrecError

HEIGHT, WIDTH = 48, 64
BACKGROUND = (20, 20, 20)
# Two objects told apart by colour: label 0 is red, label 1 green; boxes as (x1, y1, x2, y2), x2 = last column + 1.
COLOURS = ((200, 40, 40), (40, 200, 40))
BOXES = ((6, 8, 26, 28), (38, 20, 58, 40))
OBJECT_AREA = 20 * 20


def preset(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / "box_augment" / f"{name}.yaml").read_text())


def scene(channels: int = 3):
    image = torch.tensor(BACKGROUND[:channels], dtype=torch.uint8).view(-1, 1, 1).repeat(1, HEIGHT, WIDTH)
    for (x1, y1, x2, y2), colour in zip(BOXES, COLOURS):
        image[:, y1:y2, x1:x2] = torch.tensor(colour[:channels], dtype=torch.uint8).view(-1, 1, 1)
    return image, torch.tensor(BOXES, dtype=torch.float32), torch.tensor([0, 1])


def object_pixels(image: torch.Tensor, label: int) -> torch.Tensor:
    """(H, W) bool: where the object of this label's colour is; the halfway threshold survives colour jitter."""
    own, other = image[label].float(), image[1 - label].float()
    return (own > 90) & (other < 90)


def extent(pixels: torch.Tensor) -> torch.Tensor:
    rows, cols = pixels.nonzero(as_tuple=True)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    overlap = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp_min(0).prod()
    return float(overlap / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - overlap))


def run(augment: BoxAugment, seed: int, channels: int = 3):
    return augment(*scene(channels), generator=torch.Generator().manual_seed(seed))


def test_classic_augmentation_keeps_every_box_on_its_object():
    augment = build_box_augment(preset("detection_classic"))
    max_scale = augment.settings["scale"][1]
    sizes, kept_boxes, dropped_boxes = set(), 0, 0
    for seed in range(50):
        image, boxes, labels = run(augment, seed)
        sizes.add(tuple(image.shape[1:]))
        assert len(boxes) >= 1  # a crop always keeps one object
        for label in (0, 1):
            pixels = object_pixels(image, label)
            if label in labels.tolist():
                box = boxes[labels.tolist().index(label)]
                seen = extent(pixels)
                # every pixel of the object lies inside its box (1.5 px for resampling), and the box hugs it
                assert (seen[:2] >= box[:2] - 1.5).all() and (seen[2:] <= box[2:] + 1.5).all(), (seed, box, seen)
                assert iou(box, seen) > 0.8, (seed, box, seen)
                kept_boxes += 1
            else:
                # dropped: less than min_visibility of it was left, at the largest scale the preset draws
                assert pixels.sum() < augment.settings["min_visibility"] * OBJECT_AREA * max_scale**2, seed
                dropped_boxes += 1
    assert len(sizes) > 10 and kept_boxes > 50 and dropped_boxes > 0  # the images really were moved and cut


def test_a_crop_drops_exactly_the_boxes_below_min_visibility_with_their_labels():
    """No resizing, so the crop is whole pixels and each object's visible area is exact."""
    augment = BoxAugment({**preset("detection_classic"), "scale": [1, 1], "zoom_out": 0, "crop": 1.0})
    partly_kept = dropped = 0
    for seed in range(40):
        image, boxes, labels = run(augment, seed)
        for label in (0, 1):
            pixels = object_pixels(image, label)
            visible = float(pixels.sum())
            if label in labels.tolist():
                assert torch.equal(boxes[labels.tolist().index(label)], extent(pixels))  # the label's own object
                assert visible >= 0.3 * OBJECT_AREA
                partly_kept += visible < OBJECT_AREA
            else:
                assert visible < 0.3 * OBJECT_AREA
                dropped += 1
    assert partly_kept > 0 and dropped > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_flips_move_boxes_exactly(channels):
    image, boxes, labels = scene(channels)
    flipped, moved, same_labels = BoxAugment({"horizontal_flip": 1.0})(image, boxes, labels, torch.Generator())
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(same_labels, labels)
    assert torch.equal(moved, torch.stack([WIDTH - boxes[:, 2], boxes[:, 1], WIDTH - boxes[:, 0], boxes[:, 3]], 1))
    upside_down = BoxAugment({"horizontal_flip": 0, "vertical_flip": 1.0})
    flipped, moved, _ = upside_down(image, boxes, labels, torch.Generator())
    assert torch.equal(flipped, image.flip(-2))
    assert torch.equal(moved, torch.stack([boxes[:, 0], HEIGHT - boxes[:, 3], boxes[:, 2], HEIGHT - boxes[:, 1]], 1))
    unchanged = BoxAugment({"horizontal_flip": 0})(image, boxes, labels, torch.Generator())
    assert torch.equal(unchanged[0], image) and torch.equal(unchanged[1], boxes)


def test_the_generator_alone_decides_the_result():
    augment = build_box_augment(preset("detection_classic"))
    torch.manual_seed(0)
    first = run(augment, seed=7)
    torch.manual_seed(123)  # another global stream: it plays no part
    global_state = torch.get_rng_state()
    again = run(augment, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for seed in range(8, 13):
        other = run(augment, seed)
        assert not (other[0].shape == first[0].shape and torch.equal(other[0], first[0]))
    assert torch.equal(global_state, torch.get_rng_state())  # and nothing drew from it


@pytest.mark.parametrize("channels", [1, 3])
def test_an_image_without_boxes_is_augmented_too(channels):
    augment = build_box_augment(preset("detection_classic"))
    image = scene(channels)[0]
    sizes = set()
    for seed in range(10):
        out, boxes, labels = augment(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                                     torch.Generator().manual_seed(seed))
        assert out.dtype == torch.uint8 and out.shape[0] == channels
        assert boxes.shape == (0, 4) and boxes.dtype == torch.float32 and labels.shape == (0,)
        assert labels.dtype == torch.int64
        sizes.add(tuple(out.shape))
    assert len(sizes) > 1


def test_no_settings_means_no_augmentation_and_empty_settings_the_defaults():
    assert build_box_augment(None) is None
    assert build_box_augment({}).settings == BoxAugment(DEFAULTS).settings
    assert build_box_augment(preset("detection_basic")).settings["horizontal_flip"] == 0.5


@pytest.mark.parametrize("settings, message", [
    ({"hflip": 0.5}, r"box_augment\.hflip is not a detection augmentation setting; use one of horizontal_flip, "),
    ({"horizontal_flip": 1.5}, r"box_augment\.horizontal_flip=1\.5 must be a probability in \[0, 1\]"),
    ({"vertical_flip": -0.1}, r"box_augment\.vertical_flip=-0\.1 must be a probability"),
    ({"crop": "often"}, r"box_augment\.crop='often' must be a probability"),
    ({"zoom_out": 2}, r"box_augment\.zoom_out=2 must be a probability"),
    ({"min_visibility": 1.2}, r"box_augment\.min_visibility=1\.2 must be a fraction of a box's area in \[0, 1\]"),
    ({"scale": [1.25, 0.8]}, r"box_augment\.scale=\[1\.25, 0\.8\] must be \[low, high\] with 0 < low <= high"),
    ({"scale": [0, 1]}, r"box_augment\.scale=\[0, 1\] must be \[low, high\]"),
    ({"scale": 1.2}, r"box_augment\.scale=1\.2 must be \[low, high\]"),
    ({"crop_min_iou": [0.5, 1.0]}, r"box_augment\.crop_min_iou=\[0\.5, 1\.0\] must be a non-empty list"),
    ({"crop_min_scale": 0}, r"box_augment\.crop_min_scale=0 must be a fraction of the image side in \(0, 1\]"),
    ({"crop_trials": 0}, r"box_augment\.crop_trials=0 must be a whole number >= 1"),
    ({"zoom_out_max": 0.5}, r"box_augment\.zoom_out_max=0\.5 must be a canvas-to-image side ratio"),
    ({"brightness": -0.2}, r"box_augment\.brightness=-0\.2 must be in \[0, 1\]"),
    ({"hue": 0.6}, r"box_augment\.hue=0\.6 must be in \[0, 0\.5\]"),
])
def test_each_bad_setting_is_named_with_its_fix(settings, message):
    with pytest.raises(ImgrecError, match=message) as raised:
        build_box_augment(settings)
    assert "\n" not in str(raised.value)
    if "is not a detection" not in message:
        assert str(raised.value).endswith("on the command line (box_augment." + next(iter(settings)) + "=...)")


def test_errors_name_the_key_where_the_settings_sit():
    with pytest.raises(ImgrecError, match=r"^augment\.horizontal_flip=2"):
        build_box_augment({"horizontal_flip": 2}, config_key="augment")
    with pytest.raises(ImgrecError, match=r"box_augment=\['flip'\] must be a mapping"):
        build_box_augment(["flip"])
