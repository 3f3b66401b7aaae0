"""Training losses: cross-entropy with label smoothing and class weights, or focal loss."""

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.errors import ImgrecError


def balanced_class_weights(class_counts: list[int]) -> torch.Tensor:
    """n / (classes * n_c) per class: every class contributes equally to the loss (scikit-learn's "balanced")."""
    counts = torch.tensor(class_counts, dtype=torch.float64)
    if (counts == 0).any():
        raise ImgrecError(f"trainer.loss.class_weights=auto needs training images of every class; counts are {class_counts}")
    return (counts.sum() / (len(counts) * counts)).float()


class ClassificationLoss(nn.Module):
    """Cross-entropy (optionally label-smoothed and class-weighted); focal loss when focal_gamma > 0.

    Focal loss scales each sample's cross-entropy by (1 - p_true)^gamma, so confidently right samples
    count for little: the usual answer to heavy class imbalance (defects, lesions).
    """

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None, focal_gamma: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ImgrecError(f"trainer.loss.label_smoothing={label_smoothing} must be in [0, 1)")
        if focal_gamma < 0:
            raise ImgrecError(f"trainer.loss.focal_gamma={focal_gamma} must be >= 0")
        self.label_smoothing, self.focal_gamma = label_smoothing, focal_gamma
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.device, logits.dtype)
        if self.focal_gamma == 0:
            return F.cross_entropy(logits, labels, weight=weight, label_smoothing=self.label_smoothing)
        per_sample = F.cross_entropy(logits, labels, reduction="none", label_smoothing=self.label_smoothing)
        p_true = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        focal = (1 - p_true).pow(self.focal_gamma) * per_sample
        if weight is None:
            return focal.mean()
        sample_weight = weight[labels]
        return (focal * sample_weight).sum() / sample_weight.sum()


def build_loss(label_smoothing: float = 0.0, class_weights=None, focal_gamma: float = 0.0,
               class_counts: list[int] | None = None) -> ClassificationLoss:
    """The `trainer.loss` settings; class_weights is null, auto (from `class_counts`) or one weight per class."""
    if class_weights is None:
        weight = None
    elif class_weights == "auto":
        if class_counts is None:
            raise ImgrecError("trainer.loss.class_weights=auto needs the training class counts")
        weight = balanced_class_weights(class_counts)
    else:
        weight = torch.tensor([float(w) for w in class_weights])
        if class_counts is not None and len(weight) != len(class_counts):
            raise ImgrecError(
                f"trainer.loss.class_weights has {len(weight)} values but the dataset has {len(class_counts)} classes"
            )
    return ClassificationLoss(label_smoothing, weight, focal_gamma)
