"""Binomial bounds against scipy, bounded thresholds keeping their promise on fresh data, and the PPV/NPV table."""

import numpy as np
import pytest
from scipy.stats import beta, norm

from imgrec.errors import ImgrecError
from imgrec.evaluation.operating_points import (
    bounded_threshold, check_target, default_thresholds, lower_bound, operating_point_table, positives_needed,
    proportion_interval, upper_bound,
)
from imgrec.tasks.classification_scores import binary_metrics_at, choose_threshold

COUNTS = [(0, 10), (1, 10), (7, 10), (10, 10), (29, 29), (45, 50), (3, 200)]


@pytest.mark.parametrize(("k", "n"), COUNTS)
def test_clopper_pearson_matches_scipy_beta(k, n):
    low, high = proportion_interval(k, n, confidence=0.95)
    assert low == pytest.approx(0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1))
    assert high == pytest.approx(1.0 if k == n else beta.ppf(0.975, k + 1, n - k))
    assert lower_bound(k, n, 0.9) == pytest.approx(0.0 if k == 0 else beta.ppf(0.1, k, n - k + 1))
    assert upper_bound(k, n, 0.9) == pytest.approx(1.0 if k == n else beta.ppf(0.9, k + 1, n - k))


@pytest.mark.parametrize(("k", "n"), COUNTS)
def test_clopper_pearson_matches_statsmodels(k, n):
    stattools = pytest.importorskip("statsmodels.stats.proportion")
    assert proportion_interval(k, n, 0.9) == pytest.approx(stattools.proportion_confint(k, n, alpha=0.1, method="beta"))


def _wilson_by_hand(k, n, z):
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(center - half, 0.0), min(center + half, 1.0)


@pytest.mark.parametrize(("k", "n"), COUNTS)
def test_wilson_matches_the_score_interval_formula(k, n):
    assert proportion_interval(k, n, 0.95, "wilson") == pytest.approx(_wilson_by_hand(k, n, norm.ppf(0.975)))
    one_sided = _wilson_by_hand(k, n, norm.ppf(0.95))
    assert lower_bound(k, n, 0.95, "wilson") == pytest.approx(one_sided[0])
    assert upper_bound(k, n, 0.95, "wilson") == pytest.approx(one_sided[1])


def test_no_trials_bound_nothing():
    assert proportion_interval(0, 0) == (0.0, 1.0)
    assert lower_bound(0, 0) == 0.0 and upper_bound(0, 0) == 1.0


def test_positives_needed_is_the_smallest_count_that_can_reach_the_target():
    assert positives_needed(0.9, 0.95) == 29
    assert lower_bound(29, 29, 0.95) == pytest.approx(0.05 ** (1 / 29)) and lower_bound(29, 29, 0.95) >= 0.9
    assert lower_bound(28, 28, 0.95) < 0.9
    wilson = positives_needed(0.9, 0.95, "wilson")
    assert lower_bound(wilson, wilson, 0.95, "wilson") >= 0.9 > lower_bound(wilson - 1, wilson - 1, 0.95, "wilson")


def _split(n_pos, n_neg, seed=0):
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(1.5, 1.0, n_pos), rng.normal(-1.5, 1.0, n_neg)])
    return 1 / (1 + np.exp(-scores)), np.concatenate([np.ones(n_pos, int), np.zeros(n_neg, int)])


def test_bounded_recall_threshold_is_the_highest_whose_lower_bound_reaches_the_target():
    scores, y = _split(80, 80)
    result = bounded_threshold(scores, y, "recall", target=0.8, confidence=0.95)
    at = binary_metrics_at(result["threshold"], scores, y)
    assert result["reached"] and result["message"] is None
    assert result["value"] == at["recall"] and result["successes"] == at["true_positives"]
    assert lower_bound(at["true_positives"], 80, 0.95) == pytest.approx(result["bound"]) and result["bound"] >= 0.8
    higher = np.unique(scores)[np.unique(scores) > result["threshold"]][0]
    assert lower_bound(binary_metrics_at(higher, scores, y)["true_positives"], 80, 0.95) < 0.8
    assert result["interval"] == proportion_interval(at["true_positives"], 80, 0.95)
    # the plain choice only asks validation recall >= 0.8, so it sits higher and promises more than it knows
    assert choose_threshold(scores, y, 0.8)["threshold"] > result["threshold"]


