"""imgrec-eval on real checkpoints: its numbers against scikit-learn on its own predictions.csv."""

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from omegaconf import OmegaConf
from PIL import Image

from imgrec.checkpoint import store_decision_threshold
from imgrec.commands.predict import predict_images
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError
from imgrec.commands.eval import evaluate_checkpoint
from imgrec.commands.train import train
from tests.conftest import tool_cfg


def read_predictions(path):
    with open(path) as file:
        rows = list(csv.DictReader(file))
    names = [key.removeprefix("prob_") for key in rows[0] if key.startswith("prob_")]
    probabilities = np.array([[float(row[f"prob_{n}"]) for n in names] for row in rows])
    return np.array([int(r["true"]) for r in rows]), np.array([int(r["predicted"]) for r in rows]), probabilities


def test_report_equals_scikit_learn_on_its_own_predictions(digits_checkpoint, tmp_path):
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={digits_checkpoint}"))
    y_true, y_pred, probabilities = read_predictions(tmp_path / "eval" / "predictions.csv")
    assert len(y_true) == 360  # the checkpoint's own test split, rebuilt from its config
    expected = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    assert report["accuracy"] == pytest.approx(expected["accuracy"])
    for index in range(10):
        for key in ("precision", "recall", "f1-score"):
            ours = report["per_class"][str(index)][key.replace("-score", "")]
            assert ours == pytest.approx(expected[str(index)][key]), (index, key)
    assert report["macro_avg"]["f1"] == pytest.approx(expected["macro avg"]["f1-score"])
    assert report["weighted_avg"]["recall"] == pytest.approx(expected["weighted avg"]["recall"])
    assert report["macro_roc_auc"] == pytest.approx(roc_auc_score(y_true, probabilities, multi_class="ovr"), abs=1e-4)
    with open(tmp_path / "eval" / "confusion_matrix.csv") as file:
        matrix = [[int(v) for v in row[1:]] for row in list(csv.reader(file))[1:]]
    assert matrix == confusion_matrix(y_true, y_pred).tolist()
    assert 0 < report["top5_accuracy"] <= 1 and report["top5_accuracy"] >= report["accuracy"]
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["split"] == "test"
    for figure in ("confusion_matrix.png", "pr_curves.png", "confident_errors.png"):
        assert (tmp_path / "eval" / figure).stat().st_size > 1000, figure
    with open(tmp_path / "eval" / "per_class.csv") as file:
        assert [row["class"] for row in csv.DictReader(file)] == [str(i) for i in range(10)]


def test_a_dataset_with_other_classes_is_refused_with_the_difference(digits_checkpoint, tmp_path):
    cfg = tool_cfg("eval", tmp_path / "eval", f"ckpt_path={digits_checkpoint}", "dataset=fake",
                   "dataset.channels=1", "dataset.image_size=8")
    with pytest.raises(ImgrecError, match=r"classes differ from the checkpoint's: missing from the dataset: \['0', '1'"):
        evaluate_checkpoint(cfg)


