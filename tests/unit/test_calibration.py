"""Calibration maps and errors against known models, hand computations, torchmetrics and scikit-learn."""

import io
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import expit, logit, softmax
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from imgrec.errors import ImgrecError
from imgrec.evaluation.calibration import (
    apply_calibration,
    calibration_errors,
    check_method,
    fit_binary_calibrator,
    fit_temperature,
    per_class_calibration,
    reliability_curve,
    reliability_figure,
)


def calibrated_logits(num_samples=4000, num_classes=4, seed=0):
    """Logits of a known model and labels drawn from its softmax, so its probabilities are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(num_samples, num_classes))
    probabilities = softmax(logits, axis=1)
    labels = (rng.random((num_samples, 1)) > probabilities.cumsum(axis=1)).sum(axis=1)
    return logits, labels


def miscalibrated_binary_scores(num_samples=4000, seed=0):
    """(over-confident, shifted positive-class score, labels drawn from the true probability)."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.02, 0.98, num_samples)
    labels = (rng.random(num_samples) < truth).astype(int)
    return expit(3.0 * logit(truth) + 1.0), labels


def binary_logits(scores):
    """Two-class logits whose softmax gives `scores` as the class-1 probability."""
    return np.stack([np.zeros_like(scores), logit(scores)], axis=1)


def test_temperature_undoes_deliberate_over_confidence_and_keeps_predictions():
    logits, labels = calibrated_logits()
    over_confident = 5.0 * logits
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(5.0, rel=0.1)
    calibration = {"method": "temperature", "temperature": temperature}
    before = softmax(over_confident, axis=1)
    after = apply_calibration(calibration, over_confident)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    assert log_loss(labels, after, labels=range(4)) < log_loss(labels, before, labels=range(4))
    assert calibration_errors(after, labels)["ece"] < calibration_errors(before, labels)["ece"]


def test_temperature_of_a_calibrated_model_is_close_to_one():
    logits, labels = calibrated_logits(seed=1)
    assert fit_temperature(torch.tensor(logits), torch.tensor(labels)) == pytest.approx(1.0, abs=0.1)


def test_temperature_stays_finite_when_every_prediction_is_right_by_a_huge_margin():
    labels = np.arange(50) % 3
    logits = np.eye(3)[labels] * 200.0
    temperature = fit_temperature(logits, labels)
    assert temperature == 1.0  # the NLL is flat: validation gives no reason to change the model
    assert np.all(np.isfinite(apply_calibration({"method": "temperature", "temperature": temperature}, logits)))


@pytest.mark.parametrize("seed, num_classes, bins, scale", [(0, 3, 15, 1.0), (1, 10, 15, 3.0), (2, 2, 10, 2.0),
                                                            (3, 5, 20, 0.3), (4, 4, 1, 1.0)])
def test_ece_and_mce_equal_torchmetrics(seed, num_classes, bins, scale):
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(0, scale, size=(500, num_classes)), axis=1)
    labels = rng.integers(0, num_classes, 500)
    errors = calibration_errors(probabilities, labels, bins=bins)
    preds, target = torch.tensor(probabilities), torch.tensor(labels)
    for key, norm in (("ece", "l1"), ("mce", "max")):
        expected = multiclass_calibration_error(preds, target, num_classes=num_classes, n_bins=bins, norm=norm)
        assert errors[key] == pytest.approx(float(expected), abs=1e-6)
    assert errors["bins"] == bins
    curve = reliability_curve(probabilities, labels, bins=bins)
    assert sum(curve["count"]) == 500 and len(curve["confidence"]) == bins


