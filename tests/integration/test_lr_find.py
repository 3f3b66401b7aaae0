"""imgrec-lr-find on digits: the range test's files, its suggestion, and nothing else written."""

import csv
import json
import re

import numpy as np
import pytest

from imgrec.training.lr_finder import exponential_lrs
from tests.conftest import tool_cfg

# 30 steps from 1e-6 to 1000 (a factor of 2 a step) of a small network: Adam's loss blows up before the last
QUICK = ("trainer.device=cpu", "trainer.progress=false", "model.widths=[8,16]", "trainer.batch_size=32",
         "lr_find.num_steps=30", "lr_find.min_lr=1e-6", "lr_find.max_lr=1000")


@pytest.fixture(scope="module")
def digits_range_test(tmp_path_factory):
    from imgrec.commands.lr_find import find_lr

    run_dir = tmp_path_factory.mktemp("lr_find") / "run"
    return find_lr(tool_cfg("lr_find", run_dir, *QUICK)), run_dir


def test_the_curve_is_written_with_exponential_lrs_and_a_suggestion_below_the_blow_up(digits_range_test):
    summary, run_dir = digits_range_test
    with open(run_dir / "lr_find.csv") as handle:
        rows = list(csv.DictReader(handle))
    lrs = np.array([float(row["lr"]) for row in rows])
    assert np.allclose(lrs, exponential_lrs(1e-6, 1000, 30)[: len(rows)], rtol=1e-5)
    assert all(float(row["loss"]) > 0 and float(row["smoothed_loss"]) > 0 for row in rows)
    assert summary["steps_taken"] == len(rows) and summary["stopped_at"] == pytest.approx(lrs[-1], rel=1e-5)
    assert len(rows) < 30  # it diverged before lr 1000
    suggested = summary["suggested_lr"]
    assert summary["method"] == "steepest" and suggested == summary["suggestions"]["steepest"]
    for lr in summary["suggestions"].values():
        assert lr is not None and 1e-6 <= lr < summary["stopped_at"]
    assert summary["config_lr"] == 0.003 and "peak after the warm-up" in summary["config_lr_role"]
    assert summary["train_command"] == f"imgrec-train optimizer.lr={suggested:.1e}"  # outside Hydra: no overrides
    assert json.loads((run_dir / "lr_find.json").read_text()) == summary
    assert (run_dir / "lr_find.png").stat().st_size > 10_000


def test_the_curve_goes_to_tensorboard_by_step(digits_range_test):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary, run_dir = digits_range_test
    [events] = (run_dir / "tensorboard").glob("*/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    lrs = [event.value for event in accumulator.Scalars("lr_find/lr")]
    assert lrs == pytest.approx(exponential_lrs(1e-6, 1000, 30)[: summary["steps_taken"]], rel=1e-5)
    assert len(accumulator.Scalars("lr_find/smoothed_loss")) == summary["steps_taken"]
    assert "lr_find" in accumulator.Tags()["images"]


def test_no_checkpoint_or_weights_are_written(digits_range_test):
    _, run_dir = digits_range_test
    assert not (run_dir / "checkpoints").exists()
    written = sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())
    assert written[:3] == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    assert len(written) == 4 and re.fullmatch(r"tensorboard/[^/]+/events\.out\.tfevents\..*", written[3])


@pytest.mark.parametrize("guard", ["trainer.max_bad_steps=1", "trainer.max_bad_steps=3"])
def test_a_non_finite_loss_ends_the_test_as_diverged_not_the_command(tmp_path, guard):
    from imgrec.commands.lr_find import find_lr

    # SGD to lr 1e12 with no divergence rule: the loss turns inf, the guard refuses the step (with max_bad_steps=1 it
    # raises at once), and the test stops there with the curve it has
    summary = find_lr(tool_cfg("lr_find", tmp_path / "run", *QUICK, "optimizer=sgd", "lr_find.max_lr=1e12",
                               "lr_find.diverge_factor=1e30", "~logger", guard))
    assert summary["steps_taken"] < 30 and summary["stopped_at"] > 1e3
    assert summary["suggested_lr"] < summary["stopped_at"]
    assert (tmp_path / "run" / "lr_find.png").is_file()


@pytest.mark.parametrize("override, message", [
    ("lr_find.min_lr=1", "lr_find.min_lr=1 must be below lr_find.max_lr=0.1"),
    ("lr_find.num_steps=5", "lr_find.num_steps=5 must be a whole number >= 30"),
    ("lr_find.min_lr=-1e-3", "lr_find.min_lr=-0.001 must be a number > 0"),
])
def test_bad_settings_exit_2_with_the_message_before_any_data_is_read(tmp_path, caplog, override, message):
    from imgrec.commands.entry import run_command
    from imgrec.commands.lr_find import find_lr

    cfg = tool_cfg("lr_find", tmp_path / "run", "trainer.device=cpu", "lr_find.max_lr=0.1", override)
    with pytest.raises(SystemExit) as stopped:
        run_command(find_lr, cfg, record_command=False)
    assert stopped.value.code == 2
    assert re.search(re.escape(f"error: {message}"), caplog.text)
    assert not (tmp_path / "run" / "lr_find.csv").exists()


def test_a_checkpoint_to_start_from_is_refused(tmp_path):
    from imgrec.commands.lr_find import find_lr
    from imgrec.errors import ImgrecError

    with pytest.raises(ImgrecError, match="imgrec-lr-find tests the lr from freshly built weights"):
        find_lr(tool_cfg("lr_find", tmp_path / "run", *QUICK, f"ckpt_path={tmp_path / 'last.pt'}"))
