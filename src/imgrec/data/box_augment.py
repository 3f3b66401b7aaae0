"""Detection augmentation: flips, scale jitter, SSD-style crops and colour jitter that move boxes with the image.

Applied to one image at a time on the CPU (in DataLoader workers), so images leave it at different sizes and
are collated as lists. Boxes are (N, 4) float32 x1, y1, x2, y2 pixels (pixel i covers [i, i + 1]).

Randomness: every parameter is drawn from the `generator` passed in, never from torch's global generator, so
the same generator state gives the same result in any process and the global stream is left alone.
torchvision's random v2 transforms (RandomIoUCrop, ColorJitter) draw from the global generator, so only their
deterministic kernels (`transforms.v2.functional`) are used here, with RandomIoUCrop's sampling redone below.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as F

from imgrec.errors import ImgrecError

# Every setting and its default: the defaults are a left-right flip and nothing else (configs/box_augment/).
DEFAULTS = {
    "horizontal_flip": 0.5,   # probability of a left-right mirror
    "vertical_flip": 0.0,     # probability of an upside-down mirror (aerial and microscope images)
    "scale": [1.0, 1.0],      # both sides resized by a factor drawn from [low, high]; the aspect is kept
    "zoom_out": 0.0,          # probability of placing the image on a larger canvas (SSD's "expand"): smaller objects
    "zoom_out_max": 2.0,      # the canvas side is up to this many times the image side
    "crop": 0.0,              # probability of an SSD-style crop (torchvision's RandomIoUCrop sampling)
    "crop_min_scale": 0.3,    # a crop side is at least this fraction of the image side
    "crop_min_iou": [0.0, 0.1, 0.3, 0.5, 0.7, 0.9],  # one drawn per crop: some kept box must overlap the crop this much
    "crop_trials": 40,        # crops tried before giving up and keeping the whole image
    "min_visibility": 0.3,    # a box keeping less of its area than this after a crop is dropped, with its label
    "brightness": 0.0,        # factor drawn from [1 - b, 1 + b]
    "contrast": 0.0,          # factor drawn from [1 - c, 1 + c]
    "saturation": 0.0,        # factor drawn from [1 - s, 1 + s]; colour images only
    "hue": 0.0,               # shift drawn from [-h, h] turns of the colour wheel, h <= 0.5; colour images only
}
# RandomIoUCrop's aspect limits: a crop is at most twice as wide as high, or the other way round
CROP_ASPECT = (0.5, 2.0)
MIN_BOX_SIDE = 1.0  # boxes narrower or lower than a pixel after the moves are dropped (SanitizeBoundingBoxes' rule)


class BoxAugment:
    """The settings of DEFAULTS applied in order: flips, scale, zoom out, crop, colour; then boxes are clipped to
    the image and those under MIN_BOX_SIDE or below min_visibility are dropped with their labels."""

    def __init__(self, settings: Mapping | None = None, config_key: str = "box_augment"):
        self.settings = _checked({**DEFAULTS, **dict(settings or {})}, config_key)

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.settings
        _, height, width = image.shape
        boxes = tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(height, width))
        if _chance(s["horizontal_flip"], generator):
            image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
        if _chance(s["vertical_flip"], generator):
            image, boxes = F.vertical_flip(image), F.vertical_flip(boxes)
        factor = _uniform(*s["scale"], generator)
        if factor != 1.0:
            size = [max(1, round(height * factor)), max(1, round(width * factor))]
            image, boxes = F.resize(image, size, antialias=True), F.resize(boxes, size)
        if _chance(s["zoom_out"], generator):
            image, boxes = _zoom_out(image, boxes, s["zoom_out_max"], generator)
        area_before_crop = _areas(boxes)
        if _chance(s["crop"], generator):
            window = self._crop_window(boxes, generator)
            if window is not None:
                image, boxes = F.crop(image, *window), F.crop(boxes, *window)
        image = self._jitter_colours(image, generator)
        boxes = F.clamp_bounding_boxes(boxes, clamping_mode="hard").as_subclass(torch.Tensor)
        keep = _visible_enough(boxes, area_before_crop, s["min_visibility"])
        return image, boxes[keep], labels[keep]

    def _crop_window(self, boxes: tv_tensors.BoundingBoxes, generator: torch.Generator):
        """(top, left, height, width) of a crop as RandomIoUCrop samples it, or None when no trial passes.

        Unlike RandomIoUCrop, a box counts as kept when min_visibility of it stays inside the crop (its rule
        is the box centre), the same rule that later drops boxes; and the tries are bounded (it loops until a
        crop passes). An image without boxes takes the first crop of an allowed shape."""
        s = self.settings
        height, width = boxes.canvas_size
        options = s["crop_min_iou"]
        min_iou = options[int(torch.randint(len(options), (1,), generator=generator))]
        plain_boxes = boxes.as_subclass(torch.Tensor)
        for _ in range(s["crop_trials"]):
            fractions = s["crop_min_scale"] + (1 - s["crop_min_scale"]) * torch.rand(2, generator=generator)
            crop_width, crop_height = int(width * fractions[0]), int(height * fractions[1])
            placement = torch.rand(2, generator=generator)
            if crop_width == 0 or crop_height == 0 or not CROP_ASPECT[0] <= crop_width / crop_height <= CROP_ASPECT[1]:
                continue
            left, top = int((width - crop_width) * placement[0]), int((height - crop_height) * placement[1])
            if len(plain_boxes) == 0:
                return top, left, crop_height, crop_width
            window = torch.tensor([[left, top, left + crop_width, top + crop_height]], dtype=plain_boxes.dtype)
            inside = torch.cat([plain_boxes[:, :2].maximum(window[:, :2]),
                                plain_boxes[:, 2:].minimum(window[:, 2:])], dim=1)
            kept = _visible_enough(inside, _areas(plain_boxes), s["min_visibility"])
            if kept.any() and box_iou(plain_boxes[kept], window).max() >= min_iou:
                return top, left, crop_height, crop_width
        return None

    def _jitter_colours(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """ColorJitter's four changes in a fixed order; saturation and hue only where there is colour."""
        s = self.settings
        if s["brightness"]:
            image = F.adjust_brightness(image, _uniform(1 - s["brightness"], 1 + s["brightness"], generator))
        if s["contrast"]:
            image = F.adjust_contrast(image, _uniform(1 - s["contrast"], 1 + s["contrast"], generator))
        if image.shape[0] == 3 and s["saturation"]:
            image = F.adjust_saturation(image, _uniform(1 - s["saturation"], 1 + s["saturation"], generator))
        if image.shape[0] == 3 and s["hue"]:
            image = F.adjust_hue(image, _uniform(-s["hue"], s["hue"], generator))
        return image

    def __repr__(self) -> str:
        changed = {key: value for key, value in self.settings.items() if value != _normalised(DEFAULTS[key])}
        return f"BoxAugment({changed})"


