"""A real two-epoch run on fake data: the files it writes and the numbers in them."""

import csv
import json

import pytest
import torch
from sklearn.metrics import classification_report as sklearn_report
from sklearn.metrics import confusion_matrix
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgrec.checkpoint import load_checkpoint
from imgrec.data.building import build_dataset
from imgrec.commands.train import train
from tests.conftest import rescored_test_accuracy

SCALARS = [
    "train/loss", "train/acc", "train/lr",
    "val/loss", "val/acc", "val/macro_precision", "val/macro_recall", "val/macro_f1",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 2-epoch fake-data run shared by the tests below (composing is cheap; training is not)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from imgrec.config import CONFIG_DIR

    root = tmp_path_factory.mktemp("fit")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=fake", "trainer.max_epochs=2", "trainer.progress=false"])
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(root / "run"), str(root)
    return root / "run", train(cfg)


def test_writes_last_and_best_checkpoints_with_what_resume_and_eval_need(finished_run):
    run_dir, result = finished_run
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert last["epoch"] == 2 and last["step"] == 2 * 2  # 80 train images in batches of 64: 2 steps an epoch
    assert set(last) >= {"model", "optimizer", "scheduler", "epoch", "step", "callbacks", "rng", "config", "class_names"}
    assert last["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert last["class_to_idx"] == {"class_0": 0, "class_1": 1, "class_2": 2, "class_3": 3}
    assert last["config"]["dataset"]["_target_"] == "imgrec.data.datasets.fake"
    assert set(last["callbacks"]) == {"early_stopping", "model_checkpoint", "validation_figures"}
    assert best["epoch"] == last["callbacks"]["model_checkpoint"]["best_epoch"]
    assert result["best_score"] == last["callbacks"]["model_checkpoint"]["best_score"]


def test_tensorboard_has_every_scalar_for_every_epoch_and_the_test_scores(finished_run):
    run_dir, _ = finished_run
    # one folder per run, named by its overrides (here none: called from Python), so sweeps read well
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == ["defaults"]
    events = EventAccumulator(str(run_dir / "tensorboard" / "defaults"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in SCALARS:
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    assert "test/acc" in tags
    # figures after the last epoch (every 5 and the last): confusion matrix, misclassified images, PR curves
    assert {"val/confusion_matrix", "val/misclassified"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("val/confusion_matrix")] == [2]
    assert "val_pr/class_0" in events.PluginTagToContent("pr_curves")
    # the HPARAMS tab: the run's hyperparameters, its metrics pointing at scalars already logged (no extra
    # one-point hparam/* charts), booleans as booleans
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"val/acc", "test/acc", "best/val/acc", "train/loss"} <= metric_tags <= set(tags)
    assert not [tag for tag in tags if tag.startswith("hparam/")]
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["trainer.channels_last"].WhichOneof("kind") == "bool_value"
    assert start.hparams["task.loss.label_smoothing"].number_value == 0.0  # nested settings flattened
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(3e-3)


def test_test_report_matches_scikit_learn_on_the_saved_predictions(finished_run):
    run_dir, result = finished_run
    report = json.loads((run_dir / "test_report.json").read_text())
    with open(run_dir / "test_predictions.csv") as file:
        rows = list(csv.DictReader(file))
    y_true = [int(r["true"]) for r in rows]
    y_pred = [int(r["predicted"]) for r in rows]
    assert len(rows) == report["num_samples"] == 40
    expected = sklearn_report(
        y_true, y_pred, labels=range(4), target_names=report["class_names"], output_dict=True, zero_division=0
    )
    for name in report["class_names"]:
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"), ("support", "support")):
            assert report["per_class"][name][key] == pytest.approx(expected[name][sk_key]), (name, key)
    assert report["macro_avg"]["f1"] == pytest.approx(expected["macro avg"]["f1-score"])
    assert report["weighted_avg"]["recall"] == pytest.approx(expected["weighted avg"]["recall"])
    assert report["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    assert report["scores"]["acc"] == pytest.approx(sum(t == p for t, p in zip(y_true, y_pred)) / len(rows))
    probabilities = torch.tensor([[float(r[f"prob_{n}"]) for n in report["class_names"]] for r in rows])
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(rows)), atol=1e-4)
    assert result["test"]["accuracy"] == report["accuracy"]


def test_the_test_split_is_scored_with_the_best_checkpoint(finished_run):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from imgrec.data.loaders import InMemoryLoader

    run_dir, _ = finished_run
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    cfg = OmegaConf.create(best["config"])
    splits = build_dataset(cfg.dataset, "classification")
    model = instantiate(cfg.model)
    model.load_state_dict(best["model"])
    model.eval()
    loader = InMemoryLoader(splits.test, 512, best["normalization"]["mean"], best["normalization"]["std"], torch.device("cpu"))
    with torch.no_grad():
        predicted = torch.cat([model(x).argmax(dim=1) for x, _ in loader]).tolist()
    with open(run_dir / "test_predictions.csv") as file:
        assert predicted == [int(r["predicted"]) for r in csv.DictReader(file)]


def test_classes_json_records_names_index_map_and_counts(finished_run):
    run_dir, _ = finished_run
    classes = json.loads((run_dir / "classes.json").read_text())
    assert classes["class_to_idx"] == {"class_0": 0, "class_1": 1, "class_2": 2, "class_3": 3}
    assert sum(classes["counts"]["train"]) == 80 and sum(classes["counts"]["test"]) == 40


def test_a_linear_probe_on_a_torchvision_backbone_trains_only_the_head(compose_cfg, tmp_path):
    from imgrec.models.backbones import torchvision_model

    torch.save(torchvision_model("resnet18", 3, 10).state_dict(), tmp_path / "resnet18.pt")
    cfg = compose_cfg("dataset=fake", "dataset.image_size=32", "model=resnet18", f"model.weights={tmp_path}/resnet18.pt",
                      "model.freeze=backbone", "optimizer=sgd", "trainer.max_epochs=1", "trainer.limit_batches=2")
    train(cfg)
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    original = torch.load(tmp_path / "resnet18.pt", weights_only=True)
    assert torch.equal(trained["model.layer4.1.conv2.weight"], original["layer4.1.conv2.weight"])
    assert torch.equal(trained["model.bn1.running_mean"], original["bn1.running_mean"])
    assert trained["model.fc.weight"].shape == (4, 512)


def test_mixup_cutmix_bf16_and_channels_last_together(compose_cfg, tmp_path):
    cfg = compose_cfg(
        "dataset=fake", "trainer.max_epochs=2", "trainer.precision=bf16-mixed", "trainer.channels_last=true",
        "task.mixup.mixup_alpha=0.2", "task.mixup.cutmix_alpha=1.0",
    )
    result = train(cfg)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["config"]["trainer"]["precision"] == "bf16-mixed"
    assert all(value.dtype != torch.bfloat16 for value in last["model"].values())  # float32 weights are saved
    assert result["test"]["accuracy"] == rescored_test_accuracy(tmp_path / "run", tmp_path)


def test_the_run_records_its_code_version_and_packages(finished_run):
    run_dir, _ = finished_run
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["packages"]["torch"] == torch.__version__.split("+")[0]  # the version that trained it
    import subprocess
    from pathlib import Path

    import imgrec

    head = subprocess.run(["git", "-C", str(Path(imgrec.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    expected = head.stdout.strip() if head.returncode == 0 else None
    assert environment["git_commit"] == expected and isinstance(environment["git_dirty"], (bool, type(None)))


def test_the_training_loss_is_also_logged_every_n_steps(compose_cfg, tmp_path):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "test=false"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "defaults"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_step")] == [1, 2, 3, 4]  # 2 optimizer steps an epoch


def test_a_resume_from_ckpt_path_last_takes_the_newest_run(compose_cfg, tmp_path, caplog):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "train" / "runs" / "a"))
    resumed = train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "test=false", "ckpt_path=last",
                                run_dir=tmp_path / "train" / "runs" / "b"))
    assert resumed["epochs"] == 2
    assert f"ckpt_path=last: {tmp_path / 'train' / 'runs' / 'a' / 'checkpoints' / 'last.pt'}" in caplog.text


def test_train_lr_is_the_optimizers_lr_when_the_backbone_trains_slower(tmp_path):
    from tests.conftest import tool_cfg

    result = train(tool_cfg("train", tmp_path / "run", "dataset=fake", "trainer.max_epochs=1", "scheduler=none",
                            "optimizer.lr=0.01", "optimizer.backbone_lr_scale=0.1", "test=false"))
    assert result["metrics"]["train/lr"] == pytest.approx(0.01)