def test_brier_and_nll_equal_hand_computation():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1])
    errors = calibration_errors(probabilities, labels)
    hand_brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.7**2 + 0.6**2)) / 2
    assert errors["brier"] == pytest.approx(hand_brier)
    assert errors["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert "brier_positive" not in errors


def test_binary_brier_equals_scikit_learn():
    scores, labels = miscalibrated_binary_scores(200)
    errors = calibration_errors(np.stack([1 - scores, scores], axis=1), labels)
    assert errors["brier_positive"] == pytest.approx(brier_score_loss(labels, scores))
    assert errors["brier"] == pytest.approx(2 * errors["brier_positive"])  # both classes count the same error


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_binary_calibrators_lower_ece_and_keep_the_ranking(method):
    scores, labels = miscalibrated_binary_scores()
    fit, held_out = slice(0, 2000), slice(2000, None)
    calibration = fit_binary_calibrator(method, scores[fit], labels[fit])
    before = apply_calibration(None, binary_logits(scores[held_out]))
    after = apply_calibration(calibration, binary_logits(scores[held_out]))
    assert calibration_errors(after, labels[held_out])["ece"] < 0.5 * calibration_errors(before, labels[held_out])["ece"]
    np.testing.assert_allclose(after.sum(axis=1), 1.0)
    ranked = after[np.argsort(scores[held_out]), 1]
    if method == "platt":
        assert calibration["a"] > 0 and np.all(np.diff(ranked) > 0)
    else:
        assert np.all(np.diff(calibration["y"]) >= 0) and np.all(np.diff(ranked) >= 0)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_binary_calibrators_store_as_plain_data(method):
    scores, labels = miscalibrated_binary_scores(300)
    calibration = fit_binary_calibrator(method, torch.tensor(scores), torch.tensor(labels))
    assert json.loads(json.dumps(calibration)) == calibration
    buffer = io.BytesIO()
    torch.save({"calibration": calibration}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["calibration"] == calibration


def test_platt_stays_finite_on_separable_validation():
    scores, labels = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.array([0, 0, 0, 1, 1, 1])
    calibration = fit_binary_calibrator("platt", scores, labels)
    assert math.isfinite(calibration["a"]) and math.isfinite(calibration["b"])


def test_apply_calibration_matches_softmax_and_temperature():
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(apply_calibration(None, logits), torch.softmax(logits.double(), 1).numpy())
    np.testing.assert_allclose(apply_calibration({"method": "temperature", "temperature": 2.0}, logits),
                               torch.softmax(logits.double() / 2.0, 1).numpy())


@pytest.mark.parametrize("calibration, message", [
    ({"method": "temperature", "temperature": 0.0}, "temperature 0.0 must be > 0"),
    ({"method": "temperature", "temperature": -1.5}, "temperature -1.5 must be > 0"),
    ({"method": "temperature", "temperature": float("nan")}, "temperature is nan"),
    ({"method": "temperature", "temperature": "hot"}, "'hot' is not a number"),
    ({"method": "temperature"}, "lacks temperature"),
    ({"method": "histogram", "bins": 10}, "'histogram' is unknown"),
    ({"temperature": 1.0}, "not a dict with a 'method'"),
    ({"method": "platt", "a": float("inf"), "b": 0.0}, "platt calibration a is inf"),
    ({"method": "isotonic", "x": [0.1, 0.5, 0.4], "y": [0.0, 0.5, 0.9]}, "not strictly increasing"),
    ({"method": "isotonic", "x": [0.1, 0.5], "y": [0.0, 0.5, 0.9]}, "2 x and 3 y values"),
    ({"method": "isotonic", "x": [0.1, 0.5], "y": [0.0, 1.5]}, r"expected probabilities in \[0, 1\]"),
])
def test_apply_calibration_rejects_damaged_dicts(calibration, message):
    with pytest.raises(ImgrecError, match=message):
        apply_calibration(calibration, np.zeros((3, 2)))


def test_binary_methods_need_two_classes():
    with pytest.raises(ImgrecError, match="'isotonic'.*needs two classes, got 3; use 'temperature'"):
        check_method("isotonic", 3)
    with pytest.raises(ImgrecError, match="'platt'.*needs two classes, got 3"):
        apply_calibration({"method": "platt", "a": 1.0, "b": 0.0}, np.zeros((4, 3)))
    check_method("temperature", 3)
    check_method("platt", 2)


def test_per_class_calibration_is_one_vs_rest_binary_calibration():
    rng = np.random.default_rng(5)
    probabilities = softmax(rng.normal(0, 2, size=(400, 3)), axis=1)
    labels = rng.integers(0, 3, 400)
    report = per_class_calibration(probabilities, labels, ["cat", "dog", "fox"], bins=10)
    for index, name in enumerate(["cat", "dog", "fox"]):
        is_class = labels == index
        expected = binary_calibration_error(torch.tensor(probabilities[:, index]), torch.tensor(is_class.astype(int)),
                                            n_bins=10)
        assert report[name]["ece"] == pytest.approx(float(expected), abs=1e-6)
        assert report[name]["brier"] == pytest.approx(brier_score_loss(is_class, probabilities[:, index]))


def test_reliability_figure_draws_the_diagonal_before_and_after():
    from matplotlib.figure import Figure

    logits, labels = calibrated_logits(500)
    before = reliability_curve(apply_calibration(None, 3 * logits), labels)
    after = reliability_curve(apply_calibration({"method": "temperature", "temperature": 3.0}, 3 * logits), labels)
    figure = reliability_figure(before, after, "over-confident model")
    try:
        assert isinstance(figure, Figure) and len(figure.axes) == 2
        for axes in figure.axes:
            assert any(list(line.get_xdata()) == [0, 1] and list(line.get_ydata()) == [0, 1] for line in axes.lines)
            assert "ECE" in " ".join(text.get_text() for text in axes.get_legend().get_texts())
        assert len(reliability_figure(before, None, "one panel").axes) == 1
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
