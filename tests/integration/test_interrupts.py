"""Interrupted mid-epoch by a real signal, resumed: the same steps, losses and weights as never stopping."""

import os
import signal

import pytest
import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.errors import ImgrecError
from imgrec.commands.train import train
from imgrec.training.signals import TrainingInterrupted
from imgrec.training.trainer import Trainer

# fake data: 80 training images in batches of 16 = 5 steps an epoch; augmentation and shuffling on
OVERRIDES = ["dataset=fake", "augment=basic", "trainer.max_epochs=3", "trainer.batch_size=16",
             "task.mixup.mixup_alpha=0.2", "trainer.ema_decay=0.9"]


@pytest.fixture
def recorded_steps(monkeypatch):
    """Every training step's loss and labels, and a way to send a signal to ourselves after step k."""
    record = {"losses": [], "labels": [], "signal_after": None}
    original = Trainer.train_step

    def recording_step(self, images, targets, update=True):
        loss, logits = original(self, images, targets, update)
        record["losses"].append(loss.item())
        record["labels"].append(targets.argmax(1) if targets.ndim == 2 else targets)
        if record["signal_after"] == len(record["losses"]):
            os.kill(os.getpid(), record["signal"])  # a real signal: the handler sets the flag
        return loss, logits

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    return record


@pytest.mark.parametrize("stop_after, signum", [(7, signal.SIGUSR1), (10, signal.SIGTERM), (3, signal.SIGINT)])
def test_resume_after_a_signal_repeats_the_uninterrupted_run_exactly(compose_cfg, tmp_path, recorded_steps,
                                                                      stop_after, signum):
    train(compose_cfg(*OVERRIDES, run_dir=tmp_path / "whole"))
    whole_losses = list(recorded_steps["losses"])
    whole_state = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")

    recorded_steps.update(losses=[], labels=[], signal_after=stop_after, signal=signum)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(compose_cfg(*OVERRIDES, run_dir=tmp_path / "first"))
    assert stopped.value.exit_code == 128 + signum
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    if stop_after % 5:  # mid-epoch: the file says where
        assert saved["epoch_progress"]["batches"] == stop_after % 5 and saved["epoch"] == stop_after // 5
    first_losses = list(recorded_steps["losses"])
    assert first_losses == whole_losses[:stop_after]

    recorded_steps.update(losses=[], signal_after=None)
    train(compose_cfg(*OVERRIDES, f"ckpt_path={last}", run_dir=tmp_path / "resumed"))
    assert first_losses + recorded_steps["losses"] == whole_losses  # atol=0: every step's loss, bit for bit
    resumed_state = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key in ("model", "train_model"):
        for name, tensor in whole_state[key].items():
            assert torch.equal(resumed_state[key][name], tensor), (key, name)
    assert resumed_state["optimizer"]["state"].keys() == whole_state["optimizer"]["state"].keys()
    for index, values in whole_state["optimizer"]["state"].items():
        for name, value in values.items():
            assert torch.equal(resumed_state["optimizer"]["state"][index][name], value)
    assert resumed_state["step"] == whole_state["step"] == 15
    assert resumed_state["callbacks"] == whole_state["callbacks"]


def test_each_training_sample_is_seen_once_per_epoch_across_a_resume(compose_cfg, tmp_path, recorded_steps):
    recorded_steps.update(signal_after=2, signal=signal.SIGUSR1)
    with pytest.raises(TrainingInterrupted):
        train(compose_cfg(*OVERRIDES[:4], "trainer.max_epochs=1", run_dir=tmp_path / "first"))
    recorded_steps["signal_after"] = None
    train(compose_cfg(*OVERRIDES[:4], "trainer.max_epochs=1",
                      f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.pt'}", run_dir=tmp_path / "resumed"))
    seen = torch.cat(recorded_steps["labels"])
    assert len(seen) == 80  # 2 batches before the stop + 3 after: no batch twice, none missing
    from imgrec.data.building import build_dataset
    from tests.conftest import tool_cfg

    train_labels = build_dataset(tool_cfg("train", tmp_path / "x", "dataset=fake").dataset,
                                 "classification").train.labels
    assert torch.equal(seen.sort().values, train_labels.sort().values)


def test_non_finite_steps_are_skipped_then_stop_the_run(compose_cfg, tmp_path, monkeypatch):
    from imgrec.tasks.classification_losses import ClassificationLoss

    original, calls = ClassificationLoss.forward, {"n": 0}
    poisoned = {3: float("nan"), 4: float("inf")}  # steps 3 and 4 of the first epoch go bad

    def forward(self, logits, targets):
        calls["n"] += 1
        loss = original(self, logits, targets)
        return loss * poisoned[calls["n"]] if calls["n"] in poisoned else loss

    monkeypatch.setattr(ClassificationLoss, "forward", forward)
    result = train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "trainer.batch_size=16",
                               run_dir=tmp_path / "run"))
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["step"] == 10 - 2  # two of ten steps skipped, the rest taken
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert result["test"] is not None

    calls["n"], poisoned = 0, {n: float("nan") for n in range(1, 100)}
    with pytest.raises(ImgrecError, match="3 optimizer steps in a row had a non-finite loss or gradient"):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "trainer.batch_size=16", run_dir=tmp_path / "diverged"))
    assert not (tmp_path / "diverged" / "checkpoints" / "last.pt").exists()


def test_out_of_memory_names_the_batch_size_and_what_to_try(compose_cfg, tmp_path, monkeypatch):
    def out_of_memory(self, images, targets, update=True):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    with pytest.raises(ImgrecError, match=r"out of GPU memory with trainer.batch_size=64: try trainer.batch_size=32 "
                                          r"\(and trainer.accumulate_batches=2 to keep the effective batch\)"):
        train(compose_cfg("dataset=fake", run_dir=tmp_path / "run"))


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path):
    """Before issue #15 a Ctrl-C while torch was importing printed a KeyboardInterrupt traceback."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    process = subprocess.Popen([str(Path(sys.executable).parent / "imgrec-train"), "experiment=smoke"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # inside start-up: once torch's library is being loaded (a fixed sleep landed in the interpreter's own
    # start-up on a busy machine, before any imgrec code runs); a fixed second where /proc is missing
    maps, deadline = Path(f"/proc/{process.pid}/maps"), time.monotonic() + 60

    def torch_loading() -> bool:
        try:
            return "libtorch" in maps.read_text()
        except OSError:  # the process has ended
            return True

    if maps.parent.is_dir():
        while process.poll() is None and time.monotonic() < deadline and not torch_loading():
            time.sleep(0.01)
    else:
        time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (Ctrl-C)" in stderr
