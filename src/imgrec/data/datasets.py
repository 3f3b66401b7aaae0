"""Built-in datasets, each decoded once into uint8 tensors and split train/val/test."""

import numpy as np
import torch
import torch.nn.functional as F

from imgrec.data.splits import Splits, make_splits
from imgrec.errors import ImgrecError


def _check_declared(name: str, key: str, declared, actual) -> None:
    if declared is not None and declared != actual:
        raise ImgrecError(f"dataset.{key}={declared} but {name} has {actual}; set dataset.{key}={actual}")


def digits(
    image_size: int = 16,
    channels: int = 1,
    num_classes: int = 10,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
) -> Splits:
    """scikit-learn's 8x8 digits (pixel values 0..16), scaled to uint8 and resized to image_size."""
    _check_declared("digits", "num_classes", num_classes, 10)
    images, digit = digits_images(image_size, channels)
    labels = torch.from_numpy(digit.astype(np.int64))
    class_names = [str(d) for d in range(10)]
    return make_splits(images, labels, class_names, val_fraction, test_fraction, split_seed, normalize, mean, std)


def digits_images(image_size: int, channels: int) -> tuple[torch.Tensor, np.ndarray]:
    """The 1,797 digits as uint8 (N, channels, image_size, image_size) and the digit each shows."""
    from sklearn.datasets import load_digits

    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels} must be 1 or 3")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ImgrecError(f"dataset.image_size={image_size} must be a whole number >= 8 (the digits are 8x8)")
    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if image_size != 8:
        pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return pixels.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous(), bunch.target


def fake(
    size: int = 160,
    image_size: int = 16,
    channels: int = 3,
    num_classes: int = 4,
    val_fraction: float = 0.25,
    test_fraction: float = 0.25,
    split_seed: int = 0,
    normalize: str = "symmetric",
    mean=None,
    std=None,
) -> Splits:
    """torchvision's FakeData: random images with random labels, for tests and smoke runs."""
    from torchvision.datasets import FakeData
    from torchvision.transforms.functional import pil_to_tensor

    if num_classes < 2:
        raise ImgrecError(f"dataset.num_classes={num_classes} must be at least 2")
    data = FakeData(size=size, image_size=(channels, image_size, image_size), num_classes=num_classes)
    images, labels = zip(*((pil_to_tensor(image), label) for image, label in data))
    images = torch.stack(images)
    if images.shape[1] != channels:  # FakeData makes PIL "RGB" for 3 channels and "L" for 1
        images = images[:, :1].expand(-1, channels, -1, -1).contiguous()
    labels = torch.as_tensor(labels, dtype=torch.int64)
    class_names = [f"class_{i}" for i in range(num_classes)]
    return make_splits(images, labels, class_names, val_fraction, test_fraction, split_seed, normalize, mean, std)
