"""Segmentation losses: cross-entropy (class weights, ignored pixels), soft Dice, the two together, focal
loss, and binary cross-entropy on one logit. Written here rather than taken from
segmentation_models_pytorch, which is an optional extra; each is a few lines and checked in tests
against its formula."""

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.data.splits import IGNORE
from imgrec.errors import ImgrecError

LOSSES = ("ce", "dice", "ce_dice", "focal", "bce", "bce_dice")
BINARY = ("bce", "bce_dice")  # one logit per pixel: the probability of the foreground class


def soft_dice_loss(probabilities: torch.Tensor, one_hot: torch.Tensor, valid: torch.Tensor,
                   smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of 2|P.T| / (|P| + |T|), summed over the batch's valid pixels; classes the
    batch's targets do not hold are left out (their Dice would only reward predicting nothing)."""
    valid = valid.unsqueeze(1).to(probabilities.dtype)
    probabilities, one_hot = probabilities * valid, one_hot * valid
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    cardinality = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth)
    present = one_hot.sum(dims) > 0
    if not present.any():
        return probabilities.sum() * 0.0  # nothing to segment in this batch: no gradient, no NaN
    return 1.0 - dice[present].mean()


class SegmentationLoss(nn.Module):
    """`name`: ce, dice, ce_dice (the two summed, dice scaled by dice_weight), focal, bce (one logit,
    binary tasks), bce_dice. Pixels whose target is IGNORE count in none of them."""

    def __init__(self, name: str = "ce_dice", class_weights=None, focal_gamma: float = 2.0, dice_weight: float = 1.0,
                 dice_smooth: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if name not in LOSSES:
            raise ImgrecError(f"task.loss.name={name!r} must be one of {', '.join(LOSSES)}")
        for key, value in (("focal_gamma", focal_gamma), ("dice_weight", dice_weight), ("dice_smooth", dice_smooth)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ImgrecError(f"task.loss.{key}={value!r} must be a number >= 0")
        if not 0.0 <= label_smoothing < 1.0:
            raise ImgrecError(f"task.loss.label_smoothing={label_smoothing} must be in [0, 1)")
        if class_weights not in (None, "auto") and (isinstance(class_weights, str) or not all(
                isinstance(w, (int, float)) and w > 0 for w in class_weights)):
            raise ImgrecError(f"task.loss.class_weights={class_weights!r} must be null, auto or a list of weights > 0")
        self.name, self.class_weights, self.focal_gamma = name, class_weights, focal_gamma
        self.dice_weight, self.dice_smooth, self.label_smoothing = dice_weight, dice_smooth, label_smoothing
        self.register_buffer("weight", None, persistent=False)

    @property
    def binary(self) -> bool:
        return self.name in BINARY

    def set_class_weights(self, pixel_counts: list[int] | None) -> None:
        """class_weights auto: inverse pixel frequency, normalised to mean 1; a list: one per class."""
        if self.class_weights is None or pixel_counts is None:
            return
        counts = torch.tensor(pixel_counts, dtype=torch.float64)
        if self.class_weights == "auto":
            if (counts == 0).any():
                raise ImgrecError(f"task.loss.class_weights=auto needs pixels of every class; counts are {pixel_counts}")
            weight = counts.sum() / (len(counts) * counts)
        else:
            weight = torch.tensor([float(w) for w in self.class_weights], dtype=torch.float64)
            if len(weight) != len(counts):
                raise ImgrecError(f"task.loss.class_weights has {len(weight)} values but the dataset has {len(counts)} classes")
        self.weight = (weight / weight.mean()).float()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """`logits` (N, C, H, W) (C = 1 for the binary losses), `masks` (N, H, W) class ids, IGNORE where unlabelled."""
        logits = logits.float()
        target = masks.long()
        valid = target != IGNORE
        if self.binary:
            foreground = (target == 1).float()
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], foreground, reduction="none")
            loss = (per_pixel * valid).sum() / valid.sum().clamp_min(1)
            if self.name == "bce_dice":
                probabilities = torch.sigmoid(logits)
                loss = loss + self.dice_weight * soft_dice_loss(probabilities, foreground[:, None], valid,
                                                                self.dice_smooth)
            return loss
        weight = None if self.weight is None else self.weight.to(logits.device)
        safe_target = target.masked_fill(~valid, 0)
        loss = logits.sum() * 0.0
        if self.name in ("ce", "ce_dice"):
            loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE,
                                   label_smoothing=self.label_smoothing) if valid.any() else loss
        elif self.name == "focal":
            log_p = F.log_softmax(logits, dim=1).gather(1, safe_target[:, None])[:, 0]
            per_pixel = -((1 - log_p.exp()) ** self.focal_gamma) * log_p
            if weight is not None:
                per_pixel = per_pixel * weight[safe_target]
            loss = (per_pixel * valid).sum() / valid.sum().clamp_min(1)
        if self.name in ("dice", "ce_dice"):
            one_hot = F.one_hot(safe_target, logits.shape[1]).permute(0, 3, 1, 2).float()
            loss = loss + self.dice_weight * soft_dice_loss(logits.softmax(dim=1), one_hot, valid, self.dice_smooth)
        return loss
