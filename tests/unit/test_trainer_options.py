"""Mixed precision, channels_last, torch.compile and mixup inside the Trainer (CPU; CUDA in tests/gpu)."""

import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.models.small_cnn import SmallCNN
from imgrec.tasks.classification import ClassificationTask
from imgrec.training.schedulers import constant
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer


def make_trainer(mixup=None, **settings):
    torch.manual_seed(0)
    model = SmallCNN(1, 3, widths=[4, 8], hidden=[], dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    task = ClassificationTask(mixup=mixup)
    task.bind(["a", "b", "c"], [1, 1, 1])
    trainer = Trainer(model, optimizer, constant, task, TrainerSettings(device="cpu", progress=False, **settings))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    return trainer


def images_and_labels():
    return torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 3


def test_bf16_mixed_on_cpu_runs_the_forward_in_bfloat16():
    trainer = make_trainer(precision="bf16-mixed")
    assert trainer.amp_dtype is torch.bfloat16 and trainer.scaler is None
    images, labels = images_and_labels()
    loss, logits = trainer.train_step(images, labels)
    assert logits.dtype is torch.bfloat16 and loss.dtype is torch.float32 and torch.isfinite(loss)
    assert all(p.dtype is torch.float32 for p in trainer.model.parameters())  # master weights stay float32
    assert trainer.predict([(images, labels)]).logits.dtype is torch.float32


def test_precision_choices_are_checked():
    assert make_trainer(precision=32).amp_dtype is None
    with pytest.raises(ImgrecError, match=r"trainer.precision=16-mixed \(float16\) needs a CUDA GPU .* use trainer.precision=bf16-mixed"):
        make_trainer(precision="16-mixed")
    with pytest.raises(ImgrecError, match="trainer.precision='half' is not one of 32, bf16-mixed, 16-mixed"):
        make_trainer(precision="half")


def test_channels_last_changes_the_layout_not_the_result():
    images, labels = images_and_labels()
    plain, nhwc = make_trainer(), make_trainer(channels_last=True)
    conv = nhwc.model.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        plain_loss, _ = plain.train_step(images, labels)
        nhwc_loss, _ = nhwc.train_step(images, labels)
        assert nhwc_loss.item() == pytest.approx(plain_loss.item(), rel=1e-4)


def test_compiled_model_trains_and_saves_plain_weights():
    images, labels = images_and_labels()
    plain, compiled = make_trainer(), make_trainer(compile={"backend": "eager"})
    assert compiled.train_forward is not compiled.model
    for _ in range(2):
        plain.train_step(images, labels)
        compiled.train_step(images, labels)
    state = compiled.checkpoint_state()["model"]
    assert state.keys() == plain.model.state_dict().keys()  # no "_orig_mod." prefix
    for name, value in plain.model.state_dict().items():
        assert torch.allclose(state[name].float(), value.float(), atol=1e-5), name
    with pytest.raises(ImgrecError, match="trainer.compile='yes' must be true, false or a dict"):
        make_trainer(compile="yes")


def test_a_step_the_grad_scaler_skips_moves_neither_schedule_nor_ema():
    trainer = make_trainer(ema_decay=0.5, max_bad_steps=None)  # the scaler alone decides here
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)  # what 16-mixed builds on CUDA
    images, labels = images_and_labels()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    scheduler_steps, ema_updates = trainer.scheduler.last_epoch, trainer.ema.n_averaged.item()
    bad = images.clone()
    bad[0, 0, 0, 0] = float("inf")  # inf activations -> inf/NaN gradients -> the scaler skips the step
    trainer.train_step(bad, labels)
    assert all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))
    assert trainer.scheduler.last_epoch == scheduler_steps and trainer.ema.n_averaged.item() == ema_updates
    assert trainer.scaler.get_scale() == 2.0  # backed off
    trainer.train_step(images, labels)  # a finite batch steps normally
    assert trainer.scheduler.last_epoch == scheduler_steps + 1 and trainer.ema.n_averaged.item() == ema_updates + 1
    assert not all(torch.equal(p, b) for p, b in zip(trainer.model.parameters(), before))
    assert "grad_scaler" in trainer.checkpoint_state()


def test_mixup_in_the_loop_is_reproducible_and_counts_accuracy_against_the_larger_share():
    class Batches(list):  # what the loop needs of a loader
        num_samples, batch_size = 16, 8

        def set_epoch(self, epoch, skip=0):
            pass

    images, labels = images_and_labels()
    runs, hits = [], []
    for _ in range(2):
        trainer = make_trainer(mixup={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5})
        step = trainer.train_step
        hits = []

        def recording_step(batch, targets, update=True, step=step, hits=hits):
            loss, logits = step(batch, targets, update=update)
            # a mixed batch's label is the class with the larger share of each image
            hits.append((logits.argmax(dim=1) == targets.argmax(dim=1)).sum().item())
            return loss, logits

        trainer.train_step = recording_step
        torch.manual_seed(5)
        runs.append(trainer.train_epoch(Batches([(images, labels), (images, labels)])))
    assert runs[0] == runs[1]
    assert runs[0]["train/acc"] == sum(hits) / (2 * len(labels))
