"""Fréchet distance, k-NN precision/recall and per-class accuracy against hand-computed values."""

import json
import warnings

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.gan.quality import frechet_distance, knn_precision_recall, per_class_accuracy, quality_report


def _psd_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return vectors @ np.diag(np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _frechet_by_eigh(a, b):
    """An independent route: Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD matrix."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    gap = a.mean(0) - b.mean(0)
    return gap @ gap + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(inner, 0.0, None)).sum()


def _with_exact_moments(rng, mean, std, samples=50):
    """Samples whose sample mean and (ddof=1) covariance are exactly `mean` and diag(std^2)."""
    x = rng.normal(size=(samples, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    return x * std + mean


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8)) * 3.0
    assert frechet_distance(x, x) < 1e-6 * 2 * np.trace(np.cov(x, rowvar=False))


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(1)
    mean_a, std_a = np.array([0.0, 1.0, -2.0]), np.array([1.0, 2.0, 0.5])
    mean_b, std_b = np.array([1.0, 1.0, 0.0]), np.array([3.0, 2.0, 1.0])
    a, b = _with_exact_moments(rng, mean_a, std_a), _with_exact_moments(rng, mean_b, std_b)
    # Gaussians with diagonal covariances: ||mu_a - mu_b||^2 + sum (sigma_a - sigma_b)^2 = 5 + 4.25
    assert frechet_distance(a, b) == pytest.approx(9.25, rel=1e-9)


def test_frechet_distance_matches_an_eigendecomposition_and_is_symmetric():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(250, 6)) @ rng.normal(size=(6, 6)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(_frechet_by_eigh(a, b), rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)


def test_frechet_distance_survives_singular_covariances_without_warnings():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(60, 6)) + 0.2
    a[:, 0] = b[:, 0] = 1.0  # a dead unit: its zero variance makes the covariance product exactly singular
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distance = frechet_distance(a, b)
        assert frechet_distance(a, a) < 1e-4
    # the 1e-6 offset moves the answer by about 1e-6 per feature dim
    assert distance == pytest.approx(_frechet_by_eigh(a, b), abs=1e-4)
    assert distance == pytest.approx(frechet_distance(a[:, 1:], b[:, 1:]), abs=1e-4)


def test_frechet_distance_handles_fewer_samples_than_feature_dims():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(4, 10)), rng.normal(size=(5, 10))
    assert frechet_distance(a, b) == pytest.approx(_frechet_by_eigh(a, b), rel=1e-3)


def test_frechet_distance_accepts_a_single_feature_dim():
    assert frechet_distance([[0.0], [2.0]], [[1.0], [3.0]]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "real, fake, message",
    [
        (np.zeros((1, 3)), np.zeros((5, 3)), "real_features has 1 sample"),
        (np.zeros((5, 3)), np.zeros((5, 4)), "have 3 feature dims but fake_features have 4"),
        (np.zeros(5), np.zeros((5, 3)), "expected a 2-D array"),
        (np.zeros((5, 3)), np.full((5, 3), np.nan), "fake_features contains NaN"),
    ],
)
def test_frechet_distance_rejects_bad_feature_arrays(real, fake, message):
    with pytest.raises(ImgrecError, match=message):
        frechet_distance(real, fake)


def test_precision_and_recall_are_one_when_fake_equals_real():
    x = np.random.default_rng(4).normal(size=(100, 5))
    assert knn_precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_and_recall_are_zero_when_fake_is_far_away():
    x = np.random.default_rng(5).normal(size=(100, 5))
    assert knn_precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = np.arange(10.0)[:, None]  # k=1: every real ball has radius 1
    fake = np.array([0.0, 0.0, 0.0, 9.0, 9.0, 9.0])[:, None]  # k=1: duplicates, so every fake ball has radius 0
    # every fake sits on a real point; only real 0 and 9 sit in a fake ball
    assert knn_precision_recall(real, fake, k=1) == (1.0, pytest.approx(0.2))


def test_precision_counts_fakes_inside_any_real_ball():
    real = np.array([0.0, 1.0, 10.0, 12.0])[:, None]  # k=1 radii: 1, 1, 2, 2
    fake = np.array([0.5, 5.0, 11.5, 14.0])[:, None]  # inside, outside, inside, inside (12 + 2)
    precision, _ = knn_precision_recall(real, fake, k=1)
    assert precision == pytest.approx(0.75)


@pytest.mark.parametrize("k", [0, -1, 1.5, True, 5])
def test_knn_precision_recall_rejects_bad_k(k):
    x = np.random.default_rng(6).normal(size=(5, 2))
    with pytest.raises(ImgrecError, match=r"k=.* expected a whole number >= 1 and below both set sizes"):
        knn_precision_recall(x, x, k=k)


def test_per_class_accuracy_on_a_hand_made_example():
    requested = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 0, 1, 2, 2, 2])
    accuracy = per_class_accuracy(predicted, requested, ["shirt", "shoe", "bag", "coat"])
    # "coat" has no generated images, so it is left out of the entries and the mean
    assert accuracy == {"shirt": 0.75, "shoe": 0.5, "bag": 1.0, "mean": 0.75}


def test_per_class_accuracy_rejects_bad_labels():
    with pytest.raises(ImgrecError, match="requested holds class index 3; expected 0..2"):
        per_class_accuracy([0, 1], [0, 3], ["a", "b", "c"])
    with pytest.raises(ImgrecError, match="predicted has 1 labels and requested has 2"):
        per_class_accuracy([0], [0, 1], ["a", "b", "c"])
    with pytest.raises(ImgrecError, match="expected a 1-D array of class indices"):
        per_class_accuracy([0.0, 1.0], [0, 1], ["a", "b"])


def test_quality_report_is_json_ready_and_skips_thin_classes():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(40, 4)), rng.normal(size=(30, 4)) + 0.3
    real_labels = np.repeat([0, 1], 20)
    fake_labels = np.array([0] * 29 + [1])  # one "trouser" fake: too few for a covariance
    report = quality_report(real, real_labels, fake, fake_labels, fake_labels.copy(), ["tshirt", "trouser"])
    assert json.loads(json.dumps(report)) == report
    assert set(report) == {"frechet_distance", "precision", "recall", "class_accuracy", "frechet_distance_per_class"}
    assert report["frechet_distance"] == pytest.approx(frechet_distance(real, fake))
    assert list(report["frechet_distance_per_class"]) == ["tshirt"]
    assert report["class_accuracy"] == {"tshirt": 1.0, "trouser": 1.0, "mean": 1.0}


def test_quality_report_rejects_a_label_per_row_mismatch():
    x = np.zeros((4, 2))
    with pytest.raises(ImgrecError, match="3 real_labels for 4 real_features"):
        quality_report(x, [0, 0, 0], x, [0, 0, 0, 0], [0, 0, 0, 0], ["a"])
