"""Batch loaders: slices of an in-memory uint8 tensor, or files decoded by DataLoader workers.

Both serve (seed, epoch)-ordered batches, move uint8 pixels to the device, augment them there
(training only) and normalise them, so the rest of the loop cannot tell them apart.
"""

from collections.abc import Iterator

import torch

from imgrec.data.batching import EpochLoader, EpochOrder, Preprocess, default_workers
from imgrec.data.file_loader import FileLoader
from imgrec.data.splits import ImageTensors


class InMemoryLoader(EpochLoader):
    """Yields normalised float batches (x, y) on `device` from a split held as one uint8 tensor."""

    def __init__(self, data: ImageTensors, batch_size: int, mean, std, device: torch.device, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, limit_batches: int | None = None, augment=None,
                 repeats: int = 1):
        self.data = data  # the split (its file paths, when it has them, name the samples in reports)
        self.images = data.images.to(device)  # the whole split lives where the model does
        self.labels = data.labels.to(device)
        self.sampler = EpochOrder(len(self.labels), batch_size, shuffle, drop_last, seed, limit_batches, repeats)
        self.preprocess = Preprocess(mean, std, device, augment)
        self.batch_size, self.device = batch_size, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sharded = self.sampler.world_size > 1
        order = self.sampler.order().to(self.device) if self.sampler.shuffle or sharded else None
        for batch in range(self.sampler.skip, len(self)):
            start = batch * self.batch_size
            if order is None:  # contiguous slices are views: no gather
                images, labels = self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
            else:
                index = order[start : start + self.batch_size]
                images, labels = self.images[index], self.labels[index]
            yield self.preprocess.pair(images, labels)


def make_loader(data, batch_size: int, mean, std, device: torch.device, shuffle: bool = False, seed: int = 0,
                limit_batches: int | None = None, augment=None, num_workers="auto", repeats: int = 1):
    """The loader that fits how `data` is held: in memory, or as files read each epoch. `repeats`: each
    sample served that many times per epoch (shuffled loaders only)."""
    from imgrec.data.detection import DetectionLoader, DetectionSplit

    if isinstance(data, DetectionSplit):  # lists of images of any size, boxes moved by a per-image augment
        workers = default_workers() if num_workers == "auto" else int(num_workers)
        return DetectionLoader(data, batch_size, mean, std, device, shuffle=shuffle, seed=seed,
                               limit_batches=limit_batches, augment=augment, num_workers=workers)
    if isinstance(data, ImageTensors):
        return InMemoryLoader(data, batch_size, mean, std, device, shuffle=shuffle, seed=seed,
                              limit_batches=limit_batches, augment=augment, repeats=repeats)
    workers = default_workers() if num_workers == "auto" else int(num_workers)
    return FileLoader(data, batch_size, mean, std, device, shuffle=shuffle, seed=seed,
                      limit_batches=limit_batches, augment=augment, num_workers=workers, repeats=repeats)
