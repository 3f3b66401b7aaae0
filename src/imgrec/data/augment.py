"""Augmentation of whole batches on the training device, with random parameters drawn per image.

Every transform takes and returns a (B, C, H, W) batch with pixel values in 0..255 (uint8 or float),
so pipelines compose freely and run before normalisation. Randomness comes from torch's generator
of the batch's device, which `seed` seeds and checkpoints save.
"""

import math

import torch
import torch.nn.functional as F

from imgrec.errors import ImgrecError

FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


def _chance(batch: torch.Tensor, p: float) -> torch.Tensor:
    """A (B,) bool mask: which images of the batch a transform with probability p applies to."""
    return torch.rand(batch.shape[0], device=batch.device) < p


def _uniform(batch: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.empty(batch.shape[0], device=batch.device).uniform_(low, high)


def _where(mask: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, original.to(changed.dtype))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            images = transform(images)
        return images

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _where(_chance(images, self.p), images.flip(-1), images)


class RandomVerticalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _where(_chance(images, self.p), images.flip(-2), images)


class RandomCrop:
    """Pad by `padding` (pixels, or a fraction of the image side when below 1) with `fill`, then crop
    back to the original size at a random offset per image: the CIFAR "pad 4 and crop" shift."""

    def __init__(self, padding: float = 4, fill: float = 0):
        if padding < 0:
            raise ImgrecError(f"RandomCrop padding={padding} must be >= 0")
        self.padding, self.fill = padding, fill

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        pad = round(self.padding * height) if self.padding < 1 else int(self.padding)
        if pad == 0:
            return images
        padded = F.pad(images, (pad, pad, pad, pad), value=self.fill)
        device = images.device
        top = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(height, device=device)
        left = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(width, device=device)
        rows = top[:, None, :, None].expand(-1, padded.shape[1], -1, padded.shape[-1])
        cropped = padded.gather(2, rows)  # (B, C, H, W + 2 pad)
        cols = left[:, None, None, :].expand(-1, padded.shape[1], height, -1)
        return cropped.gather(3, cols)


class RandomAffine:
    """Rotation, shift, shear and zoom in one resampling, drawn per image (Keras ImageDataGenerator style).

    degrees: rotation drawn from [-degrees, degrees]; translate: shift drawn from [-t, t] of the side;
    shear: shear factor drawn from [-s, s] (x' = x + s*y; 0.2 is about 11 degrees); zoom: scale drawn
    from [1-z, 1+z], the same on both axes; fill: nearest (repeat the edge), constant (0) or reflect.
    """

    def __init__(self, degrees: float = 0, translate: float = 0, shear: float = 0, zoom: float = 0,
                 fill: str = "nearest", interpolation: str = "bilinear", p: float = 1.0):
        if fill not in FILL_MODES:
            raise ImgrecError(f"RandomAffine fill={fill!r} must be one of {', '.join(FILL_MODES)}")
        if interpolation not in ("bilinear", "nearest"):
            raise ImgrecError(f"RandomAffine interpolation={interpolation!r} must be bilinear or nearest")
        if not 0 <= zoom < 1:
            raise ImgrecError(f"RandomAffine zoom={zoom} must be in [0, 1)")
        self.degrees, self.translate, self.shear, self.zoom = degrees, translate, shear, zoom
        self.fill, self.interpolation, self.p = fill, interpolation, p

    def matrices(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image 2x3 maps from output to input coordinates, in grid_sample's [-1, 1] units."""
        angle = _uniform(images, -self.degrees, self.degrees) * (math.pi / 180)
        shift_x = _uniform(images, -self.translate, self.translate) * 2  # a side is 2 units long
        shift_y = _uniform(images, -self.translate, self.translate) * 2
        shear = _uniform(images, -self.shear, self.shear)
        scale = _uniform(images, 1 - self.zoom, 1 + self.zoom)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        # forward map = translate . rotate-and-scale . shear; grid_sample wants its inverse
        forward = torch.zeros(images.shape[0], 3, 3, device=images.device)
        forward[:, 0, 0], forward[:, 0, 1] = cos, cos * shear - sin
        forward[:, 1, 0], forward[:, 1, 1] = sin, sin * shear + cos
        forward[:, 0, 2], forward[:, 1, 2], forward[:, 2, 2] = shift_x, shift_y, 1
        return torch.linalg.inv(forward)[:, :2]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.matrices(images), list(images.shape), align_corners=False)
        moved = F.grid_sample(images.float(), grid, mode=self.interpolation,
                              padding_mode=FILL_MODES[self.fill], align_corners=False)
        return _where(_chance(images, self.p), moved, images) if self.p < 1 else moved


class RandomErasing:
    """Blank a random rectangle (area `scale` of the image, aspect `ratio`) with `value`, per image."""

    def __init__(self, p: float = 0.25, scale=(0.02, 0.2), ratio=(0.3, 3.3), value: float = 0):
        self.p, self.scale, self.ratio, self.value = p, tuple(scale), tuple(ratio), value

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _, _, height, width = images.shape
        area = _uniform(images, *self.scale) * height * width
        aspect = torch.exp(_uniform(images, math.log(self.ratio[0]), math.log(self.ratio[1])))
        box_h = torch.sqrt(area * aspect).clamp(1, height).round()
        box_w = torch.sqrt(area / aspect).clamp(1, width).round()
        top = (torch.rand_like(box_h) * (height - box_h + 1)).floor()
        left = (torch.rand_like(box_w) * (width - box_w + 1)).floor()
        rows = torch.arange(height, device=images.device).view(1, -1)
        cols = torch.arange(width, device=images.device).view(1, -1)
        inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
        inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
        box = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]  # (B, 1, H, W)
        box = box & _chance(images, self.p).view(-1, 1, 1, 1)
        return torch.where(box, torch.full_like(images, self.value), images)


BACKENDS = ("batch", "albumentations", "torchvision")


def build_augment(augment_cfg):
    """The `augment` config group as one callable, or None when it lists no transforms.

    backend: batch (imgrec.data transforms on whole batches, the default), albumentations or
    torchvision (each library's transforms, applied image by image).
    """
    from imgrec.config import build

    augment_cfg = augment_cfg or {}
    backend = augment_cfg.get("backend", "batch")
    if backend not in BACKENDS:
        raise ImgrecError(f"augment.backend={backend!r} must be one of {', '.join(BACKENDS)}")
    transforms = [build(t) for t in augment_cfg.get("transforms") or []]
    if not transforms:
        return None
    if backend == "albumentations":
        from imgrec.data.backends import Albumentations

        return Compose([Albumentations(transforms)])
    if backend == "torchvision":
        from imgrec.data.backends import Torchvision

        return Compose([Torchvision(transforms)])
    for index, transform in enumerate(transforms):
        if not callable(transform):
            raise ImgrecError(f"augment.transforms[{index}] builds a {type(transform).__name__}, which is not callable")
    return Compose(transforms)
