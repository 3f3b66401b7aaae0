"""Datasets made of image files: checked and decoded once, in parallel; held in memory when they fit."""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from imgrec.data.images import BadImage, decode_image, detect_channels
from imgrec.data.splits import (
    TEST,
    FileSplit,
    ImageTensors,
    Splits,
    assign_indices,
    check_labels,
    normalization_stats,
)
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
ON_BAD_IMAGE_CHOICES = ("error", "skip")
IN_MEMORY_CHOICES = ("auto", True, False)
# decoded images may take at most this share of the free memory (they live in RAM or on the GPU)
MAX_MEMORY_SHARE = 0.5


def _available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def fits_in_memory(count: int, channels: int, size: int) -> bool:
    available = _available_memory_bytes()
    return available is None or count * channels * size * size <= MAX_MEMORY_SHARE * available


def decode_each(paths: list[Path], channels: int, size: int, on_bad_image: str, on_image) -> list[tuple[str, str]]:
    """Call on_image(index, uint8 image) for every readable file, in order. A bad file raises an error
    naming it (on_bad_image=error) or is left out (skip); returns the skipped (file, reason) pairs."""
    if on_bad_image not in ON_BAD_IMAGE_CHOICES:
        raise ImgrecError(f"dataset.on_bad_image={on_bad_image!r} must be 'error' or 'skip'")

    def decode(path: Path):
        try:
            return decode_image(path, channels, size), None
        except BadImage as problem:
            return None, str(problem)

    skipped = []
    # Pillow releases the GIL while decoding, so threads use every core without pickling images around
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for index, (path, (image, problem)) in enumerate(zip(paths, pool.map(decode, paths, chunksize=64))):
            if problem is None:
                on_image(index, image)
            elif on_bad_image == "error":
                raise ImgrecError(
                    f"image '{path}' cannot be used: {problem}. Fix or remove it, or set dataset.on_bad_image=skip "
                    "to leave such files out (they are then listed in skipped_images.txt in the run dir)"
                )
            else:
                skipped.append((str(path), problem))
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    return skipped


def _decode_into_memory(paths, channels, size, on_bad_image):
    images = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    kept: list[int] = []

    def keep(index, image):
        images[len(kept)] = image
        kept.append(index)

    skipped = decode_each(paths, channels, size, on_bad_image, keep)
    return images[: len(kept)], np.asarray(kept, dtype=np.int64), skipped


def _check_without_keeping(paths, channels, size, on_bad_image):
    """Per-file pixel sums and sums of squares (float64, [0, 1] units), enough for the train split's stats."""
    kept: list[int] = []
    sums, squares = [], []

    def measure(index, image):
        pixels = image.to(torch.float64).flatten(1) / 255.0
        kept.append(index)
        sums.append(pixels.sum(dim=1))
        squares.append((pixels * pixels).sum(dim=1))

    skipped = decode_each(paths, channels, size, on_bad_image, measure)
    return np.asarray(kept, dtype=np.int64), torch.stack(sums), torch.stack(squares), skipped


def splits_from_files(
    paths: list[Path],
    labels: list[int],
    assignment: list[int],
    class_names: list[str],
    *,
    image_size: int,
    channels: int,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    normalize: str,
    mean,
    std,
    on_bad_image: str,
    in_memory="auto",
) -> Splits:
    """Check every file (dropping unreadable ones with on_bad_image=skip), split, and fix the normalisation.

    in_memory: true decodes everything into one uint8 tensor; false keeps only the file list and
    decodes batches in DataLoader workers while training; auto picks true when the decoded images
    take at most half the free memory.
    """
    if channels == "auto":
        channels = detect_channels(paths)
        log.info(f"dataset.channels=auto: the images are {'colour' if channels == 3 else 'grey'}, read with "
                 f"{channels} channel(s) (set dataset.channels to choose)")
    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels!r} must be auto, 1 (grayscale) or 3 (RGB)")
    if not isinstance(image_size, int) or image_size < 4:
        raise ImgrecError(f"dataset.image_size={image_size!r} must be a whole number of pixels >= 4")
    check_labels(labels, class_names, lambda index: f"file {paths[index]}")
    if in_memory not in IN_MEMORY_CHOICES:
        raise ImgrecError(f"dataset.in_memory={in_memory!r} must be auto, true or false")
    if in_memory == "auto":
        in_memory = fits_in_memory(len(paths), channels, image_size)
        if not in_memory:
            log.info(f"{len(paths)} images at {image_size}px do not fit in memory: reading them from disk each epoch")
    if in_memory:
        images, kept, skipped = _decode_into_memory(paths, channels, image_size, on_bad_image)
    else:
        kept, sums, squares, skipped = _check_without_keeping(paths, channels, image_size, on_bad_image)
    labels_kept = np.asarray(labels, dtype=np.int64)[kept]
    counts = np.bincount(labels_kept, minlength=len(class_names))
    if skipped and counts.min() == 0:
        empty = [name for name, count in zip(class_names, counts) if count == 0]
        raise ImgrecError(f"class(es) {empty} have no readable images: every file was skipped (see the warning above)")
    parts = assign_indices(labels_kept, np.asarray(assignment)[kept], val_fraction, test_fraction, split_seed)
    label_tensor = torch.from_numpy(labels_kept)
    if in_memory:
        train, val, test = (ImageTensors(images[idx].contiguous(), label_tensor[idx].contiguous(),
                                         [str(paths[kept[i]]) for i in idx]) for idx in parts)
        mean, std = normalization_stats(train.images, normalize, mean, std)
    else:
        train, val, test = (FileSplit([paths[kept[i]] for i in idx], label_tensor[idx], channels, image_size) for idx in parts)

        def measure():  # mean and std over every pixel of the train split, from the per-file sums
            count = len(parts[0]) * image_size * image_size
            pixel_mean = sums[parts[0]].sum(dim=0) / count
            variance = squares[parts[0]].sum(dim=0) / count - pixel_mean**2
            return pixel_mean.tolist(), variance.clamp_min(1e-12).sqrt().clamp_min(1e-6).tolist()

        mean, std = normalization_stats(None, normalize, mean, std, channels=channels, measure=measure)
    return Splits(train, val, test, list(class_names), mean, std, list(skipped),
                  test_given=bool((np.asarray(assignment) == TEST).any()))


def images_at(split, indices) -> np.ndarray:
    """uint8 (N, C, H, W) images at `indices` of a split, held in memory or read from its files."""
    indices = np.asarray(indices, dtype=np.int64)
    if hasattr(split, "pixels"):  # a detection split: images of any size, padded with black to the largest
        images = [split.pixels(int(i)).numpy() for i in indices]
        height, width = (max((image.shape[axis] for image in images), default=1) for axis in (1, 2))
        padded = np.zeros((len(images), 3, height, width), np.uint8)
        for slot, image in zip(padded, images):
            slot[:, : image.shape[1], : image.shape[2]] = image
        return padded
    if isinstance(split, ImageTensors):
        return split.images[torch.as_tensor(indices)].cpu().numpy()
    if not len(indices):
        return np.zeros((0, split.channels, split.image_size, split.image_size), np.uint8)
    return np.stack([decode_image(split.paths[i], split.channels, split.image_size).numpy() for i in indices])
