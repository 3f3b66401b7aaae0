import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from imgrec.tasks.classification_scores import classification_report, epoch_scores, format_report

# 3 classes, 6 samples; by hand:
#   class 0: predicted at 0 and 5, right once -> precision 1/2, recall 1/2, f1 1/2
#   class 1: predicted at 1, 2, 3, right twice -> precision 2/3, recall 1, f1 4/5
#   class 2: predicted at 4, right once -> precision 1, recall 1/2, f1 2/3
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_epoch_scores_match_hand_computed_values():
    scores = epoch_scores(Y_TRUE, Y_PRED, prefix="val")
    assert scores["val/acc"] == pytest.approx(4 / 6)
    assert scores["val/macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert scores["val/macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert scores["val/macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_report_has_per_class_scores_and_confusion_matrix():
    report = classification_report(Y_TRUE, Y_PRED, ["cat", "dog", "fox"])
    assert report["per_class"]["dog"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["per_class"]["fox"]["recall"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    weighted = precision_recall_fscore_support(Y_TRUE, Y_PRED, average="weighted")
    assert report["weighted_avg"]["f1"] == pytest.approx(weighted[2])


def test_class_absent_from_split_is_scored_zero_not_dropped():
    report = classification_report(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b", "never_seen"])
    assert report["per_class"]["never_seen"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert len(report["confusion_matrix"]) == 3
    # macro averages over all three classes, as the model is judged on every class it can output
    assert report["macro_avg"]["recall"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_format_report_prints_every_class_and_the_accuracy():
    text = format_report(classification_report(Y_TRUE, Y_PRED, ["cat", "dog", "fox"]))
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1", "support"]
    dog = next(line for line in lines if line.strip().startswith("dog")).split()
    assert dog == ["dog", "0.6667", "1.0000", "0.8000", "2"]
    assert any(line.split()[:2] == ["accuracy", "0.6667"] for line in lines if line.strip())
