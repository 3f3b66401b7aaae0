"""The classic conv -> pool -> fully-connected image classifier, with every design choice a parameter."""

from collections.abc import Sequence

import torch
from torch import nn

from imgrec.errors import ImgrecError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ImgrecError(f"model.activation={name!r} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class SmallCNN(nn.Module):
    """Stages of `convs_per_stage` convolutions (+ batch norm + activation), each followed by a 2x2 pool;
    `stride` > 1 shrinks the map at each stage's first convolution as well. Then global average pooling and `hidden` fully-connected layers with dropout before each."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 2,  # configs/model/small_cnn.yaml says 1; 2 rebuilds checkpoints whose config predates the key
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | str = "same",
        activation: str = "relu",
        pool: str = "max",
        batch_norm: bool = True,
        hidden: Sequence[int] = (128,),
        dropout: float = 0.25,
        head_pool_size: int = 1,
    ):
        super().__init__()
        for name, sizes in (("widths", widths), ("hidden", hidden)):
            if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not all(
                    isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in sizes):
                raise ImgrecError(f"model.{name}={sizes!r} must be a list of whole numbers >= 1, e.g. model.{name}=[32,64]")
        for name, value in (("convs_per_stage", convs_per_stage), ("kernel_size", kernel_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ImgrecError(f"model.{name}={value!r} must be a whole number >= 1")
        if pool not in POOLS:
            raise ImgrecError(f"model.pool={pool!r} is not one of {', '.join(POOLS)}")
        if not widths or convs_per_stage < 1:
            raise ImgrecError(f"model.widths={list(widths)} and model.convs_per_stage={convs_per_stage} must be non-empty / >= 1")
        if not isinstance(head_pool_size, int) or head_pool_size < 1:
            raise ImgrecError(f"model.head_pool_size={head_pool_size!r} must be a whole number >= 1 (1: global average)")
        if not 0.0 <= dropout < 1.0:
            raise ImgrecError(f"model.dropout={dropout} must be in [0, 1)")
        if not isinstance(stride, int) or stride < 1:
            raise ImgrecError(f"model.stride={stride!r} must be a whole number >= 1")
        if padding == "same":
            padding = kernel_size // 2  # keeps the size at stride 1 (odd kernels)
        elif not isinstance(padding, int) or padding < 0:
            raise ImgrecError(f"model.padding={padding!r} must be 'same' or a whole number >= 0")
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            for conv in range(convs_per_stage):
                # only a stage's first convolution strides; with stride 1 and 'same' padding the pool alone halves the size
                layers.append(nn.Conv2d(
                    channels, width, kernel_size, stride=stride if conv == 0 else 1, padding=padding, bias=not batch_norm
                ))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(make_activation(activation))
                channels = width
            # ceil_mode lets a 3x3 or 1x1 map still be pooled instead of vanishing
            layers.append(POOLS[pool](2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        # 1: global average pooling; k > 1 keeps a k x k grid of where features are (more parameters)
        head: list[nn.Module] = [HeadPool(head_pool_size), nn.Flatten()]
        channels *= head_pool_size * head_pool_size
        for size in hidden:
            head += [nn.Dropout(dropout), nn.Linear(channels, size), make_activation(activation)]
            channels = size
        head += [nn.Dropout(dropout), nn.Linear(channels, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class HeadPool(nn.AdaptiveAvgPool2d):
    """Average-pools the last map to k x k, and leaves a map that is already k x k alone: pooling 7x7 to 7x7
    changes nothing but cost 3-4% of a Fashion-MNIST training step (its backward pass) on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a trace (TorchScript export) records the pool: a size test would be frozen into it as a constant
        if not torch.jit.is_tracing() and x.shape[-2] == x.shape[-1] == self.output_size:
            return x
        return super().forward(x)
