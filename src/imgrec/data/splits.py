"""Image tensors, the train/val/test split of them, and the normalisation stats that go with it."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from imgrec.errors import ImgrecError

NORMALIZE_CHOICES = ("unit", "symmetric", "standardize")
IGNORE = 255  # the class id of mask pixels no loss or metric counts (segmentation borders, outside a region)


@dataclass
class ImageTensors:
    """A whole split in memory: images uint8 (N, C, H, W) and their labels: class ids int64 (N,), or masks
    of class ids uint8 (N, H, W) for segmentation."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str] | None = None  # the file each image was read from, when it came from files

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]


@dataclass
class FileSplit:
    """A split read from its files batch by batch, for datasets too big to hold decoded."""

    paths: list[Path]
    labels: torch.Tensor
    channels: int
    image_size: int

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Splits:
    train: ImageTensors
    val: ImageTensors
    test: ImageTensors
    class_names: list[str]
    mean: list[float]  # per channel, in [0, 1] units; the model sees (x/255 - mean) / std
    std: list[float]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) left out by on_bad_image=skip
    test_given: bool = False  # the data came with its own test split (a test/ folder, a split column, an official one)
    patch_size: int | None = None  # segmentation: train on random crops of this size
    patches_per_image: int = 1  # segmentation: training samples drawn from each image per epoch
    people: bool = False  # the classes are people (face sets): val and test may hold people train has not
    synthetic: dict | None = None  # what dataset.synthetic added to train: root, ratio, added, added_per_class, real

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def input_shape(self) -> list[int]:
        """[channels, height, width] of the images (the model's input; the training patches aside)."""
        images = getattr(self.train, "images", None)
        return list(images.shape[1:]) if images is not None else [self.channels, self.image_size, self.image_size]

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class, or for masks pixels per class (ignored pixels aside)."""
        labels = getattr(self, split).labels
        if labels.ndim > 1:
            labels = labels[labels != IGNORE].long()
        return torch.bincount(labels.flatten(), minlength=len(self.class_names)).tolist()

    def everything(self):
        """Train, val and test as one split, in that order (scoring a whole labelled folder)."""
        parts = (self.train, self.val, self.test)
        labels = torch.cat([part.labels for part in parts])
        if all(isinstance(part, ImageTensors) for part in parts):
            paths = None if any(part.paths is None for part in parts) else [p for part in parts for p in part.paths]
            return ImageTensors(torch.cat([part.images for part in parts]), labels, paths)
        return FileSplit([p for part in parts for p in part.paths], labels, self.channels, self.image_size)


def sample_ids(split) -> list[str]:
    """What names each sample of a split in prediction files: its file path, or its index in the split."""
    paths = getattr(split, "paths", None)
    return [str(p) for p in paths] if paths is not None else [str(i) for i in range(len(split))]


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test, each keeping the class proportions of `labels`."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ImgrecError(f"dataset.{name}={value} must be between 0 and 1 (exclusive), e.g. 0.15")
    if val_fraction + test_fraction >= 1.0:
        raise ImgrecError(
            f"dataset.val_fraction + dataset.test_fraction = {val_fraction + test_fraction:g} leaves no "
            "training data; make their sum less than 1"
        )
    indices = np.arange(len(labels))
    try:
        rest, test = train_test_split(
            indices, test_size=test_fraction, stratify=labels, random_state=seed
        )
        # val_fraction is of the whole set, so rescale it to what is left after the test split
        train, val = train_test_split(
            rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
        )
    except ValueError as error:  # sklearn: a class too small to appear in every split
        raise ImgrecError(
            f"cannot split {len(labels)} images stratified into val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}: {error}. Use larger fractions or more images per class."
        ) from error
    return np.sort(train), np.sort(val), np.sort(test)


def pixel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units."""
    channels = images.shape[1]
    # float64 sums over uint8 are exact enough and need no second pass
    pixels = images.transpose(0, 1).reshape(channels, -1).to(torch.float64) / 255.0
    return pixels.mean(dim=1).tolist(), pixels.std(dim=1, unbiased=False).clamp_min(1e-6).tolist()


def normalization_stats(train_images, normalize: str, mean=None, std=None, channels=None, measure=None):
    """Per-channel (mean, std) in [0, 1] units for the chosen normalisation.

    `train_images` (uint8 tensor) is measured for `standardize`; a split that is not in memory passes
    `channels` and a `measure()` that returns the train split's (mean, std) instead.
    """
    if train_images is not None:
        channels, measure = train_images.shape[1], lambda: pixel_stats(train_images)
    if normalize not in NORMALIZE_CHOICES:
        raise ImgrecError(f"dataset.normalize={normalize!r} is not one of {', '.join(NORMALIZE_CHOICES)}")
    if normalize == "unit":
        return [0.0] * channels, [1.0] * channels
    if normalize == "symmetric":
        return [0.5] * channels, [0.5] * channels
    if mean is not None and std is not None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ImgrecError(
                f"dataset.mean={mean} / dataset.std={std} must each have {channels} values with std > 0"
            )
        return mean, std
    return measure()


