"""Verification and identification scores (tasks/embedding_scores.py) against brute force, hand counts and scikit-learn."""

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


# four people on a circle: a (0 deg), b (90), c (180), d (270); two images each, slightly apart
ANGLES = {"a": (0, 10), "b": (90, 100), "c": (180, 190), "d": (270, 280)}
UNIT = np.array([[np.cos(np.radians(t)), np.sin(np.radians(t))] for p in ANGLES for t in ANGLES[p]])
LABELS = np.array([p for p in ANGLES for _ in range(2)])


def test_leave_one_out_rank1_counts_images_whose_nearest_other_is_their_person():
    from imgrec.tasks.embedding_scores import leave_one_out_rank1

    assert leave_one_out_rank1(UNIT, LABELS) == 1.0
    swapped = LABELS.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # a's second image labelled b and b's first labelled a
    # images 0 and 1 now have nearest neighbours of the other label; 2 and 3 too: 4 of 8 wrong
    assert leave_one_out_rank1(UNIT, swapped) == 0.5
    assert np.isnan(leave_one_out_rank1(UNIT[::2], LABELS[::2]))  # nobody has a second image


def test_rank_accuracies_count_people_scoring_above_the_right_one():
    from imgrec.tasks.embedding_scores import rank_accuracies

    gallery, gallery_labels = UNIT[::2], LABELS[::2]  # one image per person enrolled: 0, 90, 180, 270 degrees
    probe = np.array([[np.cos(np.radians(50)), np.sin(np.radians(50))]])  # between a (50 deg away) and b (40)
    assert rank_accuracies(gallery, gallery_labels, probe, ["a"], ranks=(1, 2, 5)) == {1: 0.0, 2: 1.0}
    assert rank_accuracies(gallery, gallery_labels, probe, ["b"], ranks=(1,)) == {1: 1.0}


def test_open_set_rates_reject_strangers_at_the_false_alarm_rate():
    from imgrec.tasks.embedding_scores import open_set_rates

    gallery, gallery_labels = UNIT[[0, 2]], LABELS[[0, 2]]  # a and b enrolled
    probes = UNIT[[1, 3, 4, 6]]  # a, b (10 deg from their enrolled images) and strangers c, d
    [rate] = open_set_rates(gallery, gallery_labels, probes, ["a", "b", "c", "d"], [0.0])
    # strangers are 90 deg from their nearest enrolled image (cosine 0); the threshold sits just above that, and
    # both enrolled probes (cosine of 10 deg) pass it
    assert rate["false_alarm_rate"] == 0.0 and rate["dir"] == 1.0
    assert np.cos(np.radians(90)) < rate["threshold"] <= np.cos(np.radians(10))
    [lenient] = open_set_rates(gallery, gallery_labels, probes, ["a", "b", "c", "d"], [0.5])
    assert lenient["false_alarm_rate"] <= 0.5 and lenient["dir"] == 1.0


def test_enrolment_takes_k_per_person_and_leaves_out_people_with_too_few():
    from imgrec.tasks.embedding_scores import enrolment

    labels = np.array(["a"] * 5 + ["b"] * 2 + ["c"] * 3)
    role = enrolment(labels, per_person=2, seed=0)
    assert (role[:5] == 1).sum() == 2 and (role[:5] == 0).sum() == 3
    assert (role[5:7] == -1).all()  # two images, both would be enrolled: no probe left
    assert (role[7:] == 1).sum() == 2 and (enrolment(labels, 2, seed=0) == role).all()
