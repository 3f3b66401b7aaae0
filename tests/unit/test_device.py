import re

import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.runtime import resolve_device
from imgrec.training.settings import TrainerSettings


def test_auto_picks_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ImgrecError, match="trainer.device=cuda but this machine has no usable CUDA GPU.*use trainer.device=cpu"):
        resolve_device("cuda")


def test_unknown_device_is_named():
    with pytest.raises(ImgrecError, match="trainer.device='gpu0' is not a device"):
        resolve_device("gpu0")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_epochs": 0}, "trainer.max_epochs=0 must be a whole number >= 1"),
        ({"batch_size": 2.5}, "trainer.batch_size=2.5 must be"),
        ({"limit_batches": 0}, "trainer.limit_batches=0 must be null"),
        ({"progress": "yes"}, "trainer.progress='yes' must be auto, true or false"),
        ({"max_bad_steps": 0}, "trainer.max_bad_steps=0 must be null (no check) or a whole number >= 1"),
        ({"ema_decay": 1.5}, "trainer.ema_decay=1.5 must be null or between 0 and 1"),
        ({"grad_clip_norm": -1.0}, "trainer.grad_clip_norm=-1.0 must be null or a number > 0"),
        ({"accumulate_batches": 0}, "trainer.accumulate_batches=0 must be a whole number >= 1"),
        ({"channels_last": "yes"}, "trainer.channels_last='yes' must be true or false"),
    ],
)
def test_bad_trainer_settings_are_named(kwargs, message):
    with pytest.raises(ImgrecError, match=re.escape(message)):
        TrainerSettings(**kwargs)
