import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from imgrec.errors import ImgrecError
from imgrec.tasks.classification_scores import binary_metrics_at, choose_threshold, full_report


def test_a_hand_made_three_class_example():
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2, 2, 2, 0])
    probabilities = np.eye(3)[y_pred] * 0.8 + 0.2 / 3  # confident in whatever it predicts
    report = full_report(probabilities, y_true, ["cat", "dog", "fox"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert report["confusion_matrix_normalized"][2] == pytest.approx([0.25, 0.0, 0.75])
    assert report["accuracy"] == pytest.approx(6 / 9)
    assert report["per_class"]["cat"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["dog"]["recall"] == pytest.approx(1 / 2)
    assert report["per_class"]["fox"]["f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert "top5_accuracy" not in report  # 3 classes: top-5 would always be 1
    assert report["per_class"]["cat"]["roc_auc"] == pytest.approx(roc_auc_score(y_true == 0, probabilities[:, 0]))


def test_a_class_absent_from_the_split_has_no_ranking_scores():
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    report = full_report(probabilities, y_true, ["a", "b", "c"])
    assert report["per_class"]["c"]["roc_auc"] is None and report["per_class"]["c"]["support"] == 0
    assert report["macro_roc_auc"] == pytest.approx(1.0)  # the mean over a and b


def test_top5_for_many_classes():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(8), size=50)
    y_true = np.arange(50) % 8
    report = full_report(probabilities, y_true, [str(i) for i in range(8)])
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    assert report["top5_accuracy"] == pytest.approx(np.mean([y in row for y, row in zip(y_true, top5)]))


def test_threshold_reaches_the_asked_recall_or_the_best_f1():
    rng = np.random.default_rng(1)
    y_true = np.r_[np.zeros(500), np.ones(100)].astype(int)
    scores = np.clip(np.r_[rng.normal(0.3, 0.15, 500), rng.normal(0.7, 0.15, 100)], 0, 1)
    for target in (0.8, 0.95, 0.99):
        chosen = choose_threshold(scores, y_true, target)
        measured = binary_metrics_at(chosen["threshold"], scores, y_true)
        assert measured["recall"] >= target and measured["recall"] == pytest.approx(chosen["recall"])
        # the highest such threshold: any higher one misses the target
        assert binary_metrics_at(chosen["threshold"] + 1e-9, scores, y_true)["recall"] < target
    best_f1 = choose_threshold(scores, y_true, None)
    f1 = lambda t: (lambda m: 2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"]))(  # noqa: E731
        binary_metrics_at(t, scores, y_true))
    assert all(f1(best_f1["threshold"]) >= f1(t) - 1e-12 for t in np.linspace(0.05, 0.95, 19))
    with pytest.raises(ImgrecError, match="target_recall=1.5 must be in"):
        choose_threshold(scores, y_true, 1.5)
