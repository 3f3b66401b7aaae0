"""Attribution maps of one class score, at the input's height and width, and where their mass lies.

Grad-CAM and integrated gradients are Captum's (LayerGradCam, IntegratedGradients). Captum has no
Grad-CAM++, so it is written here on the same layer-gradient utility LayerGradCam itself calls
(captum._utils.gradient.compute_layer_gradients_and_eval): only the channel weights differ.
"""

import torch
from torch import nn

from imgrec.errors import ImgrecError

METHODS = ("gradcam", "gradcam_pp", "integrated_gradients")
LAYER_METHODS = ("gradcam", "gradcam_pp")  # the ones that read a layer
BASELINES = ("black", "mean")


def _to_input_size(layer_map: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerAttribution

    return LayerAttribution.interpolate(layer_map, tuple(pixels.shape[-2:]), interpolate_mode="bilinear")[:, 0]


def gradcam(scores: nn.Module, layer: nn.Module, pixels: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., 2017): the layer's channels weighted by their mean gradient, ReLU."""
    from captum.attr import LayerGradCam

    layer_map = LayerGradCam(scores, layer).attribute(pixels, target=target, relu_attributions=True)
    return _to_input_size(layer_map, pixels)


def gradcam_pp(scores: nn.Module, layer: nn.Module, pixels: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., 2018): each channel weighted by its positive gradients, every
    location's share set by the closed form for an exponential score, so that several separate regions
    of a class each count (Grad-CAM's mean favours the largest)."""
    from captum._utils.gradient import compute_layer_gradients_and_eval

    (gradients,), (activations,) = compute_layer_gradients_and_eval(scores, layer, pixels, target)
    squared = gradients.pow(2)
    denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * squared * gradients
    alpha = torch.where(gradients != 0, squared / (denominator + 1e-7), torch.zeros_like(gradients))
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    layer_map = (weights * activations).sum(dim=1, keepdim=True).clamp(min=0)
    return _to_input_size(layer_map.detach(), pixels)


def integrated_gradients(scores: nn.Module, pixels: torch.Tensor, target: int, baseline: torch.Tensor, steps: int,
                         batch_size: int) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al., 2017) from `baseline` to the image, summed over channels
    (signed): what each pixel adds to the class score relative to the baseline."""
    from captum.attr import IntegratedGradients

    attributions = IntegratedGradients(scores).attribute(pixels, baselines=baseline, target=target, n_steps=steps,
                                                         internal_batch_size=batch_size)
    return attributions.sum(dim=1)


def baseline_image(kind: str, pixels: torch.Tensor, mean: list[float]) -> torch.Tensor:
    """black: zero pixels; mean: every pixel the training mean (the normalised model's zero input)."""
    if kind == "black":
        return torch.zeros_like(pixels)
    return torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1).expand_as(pixels)


def attribution(method: str, scores: nn.Module, pixels: torch.Tensor, target: int, layer: nn.Module | None,
                baseline: torch.Tensor | None = None, steps: int = 32, batch_size: int = 64) -> torch.Tensor:
    """One image's (1, C, H, W) map of `method` for class `target`, as (H, W) on the CPU."""
    try:
        if method == "gradcam":
            found = gradcam(scores, layer, pixels, target)
        elif method == "gradcam_pp":
            found = gradcam_pp(scores, layer, pixels, target)
        else:
            found = integrated_gradients(scores, pixels, target, baseline, steps, batch_size)
    except RuntimeError as error:  # e.g. a chosen layer whose output a later in-place operation overwrites
        raise ImgrecError(f"{method} failed on this model: {str(error).splitlines()[0]}; try another layer=... "
                          "(layer=auto picks the last convolutional stage)") from error
    return found[0].detach().float().cpu()


def mass_by_quadrant(attribution_map: torch.Tensor) -> dict[str, float] | None:
    """The share of the map's positive attribution in each quadrant (top rows are the first H // 2), or
    None when it has none."""
    positive = attribution_map.clamp(min=0)
    total = float(positive.sum())
    if total <= 0:
        return None
    middle_row, middle_column = positive.shape[0] // 2, positive.shape[1] // 2
    halves = {"top": slice(0, middle_row), "bottom": slice(middle_row, None)}
    sides = {"left": slice(0, middle_column), "right": slice(middle_column, None)}
    return {f"{v}_{h}": float(positive[rows, columns].sum()) / total
            for v, rows in halves.items() for h, columns in sides.items()}


def peak(attribution_map: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the map's largest value."""
    index = int(attribution_map.flatten().argmax())
    return index // attribution_map.shape[1], index % attribution_map.shape[1]
