import numpy as np
import pytest
import torch
from PIL import Image

from imgrec.data.images import BadImage, decode_image


def save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    tensor = decode_image(save(tmp_path, "a.png", Image.fromarray(pixels)), channels=3, size=8)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 8, 8)
    assert torch.equal(tensor, torch.from_numpy(pixels).permute(2, 0, 1))


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = save(tmp_path, "deep.png", Image.fromarray(pixels))
    tensor = decode_image(path, channels=1, size=4)
    assert tensor[0, 0].tolist() == [0, 1, 128, 255]  # x * 255 / 65535, rounded


def test_rgba_alpha_is_composited_on_white(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red 200, fully transparent on the left half, opaque on the right
    pixels[:, 2:, 3] = 255
    tensor = decode_image(save(tmp_path, "alpha.png", Image.fromarray(pixels, mode="RGBA")), channels=3, size=4)
    assert tensor[:, 0, 0].tolist() == [255, 255, 255]
    assert tensor[:, 0, 3].tolist() == [200, 0, 0]


def test_palette_and_grayscale_convert_to_the_asked_channels(tmp_path):
    palette_image = Image.fromarray(np.full((4, 4, 3), (10, 20, 30), dtype=np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    rgb = decode_image(save(tmp_path, "p.png", palette_image), channels=3, size=4)
    assert rgb[:, 0, 0].tolist() == [10, 20, 30]
    gray = decode_image(save(tmp_path, "g.png", Image.fromarray(np.full((4, 4), 77, dtype=np.uint8))), channels=3, size=4)
    assert gray[:, 1, 1].tolist() == [77, 77, 77]
    assert decode_image(tmp_path / "p.png", channels=1, size=4).shape == (1, 4, 4)


def test_resize_keeps_aspect_by_cropping_the_centre(tmp_path):
    pixels = np.zeros((10, 30), dtype=np.uint8)
    pixels[:, 10:20] = 255  # a white centre third
    tensor = decode_image(save(tmp_path, "wide.png", Image.fromarray(pixels)), channels=1, size=10)
    assert tensor.shape == (1, 10, 10) and tensor.min() == 255  # only the centre survives the crop


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "the file is empty"),
        ("notes.jpg", b"this is a text file, not a JPEG", "not an image Pillow can read"),
    ],
)
def test_unusable_files_say_why(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        decode_image(tmp_path / name, channels=3, size=8)


def test_truncated_image_is_refused(tmp_path):
    path = save(tmp_path, "full.png", Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    (tmp_path / "cut.png").write_bytes(path.read_bytes()[:400])
    with pytest.raises(BadImage, match="cannot be decoded"):
        decode_image(tmp_path / "cut.png", channels=3, size=8)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path, "big.png", Image.new("L", (64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 + 1)  # warning zone: between 1x and 2x the limit
    with pytest.raises(BadImage, match="decompression-bomb"):
        decode_image(path, channels=1, size=8)
