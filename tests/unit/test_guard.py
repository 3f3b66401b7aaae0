"""The non-finite guard checked on the device (DeferredGuard, the CUDA default) decides exactly as the host
check does: a bad step changes no weight, no optimizer state and no batch-norm statistic, and too many in a
row stop the run. Run here on the CPU, whose fused Adam and SGD take `found_inf` as CUDA's do."""

import pytest
import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.tasks.classification import ClassificationTask
from imgrec.training.guard import DeferredGuard, NonFiniteGuard, make_guard
from imgrec.training.schedulers import constant
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer


def make_trainer(optimizer_name: str, check: str, **settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3))
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4, fused=True)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True, fused=True)
    task = ClassificationTask()
    task.bind(["a", "b", "c"], [1, 1, 1])
    trainer = Trainer(model, optimizer, constant, task,
                      TrainerSettings(device="cpu", progress=False, bad_step_check=check, **settings))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    return trainer


def batches(bad: set[int], count: int):
    generator = torch.Generator().manual_seed(1)
    for index in range(count):
        images = torch.rand(8, 1, 12, 12, generator=generator)
        if index in bad:
            images[0, 0, 0, 0] = float("nan")  # NaN logits, loss and gradients; NaN batch-norm statistics
        yield images, torch.arange(8) % 3


def state(trainer) -> list[torch.Tensor]:
    optimizer_state = [value for per_parameter in trainer.optimizer.state.values() for value in per_parameter.values()]
    return [*trainer.model.state_dict().values(), *optimizer_state]


@pytest.mark.parametrize("optimizer_name", ["adam", "sgd"])
def test_the_deferred_guard_leaves_every_weight_state_and_statistic_as_the_host_check_does(optimizer_name):
    host, deferred = make_trainer(optimizer_name, "every_step"), make_trainer(optimizer_name, "deferred")
    assert isinstance(host.guard, NonFiniteGuard) and not host.guard.deferred and isinstance(deferred.guard, DeferredGuard)
    bad = {0, 3}  # the very first step too: SGD's momentum buffer does not exist yet then
    for trainer in (host, deferred):
        for images, labels in batches(bad, 6):
            trainer.train_step(images, labels)
    deferred.guard.poll("end of the test")
    assert host.guard.skipped == deferred.guard.skipped == 2
    for ours, reference in zip(state(deferred), state(host), strict=True):
        assert torch.equal(ours, reference)
    assert all(torch.isfinite(t).all() for t in deferred.model.state_dict().values() if t.is_floating_point())
    # and a run that never saw the bad batches ends in the same place
    clean = make_trainer(optimizer_name, "every_step")
    for index, (images, labels) in enumerate(batches(bad, 6)):
        if index not in bad:
            clean.train_step(images, labels)
    for ours, reference in zip(state(deferred), state(clean), strict=True):
        assert torch.equal(ours, reference)


def test_the_deferred_guard_stops_at_its_next_poll_after_too_many_bad_steps_in_a_row():
    trainer = make_trainer("adam", "deferred", max_bad_steps=2)
    trainer.guard.poll_every = 4
    before = [p.detach().clone() for p in trainer.model.parameters()]
    steps = batches({1, 2}, 6)
    for _ in range(3):  # good, bad, bad: no synchronisation has happened yet, so nothing is raised
        trainer.train_step(*next(steps))
    with pytest.raises(ImgrecError, match=r"2 optimizer steps in a row had a non-finite loss or gradient \(last: loss nan\)"):
        trainer.train_step(*next(steps))  # the fourth step polls
    assert trainer.guard.skipped == 2
    assert not all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))  # the good step moved them


def test_auto_checks_on_the_host_on_a_cpu_and_deferred_is_refused_where_it_cannot_work():
    assert not make_trainer("adam", "auto").guard.deferred  # the per-step check costs nothing on a CPU
    model = nn.Linear(2, 2)
    unfused = torch.optim.RMSprop(model.parameters())
    with pytest.raises(ImgrecError, match=r"trainer.bad_step_check=deferred cannot be used: this RMSprop does not run a fused step .*add \+optimizer.fused=true"):
        make_guard(3, "deferred", torch.device("cpu"), unfused, None)
    assert make_guard(None, "deferred", torch.device("cpu"), unfused, None).enabled is False
    with pytest.raises(ImgrecError, match="trainer.bad_step_check='sometimes' must be auto, every_step or deferred"):
        TrainerSettings(bad_step_check="sometimes")


def test_deferred_without_a_fused_optimizer_is_refused_before_any_data_is_read(compose_cfg, tmp_path):
    from imgrec.commands.train import train

    with pytest.raises(ImgrecError, match=r"trainer.bad_step_check=deferred needs a fused step: torch.optim.RMSprop"):
        train(compose_cfg("experiment=smoke", "optimizer=rmsprop", "trainer.bad_step_check=deferred"))
    assert not (tmp_path / "run" / "classes.json").exists()  # written once the dataset is loaded
