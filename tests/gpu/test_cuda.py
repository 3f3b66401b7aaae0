"""The CUDA paths: mixed precision, channels_last and torch.compile on a GPU. Skipped without CUDA
(CI has none); run them where a GPU is: `pytest tests/gpu`."""

import csv

import pytest
import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.models.small_cnn import SmallCNN
from imgrec.tasks.classification import ClassificationTask
from imgrec.training.schedulers import constant
from imgrec.training.settings import TrainerSettings
from imgrec.commands.train import train
from imgrec.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_trainer(mixup=None, **settings):
    torch.manual_seed(0)
    model = SmallCNN(1, 3, widths=[8, 16], hidden=[], dropout=0.0).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    task = ClassificationTask(mixup=mixup)
    task.bind(["a", "b", "c"], [1, 1, 1])
    trainer = Trainer(model, optimizer, constant, task, TrainerSettings(device="cuda", progress=False, **settings))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    return trainer


def batch():
    return torch.rand(16, 1, 12, 12, device="cuda"), torch.arange(16, device="cuda") % 3


@pytest.mark.parametrize("precision, dtype", [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_mixed_precision_forward_runs_in_the_low_precision_dtype(precision, dtype):
    trainer = cuda_trainer(precision=precision, channels_last=True)
    assert (trainer.scaler is not None) == (dtype is torch.float16)
    images, labels = batch()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss, logits = trainer.train_step(images, labels)
    assert logits.dtype is dtype and torch.isfinite(loss)
    assert all(p.dtype is torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))


def test_fp16_overflow_skips_the_step_and_the_schedule():
    trainer = cuda_trainer(precision="16-mixed", max_bad_steps=None)  # the scaler alone decides here
    images, labels = batch()
    images[0, 0, 0, 0] = float("inf")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    steps = trainer.scheduler.last_epoch
    scale = trainer.scaler.get_scale()
    trainer.train_step(images, labels)
    assert all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))
    assert trainer.scheduler.last_epoch == steps and trainer.scaler.get_scale() < scale


def test_compiled_model_on_cuda_matches_eager_closely():
    images, labels = batch()
    eager, compiled = cuda_trainer(), cuda_trainer(compile=True)
    for _ in range(3):
        eager_loss, _ = eager.train_step(images, labels)
        compiled_loss, _ = compiled.train_step(images, labels)
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-3)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_full_run_on_cuda_and_resume(compose_cfg, tmp_path, precision):
    overrides = ["dataset=fake", "trainer.device=cuda", f"trainer.precision={precision}", "trainer.channels_last=true",
                 "task.mixup.cutmix_alpha=1.0"]
    result = train(compose_cfg(*overrides, "trainer.max_epochs=2", run_dir=tmp_path / "first"))
    last = load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")
    assert ("grad_scaler" in last) == (precision == "16-mixed")
    with open(tmp_path / "first" / "test_predictions.csv") as file:  # the report counts its own predictions
        rows = list(csv.DictReader(file))
    assert result["test"]["accuracy"] == sum(r["true"] == r["predicted"] for r in rows) / len(rows)
    train(compose_cfg(*overrides, "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.pt'}",
                      run_dir=tmp_path / "resumed"))
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 3


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_adversarial_training_on_cuda_moves_images_under_mixed_precision(compose_cfg, tmp_path, precision):
    """The attack's input gradients under float16 autocast are loss-scaled: without that they underflow to zero
    for confident images and the 'adversarial' batch would be the random start alone."""
    from imgrec.training.adversarial import AdversarialBatches, AdversarialSettings

    trainer = cuda_trainer(precision=precision)
    images, labels = batch()
    for _ in range(20):  # confident enough that unscaled float16 gradients would vanish
        trainer.train_step(images, labels)
    batches = AdversarialBatches(AdversarialSettings(eps=0.05, steps=5, step_size=0.02), [0.0], [1.0],
                                 trainer.task.loss, trainer.amp_dtype)
    attacked, _ = batches.perturb(trainer.model, images.clamp(0, 1), labels)
    change = (attacked - images.clamp(0, 1)).abs()
    assert change.max() <= 0.05 + 1e-3 and (change > 0.049).float().mean() > 0.5  # most pixels at the budget
    result = train(compose_cfg("dataset=fake", "trainer.device=cuda", f"trainer.precision={precision}",
                               "trainer.max_epochs=1", "trainer.adversarial={method:pgd,eps:0.05,steps:2}",
                               run_dir=tmp_path))
    assert "val/robust_acc" in result["metrics"]


def test_on_cuda_a_fused_adam_gets_the_deferred_guard_and_a_nan_step_changes_nothing(compose_cfg):
    from imgrec.training.guard import DeferredGuard
    from imgrec.training.optim import build_optimizer

    model = SmallCNN(1, 3, widths=[8, 16], hidden=[], dropout=0.0).cuda()
    optimizer = build_optimizer(compose_cfg("optimizer=adam").optimizer, model)
    assert all(group["fused"] for group in optimizer.param_groups)  # turned on by build_optimizer on CUDA
    task = ClassificationTask()
    task.bind(["a", "b", "c"], [1, 1, 1])
    trainer = Trainer(model, optimizer, constant, task, TrainerSettings(device="cuda", progress=False))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    assert isinstance(trainer.guard, DeferredGuard)
    images, labels = batch()
    trainer.train_step(images, labels)
    before = [t.detach().clone() for t in trainer.model.state_dict().values()]
    images[0, 0, 0, 0] = float("nan")
    trainer.train_step(images, labels)
    assert all(torch.equal(t, b) for t, b in zip(trainer.model.state_dict().values(), before))
    trainer.guard.poll("test")
    assert trainer.guard.skipped == 1
