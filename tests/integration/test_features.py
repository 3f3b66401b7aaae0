"""imgrec-features: deep features + a scikit-learn classifier, on the real digits data."""

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from sklearn.calibration import CalibratedClassifierCV

from imgrec.classical.saved_model import load_classical_model
from imgrec.config import CONFIG_DIR
from imgrec.errors import ImgrecError
from imgrec.commands.features import extract_features
from imgrec.commands.train import train


def features_cfg(run_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("features", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(run_dir), str(run_dir.parent)
    return cfg


def test_resnet_features_and_logistic_regression_on_digits(tmp_path):
    result = extract_features(features_cfg(tmp_path / "run"))
    assert result["test"]["scores"]["acc"] > 0.9
    saved = np.load(tmp_path / "run" / "features.npz")
    assert saved["train_features"].shape == (1167, 512)  # resnet18's pooled features, head removed
    assert [len(saved[f"{split}_labels"]) for split in ("train", "val", "test")] == [1167, 270, 360]
    assert list(saved["class_names"]) == [str(digit) for digit in range(10)]
    report = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert report["scores"]["acc"] == pytest.approx(result["test"]["scores"]["acc"])
    assert (tmp_path / "run" / "test_predictions.csv").read_text().count("\n") == 361


def test_features_of_a_trained_checkpoint(compose_cfg, tmp_path):
    train(compose_cfg("trainer.max_epochs=3", run_dir=tmp_path / "train"))
    best = tmp_path / "train" / "checkpoints" / "best.pt"
    result = extract_features(features_cfg(tmp_path / "features", f"ckpt_path={best}", "classifier=svc"))
    saved = np.load(tmp_path / "features" / "features.npz")
    assert saved["test_features"].shape == (360, 128)  # small_cnn's hidden layer, from the checkpoint's config
    assert result["test"]["scores"]["acc"] > 0.9


def test_something_that_is_not_a_classifier_is_refused_before_embedding(tmp_path):
    cfg = features_cfg(tmp_path / "run", "classifier._target_=sklearn.decomposition.PCA", "~classifier.C",
                       "~classifier.max_iter")
    with pytest.raises(ImgrecError, match="classifier._target_=sklearn.decomposition.PCA is not a scikit-learn classifier"):
        extract_features(cfg)
    assert not (tmp_path / "run" / "features.npz").exists()


@pytest.mark.parametrize("method, size", [("hog", 36), ("lbp", 160), ("color_hist", 32), ("sift", 256)])
def test_classical_methods_share_the_report_of_deep_features_on_digits(tmp_path, method, size):
    overrides = [f"method={method}"] + (["method.codebook_size=256", "method.step=16"] if method == "sift" else [])
    result = extract_features(features_cfg(tmp_path / "run", *overrides))
    saved = np.load(tmp_path / "run" / "features.npz")
    assert saved["train_features"].shape == (1167, size) and saved["test_features"].shape == (360, size)
    report = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert report["method"]["name"] == method and report["feature_size"] == size
    assert report["scores"]["acc"] == pytest.approx(result["test"]["scores"]["acc"])
    assert report["feature_seconds"] > 0 and report["fit_seconds"] > 0
    # what each is known to reach on 16 px digits with logistic regression (chance is 0.1)
    assert result["test"]["scores"]["acc"] > {"hog": 0.88, "lbp": 0.9, "color_hist": 0.3, "sift": 0.9}[method]


@pytest.mark.parametrize("classifier, calibrated", [("linear_svc", True), ("random_forest", False)])
def test_each_shipped_classifier_fits_hog_features_and_reports_probabilities(tmp_path, classifier, calibrated):
    result = extract_features(features_cfg(tmp_path / "run", "method=hog", f"classifier={classifier}"))
    report = json.loads((tmp_path / "run" / "test_report.json").read_text())
    assert report["classifier"].rsplit(".", 1)[-1] == {"linear_svc": "LinearSVC", "random_forest": "RandomForestClassifier"}[classifier]
    assert result["test"]["scores"]["acc"] > 0.85  # HOG on 16 px digits; chance is 0.1
    rows = np.genfromtxt(tmp_path / "run" / "test_predictions.csv", delimiter=",", names=True)
    probabilities = np.stack([rows[f"prob_{digit}"] for digit in range(10)], axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (probabilities.argmax(axis=1) == rows["predicted"]).all()
    model, _ = load_classical_model(tmp_path / "run")
    assert isinstance(model["classifier"][-1], CalibratedClassifierCV) == calibrated  # LinearSVC has no probabilities


def test_an_unknown_method_lists_the_valid_ones(tmp_path):
    with pytest.raises(ImgrecError, match=r"method='surf' is not a feature method; choose one of cnn, sift, orb, hog"):
        extract_features(features_cfg(tmp_path / "run", "method=cnn", "method.name=surf"))


def test_compare_scores_several_methods_on_one_split_in_one_table(tmp_path):
    import csv

    result = extract_features(features_cfg(tmp_path / "run", "compare=[hog,color_hist]"))
    with open(tmp_path / "run" / "compare.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["method"] for row in rows] == ["hog", "color_hist"] == [row["method"] for row in result["compare"]]
    for row in rows:  # each line is that method's own report, on the same test images
        report = json.loads((tmp_path / "run" / row["method"] / "test_report.json").read_text())
        assert float(row["accuracy"]) == pytest.approx(report["accuracy"])
        assert float(row["macro_f1"]) == pytest.approx(report["macro_avg"]["f1"])
        assert report["num_samples"] == 360 and report["method"]["name"] == row["method"]
    assert "| hog |" in (tmp_path / "run" / "compare.md").read_text()
    assert (tmp_path / "run" / "compare.png").stat().st_size > 5000
    with pytest.raises(ImgrecError, match=r"compare=\['hog', 'surf'\]: 'surf' is not a feature method; choose from cnn"):
        extract_features(features_cfg(tmp_path / "bad", "compare=[hog,surf]"))
    with pytest.raises(ImgrecError, match=r"names a method twice"):
        extract_features(features_cfg(tmp_path / "bad2", "compare=[hog,hog]"))
    with pytest.raises(ImgrecError, match=r"compare=\[\] lists no method; name some"):
        extract_features(features_cfg(tmp_path / "bad3", "compare=[]"))


def test_a_classical_model_predicts_new_images_and_is_loaded_only_when_its_signature_matches(tmp_path, monkeypatch):
    import csv

    from PIL import Image

    from imgrec.commands.predict import predict_images
    from imgrec.data.building import build_dataset
    from tests.conftest import tool_cfg

    cfg = features_cfg(tmp_path / "run", "method=hog", "classifier=svc")
    extract_features(cfg)
    test_split = build_dataset(cfg.dataset, "classification").test
    inputs = tmp_path / "new"
    inputs.mkdir()
    for index in range(12):
        Image.fromarray(test_split.images[index, 0].numpy()).save(inputs / f"{index:02d}.png")
    result = predict_images(tool_cfg("predict", tmp_path / "predicted", f"features_run={tmp_path / 'run'}",
                                     f"inputs={inputs}", "top_k=2"))
    with open(tmp_path / "run" / "test_predictions.csv") as file:
        expected = [row["predicted"] for row in csv.DictReader(file)][:12]
    assert [row["predictions"][0]["class"] for row in result["predictions"]] == expected  # what the test report said
    model_file = tmp_path / "run" / "classical_model.joblib"
    original = model_file.read_bytes()
    model_file.write_bytes(original + b"\0")  # changed after imgrec wrote it
    with pytest.raises(ImgrecError, match=r"refused to load .*classical_model\.joblib: its signature does not match"):
        predict_images(tool_cfg("predict", tmp_path / "p2", f"features_run={tmp_path / 'run'}", f"inputs={inputs}"))
    model_file.write_bytes(original)
    manifest_file = tmp_path / "run" / "classical_model.json"
    manifest = manifest_file.read_text()
    manifest_file.write_text(manifest.replace('"0"', '"zero"', 1))  # relabelled: predictions would lie
    assert manifest_file.read_text() != manifest
    with pytest.raises(ImgrecError, match=r"it or classical_model\.json changed since"):
        predict_images(tool_cfg("predict", tmp_path / "p1", f"features_run={tmp_path / 'run'}", f"inputs={inputs}"))
    manifest_file.write_text(manifest)
    monkeypatch.setenv("IMGREC_SIGNING_KEY", str(tmp_path / "another_machine.key"))  # made by someone else
    with pytest.raises(ImgrecError, match=r"its signature does not match this machine's key"):
        predict_images(tool_cfg("predict", tmp_path / "p3", f"features_run={tmp_path / 'run'}", f"inputs={inputs}"))
    with pytest.raises(ImgrecError, match=r"features_run=.*: no classical_model\.json and classical_model\.joblib"):
        predict_images(tool_cfg("predict", tmp_path / "p4", f"features_run={tmp_path}", f"inputs={inputs}"))
