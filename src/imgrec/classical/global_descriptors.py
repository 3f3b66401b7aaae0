"""Whole-image descriptors from scikit-image and NumPy: HOG (histograms of gradient orientations over
cells, normalised over blocks), LBP (uniform local binary patterns, a histogram per cell of a spatial
grid), and a colour histogram (per channel) as the simplest baseline."""

import numpy as np

from imgrec.errors import ImgrecError


def _whole(value, key: str, least: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ImgrecError(f"method.{key}={value!r} must be a whole number >= {least}")
    return value


class HOG:
    """skimage.feature.hog of the grey image: `orientations` bins per cell of `pixels_per_cell`, blocks of
    `cells_per_block` cells normalised with L2-Hys (Dalal and Triggs)."""

    def __init__(self, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2):
        self.orientations = _whole(orientations, "orientations")
        self.pixels_per_cell = _whole(pixels_per_cell, "pixels_per_cell")
        self.cells_per_block = _whole(cells_per_block, "cells_per_block")

    @property
    def min_side(self) -> int:
        return self.pixels_per_cell * self.cells_per_block

    def check_size(self, height: int, width: int, where: str) -> None:
        if min(height, width) < self.min_side:
            raise ImgrecError(f"{where}: a {height}x{width} image is smaller than one HOG block ({self.min_side} px = "
                              f"method.pixels_per_cell {self.pixels_per_cell} x method.cells_per_block "
                              f"{self.cells_per_block}); use images of at least {self.min_side} px (dataset.image_size) "
                              "or smaller cells")

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        from skimage.feature import hog

        return hog(grey, orientations=self.orientations, pixels_per_cell=(self.pixels_per_cell,) * 2,
                   cells_per_block=(self.cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True
                   ).astype(np.float32)


class LBP:
    """Uniform LBP codes of `points` neighbours at `radius` (rotation-invariant: 'uniform'), a histogram of
    the points + 2 codes in each cell of a `grid` x `grid` split of the image, each summing to 1."""

    def __init__(self, points: int = 8, radius: float = 1.0, grid: int = 4):
        self.points, self.grid = _whole(points, "points", 4), _whole(grid, "grid")
        if not isinstance(radius, (int, float)) or isinstance(radius, bool) or radius <= 0:
            raise ImgrecError(f"method.radius={radius!r} must be a number > 0")
        self.radius = float(radius)

    @property
    def min_side(self) -> int:
        return self.grid * 2

    def check_size(self, height: int, width: int, where: str) -> None:
        if min(height, width) < self.min_side:
            raise ImgrecError(f"{where}: a {height}x{width} image is too small for a {self.grid}x{self.grid} LBP grid; "
                              f"use images of at least {self.min_side} px or a smaller method.grid")

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        from skimage.feature import local_binary_pattern

        codes = local_binary_pattern(grey, self.points, self.radius, method="uniform").astype(np.int64)
        bins = self.points + 2
        rows = np.array_split(np.arange(codes.shape[0]), self.grid)
        columns = np.array_split(np.arange(codes.shape[1]), self.grid)
        histograms = []
        for row in rows:
            for column in columns:
                cell = codes[np.ix_(row, column)].ravel()
                histograms.append(np.bincount(cell, minlength=bins) / max(1, cell.size))
        return np.concatenate(histograms).astype(np.float32)


class ColourHistogram:
    """`bins` bins per channel of the uint8 image (grey: one channel), each channel's histogram summing to 1."""

    def __init__(self, bins: int = 32):
        self.bins = _whole(bins, "bins", 2)

    min_side = 1

    def check_size(self, height: int, width: int, where: str) -> None:
        return None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        channels = image[None] if image.ndim == 2 else image
        return np.concatenate([np.histogram(channel, bins=self.bins, range=(0, 256))[0] / channel.size
                               for channel in channels]).astype(np.float32)
