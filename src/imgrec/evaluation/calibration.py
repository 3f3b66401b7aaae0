"""Calibrated probabilities: temperature, Platt and isotonic maps fitted on validation; ECE, MCE, Brier and NLL."""

import math

import numpy as np

from imgrec.errors import ImgrecError

CALIBRATION_METHODS = ("temperature", "isotonic", "platt")
# log T is searched in this interval: wide enough for any trained network, and a bound keeps T finite
# when every validation prediction is right (the NLL then keeps falling as T -> 0)
TEMPERATURE_RANGE = (0.05, 20.0)
# scores are clipped this far from 0 and 1 before taking their logit, so a saturated softmax stays finite
_SCORE_EPSILON = 1e-12


def check_method(method: str, num_classes: int) -> None:
    """Raise ImgrecError unless `method` is a calibration method that works for `num_classes` classes."""
    if method not in CALIBRATION_METHODS:
        raise ImgrecError(f"calibration method {method!r} is unknown; expected one of {', '.join(CALIBRATION_METHODS)}")
    if method in ("isotonic", "platt") and num_classes != 2:
        raise ImgrecError(f"calibration method {method!r} maps one positive-class score, so it needs two classes, "
                          f"got {num_classes}; use 'temperature', which works for any number of classes")


def fit_temperature(logits, labels) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on these (validation) samples
    (Guo et al. 2017, "On Calibration of Modern Neural Networks")."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits, labels = _check_logits_and_labels(logits, labels)

    def negative_log_likelihood(log_temperature: float) -> float:
        log_probabilities = log_softmax(logits / math.exp(log_temperature), axis=1)
        return -float(log_probabilities[np.arange(len(labels)), labels].mean())

    # the NLL is convex in 1/T, hence unimodal in log T: a bounded Brent search finds its minimum,
    # deterministically, and searching log T keeps T positive
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    result = minimize_scalar(negative_log_likelihood, bounds=(low, high), method="bounded",
                             options={"xatol": 1e-7})
    # when every prediction is right by a huge margin the NLL is flat (zero in float64) over a wide range of T
    # and the search stops anywhere in it; validation then says nothing, so leave the model as it is
    if negative_log_likelihood(0.0) <= result.fun + 1e-12:
        return 1.0
    return float(math.exp(result.x))


def fit_binary_calibrator(method: str, positive_scores, labels) -> dict:
    """Fit Platt scaling or isotonic regression mapping the positive-class score to a calibrated probability.

    The result holds plain floats and lists, so it can go into a checkpoint loaded with weights_only=True and into JSON.
    """
    check_method(method, 2)
    if method == "temperature":
        raise ImgrecError("fit_binary_calibrator fits 'platt' or 'isotonic'; fit 'temperature' with fit_temperature")
    scores = _as_numpy(positive_scores).astype(np.float64).reshape(-1)
    labels = _as_numpy(labels).astype(np.int64).reshape(-1)
    if len(scores) != len(labels):
        raise ImgrecError(f"{len(scores)} scores but {len(labels)} labels; pass one positive-class score per label")
    if not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1:
        raise ImgrecError("positive-class scores must be finite probabilities in [0, 1]; pass softmax(logits)[:, 1]")
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ImgrecError(f"calibration needs labels of both classes 0 and 1, got {sorted(set(labels.tolist()))}; "
                          "use a validation split that holds positives and negatives")
    if method == "platt":
        return _fit_platt(scores, labels)
    from sklearn.isotonic import IsotonicRegression

    isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True).fit(scores, labels)
    return {"method": "isotonic", "x": [float(v) for v in isotonic.X_thresholds_],
            "y": [float(v) for v in isotonic.y_thresholds_]}


def _fit_platt(scores: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.linear_model import LogisticRegression

    # Platt's (1999) smoothed targets keep a and b finite when validation is separable, which a plain
    # unpenalised logistic regression is not; soft targets are fitted as each sample counted once as
    # positive and once as negative, weighted by its target
    positives, negatives = int(labels.sum()), int(len(labels) - labels.sum())
    targets = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    features = _logit(scores).reshape(-1, 1)
    regression = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000)
    regression.fit(np.concatenate([features, features]), np.concatenate([np.ones(len(scores)), np.zeros(len(scores))]),
                   sample_weight=np.concatenate([targets, 1 - targets]))
    return {"method": "platt", "a": float(regression.coef_[0, 0]), "b": float(regression.intercept_[0])}


