"""Datasets made of image files: decode them all once, in parallel, into one uint8 tensor."""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from imgrec.data.images import BadImage, decode_image
from imgrec.data.splits import Splits, splits_from_assignment
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
ON_BAD_IMAGE_CHOICES = ("error", "skip")
# decoded images may take at most this share of the machine's memory (they live in RAM or on the GPU)
MAX_MEMORY_SHARE = 0.5


def _available_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(count: int, channels: int, size: int) -> None:
    needed = count * channels * size * size
    available = _available_memory_bytes()
    if available is not None and needed > MAX_MEMORY_SHARE * available:
        raise ImgrecError(
            f"{count} images at {channels}x{size}x{size} need {needed / 2**30:.1f} GiB decoded, more than half the "
            f"{available / 2**30:.1f} GiB of free memory; lower dataset.image_size (imgrec keeps decoded images in memory)"
        )


def decode_files(
    paths: list[Path], channels: int, size: int, on_bad_image: str
) -> tuple[torch.Tensor, np.ndarray, list[tuple[str, str]]]:
    """Decode every file. Returns images (N, C, size, size), the indices of `paths` kept, and the skipped files."""
    if on_bad_image not in ON_BAD_IMAGE_CHOICES:
        raise ImgrecError(f"dataset.on_bad_image={on_bad_image!r} must be 'error' or 'skip'")
    check_fits_in_memory(len(paths), channels, size)

    def decode(path: Path):
        try:
            return decode_image(path, channels, size), None
        except BadImage as problem:
            return None, str(problem)

    images = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    kept, skipped = [], []
    # Pillow releases the GIL while decoding, so threads use every core without pickling images around
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for index, (path, (image, problem)) in enumerate(zip(paths, pool.map(decode, paths, chunksize=64))):
            if problem is None:
                images[len(kept)] = image
                kept.append(index)
            elif on_bad_image == "error":
                raise ImgrecError(
                    f"image '{path}' cannot be used: {problem}. Fix or remove it, or set dataset.on_bad_image=skip "
                    "to leave such files out (they are then listed in skipped_images.txt in the run dir)"
                )
            else:
                skipped.append((str(path), problem))
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}: {skipped[0][1]}")
    return images[: len(kept)], np.asarray(kept, dtype=np.int64), skipped


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
) -> Splits:
    """Decode the files, drop the unreadable ones (on_bad_image=skip), then split."""
    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    if not isinstance(image_size, int) or image_size < 4:
        raise ImgrecError(f"dataset.image_size={image_size!r} must be a whole number of pixels >= 4")
    images, kept, skipped = decode_files(paths, channels, image_size, on_bad_image)
    labels_kept = np.asarray(labels, dtype=np.int64)[kept]
    counts = np.bincount(labels_kept, minlength=len(class_names))
    if skipped and counts.min() == 0:
        empty = [name for name, count in zip(class_names, counts) if count == 0]
        raise ImgrecError(f"class(es) {empty} have no readable images: every file was skipped (see the warning above)")
    return splits_from_assignment(
        images, torch.from_numpy(labels_kept), class_names, np.asarray(assignment)[kept],
        val_fraction, test_fraction, split_seed, normalize, mean, std, skipped,
    )
