"""Verification figures (evaluation/verification.py) against brute force and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from imgrec.errors import ImgrecError
from imgrec.tasks.embedding_scores import (
    equal_error_rate,
    operating_point,
    roc_auc,
    threshold_for_far,
)

RNG = np.random.default_rng(0)
GENUINE = RNG.normal(0.7, 0.12, 400)
IMPOSTOR = RNG.normal(0.2, 0.15, 5000)


@pytest.mark.parametrize("target", [0.0, 0.001, 0.01, 0.1])
def test_the_threshold_for_a_target_far_gives_at_most_that_far_and_is_the_lowest_that_does(target):
    point = threshold_for_far(GENUINE, IMPOSTOR, target)
    assert point.far == (IMPOSTOR >= point.threshold).mean() <= target
    assert point.frr == (GENUINE < point.threshold).mean()
    # the next impostor score down would accept one pair too many
    below = IMPOSTOR[IMPOSTOR < point.threshold].max()
    assert (IMPOSTOR >= below).mean() > target
    assert point.far == pytest.approx(target, abs=1 / len(IMPOSTOR))


def test_equal_error_rate_and_auc_match_scikit_learns_roc_curve():
    labels = np.r_[np.ones(len(GENUINE)), np.zeros(len(IMPOSTOR))]
    fpr, tpr, _ = roc_curve(labels, np.r_[GENUINE, IMPOSTOR])
    crossing = np.argmin(np.abs(fpr - (1 - tpr)))
    eer = equal_error_rate(GENUINE, IMPOSTOR)
    assert eer.far == pytest.approx((fpr[crossing] + 1 - tpr[crossing]) / 2, abs=2 / len(GENUINE))
    assert 0.01 < eer.far < 0.05  # the two normals above overlap by a few percent
    assert roc_auc(GENUINE, IMPOSTOR) == pytest.approx(np.trapezoid(tpr, fpr))
    separated = equal_error_rate([0.9, 0.8], [0.1, 0.2, 0.3])
    assert separated.far == 0.0 and operating_point([0.9, 0.8], [0.1, 0.2, 0.3], separated.threshold).frr == 0.0


def test_missing_pairs_and_bad_targets_are_named():
    with pytest.raises(ImgrecError, match=r"verification needs genuine and impostor pairs; got 0 genuine"):
        threshold_for_far([], IMPOSTOR, 0.01)
    with pytest.raises(ImgrecError, match=r"target FAR 1.5 must be in \[0, 1\)"):
        threshold_for_far(GENUINE, IMPOSTOR, 1.5)


def test_pairs_and_rank1_count_what_they_say():
    from imgrec.tasks.embedding_scores import pair_scores, rank1

    embeddings = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]])
    genuine, impostor = pair_scores(embeddings, ["a", "a", "b", "b"])
    assert sorted(genuine) == [pytest.approx(0.8), 1.0] and sorted(impostor) == [0.0, 0.0, pytest.approx(0.6), pytest.approx(0.6)]
    assert rank1(embeddings[:3], ["a", "a", "b"], np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.6]]), ["a", "b", "b"]) == 2 / 3
