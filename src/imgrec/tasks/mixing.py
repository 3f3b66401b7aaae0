"""Mixup and CutMix: train on blends of two images with targets blended in the same proportion."""

import math

import torch
import torch.nn.functional as F

from imgrec.errors import ImgrecError


class MixUpCutMix:
    """Per batch, with probability `prob`: mixup (a weighted average of two images) or CutMix (a box of one
    image pasted into the other), each image paired with the batch reversed; lambda ~ Beta(alpha, alpha).

    CutMix's lambda is corrected to the box's real area after clipping at the borders, so the targets
    say exactly how much of each image is there. When both alphas are set, `switch_prob` picks CutMix.
    Random draws use torch's global CPU generator, which checkpoints save: a resume repeats them.
    `num_classes` may be set once the data is known (before the first call).
    """

    def __init__(self, num_classes: int | None = None, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5):
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ImgrecError(f"task.mixup.{name}={value} must be >= 0 (0 turns it off; 0.2-1.0 is usual)")
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise ImgrecError(f"task.mixup.{name}={value} must be between 0 and 1")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) -> (mixed images, targets): class probabilities of shape (N, classes) when the
        batch was mixed, the labels unchanged when it was not."""
        if not self.enabled or torch.rand(()).item() >= self.prob:
            return images, labels
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = torch.distributions.Beta(alpha, alpha).sample().item()
        partner = images.flip(0)  # a reversed batch is a pairing as random as the batch order, with no copy of indices
        if use_cutmix:
            images, lam = paste_box(images, partner, lam)
        else:
            images = torch.lerp(partner, images, lam)  # lam * images + (1 - lam) * partner
        one_hot = F.one_hot(labels, self.num_classes).float()
        return images, lam * one_hot + (1 - lam) * one_hot.flip(0)


def paste_box(images: torch.Tensor, partner: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a box covering about 1 - lam of the area from `partner` into `images`; returns the share kept."""
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * cut), int(width * cut)
    centre_y, centre_x = torch.randint(height, ()).item(), torch.randint(width, ()).item()
    top, bottom = max(centre_y - box_h // 2, 0), min(centre_y + box_h - box_h // 2, height)
    left, right = max(centre_x - box_w // 2, 0), min(centre_x + box_w - box_w // 2, width)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)