def build_box_augment(settings: Mapping | None, config_key: str = "box_augment") -> BoxAugment | None:
    """The detection augmentation a config group file describes (plain keys, see DEFAULTS), or None for none.

    `config_key` is where the settings sit in the composed config, for error messages."""
    if settings is None:
        return None
    if not isinstance(settings, Mapping):
        raise ImgrecError(f"{config_key}={settings!r} must be a mapping of settings ({', '.join(DEFAULTS)}) or null")
    return BoxAugment(settings, config_key)


def _zoom_out(image: torch.Tensor, boxes: tv_tensors.BoundingBoxes, max_ratio: float, generator: torch.Generator):
    """The image at a random place on a canvas up to max_ratio times its size, filled with its mean colour."""
    _, height, width = image.shape
    ratio = _uniform(1.0, max_ratio, generator)
    extra_width, extra_height = int(width * (ratio - 1)), int(height * (ratio - 1))
    placement = torch.rand(2, generator=generator)
    left, top = int(extra_width * placement[0]), int(extra_height * placement[1])
    padding = [left, top, extra_width - left, extra_height - top]
    fill = image.float().mean(dim=(1, 2)).round().tolist()  # the mean, not black: no hard edge to learn
    return F.pad(image, padding, fill=fill), F.pad(boxes, padding)


def _chance(p: float, generator: torch.Generator) -> bool:
    # drawn even when p is 0 or 1, so a setting's value never shifts the draws of the steps after it
    return bool(torch.rand(1, generator=generator) < p)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _areas(boxes: torch.Tensor) -> torch.Tensor:
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0)
    return sides[:, 0] * sides[:, 1]


def _visible_enough(boxes: torch.Tensor, area_before: torch.Tensor, min_visibility: float) -> torch.Tensor:
    """Which (clipped) boxes are at least a pixel wide and high and keep min_visibility of area_before."""
    sides = boxes[:, 2:] - boxes[:, :2]
    wide_enough = (sides >= MIN_BOX_SIDE).all(dim=1)
    return wide_enough & (_areas(boxes) >= min_visibility * area_before)


def _normalised(value):
    return [float(v) for v in value] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _checked(settings: dict, config_key: str) -> dict:
    """The settings with lists as lists of floats, or an ImgrecError naming the first bad one."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ImgrecError(f"{config_key}.{unknown[0]} is not a detection augmentation setting; "
                          f"use one of {', '.join(DEFAULTS)}")

    def fail(key: str, expected: str):
        raise ImgrecError(f"{config_key}.{key}={settings[key]!r} must be {expected}; fix it in the "
                          f"{config_key} config or on the command line ({config_key}.{key}=...)")

    def number(key: str, low: float, high: float, expected: str) -> float:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            fail(key, expected)
        return float(value)

    checked = {}
    for key in ("horizontal_flip", "vertical_flip", "zoom_out", "crop"):
        checked[key] = number(key, 0, 1, "a probability in [0, 1]")
    checked["min_visibility"] = number("min_visibility", 0, 1, "a fraction of a box's area in [0, 1]")
    checked["zoom_out_max"] = number("zoom_out_max", 1, 16, "a canvas-to-image side ratio in [1, 16]")
    checked["crop_min_scale"] = number("crop_min_scale", 1e-6, 1, "a fraction of the image side in (0, 1]")
    for key in ("brightness", "contrast", "saturation"):
        checked[key] = number(key, 0, 1, "in [0, 1] (the factor is drawn from [1 - value, 1 + value])")
    checked["hue"] = number("hue", 0, 0.5, "in [0, 0.5] (turns of the colour wheel)")
    trials = settings["crop_trials"]
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        fail("crop_trials", "a whole number >= 1")
    checked["crop_trials"] = trials
    scale = settings["scale"]
    if not _is_number_list(scale) or len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        fail("scale", "[low, high] with 0 < low <= high, e.g. [0.75, 1.25] (or [1, 1] for no resizing)")
    checked["scale"] = _normalised(scale)
    options = settings["crop_min_iou"]
    if not _is_number_list(options) or not options or not all(0 <= v < 1 for v in options):
        fail("crop_min_iou", "a non-empty list of overlaps in [0, 1), e.g. [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]")
    checked["crop_min_iou"] = _normalised(options)
    return checked


def _is_number_list(value) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
