"""Common corruptions at severities 1-5, after the ImageNet-C protocol (Hendrycks and Dietterich, 2019):
Gaussian noise, shot noise, Gaussian blur, motion blur, contrast, brightness, JPEG compression and
pixelation, on [0, 1] float images (N, C, H, W).

The parameters are the CIFAR-10-C ones (made for 32 px images); blur and pixelation sizes scale with the
image's side relative to 32 px, so a 28 px Fashion-MNIST image and a 224 px photo are hurt alike. Random
corruptions draw from the generator given, so a report is reproducible.
"""

import io

import numpy as np

from imgrec.errors import ImgrecError

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation, in [0, 1] pixels
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit of intensity: fewer is noisier
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma in pixels at 32 px
MOTION_BLUR = (1.0, 1.5, 2.0, 2.5, 3.0)  # length of the streak's Gaussian profile (sigma) at 32 px
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # distance from the mean kept
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to the value (HSV V; grey level for grey images)
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # the side kept before enlarging back


def _scale(images: np.ndarray) -> float:
    return images.shape[-1] / 32.0


def gaussian_noise(images, severity, rng):
    return images + rng.normal(0.0, GAUSSIAN_NOISE[severity - 1], images.shape)


def shot_noise(images, severity, rng):
    photons = SHOT_NOISE[severity - 1]
    return rng.poisson(images * photons) / photons


def gaussian_blur(images, severity, rng):
    from scipy.ndimage import gaussian_filter

    sigma = GAUSSIAN_BLUR[severity - 1] * _scale(images)
    return gaussian_filter(images, sigma=(0, 0, sigma, sigma), mode="nearest")


def motion_blur(images, severity, rng):
    """A streak at a random angle per image: a 1-D Gaussian profile along a line, convolved."""
    from scipy.ndimage import convolve

    sigma = MOTION_BLUR[severity - 1] * _scale(images)
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    out = np.empty_like(images)
    for index, angle in enumerate(rng.uniform(-np.pi / 4, np.pi / 4, len(images))):
        kernel = np.zeros((2 * radius + 1, 2 * radius + 1))
        rows = np.round(radius + offsets * np.sin(angle)).astype(int)
        columns = np.round(radius + offsets * np.cos(angle)).astype(int)
        np.add.at(kernel, (rows, columns), weights)
        kernel /= kernel.sum()
        for channel in range(images.shape[1]):
            out[index, channel] = convolve(images[index, channel], kernel, mode="nearest")
    return out


def contrast(images, severity, rng):
    means = images.mean(axis=(1, 2, 3), keepdims=True)
    return (images - means) * CONTRAST[severity - 1] + means


def brightness(images, severity, rng):
    amount = BRIGHTNESS[severity - 1]
    if images.shape[1] == 1:
        return images + amount
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(images.transpose(0, 2, 3, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + amount, 0, 1)
    return hsv2rgb(hsv).transpose(0, 3, 1, 2)


def jpeg_compression(images, severity, rng):
    from PIL import Image

    quality = JPEG_QUALITY[severity - 1]
    out = np.empty_like(images)
    for index, image in enumerate(images):
        pixels = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.float64) / 255.0
        out[index] = decoded.reshape(pixels.shape).transpose(2, 0, 1)
    return out


def pixelate(images, severity, rng):
    from PIL import Image

    height, width = images.shape[2:]
    small = (max(1, int(width * PIXELATE[severity - 1])), max(1, int(height * PIXELATE[severity - 1])))
    out = np.empty_like(images)
    for index, image in enumerate(images):
        for channel, plane in enumerate(image):
            picture = Image.fromarray(plane.astype(np.float32), mode="F")
            out[index, channel] = np.asarray(picture.resize(small, Image.Resampling.BOX)
                                             .resize((width, height), Image.Resampling.BOX))
    return out


CORRUPTIONS = {function.__name__: function for function in (
    gaussian_noise, shot_noise, gaussian_blur, motion_blur, contrast, brightness, jpeg_compression, pixelate)}


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """`images` (N, C, H, W) in [0, 1] under corruption `name` at `severity` (1-5), clipped to [0, 1], float32."""
    if name not in CORRUPTIONS:
        raise ImgrecError(f"corruption {name!r} is not one of {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in (1, 2, 3, 4, 5):
        raise ImgrecError(f"corruption severity={severity!r} must be 1, 2, 3, 4 or 5")
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ImgrecError(f"corruptions take (N, 1 or 3, H, W) images; got shape {list(images.shape)}")
    return np.clip(CORRUPTIONS[name](images, severity, rng), 0.0, 1.0).astype(np.float32)


def corruption_errors(clean_accuracy: float, accuracies: dict[str, dict[int, float]]) -> dict:
    """Each corruption's mean error over its severities, and their mean (mCE, unnormalised: there is no
    AlexNet here to divide by), and the same relative to the clean error (how much the corruption adds)."""
    clean_error = 1.0 - clean_accuracy
    per_corruption = {name: float(np.mean([1.0 - accuracy for accuracy in by_severity.values()]))
                      for name, by_severity in accuracies.items()}
    mean_error = float(np.mean(list(per_corruption.values())))
    return {"clean_error": clean_error, "corruption_error": per_corruption, "mean_corruption_error": mean_error,
            "relative_mean_corruption_error": mean_error - clean_error,
            "mean_corruption_accuracy": 1.0 - mean_error}
