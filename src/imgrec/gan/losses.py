"""The GAN adversarial losses: hinge (SNGAN, BigGAN) and the non-saturating loss of the original GAN paper."""

import torch
from torch.nn import functional

from imgrec.errors import ImgrecError

LOSSES = ("hinge", "non_saturating")


def check_loss(name: str) -> str:
    if name not in LOSSES:
        raise ImgrecError(f"gan.loss={name!r} is not one of {', '.join(LOSSES)}")
    return name


def discriminator_loss(name: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    if check_loss(name) == "hinge":
        return functional.relu(1 - real_logits).mean() + functional.relu(1 + fake_logits).mean()
    # softplus(-x) is -log(sigmoid(x)) without the overflow of taking the log of a sigmoid
    return functional.softplus(-real_logits).mean() + functional.softplus(fake_logits).mean()


def generator_loss(name: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if check_loss(name) == "hinge":
        return -fake_logits.mean()
    # -log D(G(z)), not log(1 - D(G(z))): its gradient does not vanish while D still rejects every fake
    return functional.softplus(-fake_logits).mean()
