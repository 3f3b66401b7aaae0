"""Resume and determinism: an interrupted run continued from last.pt ends where an uninterrupted one does."""

import pytest
import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.commands.train import train

# dropout, shuffling and augmentation on: a resume that lost any RNG or data-order state would diverge
FAKE_RUN = ["dataset=fake", "scheduler=none", "model.dropout=0.5", "callbacks.early_stopping.patience=50", "augment=classic"]


def assert_same_tensors(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_tensors(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path  # NaN == NaN here


@pytest.mark.parametrize("extra", [[], ["trainer.ema_decay=0.9", "trainer.accumulate_batches=2"]])
def test_resume_from_epoch_2_to_4_equals_an_uninterrupted_4_epoch_run(compose_cfg, tmp_path, extra):
    run = [*FAKE_RUN, *extra]
    straight = train(compose_cfg(*run, "trainer.max_epochs=4", run_dir=tmp_path / "straight"))
    train(compose_cfg(*run, "trainer.max_epochs=2", "test=false", run_dir=tmp_path / "first_half"))
    first_half = tmp_path / "first_half" / "checkpoints" / "last.pt"
    assert load_checkpoint(first_half)["epoch"] == 2
    resumed = train(compose_cfg(*run, "trainer.max_epochs=4", f"ckpt_path={first_half}", run_dir=tmp_path / "resumed"))

    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4 and a["step"] == b["step"]
    assert ("train_model" in a) == bool(extra)  # with EMA, the raw weights are saved beside the average
    for key in ("model", "train_model", "optimizer", "scheduler", "callbacks", "rng"):
        if key in a:
            assert_same_tensors(a[key], b[key], key)
    assert straight["metrics"] == resumed["metrics"]
    # the resumed run dir is complete: it carries the best weights over from the run it continued
    best_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pt")
    best_b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "best.pt")
    assert best_a["epoch"] == best_b["epoch"]
    assert_same_tensors(best_a["model"], best_b["model"], "best.model")
    assert straight["test"]["confusion_matrix"] == resumed["test"]["confusion_matrix"]


def test_resume_continues_the_early_stopping_count(compose_cfg, tmp_path):
    # val/loss with min_delta=10 never "improves" after the first epoch: patience 3 stops at epoch 4
    stop_rule = ["callbacks.early_stopping.monitor=val/loss", "callbacks.early_stopping.mode=min",
                 "callbacks.early_stopping.min_delta=10", "callbacks.early_stopping.patience=3", "test=false"]
    train(compose_cfg(*FAKE_RUN[:2], *stop_rule, "trainer.max_epochs=2", run_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["callbacks"]["early_stopping"]["bad_epochs"] == 1
    train(compose_cfg(*FAKE_RUN[:2], *stop_rule, "trainer.max_epochs=10", f"ckpt_path={last}", run_dir=tmp_path / "b"))
    final = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert final["epoch"] == 4 and final["callbacks"]["early_stopping"]["bad_epochs"] == 3


def test_the_same_seed_gives_the_same_metrics_and_another_seed_does_not(compose_cfg, tmp_path):
    run = lambda seed, name: train(compose_cfg("dataset=fake", "trainer.max_epochs=2", f"seed={seed}", run_dir=tmp_path / name))  # noqa: E731
    first, again, other = run(7, "a"), run(7, "b"), run(8, "c")
    assert first["metrics"] == again["metrics"] and first["test"] == again["test"]
    assert first["metrics"]["train/loss"] != other["metrics"]["train/loss"]
