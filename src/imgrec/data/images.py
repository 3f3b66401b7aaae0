"""Decoding one image file into a uint8 (C, H, W) tensor, with every failure named."""

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")


class BadImage(Exception):
    """An image file that cannot be used; the message says why."""


def _to_uint8_array(image) -> np.ndarray:
    """Pixels as uint8, scaling 16- and 32-bit integer images by their range instead of clipping them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image)
        # 16-bit files arrive as I;16 or as I (32-bit) holding 0..65535; both map 65535 -> 255
        top = 65535.0 if pixels.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
        return np.clip(np.round(pixels.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(initial=0.0), pixels.max(initial=1.0)
        return np.round((pixels - low) * (255.0 / max(high - low, 1e-12))).astype(np.uint8)
    return np.asarray(image)


def to_channels(image, channels: int):
    """Convert any Pillow mode to L (channels=1) or RGB (channels=3); alpha is composited on white."""
    from PIL import Image

    if image.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode.startswith("I") or image.mode == "F":
        image = Image.fromarray(_to_uint8_array(image), mode="L")
    return image.convert("L" if channels == 1 else "RGB")


def _resize_and_center_crop(image, size: int):
    """Shorter side to `size` (keeping the aspect ratio), then the central size x size square."""
    from PIL import Image

    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.BILINEAR)
        left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


@contextmanager
def load_pil(path: str | Path):
    """The decoded Pillow image of `path` (the with-block's value), or BadImage naming why it cannot be
    read; the same checks as decode_image, for callers that need the image at its own size."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Pillow only warns between its limit and 2x its limit: treat the warning as the error it is
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()  # decode now, inside the try: truncation shows up here, not later
    except BadImage:
        raise
    except FileNotFoundError as error:
        raise BadImage("the file does not exist") from error
    except UnidentifiedImageError as error:
        raise BadImage("not an image Pillow can read (wrong extension or not an image file)") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"larger than Pillow's decompression-bomb limit ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise BadImage(f"cannot be decoded: {error}") from error
    try:
        yield image
    finally:
        image.close()


def decode_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """Read `path` as a uint8 (channels, size, size) tensor or raise BadImage naming the reason."""
    with load_pil(path) as image:
        try:
            pixels = np.asarray(_resize_and_center_crop(to_channels(image, channels), size), dtype=np.uint8)
        except (OSError, ValueError) as error:  # an odd mode or depth Pillow cannot convert
            raise BadImage(f"cannot be decoded: {error}") from error
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_colour(path: str | Path) -> bool | None:
    """Whether an image file holds colour (None when it cannot be read): a grey mode, a grey palette, or
    RGB whose three channels are equal (grey scans saved as RGB) count as grey."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in GREY_MODES:
                return False
            if image.mode in ("P", "PA"):
                palette = image.getpalette() or []
                triples = [palette[i : i + 3] for i in range(0, len(palette) - 2, 3)]
                return any(len(set(t)) > 1 for t in triples[: 256])
            pixels = np.asarray(image.convert("RGB").reduce(4) if min(image.size) >= 64 else image.convert("RGB"))
            return bool((pixels[..., 0] != pixels[..., 1]).any() or (pixels[..., 1] != pixels[..., 2]).any())
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def detect_channels(paths: list, sample: int = 64) -> int:
    """3 when any of up to `sample` files spread over `paths` holds colour, else 1."""
    if not paths:
        return 3
    step = max(1, len(paths) // sample)
    return 3 if any(is_colour(path) for path in paths[::step][:sample]) else 1