def apply_calibration(calibration: dict | None, logits) -> np.ndarray:
    """Calibrated class probabilities (N, C) from logits (N, C); `calibration` None means plain softmax."""
    from scipy.special import expit, softmax

    logits = _as_numpy(logits).astype(np.float64)
    if logits.ndim != 2:
        raise ImgrecError(f"logits have shape {tuple(logits.shape)}; expected (samples, classes)")
    if calibration is None:
        return softmax(logits, axis=1)
    method = _check_calibration(calibration, logits.shape[1])
    if method == "temperature":
        return softmax(logits / float(calibration["temperature"]), axis=1)
    positive_scores = softmax(logits, axis=1)[:, 1]
    if method == "platt":
        positive = expit(float(calibration["a"]) * _logit(positive_scores) + float(calibration["b"]))
    else:
        positive = np.interp(positive_scores, np.asarray(calibration["x"], np.float64),
                             np.asarray(calibration["y"], np.float64))
    return np.stack([1.0 - positive, positive], axis=1)


def _check_calibration(calibration: dict, num_classes: int) -> str:
    """The method of a calibration dict read from a checkpoint or model.json, after checking its numbers."""
    if not isinstance(calibration, dict) or "method" not in calibration:
        raise ImgrecError(f"calibration {calibration!r} is not a dict with a 'method'; "
                          "refit the calibration or drop it from the checkpoint")
    method = calibration["method"]
    check_method(method, num_classes)
    required = {"temperature": ("temperature",), "platt": ("a", "b"), "isotonic": ("x", "y")}[method]
    missing = [key for key in required if key not in calibration]
    if missing:
        raise ImgrecError(f"{method} calibration lacks {', '.join(missing)}; refit the calibration")
    if method == "temperature":
        temperature = _finite_number(calibration["temperature"], "calibration temperature")
        if temperature <= 0:
            raise ImgrecError(f"calibration temperature {temperature} must be > 0; refit the calibration")
    elif method == "platt":
        _finite_number(calibration["a"], "platt calibration a")
        _finite_number(calibration["b"], "platt calibration b")
    else:
        x = [_finite_number(value, "isotonic calibration x") for value in calibration["x"]]
        y = [_finite_number(value, "isotonic calibration y") for value in calibration["y"]]
        if len(x) != len(y) or not x:
            raise ImgrecError(f"isotonic calibration has {len(x)} x and {len(y)} y values; expected the same "
                              "non-zero number; refit the calibration")
        if any(later <= earlier for earlier, later in zip(x, x[1:])):
            raise ImgrecError(f"isotonic calibration x {x} is not strictly increasing; refit the calibration")
        if min(y) < 0 or max(y) > 1:
            raise ImgrecError(f"isotonic calibration y values lie in [{min(y)}, {max(y)}]; expected probabilities "
                              "in [0, 1]; refit the calibration")
    return method


