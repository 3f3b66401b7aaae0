"""The common corruptions: shapes and range kept, harm growing with severity, reproducible, bad names named."""

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.robustness.corruptions import CORRUPTIONS, corrupt, corruption_errors


def images(channels: int, size: int = 28) -> np.ndarray:
    """Waves with a fixed fine texture (blur and pixelation show on both), in [0.1, 0.9]."""
    y, x = np.mgrid[0:size, 0:size] / size
    texture = np.random.default_rng(7).normal(0, 0.05, (size, size))
    picture = np.clip(0.5 + 0.3 * np.sin(8 * x) * np.cos(6 * y) + texture, 0.1, 0.9)
    stack = np.stack([picture * (0.7 + 0.1 * index) for index in range(4)])
    return np.repeat(stack[:, None], channels, axis=1).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_keeps_the_images_and_hurts_more_with_severity(name, channels):
    clean = images(channels)
    harm = []
    for severity in (1, 3, 5):
        out = corrupt(clean, name, severity, np.random.default_rng(0))
        assert out.shape == clean.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
        harm.append(float(np.abs(out - clean).mean()))
    assert harm[0] > 0 and harm[0] < harm[1] < harm[2], harm  # severity 5 changes more than 3, 3 more than 1
    again = corrupt(clean, name, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(again, corrupt(clean, name, 3, np.random.default_rng(0)))


def test_blur_and_pixelation_scale_with_the_image():
    """A 64 px image blurred like a 32 px one would be blurred twice as far, in pixels."""
    small, large = images(1, 32), images(1, 64)
    small_harm = np.abs(corrupt(small, "gaussian_blur", 5, np.random.default_rng(0)) - small).mean()
    large_harm = np.abs(corrupt(large, "gaussian_blur", 5, np.random.default_rng(0)) - large).mean()
    assert large_harm == pytest.approx(small_harm, rel=0.35)


@pytest.mark.parametrize("name, severity, message", [
    ("fog", 1, r"corruption 'fog' is not one of gaussian_noise, shot_noise"),
    ("contrast", 6, r"corruption severity=6 must be 1, 2, 3, 4 or 5"),
    ("contrast", True, r"corruption severity=True must be 1"),
])
def test_bad_corruptions_are_named(name, severity, message):
    with pytest.raises(ImgrecError, match=message):
        corrupt(images(1), name, severity, np.random.default_rng(0))


def test_corruption_errors_average_over_severities_then_corruptions():
    errors = corruption_errors(0.9, {"contrast": {1: 0.8, 5: 0.6}, "pixelate": {1: 0.9, 5: 0.7}})
    assert errors["corruption_error"] == pytest.approx({"contrast": 0.3, "pixelate": 0.2})
    assert errors["mean_corruption_error"] == pytest.approx(0.25)
    assert errors["relative_mean_corruption_error"] == pytest.approx(0.15)
    assert errors["mean_corruption_accuracy"] == pytest.approx(0.75)
