"""Attribution maps drawn over their images, and imgrec-eval's error grid with Grad-CAM beside each image."""

import numpy as np
import torch

COLOUR_MAP = "jet"  # the usual Grad-CAM colours: blue (little) to red (most)


def heat(attribution_map: torch.Tensor) -> np.ndarray:
    """The positive part of a map in [0, 1], scaled by its 99th percentile so that one extreme pixel (common
    in integrated gradients) does not leave the rest of the map dark."""
    positive = attribution_map.clamp(min=0).numpy().astype(np.float64)
    if not (positive > 0).any():
        return np.zeros_like(positive)
    return np.clip(positive / max(np.quantile(positive[positive > 0], 0.99), 1e-12), 0.0, 1.0)


def overlay(image: np.ndarray, attribution_map: torch.Tensor, alpha: float) -> np.ndarray:
    """uint8 RGB (3, H, W): `image` (uint8 (C, H, W), grey or colour) with the map's colour laid over it in
    proportion to the map, so that where the map is zero the image shows unchanged."""
    from matplotlib import colormaps

    rgb = image.astype(np.float64)
    if rgb.shape[0] == 1:
        rgb = rgb.repeat(3, axis=0)
    level = heat(attribution_map)
    colours = colormaps[COLOUR_MAP](level)[..., :3].transpose(2, 0, 1) * 255.0
    weight = alpha * level[None]
    return ((1 - weight) * rgb + weight * colours).round().clip(0, 255).astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    return image.repeat(3, axis=0) if image.shape[0] == 1 else image[:3]


def with_gradcam(figure, trained, device: torch.device, threshold: dict | None = None, alpha: float = 0.5):
    """imgrec-eval's confident_errors grid with each image followed by its Grad-CAM for the class it was
    (wrongly) predicted as, on the automatic layer: twice the columns, the same rows."""
    from imgrec.explain.attributions import attribution
    from imgrec.explain.layers import automatic_layer
    from imgrec.robustness.attacks import PixelModel
    from imgrec.tasks.base import ImageGridFigure

    if not len(figure.images):
        return figure
    model = PixelModel(trained.model, trained.mean, trained.std).to(device).eval()
    pixels = torch.from_numpy(figure.images).float().div(255).to(device)
    layer = automatic_layer(trained.model, (pixels[:1] - model.mean) / model.std, per_pixel=False)
    with torch.no_grad():
        probabilities = model(pixels).float().softmax(dim=1)
    # the class each caption names: the more probable one, or the binary threshold's decision
    predicted = probabilities.argmax(dim=1) if threshold is None else \
        (probabilities[:, 1] >= threshold["threshold"]).long()
    tiles, captions = [], []
    for index, image in enumerate(figure.images):
        found = attribution("gradcam", model, pixels[index:index + 1], int(predicted[index]), layer.module)
        tiles += [as_rgb(image), overlay(image, found, alpha)]
        captions += [figure.captions[index], f"Grad-CAM\n{trained.class_names[int(predicted[index])]}"]
    return ImageGridFigure(figure.tag, np.stack(tiles), captions, f"{figure.title}; Grad-CAM of the predicted class "
                           f"at {layer.name}", figure.max_side, figure.columns * 2)
