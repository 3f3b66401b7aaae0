"""The classical face-recognition baselines the study names, as embedding makers comparable with a
trained network's: each turns grey face crops (N, H, W) into L2-normalised vectors whose dot product is
the cosine similarity a gallery matches on.

- Eigenfaces (Turk and Pentland, 1991): the principal components of the training faces, whitened, so
  every direction counts alike; fitted on training people only.
- LBP histograms (Ahonen et al., 2006): uniform local binary patterns (scikit-image) histogrammed over a
  grid of cells and concatenated; nothing to fit. Square roots of the frequencies (the Hellinger map)
  make the cosine of two histograms a good similarity.
"""

import numpy as np

from imgrec.errors import ImgrecError
from imgrec.values import is_whole


def _faces(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 3 or len(images) == 0:
        raise ImgrecError(f"face images must be a stack of grey images (N, height, width); got shape {list(images.shape)}")
    return images


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class Eigenfaces:
    def __init__(self, components: int = 50, whiten: bool = True):
        if not is_whole(components, 1):
            raise ImgrecError(f"eigenfaces components={components!r} must be a whole number >= 1")
        self.components, self.whiten, self.pca = components, whiten, None

    def fit(self, images) -> "Eigenfaces":
        from sklearn.decomposition import PCA

        faces = _faces(images)
        components = min(self.components, len(faces) - 1, faces[0].size)
        if components < 1:
            raise ImgrecError("eigenfaces need at least 2 training faces")
        self.pca = PCA(n_components=components, whiten=self.whiten, random_state=0).fit(faces.reshape(len(faces), -1))
        return self

    def embed(self, images) -> np.ndarray:
        if self.pca is None:
            raise ImgrecError("eigenfaces must be fitted on training faces before they embed")
        faces = _faces(images)
        if faces[0].size != self.pca.n_features_in_:
            raise ImgrecError(f"these faces have {faces[0].size} pixels, the eigenfaces were fitted on "
                              f"{self.pca.n_features_in_}; crop and resize them the same way")
        return _unit(self.pca.transform(faces.reshape(len(faces), -1)))


class LBPHistograms:
    def __init__(self, points: int = 8, radius: float = 1.0, grid: int = 7):
        if not is_whole(grid, 1):
            raise ImgrecError(f"lbp grid={grid!r} must be a whole number >= 1 (cells per side)")
        if not is_whole(points, 4):
            raise ImgrecError(f"lbp points={points!r} must be a whole number >= 4")
        self.points, self.radius, self.grid = points, radius, grid

    def fit(self, images) -> "LBPHistograms":  # nothing to learn; here so every baseline is used alike
        return self

    def histograms(self, image: np.ndarray) -> np.ndarray:
        """The grid's per-cell frequencies of the points + 2 uniform pattern codes, (grid * grid, points + 2)."""
        from skimage.feature import local_binary_pattern

        if min(image.shape) < 2 * self.grid:
            raise ImgrecError(f"a {image.shape[1]}x{image.shape[0]} face is too small for an LBP grid of {self.grid}")
        grey = np.clip(np.round(image), 0, 255).astype(np.uint8)  # LBP compares pixels: exact integers, not floats
        codes = local_binary_pattern(grey, self.points, self.radius, method="uniform").astype(np.int64)
        bins = self.points + 2
        rows = np.array_split(np.arange(image.shape[0]), self.grid)
        cols = np.array_split(np.arange(image.shape[1]), self.grid)
        cells = [np.bincount(codes[np.ix_(r, c)].ravel(), minlength=bins) for r in rows for c in cols]
        counts = np.stack(cells).astype(np.float64)
        return counts / counts.sum(axis=1, keepdims=True)

    def embed(self, images) -> np.ndarray:
        faces = _faces(images)
        return _unit(np.stack([np.sqrt(self.histograms(face)).ravel() for face in faces]))
