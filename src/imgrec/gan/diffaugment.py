"""Differentiable Augmentation for data-efficient GAN training (Zhao, Liu, Lin, Zhu & Han, NeurIPS 2020).

D sees every image, real or generated, through the same random colour / translation / cutout, and the
augmentation is differentiable so G's gradient flows back through it: D cannot memorise a small training set,
and G is not pushed to reproduce the augmentation (it would be if only the real images were augmented).
Written here rather than imported: the authors' reference is a short script in their repository, not a package.
"""

from collections.abc import Sequence

import torch

from imgrec.errors import ImgrecError

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125  # shift by up to 1/8 of the side, as the paper
CUTOUT_RATIO = 0.5  # a square of half the side


def check_policy(policy: str | Sequence[str] | None) -> tuple[str, ...]:
    """The policy names, from a list or a comma-separated string; empty or None turns DiffAugment off."""
    if policy is None:
        return ()
    if isinstance(policy, str):
        names = [name.strip() for name in policy.split(",") if name.strip()]
    elif isinstance(policy, Sequence) and all(isinstance(name, str) for name in policy):
        names = list(policy)
    else:
        raise ImgrecError(f"gan.diffaugment={policy!r} must be a list of {', '.join(POLICIES)} "
                          f"or a comma-separated string, e.g. gan.diffaugment=color,translation,cutout")
    for name in names:
        if name not in POLICIES:
            raise ImgrecError(f"gan.diffaugment entry {name!r} is not one of {', '.join(POLICIES)}; "
                              f"e.g. gan.diffaugment=color,translation,cutout (empty turns it off)")
    return tuple(names)


def diff_augment(images: torch.Tensor, policy: str | Sequence[str] | None) -> torch.Tensor:
    """Augment (N, C, H, W) images in [-1, 1], a fresh draw per image from torch's global RNG."""
    for name in check_policy(policy):
        images = AUGMENTATIONS[name](images)
    return images


def per_image_uniform(images: torch.Tensor) -> torch.Tensor:
    return torch.rand(len(images), 1, 1, 1, dtype=images.dtype, device=images.device)


def random_color(images: torch.Tensor) -> torch.Tensor:
    images = images + per_image_uniform(images) - 0.5  # brightness +-0.5 on the [-1, 1] scale
    if images.shape[1] > 1:  # a grey image has no saturation to change
        grey = images.mean(dim=1, keepdim=True)
        images = (images - grey) * (2 * per_image_uniform(images)) + grey
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * (per_image_uniform(images) + 0.5) + mean


def random_translation(images: torch.Tensor) -> torch.Tensor:
    n, _, height, width = images.shape
    shift_rows, shift_cols = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
    device = images.device
    offset_rows = torch.randint(-shift_rows, shift_rows + 1, (n, 1, 1), device=device)
    offset_cols = torch.randint(-shift_cols, shift_cols + 1, (n, 1, 1), device=device)
    # Gather from a zero-padded copy (zero is mid-grey in [-1, 1]): an indexing op, so gradients reach the input
    padded = torch.nn.functional.pad(images, [shift_cols, shift_cols, shift_rows, shift_rows]).permute(0, 2, 3, 1)
    rows = torch.arange(height, device=device)[None, :, None] + shift_rows - offset_rows
    cols = torch.arange(width, device=device)[None, None, :] + shift_cols - offset_cols
    batch = torch.arange(n, device=device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def random_cutout(images: torch.Tensor) -> torch.Tensor:
    n, _, height, width = images.shape
    size_rows, size_cols = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
    device = images.device
    # The square's centre may sit anywhere on the image, so near an edge only part of it is cut (as the reference)
    top = torch.randint(0, height + (1 - size_rows % 2), (n, 1, 1), device=device) - size_rows // 2
    left = torch.randint(0, width + (1 - size_cols % 2), (n, 1, 1), device=device) - size_cols // 2
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_rows) & (cols >= left) & (cols < left + size_cols)
    return images * (~inside).unsqueeze(1).to(images.dtype)


AUGMENTATIONS = {"color": random_color, "translation": random_translation, "cutout": random_cutout}
