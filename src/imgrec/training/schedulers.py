"""Learning-rate schedules. All are stepped once per optimizer step except `plateau`, which reacts
to a validation metric at the end of each epoch; epoch-based ones convert epochs to steps."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from imgrec.errors import ImgrecError


def _check_range(name: str, value, low: float | None = None, high: float | None = None, strict: bool = False) -> None:
    """scheduler.<name> must be a number within [low, high] ((low, high) when `strict`)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value < high if strict else value <= high
    if not ok:
        bounds = ("(" if strict else "[") + f"{low if low is not None else '-inf'}, {high if high is not None else 'inf'}" \
            + (")" if strict else "]")
        raise ImgrecError(f"scheduler.{name}={value!r} must be a number in {bounds}")


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
    _check_range("warmup_epochs", warmup_epochs, low=0)
    _check_range("min_lr_ratio", min_lr_ratio, low=0, high=1)
    total_steps = steps_per_epoch * max_epochs
    # never let warm-up take the whole run: a 1-epoch smoke run still decays
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps // 2)
    if warmup_steps < 1:
        warmup_steps = 1 if warmup_epochs > 0 and total_steps > 1 else 0

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps, total_steps, min_lr_ratio)

    return LambdaLR(optimizer, factor)


def step_decay(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, step_epochs: int = 10,
               gamma: float = 0.1) -> LambdaLR:
    """Multiply the lr by gamma every `step_epochs` epochs."""
    if not isinstance(step_epochs, int) or isinstance(step_epochs, bool) or step_epochs < 1:
        raise ImgrecError(f"scheduler.step_epochs={step_epochs!r} must be a whole number >= 1")
    _check_range("gamma", gamma, low=0, strict=True)
    return LambdaLR(optimizer, lambda step: gamma ** (step // (step_epochs * steps_per_epoch)))


def multistep(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, milestones=(10, 15),
              gamma: float = 0.1) -> LambdaLR:
    """Multiply the lr by gamma at each milestone epoch."""
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones):
        raise ImgrecError(f"scheduler.milestones={list(milestones)!r} must be whole epoch numbers >= 1")
    _check_range("gamma", gamma, low=0, strict=True)
    boundaries = sorted(int(m) * steps_per_epoch for m in milestones)
    return LambdaLR(optimizer, lambda step: gamma ** sum(step >= b for b in boundaries))


def exponential(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, gamma: float = 0.9) -> LambdaLR:
    """Multiply the lr by gamma after every epoch."""
    _check_range("gamma", gamma, low=0, strict=True)
    return LambdaLR(optimizer, lambda step: gamma ** (step // steps_per_epoch))


def onecycle(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, pct_start: float = 0.3,
             div_factor: float = 25.0, final_div_factor: float = 1e4) -> OneCycleLR:
    """Leslie Smith's one-cycle policy, peaking at the optimizer's lr; momentum cycles when the optimizer has one."""
    _check_range("pct_start", pct_start, low=0, high=1, strict=True)
    _check_range("div_factor", div_factor, low=0, strict=True)
    _check_range("final_div_factor", final_div_factor, low=0, strict=True)
    defaults = optimizer.defaults
    has_momentum = defaults.get("momentum", 0) > 0 or "betas" in defaults
    return OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=steps_per_epoch * max_epochs,
        pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor, cycle_momentum=has_momentum,
    )


def plateau(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, monitor: str = "val/loss",
            mode: str = "min", factor: float = 0.1, patience: int = 5, min_lr: float = 0.0) -> ReduceLROnPlateau:
    """Multiply the lr by `factor` when `monitor` has not improved for `patience` epochs; stepped per epoch."""
    _check_range("factor", factor, low=0, high=1, strict=True)
    _check_range("min_lr", min_lr, low=0)
    if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
        raise ImgrecError(f"scheduler.patience={patience!r} must be a whole number >= 0")
    if mode not in ("min", "max"):
        raise ImgrecError(f"scheduler.mode={mode!r} must be min or max")
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr)
    scheduler.monitor = monitor  # the trainer steps it at epoch end with this metric
    return scheduler


class _StandInOptimizer(Optimizer):
    """Just enough of an optimizer (parameter groups, defaults) for a schedule to be built on. It skips
    Optimizer.__init__, whose first call imports torch._dynamo: 150 MB that would then sit in memory while
    the dataset loads, raising the run's peak (measured by make bench)."""

    def __init__(self):  # noqa: the parent's __init__ is what this avoids
        self.defaults = {"lr": 1.0, "momentum": 0.9}
        self.param_groups = [{"params": [], "lr": 1.0, "momentum": 0.9}]
        self.state = {}

    def step(self, closure=None):
        return None


def check_schedule_settings(scheduler_factory, max_epochs: int) -> None:
    """Build the configured schedule once on a stand-in optimizer, so that a bad setting (a negative warm-up,
    a factor above 1) is named before any data is loaded; the real schedule is built when training starts."""
    try:
        scheduler_factory(_StandInOptimizer(), steps_per_epoch=1, max_epochs=max_epochs)
    except TypeError as error:
        raise ImgrecError(f"scheduler: {error}; check the scheduler.* keys against configs/scheduler/") from error


def step_scheduler(scheduler, metrics: dict[str, float] | None = None) -> None:
    """Advance a schedule by one of its own steps: a `monitor`ing one (plateau) reads its metric."""
    monitor = getattr(scheduler, "monitor", None)
    if monitor is None:
        scheduler.step()
    else:
        scheduler.step(metrics[monitor])
