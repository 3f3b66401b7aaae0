"""Per-pixel predictions of images of any size: whole, resized to what the model was trained on, or in
overlapping tiles of the training size blended together (images larger than the model saw)."""

import torch
import torch.nn.functional as F


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets along one side: every `stride` pixels, the last flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def blend_window(tile: int, device: torch.device) -> torch.Tensor:
    """(tile, tile) weights rising linearly from the edges to the centre (never 0), so that where tiles
    overlap, each pixel leans on the tile that sees the most context around it."""
    ramp = torch.minimum(torch.arange(tile, device=device) + 1, torch.arange(tile, 0, -1, device=device)).float()
    ramp = ramp / ramp.max()
    return ramp[:, None] * ramp[None, :]


@torch.inference_mode()
def tiled_logits(forward, images: torch.Tensor, tile: int, overlap: float = 0.25) -> torch.Tensor:
    """(N, K, H, W) logits of (N, C, H, W) images from tile x tile crops at `overlap` (0..0.9), blended;
    images no larger than a tile go through whole."""
    _, _, height, width = images.shape
    if height <= tile and width <= tile:
        return forward(images).float()
    stride = max(1, int(tile * (1 - overlap)))
    window = blend_window(tile, images.device)
    total, weight = None, torch.zeros(height, width, device=images.device)
    for top in tile_starts(height, tile, stride):
        for left in tile_starts(width, tile, stride):
            crop = images[..., top:top + tile, left:left + tile]
            logits = forward(crop).float()
            here = window[: crop.shape[-2], : crop.shape[-1]]
            if total is None:
                total = torch.zeros(images.shape[0], logits.shape[1], height, width, device=images.device)
            total[..., top:top + tile, left:left + tile] += logits * here
            weight[top:top + tile, left:left + tile] += here
    return total / weight


@torch.inference_mode()
def full_size_logits(forward, images: torch.Tensor, model_size: int | None, tile: int | None, overlap: float,
                     flip: bool = False) -> torch.Tensor:
    """Logits at the images' own size: in tiles of `tile` when given, else resized to `model_size` (what
    the model was trained on) and the logits resized back. `flip` averages with the mirrored image's."""
    def once(batch):
        if tile is not None:
            return tiled_logits(forward, batch, tile, overlap)
        if model_size is None or tuple(batch.shape[-2:]) == (model_size, model_size):
            return forward(batch).float()
        small = F.interpolate(batch, size=(model_size, model_size), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(forward(small).float(), size=batch.shape[-2:], mode="bilinear", align_corners=False)

    logits = once(images)
    if flip:
        logits = (logits + once(images.flip(-1)).flip(-1)) / 2
    return logits
