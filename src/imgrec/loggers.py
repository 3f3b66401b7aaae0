"""Experiment loggers. TensorBoard is imported only when a logger is actually built."""

from pathlib import Path


class TensorBoardLogger:
    """Scalars per epoch and the run's hyperparameters with its final metrics."""

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter  # slow import: keep it off `--help`

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def log_hyperparams(self, params: dict, metrics: dict[str, float]) -> None:
        # run_name="." keeps the HPARAMS entry in this run's folder instead of a timestamped subfolder
        self.writer.add_hparams(params, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
