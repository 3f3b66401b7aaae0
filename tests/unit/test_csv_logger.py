"""logger=csv on its own: rows by step, columns that arrive late, the per-step file, a resumed file continued."""

import csv

from imgrec.training.loggers import CSVLogger


def read(path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_late_metric_adds_a_column_and_step_metrics_get_their_own_file(tmp_path):
    logger = CSVLogger(str(tmp_path / "metrics.csv"))
    logger.log_metrics({"train/loss": 0.9, "val/acc": 0.5}, step=1)
    logger.log_metrics({"train/loss_step": 0.7}, step=7, flush=False)
    logger.log_metrics({"train/loss": 0.4, "val/acc": 0.75}, step=2)
    logger.log_metrics({"test/acc": 0.625}, step=2)  # after the last epoch, at its step
    logger.close()
    assert read(tmp_path / "metrics.csv") == [
        {"step": "1", "train/loss": "0.9", "val/acc": "0.5", "test/acc": ""},
        {"step": "2", "train/loss": "0.4", "val/acc": "0.75", "test/acc": "0.625"},
    ]
    assert read(tmp_path / "metrics_steps.csv") == [{"step": "7", "train/loss_step": "0.7"}]


def test_a_run_resumed_into_its_folder_continues_the_file(tmp_path):
    first = CSVLogger(str(tmp_path / "metrics.csv"))
    first.log_metrics({"val/acc": 0.1 + 0.2}, step=1)  # 0.30000000000000004: written exactly
    CSVLogger(str(tmp_path / "metrics.csv")).log_metrics({"val/acc": 0.5, "val/loss": 1.0}, step=2)
    rows = read(tmp_path / "metrics.csv")
    assert [row["step"] for row in rows] == ["1", "2"] and float(rows[0]["val/acc"]) == 0.1 + 0.2
    assert rows[0]["val/loss"] == "" and rows[1]["val/loss"] == "1.0"


def test_the_tensorboard_hint_is_printed_only_where_tensorboard_writes(tmp_path):
    from imgrec.commands.train import writes_tensorboard
    from imgrec.training.loggers import ManyLoggers, TensorBoardLogger

    alone = CSVLogger(str(tmp_path / "metrics.csv"))
    board = TensorBoardLogger(str(tmp_path / "tb"), run_name="x")
    try:
        assert not writes_tensorboard(alone)
        assert writes_tensorboard(board)
        assert writes_tensorboard(ManyLoggers({"csv": alone, "tensorboard": board}))
        assert not writes_tensorboard(ManyLoggers({"csv": alone}))
    finally:
        board.close()


def test_a_folder_that_cannot_be_written_is_refused_when_the_logger_is_built(tmp_path):
    import pytest

    from imgrec.errors import ImgrecError

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ImgrecError, match=r"logger.path=.*a_file/metrics.csv: cannot write there .*choose a writable"):
        CSVLogger(str(blocker / "metrics.csv"))
