"""Screening operating points: binomial bounds, thresholds that keep a target with stated confidence, PPV/NPV tables."""

import functools
import math

import numpy as np
from scipy.stats import beta, norm

from imgrec.errors import ImgrecError

METRICS = ("recall", "specificity", "precision", "fpr")
METHODS = ("clopper_pearson", "wilson")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ImgrecError(f"method={method!r} is not an interval method; use clopper_pearson | wilson")


def check_target(metric: str, target: float, confidence: float, method: str) -> None:
    """One-line errors for a threshold target a screening user could mistype."""
    if metric not in METRICS:
        raise ImgrecError(f"metric={metric!r} is not a threshold target; use recall | specificity | precision | fpr")
    if not 0.0 < target < 1.0:
        raise ImgrecError(f"target={target} must be in (0, 1), e.g. 0.9 (a bound can never reach 1)")
    if not 0.5 < confidence < 1.0:
        raise ImgrecError(f"confidence={confidence} must be in (0.5, 1), e.g. 0.95")
    check_method(method)


def _check_counts(successes, trials) -> None:
    if np.any(np.asarray(successes) < 0) or np.any(np.asarray(successes) > np.asarray(trials)):
        raise ImgrecError(f"successes={successes}, trials={trials}: expected 0 <= successes <= trials")


