"""imgrec-eval's screening steps for classifiers: calibration fitted on validation (and stored for predict
and export), a decision threshold whose target holds with a stated confidence, and the operating-point
table clinicians read (sensitivity, specificity, PPV, NPV with intervals, referral rate)."""

import json
import logging
from pathlib import Path

import numpy as np

from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

log = logging.getLogger("imgrec")
TARGET_KEYS = {"target_recall": "recall", "target_specificity": "specificity", "target_precision": "precision",
               "target_fpr": "fpr"}


def check_screening_settings(cfg, num_classes: int) -> None:
    """Every screening setting of imgrec-eval, before any data is read."""
    from imgrec.evaluation.calibration import check_method
    from imgrec.evaluation.operating_points import check_target

    if cfg.get("calibration") is not None:
        check_method(cfg.calibration, num_classes)
    if not is_whole(cfg.get("calibration_bins"), 1):
        raise ImgrecError(f"calibration_bins={cfg.get('calibration_bins')!r} must be a whole number >= 1, e.g. 15")
    for key in ("store_calibration", "strict"):
        if not isinstance(cfg.get(key), bool):
            raise ImgrecError(f"{key}={cfg.get(key)!r} must be true or false")
    targets = chosen_targets(cfg)
    if len(targets) > 1:
        raise ImgrecError(f"{' and '.join(f'{k}={v}' for k, v in targets.items())}: give one target")
    if targets and cfg.threshold != "auto":
        key, value = next(iter(targets.items()))
        raise ImgrecError(f"{key}={value} is used with threshold=auto only")
    bound = cfg.get("bound")
    for key in targets:
        if bound is None and key != "target_recall":
            raise ImgrecError(f"{key} is chosen with a confidence bound: set bound=clopper_pearson (or wilson)")
    for key, value in targets.items():
        check_target(TARGET_KEYS[key], value, cfg.confidence, bound or "clopper_pearson")
    if bound is not None and bound not in ("clopper_pearson", "wilson"):
        raise ImgrecError(f"bound={bound!r} must be clopper_pearson, wilson or null (the plain choice, no bound)")
    prevalence = cfg.get("prevalence")
    if prevalence is not None and (not is_number(prevalence) or not 0 < prevalence < 1):
        raise ImgrecError(f"prevalence={prevalence!r} must be a proportion in (0, 1), e.g. 0.02 for 2 in 100 screened")
    if prevalence is not None and num_classes != 2:
        raise ImgrecError(f"prevalence={prevalence} is the share of positives of a two-class task; this model has "
                          f"{num_classes} classes")


def chosen_targets(cfg) -> dict:
    return {key: cfg.get(key) for key in TARGET_KEYS if cfg.get(key) is not None}


# ---- calibration -----------------------------------------------------------------------------------------

