"""Learning-rate schedules, all stepped once per optimizer step."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def constant(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int) -> LambdaLR:
    """The optimizer's own learning rate at every step (`scheduler=none`)."""
    return LambdaLR(optimizer, lambda step: 1.0)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base lr at `step`: linear 1/w ... 1 over the warm-up, then cosine to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    steps_per_epoch: int,
    max_epochs: int,
    warmup_epochs: float = 1,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    total_steps = steps_per_epoch * max_epochs
    # never let warm-up take the whole run: a 1-epoch smoke run still decays
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps // 2)
    if warmup_steps < 1:
        warmup_steps = 1 if warmup_epochs > 0 and total_steps > 1 else 0

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps, total_steps, min_lr_ratio)

    return LambdaLR(optimizer, factor)
