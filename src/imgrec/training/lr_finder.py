"""The learning-rate range test (Leslie Smith, "Cyclical Learning Rates for Training Neural Networks", 2015):
one optimizer step per lr, the lr growing exponentially, until the loss diverges; and two ways to read an lr
off the curve. Pure: it is handed the step, so it runs on any model, or on a formula in the tests."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

METHODS = ("steepest", "valley")
# fastai reads its suggestions off the curve without the first tenth of the steps (the moving average is still
# settling there) and the last five (the blow-up), as Lightning does with 10 and 1
SKIP_END = 5


@dataclass
class RangeTest:
    """The curve of one range test: every step taken, in order. A step whose loss was not finite is not in
    it; `stopped_at` is the lr at which the test stopped early (divergence), None when it ran every step."""

    lrs: np.ndarray
    losses: np.ndarray  # each step's loss: its batch before its update
    smoothed: np.ndarray  # the bias-corrected exponential moving average of `losses`
    stopped_at: float | None


def check_range_settings(min_lr, max_lr, num_steps, smoothing, diverge_factor, method) -> None:
    """The `lr_find` settings, each refused with the value and the fix."""
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if not is_number(value) or not value > 0:
            raise ImgrecError(f"lr_find.{name}={value!r} must be a number > 0 (the test steps through lrs on a log "
                              "scale), e.g. lr_find.min_lr=1e-7 lr_find.max_lr=10")
    if not min_lr < max_lr:
        raise ImgrecError(f"lr_find.min_lr={min_lr!r} must be below lr_find.max_lr={max_lr!r}: the lr grows from "
                          "min_lr to max_lr, e.g. lr_find.min_lr=1e-7 lr_find.max_lr=10")
    if not is_whole(num_steps, 30):  # a tenth is skipped at the start and 5 at the end: fewer leave no slope to read
        raise ImgrecError(f"lr_find.num_steps={num_steps!r} must be a whole number >= 30 (too few points to read a "
                          "slope off), e.g. lr_find.num_steps=100")
    if not is_number(smoothing) or not 0 < smoothing <= 1:
        raise ImgrecError(f"lr_find.smoothing={smoothing!r} must be a number in (0, 1]: the weight of each new loss "
                          "in the moving average (1: no smoothing), e.g. lr_find.smoothing=0.05")
    if not is_number(diverge_factor) or not diverge_factor > 1:
        raise ImgrecError(f"lr_find.diverge_factor={diverge_factor!r} must be a number > 1: the test stops once the "
                          "smoothed loss exceeds this many times its lowest, e.g. lr_find.diverge_factor=4")
    if method not in METHODS:
        raise ImgrecError(f"lr_find.method={method!r} is not one of {', '.join(METHODS)}")


def exponential_lrs(min_lr: float, max_lr: float, num_steps: int) -> np.ndarray:
    """min_lr ... max_lr, each lr the same factor above the one before."""
    return np.geomspace(min_lr, max_lr, num_steps)


def range_test(step: Callable[[float], float], lrs, smoothing: float = 0.05, diverge_factor: float = 4.0) -> RangeTest:
    """`step(lr)` takes one optimizer step at `lr` and returns its loss; called for each of `lrs` in turn until
    the loss is not finite or its moving average exceeds `diverge_factor` x the lowest it has been. Losses are
    taken to be >= 0, as every task's are."""
    taken, losses, smoothed = [], [], []
    average, lowest = 0.0, math.inf
    for index, lr in enumerate(lrs):
        loss = float(step(float(lr)))
        if not math.isfinite(loss):
            return RangeTest(np.array(taken), np.array(losses), np.array(smoothed), stopped_at=float(lr))
        average = (1 - smoothing) * average + smoothing * loss
        # the average starts at 0: dividing by the weights summed so far removes that pull towards 0
        value = average / (1 - (1 - smoothing) ** (index + 1))
        taken.append(float(lr))
        losses.append(loss)
        smoothed.append(value)
        lowest = min(lowest, value)
        if value > diverge_factor * lowest:
            return RangeTest(np.array(taken), np.array(losses), np.array(smoothed), stopped_at=float(lr))
    return RangeTest(np.array(taken), np.array(losses), np.array(smoothed), stopped_at=None)


def steepest_descent(lrs, losses) -> int | None:
    """The index where `losses` falls fastest per unit of log(lr) (central differences), or None where it never
    falls. Lightning's suggestion(); fastai's `steep`."""
    if len(losses) < 2:
        return None
    slopes = np.gradient(np.asarray(losses, dtype=float), np.log(np.asarray(lrs, dtype=float)))
    index = int(np.argmin(slopes))
    return index if slopes[index] < 0 else None


def valley(losses) -> int | None:
    """fastai's default suggestion (from ESRI): the longest run of ever-lower losses (a longest decreasing
    subsequence, so noise does not break it), and the point about halfway down it; None when the loss never falls.
    fastai's docs say "roughly 2/3 through the longest valley"; its code, followed here so the numbers agree,
    takes start + L/3 + L/6 of a valley of L steps."""
    losses = np.asarray(losses, dtype=float)
    if len(losses) < 2:
        return None
    run_length = np.ones(len(losses), dtype=int)  # the longest decreasing subsequence ending at each point
    for index in range(1, len(losses)):
        higher_before = run_length[:index][losses[:index] > losses[index]]
        if len(higher_before):
            run_length[index] = higher_before.max() + 1
    if run_length.max() < 2:
        return None
    end = int(np.argmax(run_length))  # the first point the longest valley reaches
    length = int(run_length[end])
    third = length / 3
    return max(0, end - length + int(third) + int(third / 2))


def suggestions(test: RangeTest, num_steps: int) -> dict[str, float | None]:
    """Each method's lr, read off the smoothed curve without its first tenth and its last SKIP_END points (as
    fastai does); None where the remaining curve never falls or is too short."""
    start, end = num_steps // 10, len(test.smoothed) - SKIP_END
    lrs, smoothed = test.lrs[start:end], test.smoothed[start:end]
    picked = {"steepest": steepest_descent(lrs, smoothed), "valley": valley(smoothed)}
    return {method: None if index is None else float(lrs[index]) for method, index in picked.items()}