def calibrate(cfg, state: dict, evaluation, val_evaluation, split_name: str, run_dir: Path) -> dict | None:
    """Fit `cfg.calibration` on the validation logits (or use the checkpoint's stored one), apply it to
    `evaluation`, and write calibration.json and reliability.png with the measures before and after on the
    reported split. Returns the calibration applied (None: plain softmax)."""
    from imgrec.evaluation.calibration import (
        apply_calibration, calibration_errors, fit_binary_calibrator, fit_temperature, per_class_calibration,
        reliability_curve, reliability_figure,
    )

    stored = state.get("calibration")
    if cfg.calibration is None and stored is None:
        return None
    labels = evaluation.labels.numpy()
    if cfg.calibration is None:
        calibration, source = stored, "stored in the checkpoint"
    else:
        val = val_evaluation()
        val_logits, val_labels = val.logits.numpy(), val.labels.numpy()
        if cfg.calibration == "temperature":
            calibration = {"method": "temperature", "temperature": fit_temperature(val_logits, val_labels)}
        else:
            positive = apply_calibration(None, val_logits)[:, 1]
            calibration = fit_binary_calibrator(cfg.calibration, positive, val_labels)
        calibration["fitted_on"] = f"val ({len(val_labels)} images)"
        source = f"fitted on {calibration['fitted_on']}"
    bins = cfg.calibration_bins
    before = apply_calibration(None, evaluation.logits.numpy())
    after = apply_calibration(calibration, evaluation.logits.numpy())  # also checks a stored one
    names = evaluation_class_names(state)
    record = {
        "calibration": calibration, "source": source, "split": split_name, "bins": bins,
        "before": calibration_errors(before, labels, bins), "after": calibration_errors(after, labels, bins),
        "per_class_before": per_class_calibration(before, labels, names, bins),
        "per_class_after": per_class_calibration(after, labels, names, bins),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "calibration.json").write_text(json.dumps(record, indent=2) + "\n")
    figure = reliability_figure(reliability_curve(before, labels, bins), reliability_curve(after, labels, bins),
                                title=f"{split_name} split: before and after {calibration['method']} calibration")
    figure.savefig(run_dir / "reliability.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    evaluation.calibrate = calibrated_by(calibration)
    what = (f"temperature {calibration['temperature']:.3f}" if calibration["method"] == "temperature"
            else calibration["method"])
    log.info(f"calibration: {what} ({source}); on {split_name}: ECE ({bins} bins) {record['before']['ece']:.4f} -> "
             f"{record['after']['ece']:.4f}, MCE {record['before']['mce']:.4f} -> {record['after']['mce']:.4f}, "
             f"Brier {record['before']['brier']:.4f} -> {record['after']['brier']:.4f}, NLL "
             f"{record['before']['nll']:.4f} -> {record['after']['nll']:.4f}; reliability.png, calibration.json")
    return calibration


def calibrated_by(calibration: dict | None):
    """logits -> calibrated probabilities, for a ClassificationEvaluation; None for plain softmax."""
    if calibration is None:
        return None
    from imgrec.evaluation.calibration import apply_calibration

    return lambda logits: apply_calibration(calibration, logits)


def evaluation_class_names(state: dict) -> list[str]:
    return list(state["class_names"])


# ---- thresholds with a confidence --------------------------------------------------------------------------

def bounded_choice(cfg, val_evaluation) -> dict | None:
    """threshold=auto with a target and a bound: the threshold whose validation lower bound (upper for fpr)
    reaches the target at cfg.confidence; too few validation cases warn (or, strict, refuse) with how many
    would be needed. None when the plain choice applies (no target, or bound=null)."""
    from imgrec.evaluation.operating_points import bounded_threshold

    targets = chosen_targets(cfg)
    if not targets or cfg.get("bound") is None:
        return None
    key, target = next(iter(targets.items()))
    metric = TARGET_KEYS[key]
    val = val_evaluation()
    chosen = bounded_threshold(val.probabilities[:, 1], val.labels.numpy(), metric, target, cfg.confidence, cfg.bound)
    if not chosen["reached"]:
        if cfg.strict:
            raise ImgrecError(f"{key}={target} at confidence {cfg.confidence} cannot be promised: {chosen['message']} "
                              "(strict=true refuses; add validation images, e.g. dataset.val_fraction, or lower "
                              "the target or the confidence)")
        log.warning(f"{key}={target} at confidence {cfg.confidence} cannot be promised: {chosen['message']}; the "
                    f"threshold with the best bound is used ({metric} lower bound {chosen['bound']:.3f})")
    bound_name = "upper" if metric == "fpr" else "lower"
    log.info(f"threshold {chosen['threshold']:.4f} chosen on val for {metric} >= {target} with {cfg.confidence:.0%} "
             f"confidence ({cfg.bound}): val {metric} {chosen['value']:.4f}, one-sided {bound_name} bound "
             f"{chosen['bound']:.4f}, interval [{chosen['interval'][0]:.4f}, {chosen['interval'][1]:.4f}] on "
             f"{chosen['trials']} cases")
    return {"threshold": float(chosen["threshold"]), "chosen_on": "val", "target": {metric: target},
            "confidence": cfg.confidence, "bound": cfg.bound, f"val_{metric}_bound": chosen["bound"],
            "val_precision": None, "val_recall": None, "reached": bool(chosen["reached"]),
            "message": chosen.get("message"), "val_interval": [float(v) for v in chosen["interval"]]}


# ---- the operating-point report ---------------------------------------------------------------------------

def operating_points(cfg, evaluation, threshold: dict | None, split_name: str, run_dir: Path,
                     val_evaluation=None) -> dict:
    """operating_points.csv (a grid of thresholds and the chosen one) and the chosen threshold's row on the
    reported split and on val, with intervals; roc_pr_operating_point.png marks the point on both curves."""
    from imgrec.evaluation.operating_points import default_thresholds, operating_point_table

    scores, labels = evaluation.probabilities[:, 1], evaluation.labels.numpy()
    method = cfg.get("bound") or "clopper_pearson"
    grid = default_thresholds(scores)
    chosen = None if threshold is None else float(threshold["threshold"])
    if chosen is not None and chosen not in grid:
        grid = sorted([*grid, chosen])
    rows = operating_point_table(scores, labels, grid, cfg.confidence, method, cfg.get("prevalence"))
    columns = ["threshold", "sensitivity", "sensitivity_low", "sensitivity_high", "specificity", "specificity_low",
               "specificity_high", "ppv", "ppv_low", "ppv_high", "npv", "npv_low", "npv_high", "referral_rate",
               "true_positives", "false_positives", "true_negatives", "false_negatives", "chosen"]
    lines = [",".join(columns)]
    for row in rows:
        values = [row["threshold"]]
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            low, high = row[f"{name}_interval"]
            values += [row[name], low, high]
        values += [row["referral_rate"], row["true_positives"], row["false_positives"], row["true_negatives"],
                   row["false_negatives"], chosen is not None and row["threshold"] == chosen]
        lines.append(",".join("" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in values))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "operating_points.csv").write_text("\n".join(lines) + "\n")
    result = {"method": method, "confidence": cfg.confidence, "prevalence": cfg.get("prevalence")}
    if chosen is not None:
        result[split_name] = next(row for row in rows if row["threshold"] == chosen)
        if val_evaluation is not None and split_name != "val":
            val = val_evaluation()
            result["val"] = operating_point_table(val.probabilities[:, 1], val.labels.numpy(), [chosen],
                                                  cfg.confidence, method, cfg.get("prevalence"))[0]
    draw_operating_point(scores, labels, chosen, split_name, run_dir)
    return result


def draw_operating_point(scores: np.ndarray, labels: np.ndarray, chosen: float | None, split_name: str,
                         run_dir: Path) -> None:
    from sklearn.metrics import precision_recall_curve, roc_curve

    from imgrec.evaluation.plots import _pyplot

    plt = _pyplot()
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(10, 4.5))
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    roc_axes.plot(false_positive_rate, true_positive_rate)
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    roc_axes.set(xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity (recall)", title=f"{split_name} ROC")
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr_axes.plot(recall, precision)
    pr_axes.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=f"{split_name} precision-recall")
    if chosen is not None:
        predicted = scores >= chosen
        positives, negatives = max(int(labels.sum()), 1), max(int((labels == 0).sum()), 1)
        tp, fp = int((predicted & (labels == 1)).sum()), int((predicted & (labels == 0)).sum())
        roc_axes.plot(fp / negatives, tp / positives, "o", color="red", label=f"threshold {chosen:.3f}")
        pr_axes.plot(tp / positives, tp / max(tp + fp, 1), "o", color="red", label=f"threshold {chosen:.3f}")
        roc_axes.legend(loc="lower right")
        pr_axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(run_dir / "roc_pr_operating_point.png", dpi=120)
    plt.close(figure)
