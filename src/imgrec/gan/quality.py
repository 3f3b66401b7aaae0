"""Offline quality measures of generated images, computed on classifier feature arrays (N, D)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import scipy.linalg
import torch

from imgrec.errors import ImgrecError

# pytorch-fid's offset for a singular covariance product: small against any real feature variance
SINGULAR_OFFSET = 1e-6
# pytorch-fid's bound on the imaginary part sqrtm may leave on the diagonal before the result is distrusted
IMAGINARY_TOLERANCE = 1e-3
# rows of the query set per distance block: 1024 x 10,000 float64 distances are 80 MB
DISTANCE_CHUNK_ROWS = 1024


def _feature_matrix(name: str, features) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ImgrecError(f"{name} has shape {array.shape}; expected a 2-D array (samples, feature dims)")
    if array.shape[0] < 2:
        raise ImgrecError(f"{name} has {array.shape[0]} sample(s); expected at least 2 to estimate a covariance")
    if not np.isfinite(array).all():
        raise ImgrecError(f"{name} contains NaN or infinite values; check the feature extractor's inputs")
    return array


def _feature_pair(real_features, fake_features) -> tuple[np.ndarray, np.ndarray]:
    real = _feature_matrix("real_features", real_features)
    fake = _feature_matrix("fake_features", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise ImgrecError(
            f"real_features have {real.shape[1]} feature dims but fake_features have {fake.shape[1]}; "
            "extract both with the same classifier checkpoint"
        )
    return real, fake


def _sqrtm_trace(product: np.ndarray) -> tuple[float, bool]:
    """Trace of sqrtm(product) and whether scipy found the product singular (a warning or non-finite result)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(product)
    singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
    singular |= not np.isfinite(root).all()
    if np.iscomplexobj(root):
        imaginary = np.abs(np.diagonal(root).imag).max()
        if not singular and imaginary > IMAGINARY_TOLERANCE:
            raise ImgrecError(
                f"sqrt of the covariance product has an imaginary part of {imaginary:.3g}; "
                "use more samples than feature dims or features from a smaller layer"
            )
        root = root.real
    return float(np.trace(root)), singular


def frechet_distance(real_features, fake_features) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), in float64. The features are those of a
    classifier imgrec trained on the real data, so this is *not* the Inception FID: Inception weights need
    a download, and ImageNet features describe 28x28 grey clothing poorly. Numbers are comparable only
    between runs that use the same feature checkpoint.

    As in the reference pytorch-fid, a singular S_r S_f is retried with 1e-6 * I added to both
    covariances, and a negligible imaginary part left by sqrtm is dropped.
    """
    real, fake = _feature_pair(real_features, fake_features)
    mean_gap = real.mean(axis=0) - fake.mean(axis=0)
    # atleast_2d: np.cov of one feature dim is a 0-d array
    real_cov = np.atleast_2d(np.cov(real, rowvar=False))
    fake_cov = np.atleast_2d(np.cov(fake, rowvar=False))
    trace_root, singular = _sqrtm_trace(real_cov @ fake_cov)
    if singular:
        offset = SINGULAR_OFFSET * np.eye(real_cov.shape[0])
        trace_root, _ = _sqrtm_trace((real_cov + offset) @ (fake_cov + offset))
    distance = mean_gap @ mean_gap + np.trace(real_cov) + np.trace(fake_cov) - 2.0 * trace_root
    # rounding can leave a distance of a set to itself a hair below zero
    return max(float(distance), 0.0)


def _kth_neighbour_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point (the point itself is the 0-th)."""
    # topk rather than kthvalue: ten times faster on CPU for the small k used here
    return torch.cat([torch.cdist(block, points).topk(k + 1, dim=1, largest=False).values[:, k]
                      for block in points.split(DISTANCE_CHUNK_ROWS)])


