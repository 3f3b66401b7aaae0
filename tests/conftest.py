"""Shared fixtures: compose the real configs into a temporary run directory."""

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from imgrec.config import CONFIG_DIR


def config_names(group: str) -> list[str]:
    """Every choice in a config group, so adding a file adds a test case."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture
def compose_cfg(tmp_path: Path):
    """compose_cfg(*overrides, run_dir=...) -> the train config as imgrec-train would see it."""

    def _compose(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["trainer.progress=false", *overrides])
        with open_dict(cfg):
            # Hydra's run dir exists only inside a Hydra run; tests name it themselves
            cfg.paths.output_dir = str(run_dir or tmp_path / "run")
            cfg.paths.log_dir = str(tmp_path)
        return cfg

    return _compose


@pytest.fixture(autouse=True)
def _quiet_imgrec_logs(caplog):
    caplog.set_level(logging.INFO, logger="imgrec")


@pytest.fixture(autouse=True)
def _own_signing_key(tmp_path_factory, monkeypatch):
    # imgrec-features signs the classical models it saves with a key in the home folder; tests keep theirs apart
    monkeypatch.setenv("IMGREC_SIGNING_KEY", str(tmp_path_factory.getbasetemp() / "signing.key"))


@pytest.fixture(autouse=True)
def _no_mlflow_server(monkeypatch):
    # logger=mlflow logs to MLFLOW_TRACKING_URI when it is set: the tests' runs go to their own tmp store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    # a test that would download (a torchvision weights name not in the cache, dataset.download=true) fails at once
    # with imgrec's one-line error instead; tests/integration/test_downloads.py lifts this to serve files locally
    monkeypatch.setenv("IMGREC_OFFLINE", "1")


def tool_cfg(name: str, run_dir: Path, *overrides: str) -> DictConfig:
    """A command's config (train, eval, predict, export, features) with its run dir at `run_dir`."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir, cfg.paths.log_dir = str(run_dir), str(run_dir.parent)
    return cfg


def rescored_test_accuracy(run_dir: Path, tmp_path: Path) -> float:
    """A run's best.pt scored afresh by imgrec-eval on the test split of the data it was trained on: what the
    run's own test report must say."""
    from imgrec.commands.eval import evaluate_checkpoint

    cfg = tool_cfg("eval", tmp_path / f"rescored_{run_dir.name}", f"ckpt_path={run_dir / 'checkpoints' / 'best.pt'}",
                   "device=cpu")
    return evaluate_checkpoint(cfg)["accuracy"]


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a 3-epoch default run on digits, shared by the eval / predict / export tests."""
    from imgrec.commands.train import train

    root = tmp_path_factory.mktemp("digits")
    train(tool_cfg("train", root / "run", "trainer.max_epochs=3", "trainer.progress=false"))
    return root / "run" / "checkpoints" / "best.pt"


@pytest.fixture(scope="session")
def embedding_run(tmp_path_factory):
    """(result, run dir, people folder) of one short task=embedding run on synthetic people (ArcFace,
    small_cnn): 10 people of 8 images, 5 trained on, 2 val, 3 test; shared by the face and gallery tests."""
    from imgrec.commands.train import train
    from tests.integration.test_faces import make_people

    tmp = tmp_path_factory.mktemp("embedding")
    root = make_people(tmp / "faces", people=10, per_person=8)
    cfg = tool_cfg("train", tmp / "run", "task=embedding", "dataset=faces", f"dataset.root={root}",
                   "dataset.detect=none", "dataset.image_size=24", "dataset.test_fraction=0.3", "trainer.progress=false",
                   "trainer.max_epochs=15", "trainer.batch_size=8", "task.embedding_size=16", "model.widths=[8,16]",
                   "model.convs_per_stage=2", "task.report.enrolled_per_person=2")  # the thresholds were set with 2
    return train(cfg), tmp / "run", root
