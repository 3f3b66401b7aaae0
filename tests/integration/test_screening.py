"""imgrec-eval's screening steps on a real two-class checkpoint (digits 3 vs 8): temperature scaling fitted on
val and stored, applied by predict and export; the threshold with a confidence bound, the warning when val has
too few positives, and the operating-point table."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from imgrec.checkpoint import load_checkpoint
from imgrec.commands.eval import evaluate_checkpoint
from imgrec.commands.train import train
from imgrec.errors import ImgrecError
from imgrec.evaluation.calibration import apply_calibration
from imgrec.evaluation.operating_points import lower_bound
from tests.conftest import tool_cfg


@pytest.fixture(scope="module")
def threes_and_eights(tmp_path_factory):
    """best.pt of a small CNN trained (without label smoothing, so it is over-confident) on digits 3 vs 8."""
    root = tmp_path_factory.mktemp("screening")
    digits = load_digits()
    for label, name in ((3, "three"), (8, "eight")):
        (root / "images" / name).mkdir(parents=True)
        for index, image in enumerate(digits.images[digits.target == label]):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((16, 16)).save(root / "images" / name / f"{index}.png")
    train(tool_cfg("train", root / "run", "dataset=image_folder", f"dataset.root={root / 'images'}",
                   "dataset.image_size=16", "dataset.channels=1", "dataset.val_fraction=0.25", "dataset.test_fraction=0.25",
                   "trainer.max_epochs=15", "trainer.progress=false", "model.convs_per_stage=2"))
    return root / "run" / "checkpoints" / "best.pt"


def read_predictions(path):
    with open(path) as file:
        rows = list(csv.DictReader(file))
    return np.array([[float(row["prob_eight"]), float(row["prob_three"])] for row in rows]), \
        np.array([int(row["predicted"]) for row in rows])


def test_temperature_scaling_is_fitted_on_val_stored_and_applied_by_predict_and_export(threes_and_eights, tmp_path):
    plain = evaluate_checkpoint(tool_cfg("eval", tmp_path / "plain", f"ckpt_path={threes_and_eights}", "split=val"))
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={threes_and_eights}", "split=val",
                                          "calibration=temperature"))
    record = json.loads((tmp_path / "eval" / "calibration.json").read_text())
    temperature = record["calibration"]["temperature"]
    assert record["bins"] == 15 and temperature > 0
    assert record["after"]["nll"] <= record["before"]["nll"]  # fitted on these very images: never worse
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 1000
    _, plain_predicted = read_predictions(tmp_path / "plain" / "predictions.csv")
    probabilities, predicted = read_predictions(tmp_path / "eval" / "predictions.csv")
    assert (predicted == plain_predicted).all() and report["accuracy"] == plain["accuracy"]  # argmax unchanged
    assert load_checkpoint(threes_and_eights)["calibration"]["temperature"] == temperature

    # export: the ONNX graph's softmax is the calibrated probability of the PyTorch model
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnxruntime

    from imgrec.commands.export import export_checkpoint
    from imgrec.evaluation.inference import load_trained

    export_checkpoint(tool_cfg("export", tmp_path / "export", f"ckpt_path={threes_and_eights}", "format=onnx"))
    metadata = json.loads((tmp_path / "export" / "model.json").read_text())
    assert metadata["calibration"]["temperature"] == temperature and "in the graph" in metadata["calibration_applied"]
    trained = load_trained(str(threes_and_eights), torch.device("cpu"))
    images = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = apply_calibration(trained.state["calibration"], trained.model(images).numpy())
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"))
    logits = session.run(["logits"], {"images": images.numpy()})[0]
    exported = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.abs(exported - expected).max() < 1e-5


def test_the_bounded_threshold_keeps_its_promise_on_val_or_warns_how_many_positives_it_needs(threes_and_eights,
                                                                                           tmp_path, caplog):
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={threes_and_eights}", "threshold=auto",
                                          "target_recall=0.9", "store_threshold=false"))
    threshold = report["threshold"]
    # about 45 positives ('three', class 1) in val: reachable only if (nearly) every one is found
    chosen, val_row = threshold["threshold"], report["operating_point"]["val"]
    successes, trials = val_row["true_positives"], val_row["true_positives"] + val_row["false_negatives"]
    assert threshold["val_recall_bound"] == pytest.approx(lower_bound(successes, trials, 0.95))
    if threshold["reached"]:
        assert threshold["val_recall_bound"] >= 0.9
    else:
        assert "positives are needed" in caplog.text or "cannot be promised" in caplog.text
    rows = list(csv.DictReader(open(tmp_path / "eval" / "operating_points.csv")))
    [marked] = [row for row in rows if row["chosen"] == "True"]
    assert float(marked["threshold"]) == pytest.approx(chosen)
    assert float(marked["sensitivity_low"]) <= float(marked["sensitivity"]) <= float(marked["sensitivity_high"])
    assert (tmp_path / "eval" / "roc_pr_operating_point.png").is_file()
    # a target no 45 positives can promise: a warning naming the count needed, or a refusal with strict=true
    caplog.clear()
    evaluate_checkpoint(tool_cfg("eval", tmp_path / "warn", f"ckpt_path={threes_and_eights}", "threshold=auto",
                                 "target_recall=0.99", "store_threshold=false"))
    assert "positives are needed" in caplog.text and "cannot be promised" in caplog.text
    with pytest.raises(ImgrecError, match=r"target_recall=0.99 at confidence 0.95 cannot be promised: .* 299 positives "
                                          r"are needed .*strict=true refuses"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "strict", f"ckpt_path={threes_and_eights}", "threshold=auto",
                                     "target_recall=0.99", "strict=true", "store_threshold=false"))


def test_prevalence_sets_ppv_and_npv_by_bayes_rule(threes_and_eights, tmp_path):
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={threes_and_eights}", "threshold=0.5",
                                          "prevalence=0.01"))
    row = report["operating_point"]["test"]
    sensitivity, specificity = row["sensitivity"], row["specificity"]
    expected = sensitivity * 0.01 / (sensitivity * 0.01 + (1 - specificity) * 0.99)
    assert row["ppv"] == pytest.approx(expected)


@pytest.mark.parametrize("overrides, message", [
    (["calibration=isotonic"], "isotonic"),
    (["threshold=auto", "target_precision=0.9", "bound=null"], "target_precision is chosen with a confidence bound"),
    (["threshold=auto", "target_recall=0.9", "target_precision=0.9"], "give one target"),
    (["prevalence=1.5"], r"prevalence=1.5 must be a proportion in \(0, 1\)"),
    (["threshold=auto", "target_recall=0.9", "confidence=0.3"], "confidence"),
])
def test_bad_screening_settings_are_one_line_errors(digits_checkpoint, threes_and_eights, tmp_path, overrides, message):
    ckpt = digits_checkpoint if overrides[0] == "calibration=isotonic" else threes_and_eights
    with pytest.raises(ImgrecError, match=message):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={ckpt}", *overrides))
