"""The sweep summary from job_result.json files: ranking, columns, and files that cannot be read."""

import csv
import json

from imgrec.commands.sweeps import RESULT_FILE, command_line, ranked, write_summary


def job(run_dir: str, score, status="ok", mode="max", overrides=("optimizer=sgd",), error=None) -> dict:
    return {"job": int(run_dir[-1]), "run_dir": run_dir, "status": status, "error": error,
            "optimized_metric": "val/loss" if mode == "min" else "val/acc", "optimized_mode": mode, "score": score,
            "best_epoch": 2, "epochs": 3, "wall_s": 1.5, "overrides": list(overrides),
            "val": {"val/acc": 0.5}, "test": {"test/acc": 0.4}}


def test_min_mode_ranks_low_scores_first_then_unscored_then_failed():
    rows = [job("d/0", 0.9, mode="min"), job("d/1", None, status="failed", mode="min", error="ImgrecError: x"),
            job("d/2", 0.3, mode="min"), job("d/3", None, mode="min"), job("d/4", 0.6, mode="min")]
    assert [row["run_dir"] for row in ranked(rows)] == ["d/2", "d/4", "d/0", "d/3", "d/1"]


def test_summary_files_list_every_job_best_first_and_skip_unreadable_results(tmp_path):
    for name, score in (("0", 0.7), ("1", 0.9)):
        (tmp_path / name).mkdir()
        (tmp_path / name / RESULT_FILE).write_text(json.dumps(job(str(tmp_path / name), score)))
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / RESULT_FILE).write_text('{"job": 2, "run_dir"')  # a job killed while writing
    (tmp_path / "3").mkdir()
    failed = job(str(tmp_path / "3"), None, status="failed", error="ImgrecError: lr | too high")
    (tmp_path / "3" / RESULT_FILE).write_text(json.dumps(failed))

    rows = write_summary(tmp_path)

    assert [row["run_dir"][-1] for row in rows] == ["1", "0", "3"]
    with open(tmp_path / "summary.csv", newline="") as file:
        table = list(csv.DictReader(file))
    assert [(r["rank"], r["job"], r["status"], r["score"]) for r in table] == [
        ("1", "1", "ok", "0.9"), ("2", "0", "ok", "0.7"), ("3", "3", "failed", "")]
    assert list(table[0])[:8] == ["rank", "job", "status", "score", "best_epoch", "epochs", "wall_s", "overrides"]
    assert table[0]["val/acc"] == "0.5" and table[0]["test/acc"] == "0.4" and table[2]["error"] == "ImgrecError: lr | too high"
    markdown = (tmp_path / "summary.md").read_text()
    assert "3 jobs: 2 finished, 1 failed" in markdown
    assert "lr \\| too high" in markdown  # a | in an error does not break the table
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_command_line_quotes_what_the_shell_would_split():
    row = job("d/0", 1.0, overrides=("optimizer=sgd", "model.widths=[16, 32]"))
    assert command_line(row) == "imgrec-train optimizer=sgd 'model.widths=[16, 32]'"
