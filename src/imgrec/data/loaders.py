"""Batches sliced from an in-memory uint8 tensor: no DataLoader, no per-sample Python."""

import math
from collections.abc import Iterator

import torch

from imgrec.data.splits import ImageTensors


class InMemoryLoader:
    """Yields normalised float batches (x, y) on `device` from a split held as one uint8 tensor.

    The shuffle order depends only on (seed, epoch), so an interrupted run that resumes at epoch k
    sees exactly the batches the uninterrupted run saw, and no generator state needs saving.
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        mean: list[float],
        std: list[float],
        device: torch.device,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        limit_batches: int | None = None,
        augment=None,
    ):
        self.images = data.images.to(device)  # the whole split lives where the model does
        self.labels = data.labels.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch, self.limit_batches = seed, 0, limit_batches
        self.augment = augment
        self.device = device
        channels = self.images.shape[1]
        # (x/255 - mean) / std folded into one multiply-add: x * scale + shift
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        full = self.num_samples // self.batch_size if self.drop_last else math.ceil(self.num_samples / self.batch_size)
        return min(full, self.limit_batches) if self.limit_batches else full

    def order(self) -> torch.Tensor:
        """Sample indices of this epoch, in the order they are served."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.device) if self.shuffle else None
        for batch in range(len(self)):
            start = batch * self.batch_size
            if order is None:  # contiguous slices are views: no gather
                images, labels = self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                images, labels = self.images[index], self.labels[index]
            if self.augment is not None:
                images = self.augment(images)
            yield torch.addcmul(self.shift, images.float(), self.scale), labels
