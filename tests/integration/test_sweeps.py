"""Sweeps through the real command (`imgrec-train -m`): grid, a failing job, Optuna with a resumable study,
and the parallel (joblib) and submitit local launchers. Every job is the smoke experiment on fake data."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
IMGREC_TRAIN = str(Path(sys.executable).parent / "imgrec-train")


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [IMGREC_TRAIN, "-m", "experiment=smoke", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_a_2x2_grid_gives_4_ranked_rows_with_their_overrides(tmp_path):
    result = sweep(tmp_path, "optimizer=sgd,adam", "optimizer.lr=0.1,0.01")
    rows = summary(tmp_path)
    swept = {tuple(o for o in row["overrides"].split() if o.startswith("optimizer")) for row in rows}
    assert swept == {("optimizer=sgd", "optimizer.lr=0.1"), ("optimizer=sgd", "optimizer.lr=0.01"),
                     ("optimizer=adam", "optimizer.lr=0.1"), ("optimizer=adam", "optimizer.lr=0.01")}
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"] and {row["status"] for row in rows} == {"ok"}
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores, reverse=True)  # val/acc: best first
    for row in rows:
        assert (tmp_path / row["job"] / "checkpoints" / "best.pt").is_file()
        report = json.loads((tmp_path / row["job"] / "test_report.json").read_text())
        assert float(row["test/acc"]) == pytest.approx(report["accuracy"]) and 1 <= int(row["best_epoch"]) <= 2
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 5  # header + 4 jobs
    best_command = "imgrec-train " + rows[0]["overrides"]
    assert best_command in result.stderr + result.stdout


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    # lr 1e12 diverges at once; with max_bad_steps=1 the first non-finite step ends that job
    result = sweep(tmp_path, "optimizer=sgd", "optimizer.lr=1e12,0.01", "trainer.max_bad_steps=1")
    rows = summary(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "failed"]  # the failure ranks last
    failed = rows[1]
    assert "optimizer.lr=1000000000000.0" in failed["overrides"].split() and failed["score"] == ""
    assert "non-finite loss or gradient" in failed["error"]
    assert "optimizer.lr=0.01" in rows[0]["overrides"].split() and float(rows[0]["score"]) >= 0
    assert "failed" in result.stderr + result.stdout


def test_optuna_writes_its_study_and_a_rerun_adds_trials_to_it(tmp_path):
    optuna = pytest.importorskip("optuna")
    sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.load_study(study_name="train", storage=storage)
    assert len(study.trials) == 3 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2")
    study = optuna.load_study(study_name="train", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    rows = summary(tmp_path)
    assert len(rows) == 5 and len({row["job"] for row in rows}) == 5  # the rerun's folders are its own
    finished = {round(t.value, 6) for t in study.trials if t.value is not None}
    assert {round(float(row["score"]), 6) for row in rows if row["status"] == "ok"} == finished
    assert all("hparams_search" not in row["overrides"] for row in rows)  # a job's command reruns that job


def test_the_parallel_launcher_runs_jobs_with_a_share_of_the_cores(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep(tmp_path, "hydra/launcher=parallel", "optimizer=sgd,adam")
    rows = summary(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "ok"]
    share = max(1, (os.cpu_count() or 2) // 2)
    for row in rows:
        log = (tmp_path / row["job"] / "train.log").read_text()
        threads = int(log.split(" CPU thread")[0].rsplit("(", 1)[1])
        assert threads <= share


def test_the_submitit_local_launcher_runs_a_2_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "trainer.num_threads=1",
          "optimizer=sgd,adam")
    rows = summary(tmp_path)
    chosen = sorted(o for row in rows for o in row["overrides"].split() if o.startswith("optimizer="))
    assert chosen == ["optimizer=adam", "optimizer=sgd"]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert (tmp_path / ".submitit").is_dir()  # submitit's own job folders: it really went through submitit
