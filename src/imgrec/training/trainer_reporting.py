"""Evaluation and reporting for the Trainer: predictions (gathered across processes under DDP),
validation scores, the per-epoch log line and the progress bar."""

import logging
import sys

import torch
import torch.nn.functional as F

from imgrec.training import distributed
from imgrec.evaluation.classification import epoch_scores

log = logging.getLogger("imgrec")


class TrainerReporting:
    """Mixed into Trainer."""

    @torch.inference_mode()
    def predict(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32) and labels of every batch `loader` yields, on the CPU."""
        self.eval_model.eval()
        outputs = []
        for images, labels in loader:
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                outputs.append((self.eval_forward(images).float(), labels))
        logits = torch.cat([o[0] for o in outputs]).cpu()
        labels = torch.cat([o[1] for o in outputs]).cpu()
        if self.dist.enabled:  # every process gets the whole split's predictions, in the split's order
            logits, labels = distributed.gather_in_order(logits, labels, loader.order()[: len(labels)])
        return logits, labels

    def evaluate(self, loader, prefix: str) -> dict[str, float]:
        logits, labels = self.predict(loader)
        self.last_predictions[prefix] = (logits, labels)
        loss = F.cross_entropy(logits, labels).item()
        return {f"{prefix}/loss": loss, **epoch_scores(labels.numpy(), logits.argmax(dim=1).numpy(), prefix)}

    def log(self, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=self.epoch)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items() if name != "train/lr")
        seconds = f"  {self.epoch_seconds:.2f}s" if self.epoch_seconds is not None else ""
        self.log_text(f"epoch {self.epoch}/{self.max_epochs}  {shown}  lr {metrics['train/lr']:.2e}{seconds}")

    def log_text(self, message: str) -> None:
        log.info(message)

    def _progress_bar(self, loader, done: int = 0):
        if not self.show_bar:
            return None
        from tqdm import tqdm

        total = min(loader.num_samples, len(loader) * loader.batch_size)
        return tqdm(
            total=total, initial=done, desc=f"epoch {self.epoch + 1}/{self.max_epochs}", unit="img",
            leave=False, dynamic_ncols=True, file=sys.stderr,
        )
