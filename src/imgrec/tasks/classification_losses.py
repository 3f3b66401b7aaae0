"""Training losses: cross-entropy with label smoothing and class weights, or focal loss."""

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.errors import ImgrecError


def balanced_class_weights(class_counts: list[int]) -> torch.Tensor:
    """n / (classes * n_c) per class: every class contributes equally to the loss (scikit-learn's "balanced")."""
    counts = torch.tensor(class_counts, dtype=torch.float64)
    if (counts == 0).any():
        raise ImgrecError(f"task.loss.class_weights=auto needs training images of every class; counts are {class_counts}")
    return (counts.sum() / (len(counts) * counts)).float()


class ClassificationLoss(nn.Module):
    """Cross-entropy (optionally label-smoothed and class-weighted); focal loss when focal_gamma > 0.

    Focal loss scales each sample's cross-entropy by (1 - p_true)^gamma, so confidently right samples
    count for little: the usual answer to heavy class imbalance (defects, lesions).
    """

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None, focal_gamma: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ImgrecError(f"task.loss.label_smoothing={label_smoothing} must be in [0, 1)")
        if focal_gamma < 0:
            raise ImgrecError(f"task.loss.focal_gamma={focal_gamma} must be >= 0")
        self.label_smoothing, self.focal_gamma = label_smoothing, focal_gamma
        self.register_buffer("weight", weight, persistent=False)

    def set_class_weights(self, class_weights, class_counts: list[int] | None) -> None:
        """class_weights null, auto (balanced from the training `class_counts`) or one weight per class;
        without counts (a model rebuilt for inference, where the loss is not used) nothing is set."""
        if class_weights is None or class_counts is None:
            return
        if class_weights == "auto":
            self.weight = balanced_class_weights(class_counts)
            return
        weight = torch.tensor([float(w) for w in class_weights])
        if len(weight) != len(class_counts):
            raise ImgrecError(f"task.loss.class_weights has {len(weight)} values but the dataset has "
                              f"{len(class_counts)} classes")
        self.weight = weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`targets`: class indices (N,), or class probabilities (N, classes) as mixup and CutMix make."""
        weight = None if self.weight is None else self.weight.to(logits.device, logits.dtype)
        if targets.ndim == 2:
            return self._soft(logits, targets, weight)
        if self.focal_gamma == 0:
            return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing)
        # one implementation of focal loss, so hard and mixed targets are weighted and smoothed alike
        return self._soft(logits, F.one_hot(targets, logits.shape[1]).to(logits.dtype), weight)

    def _soft(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """The same loss against probability targets; with one-hot targets it equals the hard-label loss."""
        smoothed = targets
        if self.label_smoothing > 0:
            smoothed = targets * (1 - self.label_smoothing) + self.label_smoothing / targets.shape[1]
        log_probs = logits.float().log_softmax(dim=1)
        per_class = -smoothed * log_probs
        if weight is not None:
            per_class = per_class * weight
        per_sample = per_class.sum(dim=1)
        if self.focal_gamma > 0:
            p_true = (log_probs.exp() * targets).sum(dim=1)  # the probability given to the target mix
            per_sample = (1 - p_true).clamp(min=0).pow(self.focal_gamma) * per_sample
        if weight is None:
            return per_sample.mean()
        # normalised by the (unsmoothed) targets' weight, as the hard-label weighted mean is
        return per_sample.sum() / (targets * weight).sum()


def check_class_weights(class_weights) -> None:
    """null, auto, or a list of weights > 0: checked before the data says how many classes there are."""
    if class_weights is None or class_weights == "auto":
        return
    if isinstance(class_weights, str) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                                                 for w in class_weights):
        raise ImgrecError(f"task.loss.class_weights={class_weights!r} must be null, auto or a list of weights > 0, "
                          "one per class")