@pytest.mark.parametrize("metric", ["specificity", "precision", "fpr"])
def test_other_targets_take_the_lowest_threshold_that_keeps_them(metric):
    scores, y = _split(80, 80, seed=1)
    target = 0.2 if metric == "fpr" else 0.8
    result = bounded_threshold(scores, y, metric, target=target)
    assert result["reached"]
    keeps = (lambda r: r["bound"] <= target) if metric == "fpr" else (lambda r: r["bound"] >= target)
    assert keeps(result)
    for threshold in np.unique(scores)[np.unique(scores) < result["threshold"]]:  # none lower keeps it
        referred = scores >= threshold
        tp, fp = int((referred & (y == 1)).sum()), int((referred & (y == 0)).sum())
        bound = {"specificity": lambda: lower_bound(80 - fp, 80), "fpr": lambda: upper_bound(fp, 80),
                 "precision": lambda: lower_bound(tp, tp + fp)}[metric]()
        assert not keeps({"bound": bound})


def test_false_positive_rate_target_is_the_specificity_target_mirrored():
    scores, y = _split(50, 50, seed=2)
    fpr = bounded_threshold(scores, y, "fpr", target=0.15)
    specificity = bounded_threshold(scores, y, "specificity", target=0.85)
    assert fpr["threshold"] == specificity["threshold"] and fpr["needed"] == specificity["needed"]
    assert fpr["bound"] == pytest.approx(1 - specificity["bound"])


def test_too_few_validation_positives_says_how_many_are_needed():
    scores, y = _split(20, 60)
    result = bounded_threshold(scores, y, "recall", target=0.9, confidence=0.95)
    assert not result["reached"] and result["needed"] == 29 and result["positives"] == 20
    assert result["value"] == 1.0 and result["bound"] == pytest.approx(0.05 ** (1 / 20))  # 0.861
    assert result["threshold"] == scores[y == 1].min()  # the highest threshold that still finds all 20
    assert "validation has 20 positives" in result["message"] and "0.861 < 0.9" in result["message"]
    assert "29 positives are needed" in result["message"]


def test_a_weak_model_on_enough_positives_gets_a_different_message():
    rng = np.random.default_rng(3)
    scores, y = rng.random(200), np.repeat([1, 0], 100)  # scores carry no signal, and recall 1 means all positive
    result = bounded_threshold(scores, y, "precision", target=0.9)
    assert not result["reached"] and "no threshold gives a 95% lower bound of precision >= 0.9" in result["message"]


def test_bounded_threshold_keeps_its_promise_on_fresh_data_and_the_plain_one_does_not():
    # the claim: a threshold chosen on a small validation split should miss its recall target on new
    # cases no more often than 1 - confidence; the plain choice (validation recall >= target) misses about half
    rng = np.random.default_rng(0)
    repetitions, n_pos, n_neg, target, confidence = 400, 60, 60, 0.9, 0.95
    val_pos, val_neg = rng.normal(1.0, 1.0, (repetitions, n_pos)), rng.normal(-1.0, 1.0, (repetitions, n_neg))
    test_pos = rng.normal(1.0, 1.0, (repetitions, 5_000))  # a fresh test set of positives per repetition
    y = np.concatenate([np.ones(n_pos, int), np.zeros(n_neg, int)])
    bounded, plain = np.empty(repetitions), np.empty(repetitions)
    for i in range(repetitions):
        scores = np.concatenate([val_pos[i], val_neg[i]])
        bounded[i] = bounded_threshold(scores, y, "recall", target, confidence)["threshold"]
        plain[i] = choose_threshold(scores, y, target)["threshold"]

    def recall_on_fresh_data(thresholds):
        return (test_pos >= thresholds[:, None]).mean(axis=1)

    bounded_misses = float(np.mean(recall_on_fresh_data(bounded) < target))
    plain_misses = float(np.mean(recall_on_fresh_data(plain) < target))
    print(f"recall below {target} on fresh data: bounded {bounded_misses:.3f}, plain {plain_misses:.3f}")
    assert bounded_misses <= (1 - confidence) + 0.03  # 0.03 is about 2.5 standard errors over 400 repetitions
    assert plain_misses >= 0.3


