import math

import pytest
import torch

from imgrec.schedulers import constant, warmup_cosine


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