def test_binary_threshold_chosen_on_val_for_a_target_recall(tmp_path):
    train(tool_cfg("train", tmp_path / "run", "dataset=fake", "dataset.num_classes=2", "dataset.size=200",
                   "trainer.max_epochs=2", "trainer.progress=false", "model.convs_per_stage=2"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={ckpt}", "threshold=auto",
                                          "target_recall=0.9", "split=val"))
    threshold = report["threshold"]
    assert threshold["chosen_on"] == "val" and threshold["val_recall"] >= 0.9
    assert threshold["recall"] == pytest.approx(threshold["val_recall"])  # reported on val itself here
    y_true, y_pred, probabilities = read_predictions(tmp_path / "eval" / "predictions.csv")
    assert (y_pred == (probabilities[:, 1] >= threshold["threshold"])).all()
    inputs = tmp_path / "new"
    inputs.mkdir()
    for index, image in enumerate(build_dataset(OmegaConf.create(torch.load(ckpt, weights_only=True)["config"]["dataset"]),
                                                "classification").test.images[:20]):
        Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(inputs / f"{index}.png")
    names = ["class_0", "class_1"]

    def positive(row):
        return next(p["probability"] for p in row["predictions"] if p["class"] == names[1])

    predicted = predict_images(tool_cfg("predict", tmp_path / "predict", f"ckpt_path={ckpt}", f"inputs={inputs}"))
    assert all(row["decision"] == names[int(positive(row) >= threshold["threshold"])]  # eval's stored threshold
               for row in predicted["predictions"])
    middle = float(np.median([positive(row) for row in predicted["predictions"]]))
    store_decision_threshold(ckpt, {"threshold": middle, "chosen_on": "val"})
    again = predict_images(tool_cfg("predict", tmp_path / "predict2", f"ckpt_path={ckpt}", f"inputs={inputs}"))
    decisions = [row["decision"] for row in again["predictions"]]
    assert decisions == [names[int(positive(row) >= middle)] for row in again["predictions"]]
    assert set(decisions) == set(names)
    with pytest.raises(ImgrecError, match="threshold=1.5 must be null, auto or a probability between 0 and 1"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "e2", f"ckpt_path={ckpt}", "threshold=1.5"))
    with pytest.raises(ImgrecError, match=r"threshold=auto would choose the threshold on the val images of a dataset "
                                          r"that is scored whole"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "e3", f"ckpt_path={ckpt}", "threshold=auto", "split=all"))


def test_threshold_on_a_ten_class_model_is_refused(digits_checkpoint, tmp_path):
    with pytest.raises(ImgrecError, match="threshold=0.5 applies to two-class tasks; this model has 10"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={digits_checkpoint}", "threshold=0.5"))


def folder_of_digits(root, trained, split, per_class=None):
    """The given split's digit images written as class folders of PNG files (a 'new batch' a user scores)."""
    from PIL import Image

    written = []
    for index, (image, label) in enumerate(zip(split.images, split.labels)):
        path = root / trained.class_names[int(label)] / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)
        written.append(path)
    return written


def test_a_new_labelled_folder_is_scored_whole_by_default(digits_checkpoint, tmp_path, caplog):
    """Before issue #15 only the 15% carved out as its 'test split' were scored, and predictions had no paths."""
    from omegaconf import OmegaConf

    from imgrec.evaluation.inference import load_trained

    trained = load_trained(str(digits_checkpoint), torch.device("cpu"))
    test = build_dataset(OmegaConf.create(trained.state["config"]["dataset"]), "classification").test
    written = folder_of_digits(tmp_path / "new_batch", trained, test)
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={digits_checkpoint}",
                                          "dataset=image_folder", f"dataset.root={tmp_path / 'new_batch'}",
                                          "dataset.image_size=16"))
    assert report["split"] == "all" and report["num_samples"] == len(written) == len(test)
    assert "split=auto: scoring every image of the dataset (it has no test split of its own)" in caplog.text
    with open(tmp_path / "eval" / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert sorted(row["id"] for row in rows) == sorted(str(p) for p in written)  # every row names its file
    # the same images, the same model: the same accuracy as its own test split
    own = evaluate_checkpoint(tool_cfg("eval", tmp_path / "own", f"ckpt_path={digits_checkpoint}"))
    assert report["accuracy"] == pytest.approx(own["accuracy"])


def test_the_threshold_line_labels_the_reported_split(tmp_path):
    from imgrec.tasks.classification import summary_line

    report = {"balanced_accuracy": 0.9, "macro_roc_auc": None, "macro_average_precision": None,
              "threshold": {"threshold": 0.3, "chosen_on": "val", "precision": 0.8, "recall": 0.95}}
    assert summary_line(report, "test").endswith("threshold 0.3000 (chosen on val): test precision 0.8000, test recall 0.9500")
