"""Where and how tensors are computed, for training and inference alike: the device, CPU threads, mixed
precision (the autocast dtype, and whether it needs a GradScaler) and torch.compile."""

import logging
from collections.abc import Mapping

import torch
from torch import nn

from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")

# the names Lightning users already type; "16"/"bf16" alone are accepted too
PRECISIONS = {"32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "16": torch.float16, "16-mixed": torch.float16}


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them CPU bf16 is emulated and usually slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision) -> None:
    if str(precision) not in PRECISIONS:
        raise ImgrecError(f"trainer.precision={precision!r} is not one of 32, bf16-mixed, 16-mixed")


def check_compile(settings) -> None:
    if settings not in (True, False, None) and not isinstance(settings, Mapping):
        raise ImgrecError(f"trainer.compile={settings!r} must be true, false or a dict of torch.compile arguments, "
                          "e.g. {mode: max-autotune}")


def autocast_dtype(precision, device: torch.device, warn: bool = True) -> torch.dtype | None:
    """The dtype to autocast forward passes to, or None for plain float32; errors name what works instead."""
    check_precision(precision)
    dtype = PRECISIONS[str(precision)]
    if dtype is torch.float16 and device.type != "cuda":
        raise ImgrecError(
            f"trainer.precision={precision} (float16) needs a CUDA GPU and this run is on {device}; "
            "use trainer.precision=bf16-mixed on a CPU, or 32"
        )
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ImgrecError(
            f"trainer.precision={precision} but {torch.cuda.get_device_name(device)} has no bfloat16 support; "
            "use trainer.precision=16-mixed"
        )
    if warn and dtype is torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("trainer.precision=bf16-mixed on a CPU without native bfloat16 (AVX512-BF16/AMX): it runs "
                    "emulated and is usually slower than trainer.precision=32")
    return dtype


def make_grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none."""
    return torch.amp.GradScaler(device.type) if dtype is torch.float16 else None


def resolve_device(device: str, setting: str = "trainer.device") -> torch.device:
    """`auto` -> CUDA when present, else CPU; an explicit CUDA request without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ImgrecError(f"{setting}={device!r} is not a device; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ImgrecError(
                f"{setting}={device} but this machine has no usable CUDA GPU "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use {setting}=cpu or auto"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ImgrecError(
                f"{setting}={device} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif resolved.type != "cpu":
        raise ImgrecError(f"{setting}={device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return resolved


def compiled(model: nn.Module, settings: bool | dict) -> nn.Module:
    """`model` through torch.compile when `settings` is true or a dict of torch.compile arguments.
    The compiled wrapper shares the model's parameters; checkpoints save the plain model's state dict."""
    check_compile(settings)
    if settings is False or settings is None:
        return model
    if settings is True:
        settings = {}
    return torch.compile(model, **dict(settings))


def set_cpu_threads(setting, name: str = "trainer.num_threads") -> int:
    """trainer.num_threads: a whole number sets torch's intra-op threads; auto keeps torch's choice, which
    follows OMP_NUM_THREADS (set per job by the parallel launcher, by SLURM or by the user)."""
    check_num_threads(setting, name)
    if setting != "auto":
        torch.set_num_threads(setting)
    return torch.get_num_threads()


def check_num_threads(setting, name: str = "trainer.num_threads") -> None:
    if setting != "auto" and (not isinstance(setting, int) or isinstance(setting, bool) or setting < 1):
        raise ImgrecError(f"{name}={setting!r} must be auto or a whole number >= 1")