def _finite_number(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ImgrecError(f"{name} {value!r} is not a number; refit the calibration") from None
    if not math.isfinite(number):
        raise ImgrecError(f"{name} is {number}; expected a finite number; refit the calibration")
    return number


def calibration_errors(probabilities, labels, bins: int = 15) -> dict:
    """Top-label ECE and MCE over `bins` equal-width confidence bins, multi-class Brier score and NLL.

    For two classes, "brier_positive" is also scikit-learn's brier_score_loss of the class-1 probability.
    """
    from sklearn.metrics import brier_score_loss, log_loss

    probabilities, labels = _check_probabilities_and_labels(probabilities, labels)
    curve = reliability_curve(probabilities, labels, bins)
    one_hot = np.eye(probabilities.shape[1])[labels]
    errors = {"ece": curve["ece"], "mce": curve["mce"], "bins": bins,
              "brier": float(((probabilities - one_hot) ** 2).sum(axis=1).mean()),
              "nll": float(log_loss(labels, probabilities, labels=list(range(probabilities.shape[1]))))}
    if probabilities.shape[1] == 2:
        errors["brier_positive"] = float(brier_score_loss(labels, probabilities[:, 1], labels=[0, 1]))
    return errors


def reliability_curve(probabilities, labels, bins: int = 15) -> dict:
    """Per confidence bin: mean top-label confidence, accuracy and count (empty bins hold 0); with ECE and MCE."""
    probabilities, labels = _check_probabilities_and_labels(probabilities, labels)
    confidences = probabilities.max(axis=1)
    hits = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    return _binned(confidences, hits, bins)


def per_class_calibration(probabilities, labels, class_names: list[str], bins: int = 15) -> dict:
    """One-vs-rest ECE and Brier score per class: that class's probability against (label == class)."""
    probabilities, labels = _check_probabilities_and_labels(probabilities, labels)
    if len(class_names) != probabilities.shape[1]:
        raise ImgrecError(f"{len(class_names)} class names for {probabilities.shape[1]} probability columns; "
                          "pass one name per class")
    report = {}
    for index, name in enumerate(class_names):
        is_class = (labels == index).astype(np.float64)
        report[name] = {"ece": _binned(probabilities[:, index], is_class, bins)["ece"],
                        "brier": float(((probabilities[:, index] - is_class) ** 2).mean())}
    return report


def _binned(confidences: np.ndarray, outcomes: np.ndarray, bins: int) -> dict:
    """Bin k holds confidences in [k / bins, (k + 1) / bins): torchmetrics' convention, so our ECE and MCE equal its
    calibration error; unlike torchmetrics, a confidence of exactly 1 goes in the top bin, not a bin of its own."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ImgrecError(f"bins {bins!r} must be a positive integer, e.g. 15")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidences, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    occupied = np.maximum(counts, 1)  # empty bins hold 0 confidence and 0 accuracy, as in torchmetrics
    mean_confidence = np.bincount(index, weights=confidences, minlength=bins) / occupied
    accuracy = np.bincount(index, weights=outcomes, minlength=bins) / occupied
    gaps = np.abs(accuracy - mean_confidence)
    return {"bins": bins, "lower": edges[:-1].tolist(), "upper": edges[1:].tolist(),
            "confidence": mean_confidence.tolist(), "accuracy": accuracy.tolist(),
            "count": [int(count) for count in counts],
            "ece": float((gaps * counts).sum() / max(counts.sum(), 1)), "mce": float(gaps.max())}


def reliability_figure(before: dict, after: dict | None = None, title: str = "reliability diagram"):
    """The reliability diagram of Guo et al.: accuracy per confidence bin against the diagonal, with the gap to the
    bin's mean confidence; `after` (a calibrated reliability_curve) is drawn in a second panel beside `before`."""
    from imgrec.evaluation.plots import _pyplot

    plt = _pyplot()
    panels = [("before calibration", before)] + ([("after calibration", after)] if after is not None else [])
    figure, axes_row = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5.5), squeeze=False)
    for axes, (label, curve) in zip(axes_row[0], panels):
        lower, upper = np.asarray(curve["lower"]), np.asarray(curve["upper"])
        filled = np.asarray(curve["count"]) > 0
        centres, widths = ((lower + upper) / 2)[filled], (upper - lower)[filled]
        accuracy, confidence = np.asarray(curve["accuracy"])[filled], np.asarray(curve["confidence"])[filled]
        axes.bar(centres, accuracy, widths, color="tab:blue", edgecolor="black", linewidth=0.5,
                 label=f"accuracy (ECE {curve['ece']:.3f}, {curve['bins']} bins)")
        axes.bar(centres, confidence - accuracy, widths, bottom=accuracy, color="tab:red", alpha=0.3,
                 edgecolor="tab:red", hatch="//", linewidth=0.5, label="gap to mean confidence")
        axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfectly calibrated")
        axes.set_xlabel("confidence")
        axes.set_ylabel("accuracy")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_title(label, fontsize=10)
        axes.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _as_numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on the GPU
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _logit(scores: np.ndarray) -> np.ndarray:
    from scipy.special import logit

    return logit(np.clip(scores, _SCORE_EPSILON, 1 - _SCORE_EPSILON))


def _check_labels(labels, num_samples: int, num_classes: int) -> np.ndarray:
    labels = _as_numpy(labels).reshape(-1)
    if len(labels) != num_samples:
        raise ImgrecError(f"{len(labels)} labels for {num_samples} samples; pass one class index per sample")
    if len(labels) == 0:
        raise ImgrecError("no samples to calibrate on; the validation split is empty")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ImgrecError(f"labels span [{labels.min()}, {labels.max()}]; expected class indices in "
                          f"[0, {num_classes - 1}]")
    return labels


def _check_logits_and_labels(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits = _as_numpy(logits).astype(np.float64)
    if logits.ndim != 2:
        raise ImgrecError(f"logits have shape {tuple(logits.shape)}; expected (samples, classes)")
    if not np.all(np.isfinite(logits)):
        raise ImgrecError("logits hold NaN or infinite values; check the model's outputs before calibrating")
    return logits, _check_labels(labels, logits.shape[0], logits.shape[1])


def _check_probabilities_and_labels(probabilities, labels) -> tuple[np.ndarray, np.ndarray]:
    probabilities = _as_numpy(probabilities).astype(np.float64)
    if probabilities.ndim != 2:
        raise ImgrecError(f"probabilities have shape {tuple(probabilities.shape)}; expected (samples, classes)")
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ImgrecError("probabilities must be finite and in [0, 1]; pass softmax outputs, not logits")
    return probabilities, _check_labels(labels, probabilities.shape[0], probabilities.shape[1])
