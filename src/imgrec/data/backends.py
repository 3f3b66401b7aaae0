"""Per-image augmentation libraries run over a batch: albumentations (numpy, CPU) and torchvision v2.

Both run image by image, so they cost more than the batch transforms in augment.py; use them for
operations those lack. Their randomness is re-seeded from torch's generator every batch, so a
seeded run repeats exactly and a resumed run continues the same stream.
"""

import numpy as np
import torch


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.uint8 else images.round().clamp(0, 255).to(torch.uint8)


def _next_seed(device: torch.device) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), device=device).item())


class Albumentations:
    """An albumentations pipeline applied to every image of a batch (HWC uint8 numpy on the CPU)."""

    def __init__(self, transforms: list):
        import albumentations

        self.compose = albumentations.Compose(list(transforms))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.compose.set_random_seed(_next_seed(images.device))
        batch, channels, height, width = images.shape
        pixels = _uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        out = [self.compose(image=image)["image"] for image in pixels]
        if any(o.shape[:2] != (height, width) for o in out):
            raise ValueError("albumentations transforms must keep the image size (add a Resize or CenterCrop at the end)")
        stacked = np.stack([o.reshape(height, width, channels) for o in out])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2).to(images.device)

    def __repr__(self) -> str:
        return f"Albumentations({self.compose.transforms})"


class Torchvision:
    """torchvision.transforms.v2 transforms applied image by image (each image draws its own parameters)."""

    def __init__(self, transforms: list):
        from torchvision.transforms import v2

        self.compose = v2.Compose(list(transforms))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = _uint8(images)
        return torch.stack([self.compose(image) for image in images])

    def __repr__(self) -> str:
        return f"Torchvision({self.compose.transforms})"