def knn_precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls in feature space.

    Precision is the share of fake samples inside the ball of at least one real sample, each real ball
    reaching that sample's k-th nearest real neighbour; recall is the same with the roles swapped.
    """
    real, fake = _feature_pair(real_features, fake_features)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k < min(len(real), len(fake)):
        raise ImgrecError(
            f"k={k!r} for {len(real)} real and {len(fake)} fake samples; "
            "expected a whole number >= 1 and below both set sizes"
        )
    # torch.cdist rather than scikit-learn's NearestNeighbors: every ball has its own radius, which no
    # neighbour query answers, so the full distance matrix is needed, block by block to bound memory.
    # float64 because cdist's matrix-product shortcut leaves a point ~1e-2 from itself in float32.
    real_points, fake_points = torch.from_numpy(real), torch.from_numpy(fake)
    real_radii = _kth_neighbour_radii(real_points, int(k))
    fake_radii = _kth_neighbour_radii(fake_points, int(k))
    fakes_inside, reals_covered = 0, torch.zeros(len(real_points), dtype=torch.bool)
    # one pass over the fake-to-real distances answers both: rows for precision, columns for recall
    for block, block_radii in zip(fake_points.split(DISTANCE_CHUNK_ROWS), fake_radii.split(DISTANCE_CHUNK_ROWS)):
        distances = torch.cdist(block, real_points)
        fakes_inside += int((distances <= real_radii).any(dim=1).sum())
        reals_covered |= (distances <= block_radii[:, None]).any(dim=0)
    return fakes_inside / len(fake_points), int(reals_covered.sum()) / len(real_points)


def _class_indices(name: str, labels, num_classes: int) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ImgrecError(
            f"{name} has shape {array.shape} and dtype {array.dtype}; expected a 1-D array of class indices"
        )
    outside = array[(array < 0) | (array >= num_classes)]
    if outside.size:
        raise ImgrecError(
            f"{name} holds class index {int(outside[0])}; expected 0..{num_classes - 1} (one per class name)"
        )
    return array


def per_class_accuracy(predicted, requested, class_names) -> dict[str, float]:
    """Share of generated images the classifier assigns to the class they were generated for.

    One entry per class name that has generated images, plus "mean", the unweighted mean over those classes.
    """
    predicted = _class_indices("predicted", predicted, len(class_names))
    requested = _class_indices("requested", requested, len(class_names))
    if len(predicted) != len(requested) or not len(requested):
        raise ImgrecError(
            f"predicted has {len(predicted)} labels and requested has {len(requested)}; "
            "expected one prediction per generated image, at least one image"
        )
    accuracy = {
        name: float((predicted[requested == index] == index).mean())
        for index, name in enumerate(class_names)
        if (requested == index).any()
    }
    accuracy["mean"] = float(np.mean(list(accuracy.values())))
    return accuracy


def quality_report(
    real_features, real_labels, fake_features, fake_labels, fake_predicted, class_names, k: int = 3
) -> dict:
    """Fréchet distance, k-NN precision and recall, and per-class accuracy as plain floats (JSON-ready).

    `fake_labels` are the classes the images were generated for, `fake_predicted` the classifier's answers.
    The per-class Fréchet distance covers only classes with at least twice as many real and as many fake samples
    as feature dimensions: with fewer, each class's covariance is singular and the number mostly reflects the
    regularisation, not the images.
    """
    real, fake = _feature_pair(real_features, fake_features)
    real_labels = _class_indices("real_labels", real_labels, len(class_names))
    fake_labels = _class_indices("fake_labels", fake_labels, len(class_names))
    if len(real_labels) != len(real) or len(fake_labels) != len(fake):
        raise ImgrecError(
            f"{len(real_labels)} real_labels for {len(real)} real_features and {len(fake_labels)} fake_labels "
            f"for {len(fake)} fake_features; expected one label per feature row"
        )
    precision, recall = knn_precision_recall(real, fake, k=k)
    per_class_distance = {
        name: frechet_distance(real[real_labels == index], fake[fake_labels == index])
        for index, name in enumerate(class_names)
        if min((real_labels == index).sum(), (fake_labels == index).sum()) >= max(2, 2 * real.shape[1])
    }
    return {
        "frechet_distance": frechet_distance(real, fake),
        "precision": precision,
        "recall": recall,
        "class_accuracy": per_class_accuracy(fake_predicted, fake_labels, class_names),
        "frechet_distance_per_class": per_class_distance,
    }
