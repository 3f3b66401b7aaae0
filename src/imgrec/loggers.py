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

    def log_image(self, tag: str, image, step: int) -> None:
        """A Pillow image (imgrec.raster_figures draws the confusion matrix and error grid as these)."""
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC")
        self.writer.flush()

    def log_pr_curve(self, tag: str, positives, scores, step: int) -> None:
        self.writer.add_pr_curve(tag, positives, scores, global_step=step)

    def close(self) -> None:
        self.writer.close()
