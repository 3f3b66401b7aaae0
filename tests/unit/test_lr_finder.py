"""The learning-rate range test and its suggestions on curves of known shape (no model, no data)."""

import math
import re

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.training.lr_finder import (
    check_range_settings,
    exponential_lrs,
    range_test,
    steepest_descent,
    suggestions,
    valley,
)

KNOWN_LR = 3e-3


def known_loss(lr: float) -> float:
    """Falls from 3 to 1 fastest (per unit of log lr) at KNOWN_LR, then blows up from about 0.1 on."""
    return 2 - math.tanh(math.log(lr / KNOWN_LR)) + (lr / 0.1) ** 3


def test_the_lrs_grow_by_one_factor_from_min_to_max():
    lrs = exponential_lrs(1e-7, 1.0, 100)
    assert len(lrs) == 100 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** (7 / 99))


def test_steepest_descent_finds_the_known_lr():
    lrs = exponential_lrs(1e-7, 1.0, 100)
    losses = [known_loss(lr) for lr in lrs]
    nearest = int(np.argmin(np.abs(np.log(lrs / KNOWN_LR))))
    assert steepest_descent(lrs, losses) == nearest
    assert lrs[nearest] == pytest.approx(KNOWN_LR, rel=10 ** (7 / 99 / 2) - 1)  # within half a step


def test_the_whole_test_without_smoothing_suggests_the_known_lr_and_stops_at_the_blow_up():
    lrs = exponential_lrs(1e-7, 1.0, 100)
    test = range_test(known_loss, lrs, smoothing=1.0, diverge_factor=4)
    assert test.stopped_at is not None and 0.1 < test.stopped_at < 1  # 4 x the lowest loss (1) on the way up
    assert np.allclose(test.lrs, lrs[: len(test.lrs)]) and test.lrs[-1] == test.stopped_at
    nearest = lrs[np.argmin(np.abs(np.log(lrs / KNOWN_LR)))]
    assert suggestions(test, num_steps=100)["steepest"] == nearest  # the grid point nearest KNOWN_LR


def test_the_valley_is_about_halfway_down_the_longest_fall_as_fastai_picks_it():
    # flat for 20 points, falling over points 20..79, then rising: the longest run of ever-lower points is a flat
    # one and the 60 falling ones (L = 61, ending at 79); fastai starts it at 79 - 61 and picks start + L/3 + L/6
    losses = np.r_[np.full(20, 3.0), np.linspace(2.9, 1.0, 60), np.linspace(1.1, 5.0, 20)]
    assert valley(losses) == 18 + 20 + 10
    noisy = losses + np.random.default_rng(0).normal(0, 0.02, len(losses))
    assert 20 <= valley(noisy) <= 79  # noise shortens the run of ever-lower points but keeps it in the fall


def test_a_curve_that_never_falls_has_no_suggestion():
    lrs = exponential_lrs(1e-3, 1.0, 30)
    rising = np.linspace(1.0, 2.0, 30)
    assert steepest_descent(lrs, rising) is None and valley(rising) is None
    assert steepest_descent(lrs[:1], rising[:1]) is None and valley(rising[:1]) is None


def test_the_moving_average_is_bias_corrected_and_the_divergence_rule_uses_it():
    lrs = exponential_lrs(1e-4, 1.0, 40)
    steady = range_test(lambda lr: 2.0, lrs, smoothing=0.05)
    assert steady.stopped_at is None and np.allclose(steady.smoothed, 2.0)  # not pulled towards 0 at the start
    spike_at = lrs[30]
    spiked = range_test(lambda lr: 20.0 if lr == spike_at else 1.0, lrs, smoothing=0.05, diverge_factor=4)
    assert spiked.stopped_at is None and spiked.losses[30] == 20.0  # one bad batch: the average rises to about 2
    assert 1.5 < spiked.smoothed[30] < 4
    rise_at = lrs[20]
    risen = range_test(lambda lr: 10.0 if lr >= rise_at else 1.0, lrs, smoothing=0.05, diverge_factor=4)
    stop = len(risen.lrs) - 1  # stops at the first step whose average passes 4 x the lowest (1)
    assert 20 < stop < 30 and risen.stopped_at == risen.lrs[stop]
    assert risen.smoothed[stop] > 4 >= risen.smoothed[stop - 1]


def test_a_non_finite_loss_stops_the_test_and_is_left_out_of_the_curve():
    lrs = exponential_lrs(1e-4, 1.0, 40)
    test = range_test(lambda lr: math.nan if lr > 0.01 else 1.0, lrs)
    first_bad = lrs[lrs > 0.01][0]
    assert test.stopped_at == pytest.approx(first_bad) and np.all(np.isfinite(test.losses))
    assert len(test.lrs) == int(np.sum(lrs <= 0.01))


@pytest.mark.parametrize("settings, message", [
    ({"min_lr": 1.0, "max_lr": 0.1}, "lr_find.min_lr=1.0 must be below lr_find.max_lr=0.1"),
    ({"min_lr": 0.1, "max_lr": 0.1}, "lr_find.min_lr=0.1 must be below lr_find.max_lr=0.1"),
    ({"min_lr": 0}, "lr_find.min_lr=0 must be a number > 0"),
    ({"max_lr": -1}, "lr_find.max_lr=-1 must be a number > 0"),
    ({"num_steps": 5}, "lr_find.num_steps=5 must be a whole number >= 30"),
    ({"smoothing": 0}, "lr_find.smoothing=0 must be a number in (0, 1]"),
    ({"diverge_factor": 1}, "lr_find.diverge_factor=1 must be a number > 1"),
    ({"method": "minimum"}, "lr_find.method='minimum' is not one of steepest, valley"),
])
def test_bad_settings_are_named_with_the_fix(settings, message):
    defaults = {"min_lr": 1e-7, "max_lr": 1.0, "num_steps": 100, "smoothing": 0.05, "diverge_factor": 4.0,
                "method": "steepest"}
    with pytest.raises(ImgrecError, match=re.escape(message)):
        check_range_settings(**{**defaults, **settings})
