"""Each bad input fails before training with a message that names the value and the fix."""

import re

import pytest
import torch
from hydra.errors import MissingConfigException

from imgrec.errors import ImgrecError
from imgrec.train import train


def assert_nothing_trained(run_dir):
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "tensorboard").exists()


def test_unknown_config_choice_lists_the_available_ones(compose_cfg):
    with pytest.raises(MissingConfigException) as error:
        compose_cfg("model=resnet_9000")
    assert "resnet_9000" in str(error.value) and "small_cnn" in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a whole number >= 1"),
        ("trainer.device=tpu", "trainer.device='tpu' is not"),
        ("callbacks.early_stopping.monitor=val/accuracy",
         "callbacks.early_stopping.monitor='val/accuracy' is not a logged metric; choose one of: train/loss"),
        ("optimized_metric=val/f1", "optimized_metric='val/f1' is not a logged metric"),
        ("optimized_mode=maximize", "optimized_mode='maximize' must be 'min' or 'max'"),
        ("dataset.normalize=zscore", "dataset.normalize='zscore' is not one of"),
        ("model.activation=swish", "model.activation='swish' is not one of"),
        ("augment.backend=opencv", "augment.backend='opencv' must be one of batch, albumentations, torchvision"),
        ("model.padding=0", "model=SmallCNN cannot take 16x16 images with 3 channel(s)"),
        ("trainer.mixup.mixup_alpha=-1", "trainer.mixup.mixup_alpha=-1 must be >= 0"),
        ("trainer.precision=64", "trainer.precision=64 is not one of 32, bf16-mixed, 16-mixed"),
        ("trainer.compile=maybe", "trainer.compile='maybe' must be true, false or a dict"),
        ("trainer.num_threads=0", "trainer.num_threads=0 must be auto or a whole number >= 1"),
        ("model.hidden=???", "model.hidden must be set: the config leaves it to you (???); add model.hidden=..."),
    ],
)
def test_bad_value_raises_its_message_before_training(compose_cfg, tmp_path, override, message):
    with pytest.raises(ImgrecError, match=re.escape(message)):
        train(compose_cfg("dataset=fake", override))
    assert_nothing_trained(tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match="trainer.device=cuda but this machine has no usable CUDA GPU"):
        train(compose_cfg("dataset=fake", "trainer.device=cuda"))
    assert_nothing_trained(tmp_path / "run")


def test_missing_ckpt_path(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match=r"ckpt_path '.*missing.pt' does not exist"):
        train(compose_cfg("dataset=fake", f"ckpt_path={tmp_path}/missing.pt"))
    assert_nothing_trained(tmp_path / "run")


def test_ckpt_path_that_is_not_an_imgrec_checkpoint(compose_cfg, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ImgrecError, match="is not an imgrec checkpoint"):
        train(compose_cfg("dataset=fake", f"ckpt_path={tmp_path}/foreign.pt"))
    assert_nothing_trained(tmp_path / "run")


def test_resume_with_other_classes_is_refused(compose_cfg, tmp_path):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "four"))
    last = tmp_path / "four" / "checkpoints" / "last.pt"
    with pytest.raises(ImgrecError, match=r"was trained on classes \['class_0'.*but dataset has"):
        train(compose_cfg("dataset=fake", "dataset.num_classes=3", f"ckpt_path={last}", run_dir=tmp_path / "three"))


def test_a_fresh_run_never_overwrites_another_runs_checkpoints(compose_cfg, tmp_path):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "same"))
    before = (tmp_path / "same" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ImgrecError, match="already exists and this is not a resume; pass ckpt_path="):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=1", run_dir=tmp_path / "same"))
    assert (tmp_path / "same" / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_with_another_model_or_optimizer_is_refused_with_the_original_settings(compose_cfg, tmp_path):
    run_dir = tmp_path / "sgd_run"
    train(compose_cfg("dataset=fake", "optimizer=sgd", "trainer.max_epochs=1", "test=false", run_dir=run_dir))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- dataset=fake\n- optimizer=sgd\n")
    last = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(ImgrecError, match=r"optimizer._target_=torch.optim.SGD but this run has "
                                          r"optimizer._target_=torch.optim.Adam.*started with: dataset=fake optimizer=sgd"):
        train(compose_cfg("dataset=fake", f"ckpt_path={last}", run_dir=tmp_path / "adam"))
    with pytest.raises(ImgrecError, match=r"was trained with model.widths=\[32, 64, 128\] but this run has model.widths=\[8, 8\]"):
        train(compose_cfg("dataset=fake", "optimizer=sgd", "model.widths=[8,8]", f"ckpt_path={last}", run_dir=tmp_path / "w"))


def test_resume_warns_that_the_checkpoint_learning_rate_wins(compose_cfg, tmp_path, caplog):
    run_dir = tmp_path / "first"
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=run_dir))
    resumed = train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "optimizer.lr=0.5", "test=false",
                                f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}", run_dir=tmp_path / "second"))
    assert "optimizer.lr=0.5 differs from the checkpoint's 0.003" in caplog.text
    assert resumed["metrics"]["train/lr"] != 0.5
