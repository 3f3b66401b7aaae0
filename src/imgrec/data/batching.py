"""What every batch loader shares: the (seed, epoch) order of samples, the per-epoch bookkeeping the
trainer reads, and the preprocessing of uint8 pixels on the device."""

import math
import os
from collections.abc import Iterator

import torch


class Preprocess:
    """uint8 batch on the device -> augmented (optional) -> normalised float32."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device, augment=None):
        channels = len(mean)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, channels, 1, 1)
        # (x/255 - mean) / std folded into one multiply-add: x * scale + shift
        self.scale, self.shift, self.augment = 1.0 / (255.0 * std_t), -mean_t / std_t, augment

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            images = self.augment(images)
        return torch.addcmul(self.shift, images.float(), self.scale)

    def pair(self, images: torch.Tensor, targets: torch.Tensor):
        """A batch and its targets: segmentation masks (B, H, W) move with the images' geometric
        augmentation; class labels pass through."""
        if self.augment is not None and targets.ndim == 3:
            images, targets = self.augment.joint(images, targets)
            return torch.addcmul(self.shift, images.float(), self.scale), targets
        return self(images), targets


class EpochOrder:
    """Which samples an epoch serves, in order: a permutation drawn from (seed, epoch) alone.

    So an interrupted run that resumes at epoch k sees exactly the batches the uninterrupted run saw,
    and no generator state needs saving.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, limit_batches,
                 repeats: int = 1):
        # `repeats`: every sample is served that many times per epoch, at random places in the order
        # (segmentation's patches_per_image: a fresh random patch of a large image each time)
        self.items, self.total = num_samples, num_samples * repeats
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.epoch, self.limit_batches = seed, 0, limit_batches
        self.skip = 0  # batches of this epoch already trained before a mid-epoch resume
        self.rank, self.world_size = 0, 1  # under DDP: this process's share of every epoch

    @property
    def num_samples(self) -> int:
        """Samples this process serves per epoch (all of them without DDP)."""
        if self.world_size == 1:
            return self.total
        if self.shuffle:  # training: padded so every process runs the same number of steps
            return math.ceil(self.total / self.world_size)
        return len(range(self.rank, self.total, self.world_size))  # evaluation: no sample twice

    def __len__(self) -> int:
        if self.drop_last:
            full = self.num_samples // self.batch_size
        else:
            full = math.ceil(self.num_samples / self.batch_size)
        return min(full, self.limit_batches) if self.limit_batches else full

    def order(self) -> torch.Tensor:
        """This process's sample indices for the epoch. Every process draws the same permutation and takes
        every world_size-th sample from its rank on, so a step's batches across processes together are
        the block of the permutation one process would take with world_size times the batch size."""
        if not self.shuffle:
            full = torch.arange(self.total)
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            full = torch.randperm(self.total, generator=generator)
            if self.total != self.items:
                full = full % self.items
        if self.world_size == 1:
            return full
        if self.shuffle:
            padding = self.num_samples * self.world_size - self.total
            full = torch.cat([full, full[:padding]])  # as DistributedSampler pads: a few samples twice
        return full[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:  # a batch sampler for DataLoader
        order = self.order().tolist()
        for batch in range(self.skip, len(self)):
            yield order[batch * self.batch_size : (batch + 1) * self.batch_size]


class EpochLoader:
    """What every loader shares: an EpochOrder `sampler`, the epoch, and the sizes the trainer reads."""

    sampler: EpochOrder

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Serve `epoch`'s batches from batch `skip` on (a mid-epoch resume); skipped ones are not even read."""
        self.sampler.epoch, self.sampler.skip = epoch, skip

    @property
    def num_samples(self) -> int:
        return self.sampler.num_samples

    def __len__(self) -> int:
        return len(self.sampler)

    def shard(self, rank: int, world_size: int) -> None:
        """Serve only process `rank`'s share of each epoch (DDP)."""
        self.sampler.rank, self.sampler.world_size = rank, world_size

    def order(self) -> torch.Tensor:
        """Sample indices of this epoch, in the order they are served."""
        return self.sampler.order()


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))
