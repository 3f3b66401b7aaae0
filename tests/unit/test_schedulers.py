import math

import pytest
import torch

from imgrec.training.schedulers import constant, warmup_cosine


def lrs(scheduler, optimizer, steps):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def make_optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_warmup_cosine_follows_the_formula():
    optimizer = make_optimizer(0.1)
    scheduler = warmup_cosine(optimizer, steps_per_epoch=4, max_epochs=5, warmup_epochs=1, min_lr_ratio=0.1)
    values = lrs(scheduler, optimizer, 20)
    warmup, total = 4, 20
    for step, lr in enumerate(values):
        if step < warmup:
            expected = 0.1 * (step + 1) / warmup
        else:
            progress = (step - warmup) / (total - warmup)
            expected = 0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert lr == pytest.approx(expected, rel=1e-12), step
    assert values[3] == pytest.approx(0.1)  # peak at the end of warm-up
    assert values[-1] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16))))


def test_warmup_never_takes_the_whole_run():
    optimizer = make_optimizer(1.0)
    scheduler = warmup_cosine(optimizer, steps_per_epoch=2, max_epochs=1, warmup_epochs=5)
    assert lrs(scheduler, optimizer, 2) == pytest.approx([1.0, 1.0])  # 1 warm-up step then cosine start


def test_constant_keeps_the_optimizer_lr():
    optimizer = make_optimizer(0.03)
    assert lrs(constant(optimizer, steps_per_epoch=3, max_epochs=2), optimizer, 6) == [0.03] * 6


def test_step_multistep_and_exponential_change_lr_at_epoch_boundaries():
    from imgrec.training.schedulers import exponential, multistep, step_decay

    optimizer = make_optimizer(1.0)
    per_epoch = lambda values: values[::3]  # noqa: E731  (3 steps per epoch)
    assert per_epoch(lrs(step_decay(optimizer, 3, 6, step_epochs=2, gamma=0.5), optimizer, 18)) == pytest.approx(
        [1, 1, 0.5, 0.5, 0.25, 0.25])
    optimizer = make_optimizer(1.0)
    assert per_epoch(lrs(multistep(optimizer, 3, 6, milestones=[1, 4], gamma=0.1), optimizer, 18)) == pytest.approx(
        [1, 0.1, 0.1, 0.1, 0.01, 0.01])
    optimizer = make_optimizer(1.0)
    assert per_epoch(lrs(exponential(optimizer, 3, 4, gamma=0.5), optimizer, 12)) == pytest.approx([1, 0.5, 0.25, 0.125])


def test_onecycle_peaks_at_the_optimizer_lr():
    from imgrec.training.schedulers import onecycle

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    values = lrs(onecycle(optimizer, steps_per_epoch=10, max_epochs=2, pct_start=0.25), optimizer, 20)
    assert values[0] == pytest.approx(0.01 / 25)
    assert max(values) == pytest.approx(0.01, rel=1e-3) and values.index(max(values)) in (4, 5)
    assert values[-1] < values[0]


def test_plateau_reduces_after_patience_epochs_of_a_stalled_metric():
    from imgrec.training.schedulers import plateau
    from imgrec.training.schedulers import step_scheduler

    optimizer = make_optimizer(1.0)
    scheduler = plateau(optimizer, 5, 10, monitor="val/loss", mode="min", factor=0.5, patience=1)
    seen = []
    for loss in [1.0, 0.9, 0.9, 0.9, 0.8]:
        step_scheduler(scheduler, {"val/loss": loss})
        seen.append(optimizer.param_groups[0]["lr"])
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5]
