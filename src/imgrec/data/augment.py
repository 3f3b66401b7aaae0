"""Augmentation of whole batches on the training device, with random parameters drawn per image.

Every transform takes and returns a (B, C, H, W) batch with pixel values in 0..255 (uint8 or float),
so pipelines compose freely and run before normalisation. Randomness comes from torch's generator
of the batch's device, which `seed` seeds and checkpoints save. Geometric transforms also have
`joint(images, masks)`: the same move applied to a batch of segmentation masks (B, H, W) of class
ids, resampled nearest, with pixels moved in from outside the image set to IGNORE.
"""

import math

import torch
import torch.nn.functional as F

from imgrec.data.splits import IGNORE
from imgrec.errors import ImgrecError

FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


def _chance(batch: torch.Tensor, p: float) -> torch.Tensor:
    """A (B,) bool mask: which images of the batch a transform with probability p applies to."""
    return torch.rand(batch.shape[0], device=batch.device) < p


def _uniform(batch: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return torch.empty(batch.shape[0], device=batch.device).uniform_(low, high)


def _where(mask: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), changed, original.to(changed.dtype))


def _mask_where(mask: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1), changed, original)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            images = transform(images)
        return images

    def joint(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their segmentation masks: geometric transforms move both, the others the images only."""
        for transform in self.transforms:
            if hasattr(transform, "joint"):
                images, masks = transform.joint(images, masks)
            else:
                images = transform(images)
        return images, masks

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _where(_chance(images, self.p), images.flip(-1), images)

    def joint(self, images: torch.Tensor, masks: torch.Tensor):
        chosen = _chance(images, self.p)
        return _where(chosen, images.flip(-1), images), _mask_where(chosen, masks.flip(-1), masks)


class RandomVerticalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return _where(_chance(images, self.p), images.flip(-2), images)

    def joint(self, images: torch.Tensor, masks: torch.Tensor):
        chosen = _chance(images, self.p)
        return _where(chosen, images.flip(-2), images), _mask_where(chosen, masks.flip(-2), masks)


class RandomRotate90:
    """Turn square images by 90, 180 or 270 degrees (drawn per image), with probability p: the symmetries
    of microscopy and satellite images, which have no up."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def joint(self, images: torch.Tensor, masks: torch.Tensor | None):
        if images.shape[-1] != images.shape[-2]:
            raise ImgrecError(f"RandomRotate90 needs square images; these are {images.shape[-1]}x{images.shape[-2]}: "
                              "set dataset.image_size or dataset.patch_size")
        turns = torch.randint(1, 4, (images.shape[0],), device=images.device)
        turns = torch.where(_chance(images, self.p), turns, torch.zeros_like(turns))
        images, masks = images.clone(), None if masks is None else masks.clone()
        for k in (1, 2, 3):
            chosen = torch.nonzero(turns == k).flatten()
            if len(chosen):
                images[chosen] = torch.rot90(images[chosen], k, dims=(-2, -1))
                if masks is not None:
                    masks[chosen] = torch.rot90(masks[chosen], k, dims=(-2, -1))
        return images, masks

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.joint(images, None)[0]


class RandomPatch:
    """A random size x size crop of every image (and mask): training on patches of large images."""

    def __init__(self, size: int):
        self.size = size

    def joint(self, images: torch.Tensor, masks: torch.Tensor | None):
        batch, _, height, width = images.shape
        if (height, width) == (self.size, self.size):
            return images, masks
        device = images.device
        top = torch.randint(0, height - self.size + 1, (batch, 1), device=device) + torch.arange(self.size, device=device)
        left = torch.randint(0, width - self.size + 1, (batch, 1), device=device) + torch.arange(self.size, device=device)
        rows = top[:, None, :, None].expand(-1, images.shape[1], -1, width)
        cols = left[:, None, None, :].expand(-1, images.shape[1], self.size, -1)
        cropped = images.gather(2, rows).gather(3, cols)
        if masks is not None:
            masks = masks.gather(1, top[:, :, None].expand(-1, -1, width)).gather(
                2, left[:, None, :].expand(-1, self.size, -1))
        return cropped, masks

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.joint(images, None)[0]


class RandomCrop:
    """Pad by `padding` (pixels, or a fraction of the image side when below 1) with `fill`, then crop
    back to the original size at a random offset per image: the CIFAR "pad 4 and crop" shift."""

    def __init__(self, padding: float = 4, fill: float = 0):
        if padding < 0:
            raise ImgrecError(f"RandomCrop padding={padding} must be >= 0")
        self.padding, self.fill = padding, fill

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.joint(images, None)[0]

    def joint(self, images: torch.Tensor, masks: torch.Tensor | None):
        batch, _, height, width = images.shape
        pad = round(self.padding * height) if self.padding < 1 else int(self.padding)
        if pad == 0:
            return images, masks
        padded = F.pad(images, (pad, pad, pad, pad), value=self.fill)
        device = images.device
        top = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(height, device=device)
        left = torch.randint(0, 2 * pad + 1, (batch, 1), device=device) + torch.arange(width, device=device)
        rows = top[:, None, :, None].expand(-1, padded.shape[1], -1, padded.shape[-1])
        cropped = padded.gather(2, rows)  # (B, C, H, W + 2 pad)
        cols = left[:, None, None, :].expand(-1, padded.shape[1], height, -1)
        if masks is not None:  # the padding is no class: ignored
            padded_masks = F.pad(masks, (pad, pad, pad, pad), value=IGNORE)
            masks = padded_masks.gather(1, top[:, :, None].expand(-1, -1, padded_masks.shape[-1])).gather(
                2, left[:, None, :].expand(-1, height, -1))
        return cropped.gather(3, cols), masks


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
        return self.joint(images, None)[0]

    def joint(self, images: torch.Tensor, masks: torch.Tensor | None):
        grid = F.affine_grid(self.matrices(images), list(images.shape), align_corners=False)
        moved = F.grid_sample(images.float(), grid, mode=self.interpolation,
                              padding_mode=FILL_MODES[self.fill], align_corners=False)
        if masks is not None:
            # nearest keeps class ids; shifted by one so that a constant fill (0) comes out as IGNORE
            shifted = F.grid_sample(masks[:, None].float() + 1, grid, mode="nearest", padding_mode=FILL_MODES[self.fill],
                                    align_corners=False)[:, 0].round().long() - 1
            moved_masks = torch.where(shifted < 0, IGNORE, shifted).to(masks.dtype)
        if self.p >= 1:
            return moved, (moved_masks if masks is not None else None)
        chosen = _chance(images, self.p)
        return _where(chosen, moved, images), (_mask_where(chosen, moved_masks, masks) if masks is not None else None)


class RandomErasing:
    """Blank a random rectangle (area `scale` of the image, aspect `ratio`) with `value`, per image."""
    image_only = True  # changes pixel values, not where they are: a segmentation mask stays as it is

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


def with_patches(augment, patch_size: int | None):
    """The training augmentation with a random patch_size crop first (segmentation's dataset.patch_size)."""
    if patch_size is None:
        return augment
    return Compose([RandomPatch(patch_size), *(augment.transforms if augment is not None else [])])


def build_augment(augment_cfg, masks: bool = False):
    """The `augment` config group as one callable, or None when it lists no transforms.

    backend: batch (imgrec.data transforms on whole batches, the default), albumentations or
    torchvision (each library's transforms, applied image by image). `masks`: the pipeline must move
    segmentation masks with the images, so a batch transform that moves pixels without a mask is refused.
    """
    from imgrec.config import build

    augment_cfg = augment_cfg or {}
    backend = augment_cfg.get("backend", "batch")
    if backend not in BACKENDS:
        raise ImgrecError(f"augment.backend={backend!r} must be one of {', '.join(BACKENDS)}")
    transforms = [build(t) for t in augment_cfg.get("transforms") or []]
    if not transforms:
        return None
    if backend != "batch":
        check_library_transforms(backend, transforms)
    if backend == "albumentations":
        from imgrec.data.backends import Albumentations

        return Compose([Albumentations(transforms)])
    if backend == "torchvision":
        from imgrec.data.backends import Torchvision

        return Compose([Torchvision(transforms)])
    for index, transform in enumerate(transforms):
        if not callable(transform):
            raise ImgrecError(f"augment.transforms[{index}] builds a {type(transform).__name__}, which is not callable")
        if masks and not hasattr(transform, "joint") and not getattr(transform, "image_only", False):
            raise ImgrecError(f"augment.transforms[{index}] ({type(transform).__name__}) moves pixels but cannot move a "
                              "segmentation mask with them; leave it out (augment=seg_basic is a pipeline that does)")
    return Compose(transforms)


def check_library_transforms(backend: str, transforms: list) -> None:
    """Each transform of an albumentations / torchvision pipeline must be that library's."""
    if backend == "albumentations":
        import albumentations

        kinds = (albumentations.BasicTransform, albumentations.BaseCompose)
    else:
        from torchvision.transforms import v2

        kinds = (v2.Transform, v2.Compose)
    for index, transform in enumerate(transforms):
        if not isinstance(transform, kinds):
            raise ImgrecError(f"augment.backend={backend} but augment.transforms[{index}] is "
                              f"{type(transform).__module__}.{type(transform).__name__}, not one of {backend}'s transforms; "
                              "imgrec's own transforms run with augment.backend=batch")
