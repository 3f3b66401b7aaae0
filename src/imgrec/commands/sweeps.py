"""Sweeps (`imgrec-train -m ...`): every job leaves job_result.json in its run dir, a job that fails is
recorded as failed instead of ending the sweep, and summary.csv / summary.md rank every job so far: each
job rewrites them as it ends (so they exist even if a sweeper dies), and the sweep's end writes them last."""

import csv
import io
import json
import logging
import math
import os
import shlex
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("imgrec")

RESULT_FILE = "job_result.json"


def in_multirun() -> bool:
    """True inside a job of `imgrec-train -m` (and of any Hydra sweeper or launcher)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra run (called from Python)
        return False


def job_identity() -> tuple[int | None, list[str]]:
    """This job's number in the sweep and its overrides (the sweep's fixed ones and its own values), less
    `hparams_search=...`, which would start another search rather than run this job again."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith("hparams_search=")]
    return hydra_cfg.job.get("num"), overrides


def sweep_value(result: dict | None, cfg: DictConfig) -> float | None:
    """What the sweeper optimises: the best optimized_metric over the epochs (the last epoch's value when no
    checkpoint callback tracked a best). None for a failed job: Optuna records the trial as failed."""
    if result is None:
        return None
    if result.get("best_score") is not None:
        return float(result["best_score"])
    value = (result.get("metrics") or {}).get(cfg.optimized_metric)
    return None if value is None or not math.isfinite(value) else float(value)


def write_job_result(run_dir: Path, cfg: DictConfig, seconds: float, result: dict | None = None,
                     error: BaseException | None = None) -> dict:
    """One job's row of the sweep summary, as JSON beside its checkpoints."""
    number, overrides = job_identity()
    result = result or {}
    best = result.get("best_metrics") or result.get("metrics") or {}
    test = (result.get("test") or {}).get("scores", {})
    row = {
        "job": number,
        "run_dir": str(run_dir),
        "status": "ok" if error is None else "failed",
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "optimized_metric": cfg.optimized_metric,
        "optimized_mode": cfg.optimized_mode,
        "score": sweep_value(result, cfg) if error is None else None,
        "best_epoch": result.get("best_epoch"),
        "epochs": result.get("epochs"),
        "wall_s": round(seconds, 2),
        "overrides": overrides,
        "val": {k: v for k, v in best.items() if k.startswith("val/")},
        "test": {f"test/{k}": v for k, v in test.items()},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).write_text(json.dumps(row, indent=1))
    return row


def read_job_results(sweep_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(sweep_dir.glob(f"**/{RESULT_FILE}")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:  # a job killed while writing: say so, keep the rest
            log.warning(f"skipping {path}: {error}")
    return rows


def ranked(rows: list[dict]) -> list[dict]:
    """Finished jobs best first (by their own optimized_mode), then jobs without a score, then failures."""
    def key(row):
        score, sign = row.get("score"), -1 if row.get("optimized_mode", "max") == "max" else 1
        if row["status"] != "ok":
            return (2, 0.0, row.get("job") or 0)
        if score is None:
            return (1, 0.0, row.get("job") or 0)
        return (0, sign * score, row.get("job") or 0)

    return sorted(rows, key=key)


def command_line(row: dict) -> str:
    return " ".join(["imgrec-train", *(shlex.quote(o) for o in row["overrides"])])


def table_columns(rows: list[dict]) -> list[str]:
    metric_names = sorted({name for row in rows for name in row["val"]})
    metric_names += sorted({name for row in rows for name in row["test"]})
    return ["rank", "job", "status", "score", "best_epoch", "epochs", "wall_s", "overrides", *metric_names, "error"]


def table_row(rank: int, row: dict) -> dict:
    return {"rank": rank, "job": Path(row["run_dir"]).name, "status": row["status"], "score": row.get("score"),
            "best_epoch": row.get("best_epoch"), "epochs": row.get("epochs"), "wall_s": row.get("wall_s"),
            "overrides": " ".join(row["overrides"]), **row["val"], **row["test"], "error": row.get("error") or ""}


def write_summary(sweep_dir: Path) -> list[dict]:
    """summary.csv and summary.md over every job found under `sweep_dir`, best first. Returns the ranked rows."""
    rows = ranked(read_job_results(sweep_dir))
    if not rows:
        return rows
    columns = table_columns(rows)
    table = [table_row(rank, row) for rank, row in enumerate(rows, start=1)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(table)
    _replace(sweep_dir / "summary.csv", text.getvalue())
    metric = rows[0]["optimized_metric"]
    done = sum(row["status"] == "ok" for row in rows)
    lines = [f"# Sweep summary: {sweep_dir}", "",
             f"{len(rows)} jobs: {done} finished, {len(rows) - done} failed. `score` is the best {metric} "
             f"({rows[0]['optimized_mode']}) over each job's epochs; val/* are at that epoch, test/* are best.pt's.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for entry in table:
        lines.append("| " + " | ".join(_cell(entry.get(column)) for column in columns) + " |")
    _replace(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


def _replace(path: Path, text: str) -> None:
    """Write whole or not at all: parallel jobs each rewrite the summary as they finish."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


class SweepSummary(Callback):
    """Hydra callback (configs/hydra/default.yaml): prepares the sweep dir, then writes the summary."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # the Optuna study's SQLite file lives in the sweep dir, and is opened before any job runs
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if not rows:
            log.warning(f"no job results under {sweep_dir}: no summary written")
            return
        failed = [row for row in rows if row["status"] != "ok"]
        log.info(f"sweep summary: {sweep_dir / 'summary.md'} ({len(rows)} jobs, {len(failed)} failed)")
        for row in failed:
            log.warning(f"job {Path(row['run_dir']).name} failed: {row['error']}")
        best = rows[0]
        if best["status"] == "ok" and best.get("score") is not None:
            log.info(f"best: {best['optimized_metric']} {best['score']:.4f} ({best['run_dir']})\n"
                     f"  {command_line(best)}")
        log.info(f"compare every job in TensorBoard's HPARAMS tab: tensorboard --logdir {sweep_dir}")
