"""Per-image brightness, contrast, histogram and noise changes on batches (pixel values 0..255)."""

import torch

from imgrec.data.augment import _chance, _uniform, _where


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.uint8 else images.round().clamp(0, 255).to(torch.uint8)


class RandomBrightness:
    """Add delta * 255 with delta drawn from [-max_delta, max_delta] per image."""
    image_only = True  # changes pixel values, not where they are: a segmentation mask stays as it is

    def __init__(self, max_delta: float = 0.2, p: float = 1.0):
        self.max_delta, self.p = max_delta, p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        delta = _uniform(images, -self.max_delta, self.max_delta).view(-1, 1, 1, 1) * 255
        return _where(_chance(images, self.p), (images.float() + delta).clamp(0, 255), images)


class RandomContrast:
    """Scale each image's deviation from its own mean by a factor drawn from [1 - f, 1 + f]."""
    image_only = True  # changes pixel values, not where they are: a segmentation mask stays as it is

    def __init__(self, max_factor: float = 0.2, p: float = 1.0):
        self.max_factor, self.p = max_factor, p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float()
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        factor = _uniform(images, 1 - self.max_factor, 1 + self.max_factor).view(-1, 1, 1, 1)
        return _where(_chance(images, self.p), ((pixels - mean) * factor + mean).clamp(0, 255), images)


class ContrastStretch:
    """Map each image's `low`..`high` percentile range onto 0..255 (contrast stretching)."""
    image_only = True  # changes pixel values, not where they are: a segmentation mask stays as it is

    def __init__(self, low: float = 2.0, high: float = 98.0, p: float = 0.5):
        self.low, self.high, self.p = low / 100, high / 100, p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float()
        flat = pixels.flatten(1)
        bounds = torch.quantile(flat, torch.tensor([self.low, self.high], device=images.device), dim=1)
        low, high = bounds[0].view(-1, 1, 1, 1), bounds[1].view(-1, 1, 1, 1)
        stretched = ((pixels - low) * (255.0 / (high - low).clamp_min(1.0))).clamp(0, 255)
        return _where(_chance(images, self.p), stretched, images)


class HistogramEqualize:
    """Equalise each image's histogram (torchvision's equalize, one histogram per image)."""
    image_only = True  # changes pixel values, not where they are: a segmentation mask stays as it is

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2.functional import equalize

        return _where(_chance(images, self.p), equalize(_as_uint8(images)), images)


class GaussianNoise:
    """Add N(0, sigma * 255) noise to every pixel of the chosen images."""
    image_only = True  # changes pixel values, not where they are: a segmentation mask stays as it is

    def __init__(self, sigma: float = 0.03, p: float = 0.5):
        self.sigma, self.p = sigma, p

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float()
        noisy = (pixels + torch.randn_like(pixels) * (self.sigma * 255)).clamp(0, 255)
        return _where(_chance(images, self.p), noisy, images)


class TrivialAugment:
    """torchvision's TrivialAugmentWide, applied image by image so each draws its own operation."""

    def __init__(self, num_magnitude_bins: int = 31):
        from torchvision.transforms import v2

        self.transform = v2.TrivialAugmentWide(num_magnitude_bins=num_magnitude_bins)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_uint8(images)
        return torch.stack([self.transform(image) for image in images])


class RandAugment:
    """torchvision's RandAugment (num_ops operations of the given magnitude), image by image."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9):
        from torchvision.transforms import v2

        self.transform = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _as_uint8(images)
        return torch.stack([self.transform(image) for image in images])
