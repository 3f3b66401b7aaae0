"""Mixed precision: which autocast dtype a `trainer.precision` means on a device, and whether it needs a GradScaler."""

import logging

import torch

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


def autocast_dtype(precision, device: torch.device, warn: bool = True) -> torch.dtype | None:
    """The dtype to autocast forward passes to, or None for plain float32; errors name what works instead."""
    name = str(precision)
    if name not in PRECISIONS:
        raise ImgrecError(f"trainer.precision={precision!r} is not one of 32, bf16-mixed, 16-mixed")
    dtype = PRECISIONS[name]
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