def test_operating_point_table_matches_hand_counts():
    # at 0.5: positives 0.9, 0.6 found, 0.3 missed; negative 0.7 referred, four cleared
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
    row = operating_point_table(scores, y, [0.5], confidence=0.9)[0]
    counts = row["true_positives"], row["false_negatives"], row["false_positives"], row["true_negatives"]
    assert counts == (2, 1, 1, 4)
    assert row["sensitivity"] == pytest.approx(2 / 3) and row["specificity"] == pytest.approx(4 / 5)
    assert row["ppv"] == pytest.approx(2 / 3) and row["npv"] == pytest.approx(4 / 5)
    assert row["referral_rate"] == pytest.approx(3 / 8)
    assert row["sensitivity_interval"] == proportion_interval(2, 3, 0.9)
    assert row["specificity_interval"] == proportion_interval(4, 5, 0.9)
    assert row["ppv_interval"] == proportion_interval(2, 3, 0.9)
    assert row["npv_interval"] == proportion_interval(4, 5, 0.9)
    nobody = operating_point_table(scores, y, [0.95])[0]
    assert nobody["ppv"] is None and nobody["ppv_interval"] == (0.0, 1.0) and nobody["referral_rate"] == 0.0


def test_prevalence_gives_ppv_and_npv_by_bayes_rule():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
    row = operating_point_table(scores, y, [0.5], prevalence=0.1)[0]
    sens, spec, p = 2 / 3, 4 / 5, 0.1
    assert row["ppv"] == pytest.approx(sens * p / (sens * p + (1 - spec) * (1 - p)))  # 0.270
    assert row["npv"] == pytest.approx(spec * (1 - p) / (spec * (1 - p) + (1 - sens) * p))  # 0.956
    assert row["referral_rate"] == pytest.approx(sens * p + (1 - spec) * (1 - p))
    (sens_low, sens_high), (spec_low, spec_high) = proportion_interval(2, 3), proportion_interval(4, 5)
    ppv_low = sens_low * p / (sens_low * p + (1 - spec_low) * (1 - p))
    npv_high = spec_high * (1 - p) / (spec_high * (1 - p) + (1 - sens_high) * p)
    assert row["ppv_interval"][0] == pytest.approx(ppv_low) and row["npv_interval"][1] == pytest.approx(npv_high)
    assert row["ppv_interval"][0] <= row["ppv"] <= row["ppv_interval"][1]
    assert row["npv_interval"][0] <= row["npv"] <= row["npv_interval"][1]


def test_default_thresholds_are_sorted_unique_and_include_one_half():
    grid = default_thresholds(np.linspace(0, 1, 101) ** 2, count=10)
    assert grid == sorted(set(grid)) and 0.5 in grid and len(grid) == 11


@pytest.mark.parametrize(("arguments", "names"), [
    (("sensitivity", 0.9, 0.95, "clopper_pearson"), "recall | specificity | precision | fpr"),
    (("recall", 1.0, 0.95, "clopper_pearson"), "target=1.0"),
    (("recall", 0.9, 0.4, "clopper_pearson"), "confidence=0.4"),
    (("recall", 0.9, 0.95, "exact"), "clopper_pearson | wilson"),
])
def test_check_target_names_the_bad_value_and_the_choices(arguments, names):
    with pytest.raises(ImgrecError, match=names.replace("|", r"\|")) as error:
        check_target(*arguments)
    assert "\n" not in str(error.value)


def test_labels_must_be_binary():
    with pytest.raises(ImgrecError, match="not binary"):
        bounded_threshold(np.array([0.1, 0.9]), np.array([0, 2]))
