"""U-Net (Ronneberger et al., 2015) with every design choice a parameter: depth, base width, batch norm,
dropout at the bottom, and up-sampling by transposed convolution or bilinear interpolation."""

import torch
import torch.nn.functional as F
from torch import nn

from imgrec.errors import ImgrecError

UPSAMPLING = ("bilinear", "transposed")


def double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Up(nn.Module):
    """Up-sample the deeper map by 2, join the skip connection of the same size, two convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, mode: str, batch_norm: bool):
        super().__init__()
        if mode == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
            joined = in_channels // 2 + skip_channels
        else:  # bilinear, then the convolutions mix channels: no checkerboard artefacts
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            joined = in_channels + skip_channels
        self.conv = double_conv(joined, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """`depth` down-sampling stages (widths base_width * 2^k), a bottom, and as many up stages, then a 1x1
    convolution to `num_classes` logits per pixel, at the input's size: sides that are not multiples of
    2^depth are padded (reflected) on the way in and the logits cropped back on the way out."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 4, base_width: int = 32,
                 batch_norm: bool = True, dropout: float = 0.0, upsampling: str = "bilinear"):
        super().__init__()
        for name, value, low in (("depth", depth, 1), ("base_width", base_width, 1), ("num_classes", num_classes, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ImgrecError(f"model.{name}={value!r} must be a whole number >= {low}")
        if depth > 7:
            raise ImgrecError(f"model.depth={depth} is more than 7 stages (an image side of {2 ** depth} px at least)")
        if upsampling not in UPSAMPLING:
            raise ImgrecError(f"model.upsampling={upsampling!r} must be one of {', '.join(UPSAMPLING)}")
        if not 0.0 <= dropout < 1.0:
            raise ImgrecError(f"model.dropout={dropout} must be in [0, 1)")
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.multiple = 2**depth
        self.inc = double_conv(in_channels, widths[0], batch_norm)
        self.downs = nn.ModuleList(double_conv(widths[i], widths[i + 1], batch_norm) for i in range(depth))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], upsampling, batch_norm)
                                 for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        # always padded (by nothing when the size fits), so a graph traced at one size holds the padding
        # every other size needs (ONNX exports with dynamic height and width); replicate works at any size
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = self.dropout(skips.pop())
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)[..., :height, :width]
