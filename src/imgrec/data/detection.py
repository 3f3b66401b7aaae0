"""Detection datasets as splits of boxed images, and the loader that serves them as lists.

Images of one batch may differ in size, so a batch is a list of normalised float tensors (C, H, W) on the
device and a list of {boxes (N, 4) x1 y1 x2 y2 pixels, labels (N,) 0-based} targets, as torchvision's detectors
take them (the detector resizes them itself; its own normalisation is left off). Augmentation moves boxes
with their image, one image at a time, drawn from a generator seeded by (seed, epoch, sample): a resumed
epoch makes the same batches without any saved generator state.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgrec.data.batching import EpochLoader, EpochOrder
from imgrec.errors import ImgrecError


@dataclass
class DetectionSplit:
    """One split: each image's boxes and labels, and its pixels: decoded from `paths` when served, or held
    in `images` (uint8 (N, C, H, W): the synthetic set)."""

    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    paths: list[Path] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: int) -> torch.Tensor:
        """Image `index` as uint8 (3, H, W): grey images are repeated over three channels (the detectors take RGB)."""
        if self.images is not None:
            image = torch.from_numpy(self.images[index])
        else:
            from imgrec.data.images import load_pil

            path = self.paths[index]
            try:
                with load_pil(path) as opened:
                    image = torch.from_numpy(np.asarray(opened.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
            except (OSError, ValueError) as error:
                raise ImgrecError(f"image '{path}' cannot be read: {error}") from error
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image

    def subset(self, indices) -> "DetectionSplit":
        indices = [int(i) for i in indices]
        return DetectionSplit([self.boxes[i] for i in indices], [self.labels[i] for i in indices],
                              None if self.paths is None else [self.paths[i] for i in indices],
                              None if self.images is None else self.images[indices])

    def box_counts(self, num_classes: int) -> list[int]:
        labels = np.concatenate([np.asarray(labels, dtype=np.int64) for labels in self.labels] or [np.zeros(0, int)])
        return np.bincount(labels, minlength=num_classes).tolist()


@dataclass
class DetectionSplits:
    """train / val / test of a detection dataset, with what training and inference need to know of it."""

    train: DetectionSplit
    val: DetectionSplit
    test: DetectionSplit
    class_names: list[str]
    mean: list[float]  # in [0, 1] units, handed to the detector, which normalises
    std: list[float]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    test_given: bool = False
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    patch_size: None = None  # what the classification and segmentation splits also answer
    patches_per_image: int = 1
    people: bool = False
    channels: int = 3
    counted: str = "boxes"  # what class_counts counts (the run's log and classes.json)
    image_size: None = None  # images keep their own sizes

    @property
    def input_shape(self) -> list[int]:
        """[3, H, W] of the first training image: a representative input for checking the model."""
        return list(self.train.pixels(0).shape) if len(self.train) else [3, 64, 64]

    def class_counts(self, split: str = "train") -> list[int]:
        """Boxes per class in `split`."""
        return getattr(self, split).box_counts(len(self.class_names))

    def everything(self) -> DetectionSplit:
        parts = (self.train, self.val, self.test)
        return DetectionSplit([b for part in parts for b in part.boxes], [lab for part in parts for lab in part.labels],
                              None if self.train.paths is None else [p for part in parts for p in part.paths],
                              None if self.train.images is None else np.concatenate([part.images for part in parts]))


def split_indices(count: int, val_fraction: float, test_fraction: float, seed: int):
    """train / val / test indices of `count` images, drawn at random from `seed` (an image holds several
    classes, so there is nothing to stratify by); each split at least one image when there are three."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ImgrecError(f"dataset.{name}={value!r} must be in [0, 1), e.g. 0.15")
    if val_fraction + test_fraction >= 1.0:
        raise ImgrecError(f"dataset.val_fraction + dataset.test_fraction = {val_fraction + test_fraction:g} leaves "
                          "no training images; make their sum less than 1")
    order = np.random.default_rng(seed).permutation(count)
    test = max(round(count * test_fraction), 1 if test_fraction and count >= 3 else 0)
    val = max(round(count * val_fraction), 1 if val_fraction and count >= 3 else 0)
    return np.sort(order[test + val:]), np.sort(order[test:test + val]), np.sort(order[:test])


class _EpochSamples:
    """A batch sampler that hands each sample index on with the epoch, so workers can seed its augmentation."""

    def __init__(self, order: EpochOrder):
        self.order = order

    def __iter__(self):
        for batch in self.order:
            yield [(index, self.order.epoch) for index in batch]

    def __len__(self) -> int:
        return len(self.order)


class _BoxedSamples(Dataset):
    def __init__(self, split: DetectionSplit, augment, seed: int):
        self.split, self.augment, self.seed = split, augment, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]):
        index, epoch = item
        image = self.split.pixels(index)
        boxes = torch.as_tensor(self.split.boxes[index], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(self.split.labels[index], dtype=torch.int64).reshape(-1)
        if self.augment is not None:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + index)
            image, boxes, labels = self.augment(image, boxes, labels, generator)
        return image, boxes, labels


def _as_lists(batch):
    return tuple(list(part) for part in zip(*batch))


class DetectionLoader(EpochLoader):
    """(images, targets) batches as lists on `device`, in the (seed, epoch) order every loader uses."""

    def __init__(self, data: DetectionSplit, batch_size: int, mean, std, device: torch.device, shuffle: bool = False,
                 seed: int = 0, limit_batches: int | None = None, augment=None, num_workers: int = 0):
        self.sampler = EpochOrder(len(data), batch_size, shuffle, False, seed, limit_batches)
        self.data, self.batch_size, self.device = data, batch_size, device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)
        workers = 0 if data.images is not None else num_workers  # held in memory: nothing to decode
        self.loader = DataLoader(_BoxedSamples(data, augment, seed), batch_sampler=_EpochSamples(self.sampler),
                                 num_workers=workers, collate_fn=_as_lists, persistent_workers=workers > 0)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
        for images, boxes, labels in self.loader:
            yield ([(image.to(self.device, non_blocking=True).float().div_(255) - self.mean) / self.std
                    for image in images],
                   [{"boxes": b.to(self.device), "labels": lab.to(self.device)} for b, lab in zip(boxes, labels)])
