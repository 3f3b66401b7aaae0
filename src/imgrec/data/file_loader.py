"""Batches decoded from image files by DataLoader workers, for datasets too big to hold in memory."""

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from imgrec.data.images import BadImage, decode_image
from imgrec.data.batching import EpochLoader, EpochOrder, Preprocess
from imgrec.errors import ImgrecError


class DecodedFiles(Dataset):
    """Image i of a FileSplit as a uint8 (C, H, W) tensor and its label. Workers only decode:
    augmentation runs on whole batches in the main process, on the training device."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        path = self.split.paths[index]
        try:
            image = decode_image(path, self.split.channels, self.split.image_size)
        except BadImage as problem:  # it passed the check before training: it changed since
            raise ImgrecError(f"image '{path}' became unreadable during training: {problem}") from problem
        return image, self.split.labels[index]


class FileLoader(EpochLoader):
    """The same interface as InMemoryLoader, over files: (seed, epoch) order, augment, normalise."""

    def __init__(self, data, batch_size: int, mean, std, device: torch.device, shuffle: bool = False,
                 seed: int = 0, limit_batches: int | None = None, augment=None, num_workers: int = 2, repeats: int = 1):
        self.sampler = EpochOrder(len(data), batch_size, shuffle, False, seed, limit_batches, repeats)
        self.preprocess = Preprocess(mean, std, device, augment)
        self.batch_size, self.device, self.data = batch_size, device, data
        self.loader = DataLoader(
            DecodedFiles(data), batch_sampler=self.sampler, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield self.preprocess.pair(images, labels.to(self.device, non_blocking=True))