TRAIN, VAL, TEST = 0, 1, 2


def carve(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, name: str):
    """Split `indices` into (rest, carved) with `fraction` of them carved off, stratified by label."""
    if not 0.0 < fraction < 1.0:
        raise ImgrecError(f"dataset.{name}={fraction} must be between 0 and 1 (exclusive), e.g. 0.15")
    try:
        rest, carved = train_test_split(indices, test_size=fraction, stratify=labels[indices], random_state=seed)
    except ValueError as error:
        raise ImgrecError(
            f"cannot carve dataset.{name}={fraction} out of {len(indices)} training images stratified: {error}. "
            "Add images to the smallest classes or provide that split as its own folder."
        ) from error
    return np.sort(rest), np.sort(carved)


def check_labels(labels, class_names: list[str], describe=lambda index: f"sample {index}") -> None:
    """A label outside 0..classes-1 is an error naming the sample, here on the CPU, not a CUDA assert later."""
    if len(class_names) < 2:
        raise ImgrecError(f"the dataset has {len(class_names)} class ({', '.join(map(str, class_names)) or 'none'}); a "
                          "classifier needs at least two (it would score 100% by always answering the one class)")
    labels = torch.as_tensor(labels)
    bad = torch.nonzero((labels < 0) | (labels >= len(class_names))).flatten()
    if len(bad):
        index = int(bad[0])
        raise ImgrecError(
            f"{describe(index)} has label {int(labels[index])} but there are {len(class_names)} classes "
            f"(labels 0..{len(class_names) - 1}); {len(bad)} sample(s) are out of range"
        )


def splits_from_assignment(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    assignment: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    normalize: str,
    mean=None,
    std=None,
    skipped=(),
) -> Splits:
    """Splits given per image (TRAIN/VAL/TEST); a split with no images is carved out of train, stratified."""
    check_labels(labels, class_names)
    train_idx, val_idx, test_idx = assign_indices(labels.numpy(), assignment, val_fraction, test_fraction, split_seed)
    part = lambda idx: ImageTensors(images[idx].contiguous(), labels[idx].contiguous())  # noqa: E731
    train = part(train_idx)
    mean, std = normalization_stats(train.images, normalize, mean, std)
    return Splits(train, part(val_idx), part(test_idx), list(class_names), mean, std, list(skipped),
                  test_given=bool((np.asarray(assignment) == TEST).any()))


def assign_indices(labels: np.ndarray, assignment: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Indices of train, val and test: as assigned, with any empty split carved out of train, stratified."""
    train_idx = np.flatnonzero(assignment == TRAIN)
    if len(train_idx) == 0:
        raise ImgrecError("no training images: the train split is empty")
    val_idx, test_idx = np.flatnonzero(assignment == VAL), np.flatnonzero(assignment == TEST)
    if len(val_idx) == 0 and len(test_idx) == 0:  # one pool: fractions are of the whole
        train, val, test = stratified_split(labels[train_idx], val_fraction, test_fraction, seed)
        return train_idx[train], train_idx[val], train_idx[test]
    if len(test_idx) == 0:  # fractions are of the train folder
        train_idx, test_idx = carve(train_idx, labels, test_fraction, seed, "test_fraction")
    elif len(val_idx) == 0:
        train_idx, val_idx = carve(train_idx, labels, val_fraction, seed, "val_fraction")
    return train_idx, val_idx, test_idx


def make_splits(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    normalize: str,
    mean=None,
    std=None,
) -> Splits:
    """Split one labelled image tensor three ways, stratified, and fix the normalisation from the train part."""
    everything_train = np.full(len(labels), TRAIN)
    return splits_from_assignment(
        images, labels, class_names, everything_train, val_fraction, test_fraction, split_seed, normalize, mean, std
    )


def official_splits(train: tuple, test: tuple, class_names: list[str], image_size: int, channels: int,
                    val_fraction: float, split_seed: int, normalize: str, mean=None, std=None) -> Splits:
    """A dataset published as (images uint8 NCHW, labels) train and test parts: resized to image_size,
    converted to `channels`, with validation carved out of train, stratified."""
    import torch.nn.functional as F

    images = torch.from_numpy(np.concatenate([np.asarray(train[0]), np.asarray(test[0])]))  # a writable copy
    if channels == 1 and images.shape[1] == 3:  # ITU-R 601 luma, as Pillow's convert("L")
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(dim=1, keepdim=True).round().to(torch.uint8)
    if image_size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    if channels == 3 and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    labels = torch.from_numpy(np.concatenate([train[1], test[1]]).astype(np.int64))
    assignment = np.concatenate([np.full(len(train[1]), TRAIN), np.full(len(test[1]), TEST)])
    return splits_from_assignment(
        images.contiguous(), labels, class_names, assignment, val_fraction, 0.0, split_seed, normalize, mean, std
    )
