"""ValidationFigures: what TensorBoard shows besides curves: the validation confusion matrix, one
precision-recall curve per class, and the validation images the model currently gets wrong."""

import numpy as np
import torch

from imgrec.training.callbacks import Callback
from imgrec.errors import ImgrecError


def split_images(loader, indices: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) images at `indices` of a loader's split, in memory or read from files."""
    if hasattr(loader, "images"):  # the in-memory loader: the split's uint8 tensor
        return loader.images[torch.as_tensor(indices, device=loader.images.device)].cpu().numpy()
    from imgrec.data.images import decode_image

    data = loader.data
    return np.stack([decode_image(data.paths[i], data.channels, data.image_size).numpy() for i in indices])


class ValidationFigures(Callback):
    """After the last epoch, and every `every_n_epochs` epochs when set; needs a logger (nothing to draw on otherwise)."""

    order = 50  # after early stopping, which decides whether this epoch is the last

    def __init__(self, every_n_epochs: int | None = None, max_images: int = 32):
        if every_n_epochs is not None and (not isinstance(every_n_epochs, int) or every_n_epochs < 1):
            raise ImgrecError(f"callbacks.validation_figures.every_n_epochs={every_n_epochs!r} must be null (after the "
                              "last epoch only) or a whole number >= 1")
        self.every_n_epochs, self.max_images = every_n_epochs, max_images

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        last = trainer.epoch >= trainer.max_epochs or trainer.should_stop
        if trainer.logger is None or "val" not in trainer.last_predictions:
            return
        periodic = self.every_n_epochs is not None and trainer.epoch % self.every_n_epochs == 0
        if not (periodic or last):
            return
        self.draw(trainer.logger, trainer.last_predictions["val"], trainer.val_loader,
                  trainer.checkpoint_extras.get("class_names"), trainer.epoch)

    def draw(self, logger, predictions, val_loader, class_names: list[str] | None, epoch: int) -> None:
        from sklearn.metrics import confusion_matrix

        from imgrec.evaluation.rasters import confusion_matrix_image, image_grid_image

        logits, labels = predictions
        probabilities = logits.softmax(dim=1)
        predicted = probabilities.argmax(dim=1)
        names = class_names or [str(i) for i in range(logits.shape[1])]
        counts = confusion_matrix(labels.numpy(), predicted.numpy(), labels=np.arange(len(names)))
        logger.log_image("val/confusion_matrix", confusion_matrix_image(counts, names, f"val, epoch {epoch}"), epoch)
        for index, name in enumerate(names):
            logger.log_pr_curve(f"val_pr/{name}", labels == index, probabilities[:, index], epoch)
        wrong = torch.nonzero(predicted != labels).flatten()
        if len(wrong) and val_loader is not None:
            # the most confident mistakes first: the ones worth looking at
            wrong = wrong[probabilities[wrong, predicted[wrong]].argsort(descending=True)][: self.max_images].numpy()
            captions = [f"true {names[labels[i]]}\npred {names[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})"
                        for i in wrong]
            grid = image_grid_image(split_images(val_loader, wrong), captions, f"misclassified val images, epoch {epoch}")
            logger.log_image("val/misclassified", grid, epoch)