def _wilson(k, n, z):
    """Wilson score interval ends for k of n at normal quantile z (arrays; n == 0 gives nan)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1 + z**2 / n
        center = (p + z**2 / (2 * n)) / denominator
        half = z / denominator * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    # k = 0 or k = n gives an end of exactly 0 or 1 in exact arithmetic; rounding can step past it
    return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)


def _lower(successes, trials, tail: float, method: str) -> np.ndarray:
    """The lower bound that the true proportion falls below with probability `tail` (vectorised)."""
    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if method == "clopper_pearson":
        with np.errstate(invalid="ignore"):
            bound = np.where(k > 0, beta.ppf(tail, np.maximum(k, 1), n - k + 1), 0.0)
    else:
        bound = _wilson(k, n, norm.isf(tail))[0]
    return np.where(n > 0, bound, 0.0)


def _upper(successes, trials, tail: float, method: str) -> np.ndarray:
    """The upper bound that the true proportion exceeds with probability `tail` (vectorised)."""
    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if method == "clopper_pearson":
        with np.errstate(invalid="ignore"):
            bound = np.where(k < n, beta.ppf(1 - tail, k + 1, np.maximum(n - k, 1)), 1.0)
    else:
        bound = _wilson(k, n, norm.isf(tail))[1]
    return np.where(n > 0, bound, 1.0)


def proportion_interval(successes: int, trials: int, confidence: float = 0.95,
                        method: str = "clopper_pearson") -> tuple[float, float]:
    """Two-sided interval for a binomial proportion: exact Clopper-Pearson or Wilson score.
    No trials gives (0, 1): nothing is known."""
    check_method(method)
    if not 0.0 < confidence < 1.0:
        raise ImgrecError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    _check_counts(successes, trials)
    tail = (1 - confidence) / 2
    return float(_lower(successes, trials, tail, method)), float(_upper(successes, trials, tail, method))


def lower_bound(successes: int, trials: int, confidence: float = 0.95, method: str = "clopper_pearson") -> float:
    """One-sided lower bound: the true proportion is at least this with probability `confidence`."""
    check_method(method)
    _check_counts(successes, trials)
    return float(_lower(successes, trials, 1 - confidence, method))


def upper_bound(successes: int, trials: int, confidence: float = 0.95, method: str = "clopper_pearson") -> float:
    """One-sided upper bound: the true proportion is at most this with probability `confidence`."""
    check_method(method)
    _check_counts(successes, trials)
    return float(_upper(successes, trials, 1 - confidence, method))


@functools.lru_cache(maxsize=64)  # pure, and asked again by every bounded_threshold call
def positives_needed(target: float, confidence: float = 0.95, method: str = "clopper_pearson") -> int:
    """The fewest trials n for which n successes of n have a one-sided lower bound >= target:
    below it no validation split can support the target, however good the model."""
    check_target("recall", target, confidence, method)
    if method == "clopper_pearson":
        n = math.ceil(math.log(1 - confidence) / math.log(target))  # n/n has lower bound (1 - confidence)^(1/n)
    else:
        n = math.ceil(target * norm.ppf(confidence) ** 2 / (1 - target))  # n/n has lower bound n / (n + z^2)
    n = max(n, 1)
    # the closed forms are exact in real arithmetic; step past any rounding at the boundary
    while lower_bound(n, n, confidence, method) < target:
        n += 1
    while n > 1 and lower_bound(n - 1, n - 1, confidence, method) >= target:
        n -= 1
    return n


def _scores_and_labels(positive_scores, y_true) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(positive_scores, dtype=float).ravel(), np.asarray(y_true).ravel()
    if len(scores) != len(labels) or len(scores) == 0:
        raise ImgrecError(f"{len(scores)} scores for {len(labels)} labels: expected one P(positive) per labelled case")
    if not np.isin(labels, (0, 1)).all():
        raise ImgrecError(f"labels {sorted(set(labels.tolist()) - {0, 1})[:5]} are not binary: expected 0 (negative) "
                          "or 1 (positive); for more classes score each class one-vs-rest")
    return scores, labels


def _counts_at(thresholds, scores, labels) -> dict[str, np.ndarray]:
    """TP/FP/TN/FN at each threshold, `score >= threshold` counted positive (as binary_metrics_at does)."""
    thresholds = np.asarray(thresholds, dtype=float)
    positives, negatives = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    tp = len(positives) - np.searchsorted(positives, thresholds, side="left")
    fp = len(negatives) - np.searchsorted(negatives, thresholds, side="left")
    return {"tp": tp, "fp": fp, "fn": len(positives) - tp, "tn": len(negatives) - fp}


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def bounded_threshold(positive_scores, y_true, metric: str = "recall", target: float = 0.9,
                      confidence: float = 0.95, method: str = "clopper_pearson") -> dict:
    """The threshold on P(positive) whose validation `metric` keeps `target` with stated confidence.

    recall (sensitivity, TP of positives), specificity (TN of negatives) and precision (PPV, TP of
    predicted positives) need their one-sided lower bound >= target; fpr (FP of negatives) its upper
    bound <= target. Candidates are the distinct scores, `score >= threshold` counted positive. Among
    those that keep the target, recall takes the highest threshold (fewest referrals), the others the
    lowest (most cases found).

    When none keeps it, "reached" is False, the threshold is the one with the best bound (ties broken
    the same way: for recall, the highest threshold that still finds every positive it can), and
    "message" says why and, where validation is too small, how many cases of the relevant class
    ("needed", counted in "needed_class") it would take even if every one were classified correctly.
    The caller decides whether that is a warning or an error.
    """
    check_target(metric, target, confidence, method)
    scores, labels = _scores_and_labels(positive_scores, y_true)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    thresholds = np.unique(scores)
    counts = _counts_at(thresholds, scores, labels)
    successes, trials = {
        "recall": (counts["tp"], np.full_like(counts["tp"], n_pos)),
        "specificity": (counts["tn"], np.full_like(counts["tn"], n_neg)),
        "precision": (counts["tp"], counts["tp"] + counts["fp"]),
        "fpr": (counts["fp"], np.full_like(counts["fp"], n_neg)),
    }[metric]
    tail = 1 - confidence
    if metric == "fpr":
        bounds = _upper(successes, trials, tail, method)
        keeps, goodness = bounds <= target, -bounds
    else:
        bounds = _lower(successes, trials, tail, method)
        keeps, goodness = bounds >= target, bounds
    # recall falls as the threshold rises, so the last (highest) threshold keeping it refers fewest cases;
    # the other targets improve as it rises, so the first (lowest) keeping them misses fewest positives
    pick = (lambda indices: indices[-1]) if metric == "recall" else (lambda indices: indices[0])
    reached = bool(keeps.any())
    best = pick(np.flatnonzero(keeps)) if reached else pick(np.flatnonzero(goodness == goodness.max()))

    needed_class, available = ("positives", n_pos) if metric in ("recall", "precision") else ("negatives", n_neg)
    # an fpr of at most t is a specificity of at least 1 - t, and both bounds are symmetric under that swap
    needed = positives_needed(1 - target if metric == "fpr" else target, confidence, method)
    k, n = int(successes[best]), int(trials[best])
    value = k / n if n else None
    direction, side = ("upper", ">") if metric == "fpr" else ("lower", "<")
    message = None
    if not reached and available < needed:
        best_possible = upper_bound(0, n_neg, confidence, method) if metric == "fpr" else lower_bound(
            available, available, confidence, method)
        message = (f"validation has {available} {needed_class}: even if every one were classified correctly, the "
                   f"{_percent(confidence)} {direction} bound of {metric} is {best_possible:.3f} {side} {target}; "
                   f"{needed} {needed_class} are needed")
    elif not reached:
        shown = "undefined" if value is None else f"{value:.3f}"
        message = (f"no threshold gives a {_percent(confidence)} {direction} bound of {metric} "
                   f"{'<=' if metric == 'fpr' else '>='} {target} on validation (best {float(bounds[best]):.3f} at "
                   f"threshold {thresholds[best]:.4g}, where {metric} is {shown}, {k} of {n}); the model does not "
                   f"separate the classes well enough for this target, or validation needs more {needed_class}")
    return {
        "threshold": float(thresholds[best]), "metric": metric, "target": target, "confidence": confidence,
        "method": method, "value": value, "bound": float(bounds[best]),
        "interval": proportion_interval(k, n, confidence, method), "successes": k, "trials": n,
        "reached": reached, "positives": n_pos, "negatives": n_neg, "needed": needed, "needed_class": needed_class,
        "message": message,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _bayes_ppv(sensitivity, specificity, prevalence) -> float | None:
    return _ratio(sensitivity * prevalence, sensitivity * prevalence + (1 - specificity) * (1 - prevalence))


def _bayes_npv(sensitivity, specificity, prevalence) -> float | None:
    return _ratio(specificity * (1 - prevalence), specificity * (1 - prevalence) + (1 - sensitivity) * prevalence)


def operating_point_table(positive_scores, y_true, thresholds, confidence: float = 0.95,
                          method: str = "clopper_pearson", prevalence: float | None = None) -> list[dict]:
    """Per threshold: sensitivity, specificity, PPV and NPV with two-sided intervals, the referral rate
    (share of cases with score >= threshold) and the TP/FP/TN/FN counts. A value with no cases behind
    it (no positives, nothing referred) is None with interval (0, 1).

    Without `prevalence`, PPV, NPV and the referral rate are the split's own. With it (the share of
    positives in the population screened, which a balanced training set does not reflect), they follow
    from sensitivity and specificity by Bayes' rule: PPV = sens*p / (sens*p + (1-spec)*(1-p)), NPV =
    spec*(1-p) / (spec*(1-p) + (1-sens)*p), referral = sens*p + (1-spec)*(1-p). PPV and NPV rise with
    both sensitivity and specificity, so their interval ends are taken at the matching ends of the
    sensitivity and specificity intervals: a conservative approximation, wider than an exact joint interval.
    """
    check_method(method)
    if prevalence is not None and not 0.0 < prevalence < 1.0:
        raise ImgrecError(f"prevalence={prevalence} must be in (0, 1): the share of positives in the screened "
                          "population, e.g. 0.02")
    scores, labels = _scores_and_labels(positive_scores, y_true)
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=float))
    counts = _counts_at(thresholds, scores, labels)
    rows = []
    for index, threshold in enumerate(thresholds):
        tp, fp, tn, fn = (int(counts[key][index]) for key in ("tp", "fp", "tn", "fn"))
        row = {"threshold": float(threshold), "true_positives": tp, "false_positives": fp,
               "true_negatives": tn, "false_negatives": fn}
        for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                           ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
            row[name], row[f"{name}_interval"] = _ratio(k, n), proportion_interval(k, n, confidence, method)
        row["referral_rate"] = float((tp + fp) / len(scores))
        if prevalence is not None:
            sens, spec = row["sensitivity"], row["specificity"]
            (sens_low, sens_high), (spec_low, spec_high) = row["sensitivity_interval"], row["specificity_interval"]
            for name, bayes in (("ppv", _bayes_ppv), ("npv", _bayes_npv)):
                row[name] = None if sens is None or spec is None else bayes(sens, spec, prevalence)
                low, high = bayes(sens_low, spec_low, prevalence), bayes(sens_high, spec_high, prevalence)
                row[f"{name}_interval"] = (0.0 if low is None else low, 1.0 if high is None else high)
            row["referral_rate"] = (None if sens is None or spec is None
                                    else float(sens * prevalence + (1 - spec) * (1 - prevalence)))
        row["prevalence"] = prevalence
        rows.append(row)
    return rows


def default_thresholds(positive_scores, count: int = 20) -> list[float]:
    """A readable grid: `count` evenly spaced quantiles of the scores, rounded to 3 decimals, plus 0.5."""
    scores = np.asarray(positive_scores, dtype=float).ravel()
    if len(scores) == 0 or count < 1:
        raise ImgrecError(f"default_thresholds got {len(scores)} scores and count={count}: "
                          "expected at least one score and count >= 1")
    quantiles = np.quantile(scores, np.linspace(0.05, 0.95, count))
    return sorted({float(value) for value in np.round(quantiles, 3)} | {0.5})
