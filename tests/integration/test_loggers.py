"""logger=mlflow, csv and many on a real smoke run, read back from what they wrote: the MLflow store through
MlflowClient, metrics.csv with the csv module, the TensorBoard events file."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from imgrec.commands.train import train
from imgrec.config import CONFIG_DIR
from imgrec.errors import ImgrecError

OVERRIDES = ("experiment=smoke", "logger=many", "optimizer.lr=0.003", "trainer.log_every_n_steps=1",
             "trainer.progress=false")


def train_as_hydra_runs_it(root: Path, overrides) -> dict:
    """imgrec-train's train() with HydraConfig set as in a real run, since the loggers read the run's
    command-line overrides from it (for the run name and a tag)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to the task function
        cfg.paths.output_dir, cfg.paths.log_dir = str(root / "run"), str(root)
    try:
        return train(cfg)
    finally:
        HydraConfig.instance().cfg = None  # later tests run outside a Hydra run again


@pytest.fixture(scope="module")
def many_run(tmp_path_factory):
    """(result, root) of one 2-epoch smoke run with TensorBoard, MLflow (store: root/mlflow.db) and CSV."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    root = tmp_path_factory.mktemp("loggers")
    return train_as_hydra_runs_it(root, OVERRIDES), root


@pytest.fixture(scope="module")
def mlflow_run(many_run):
    """(client, run) of the run in the MLflow store."""
    from mlflow.tracking import MlflowClient

    _, root = many_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("train")  # the task_name
    [run] = client.search_runs([experiment.experiment_id])
    return client, run


def csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_mlflow_keeps_the_settings_as_params_and_the_metrics_by_epoch(many_run, mlflow_run):
    result, _ = many_run
    client, run = mlflow_run
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer.lr"] == "0.003" and params["trainer.max_epochs"] == "2" and params["model"] == "small_cnn"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [point.step for point in history] == [1, 2]
    assert history[-1].value == pytest.approx(result["metrics"]["val/acc"])
    assert history[result["best_epoch"] - 1].value == pytest.approx(result["best_metrics"]["val/acc"])
    # the loss every optimizer step, on its own key: 2 batches an epoch
    assert [point.step for point in client.get_metric_history(run.info.run_id, "train/loss_step")] == [1, 2, 3, 4]
    assert run.data.metrics["test/acc"] == pytest.approx(result["test"]["accuracy"])


def test_mlflow_keeps_the_test_report_and_best_checkpoint_and_tags_the_source(many_run, mlflow_run, tmp_path):
    _, root = many_run
    client, run = mlflow_run
    run_id, run_dir = run.info.run_id, root / "run"
    assert {"test_report.json", "best.pt"} <= {item.path for item in client.list_artifacts(run_id)}
    for name, original in (("test_report.json", run_dir / "test_report.json"),
                           ("best.pt", run_dir / "checkpoints" / "best.pt")):
        copy = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert copy.read_bytes() == original.read_bytes(), name
    assert client.list_artifacts(run_id, "images")  # the validation figures (confusion matrix, errors)

    tags = run.data.tags
    assert tags["mlflow.runName"] == "experiment=smoke,logger=many,optimizer.lr=0.003,trainer.log_every_n_steps=1," \
                                     "trainer.progress=false"
    assert tags["imgrec.overrides"].split() == list(OVERRIDES)
    assert tags["imgrec.run_dir"] == str(run_dir.resolve())
    commit = json.loads((run_dir / "environment.json").read_text())["git_commit"]
    assert tags.get("mlflow.source.git.commit") == commit  # absent where imgrec runs from a wheel, not a checkout


def test_csv_has_a_row_per_epoch_with_the_values_the_run_returned(many_run):
    result, root = many_run
    rows = csv_rows(root / "run" / "metrics.csv")
    assert [row["step"] for row in rows] == ["1", "2"]
    last, best = rows[-1], rows[result["best_epoch"] - 1]
    assert {name: float(last[name]) for name in result["metrics"]} == result["metrics"]
    assert {name: float(best[name]) for name in result["best_metrics"]} == result["best_metrics"]
    # test scores arrive after the last epoch: a column added to the last row, empty before
    assert float(last["test/acc"]) == result["test"]["accuracy"] and rows[0]["test/acc"] == ""
    steps = csv_rows(root / "run" / "metrics_steps.csv")
    assert [row["step"] for row in steps] == ["1", "2", "3", "4"] and "val/acc" not in steps[0]


def test_many_gives_every_logger_the_same_numbers(many_run, mlflow_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, root = many_run
    client, run = mlflow_run
    [events_dir] = (root / "run" / "tensorboard").iterdir()
    events = EventAccumulator(str(events_dir))
    events.Reload()
    from_csv = [float(row["val/loss"]) for row in csv_rows(root / "run" / "metrics.csv")]
    from_tensorboard = [event.value for event in events.Scalars("val/loss")]  # float32
    from_mlflow = [point.value for point in client.get_metric_history(run.info.run_id, "val/loss")]
    assert from_mlflow == from_csv and from_tensorboard == pytest.approx(from_csv)


def test_a_long_setting_is_logged_truncated_and_odd_names_made_valid(many_run):
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from imgrec.training.mlflow_logger import MLflowLogger

    _, root = many_run
    uri = f"sqlite:///{root}/mlflow.db"
    logger = MLflowLogger(tracking_uri=uri, experiment_name="limits", run_name="long")
    logger.start({"dataset.class_names": "x" * 7000, "optimizer.lr": 0.1, "task.label_smoothing": None})
    logger.log_metrics({"val/recall@1": 0.5}, step=1)
    logger.close()
    run = MlflowClient(tracking_uri=uri).get_run(logger.run_id)
    long_value = run.data.params["dataset.class_names"]
    assert len(long_value) == MAX_PARAM_VAL_LENGTH and long_value.startswith("xxx")
    assert "truncated from 7000" in long_value
    assert run.data.params["optimizer.lr"] == "0.1" and run.data.params["task.label_smoothing"] == "None"
    assert run.data.metrics == {"val/recall_1": 0.5}


@pytest.mark.slow  # a fresh interpreter importing torch and mlflow
def test_a_run_that_crashes_ends_failed_not_running(many_run):
    from mlflow.tracking import MlflowClient

    _, root = many_run
    uri = f"sqlite:///{root}/mlflow.db"
    script = ("import sys\nfrom imgrec.training.mlflow_logger import MLflowLogger\n"
              "logger = MLflowLogger(tracking_uri=sys.argv[1], experiment_name='crash')\n"
              "logger.log_metrics({'val/acc': 0.25}, step=1)\nprint(logger.run_id)\n"
              "raise RuntimeError('the training crashed')\n")
    done = subprocess.run([sys.executable, "-c", script, uri], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "the training crashed" in done.stderr
    run = MlflowClient(tracking_uri=uri).get_run(done.stdout.split()[-1])
    assert run.info.status == "FAILED" and run.data.metrics == {"val/acc": 0.25}


def test_without_mlflow_the_error_names_the_extra(monkeypatch, tmp_path):
    from imgrec.training.mlflow_logger import MLflowLogger

    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # what an environment without mlflow imports
    with pytest.raises(ImgrecError, match=r"pip install 'imgrec\[mlflow\]'"):
        MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_a_store_that_cannot_be_used_is_one_line_naming_it(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from imgrec.training.mlflow_logger import MLflowLogger

    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(ImgrecError, match=r"cannot log to sqlite:///.*mlflow.db: .*choose another logger.tracking_uri"):
        MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
