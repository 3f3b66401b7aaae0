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
        return self.joint(images, None)[0]

    def joint(self, images: torch.Tensor, masks: torch.Tensor | None):
        """albumentations moves a mask with its image itself (nearest resampling) through `mask=`."""
        self.compose.set_random_seed(_next_seed(images.device))
        batch, channels, height, width = images.shape
        pixels = _uint8(images).permute(0, 2, 3, 1).cpu().numpy()
        if masks is None:
            out = [(self.compose(image=image)["image"], None) for image in pixels]
        else:
            results = [self.compose(image=image, mask=mask) for image, mask in zip(pixels, masks.cpu().numpy())]
            out = [(result["image"], result["mask"]) for result in results]
        if any(o[0].shape[:2] != (height, width) for o in out):
            raise ValueError("albumentations transforms must keep the image size (add a Resize or CenterCrop at the end)")
        stacked = np.stack([o[0].reshape(height, width, channels) for o in out])
        moved = torch.from_numpy(stacked).permute(0, 3, 1, 2).to(images.device)
        if masks is None:
            return moved, None
        return moved, torch.from_numpy(np.stack([o[1] for o in out])).to(masks.device, masks.dtype)

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

    def joint(self, images: torch.Tensor, masks: torch.Tensor):
        """torchvision.transforms.v2 moves a tv_tensors.Mask with its image (nearest)."""
        from torchvision import tv_tensors

        pairs = [self.compose(image, tv_tensors.Mask(mask)) for image, mask in zip(_uint8(images), masks)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1].as_subclass(torch.Tensor) for p in pairs])

    def __repr__(self) -> str:
        return f"Torchvision({self.compose.transforms})"
