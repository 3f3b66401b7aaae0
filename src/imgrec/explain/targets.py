"""What a map explains: one score per class of one image, and which class.

A classifier's scores are its logits. A model that labels every pixel is turned into one: class c's score
is its logit summed over the pixels the model predicts as c on the explained image (Seg-Grad-CAM,
Vinogradova et al., 2020). Those pixels are fixed from the image itself, so every blended image integrated
gradients feeds the model is scored on the same region.
"""

from dataclasses import dataclass

import torch
from torch import nn

from imgrec.errors import ImgrecError

# what Task.predicts says a checkpoint gives: a class per image, or a class per pixel
EXPLAINED = {"class_scores": "one class per image", "masks": "a class per pixel"}


def class_logits(outputs: torch.Tensor) -> torch.Tensor:
    """Per-class logits; a binary segmentation model's single logit (foreground) becomes [-l, l]."""
    return torch.cat([-outputs, outputs], dim=1) if outputs.shape[1] == 1 else outputs


class RegionScores(nn.Module):
    """A per-pixel model as a classifier: class c's score is its logit summed over `regions[c]`."""

    def __init__(self, model: nn.Module, regions: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("regions", regions)  # float (1, classes, H, W), 1 on the pixels counted

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (class_logits(self.model(pixels)) * self.regions).sum(dim=(2, 3))


@dataclass
class ClassScores:
    """One image's explainable scores: `scores(pixels)` gives (N, classes), Captum's forward function."""

    scores: nn.Module
    probabilities: list[float]  # per class: softmax, or a segmentation class's mean over its region
    predicted: int


def scores_of(model: nn.Module, pixels: torch.Tensor, predicts: str, predicted_classes) -> ClassScores:
    """`model` takes [0, 1] pixels; `pixels` is one image (1, C, H, W); `predicts` is the task's
    Task.predicts and `predicted_classes` its Task.predicted_classes."""
    with torch.no_grad():
        outputs = model(pixels).float()
    if predicts == "class_scores":
        probabilities = outputs.softmax(dim=1)[0]
        return ClassScores(model, probabilities.tolist(), int(probabilities.argmax()))
    logits = class_logits(outputs)
    mask = predicted_classes(outputs)[0]
    classes = logits.shape[1]
    regions = torch.nn.functional.one_hot(mask, classes).permute(2, 0, 1).float()
    empty = regions.sum(dim=(1, 2)) == 0
    regions[empty] = 1.0  # a class predicted nowhere is scored over the whole image
    if outputs.shape[1] == 1:
        foreground = outputs[0, 0].sigmoid()
        pixel_probabilities = torch.stack([1 - foreground, foreground])
    else:
        pixel_probabilities = logits[0].softmax(dim=0)
    probabilities = ((pixel_probabilities * regions).sum(dim=(1, 2)) / regions.sum(dim=(1, 2))).tolist()
    counts = torch.bincount(mask.flatten(), minlength=classes)
    # the image's subject: the class on the most pixels, background (class 0) only when nothing else is there
    predicted = int(counts[1:].argmax()) + 1 if classes > 1 and counts[1:].sum() > 0 else 0
    return ClassScores(RegionScores(model, regions[None]), probabilities, predicted)


def chosen_class(target, class_names: list[str]) -> int | None:
    """None for `predicted`; otherwise the class `target` names (a class name first, then an index)."""
    if target is None or target == "predicted":
        return None
    if str(target) in class_names:
        return class_names.index(str(target))
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(class_names):
        return target
    shown = ", ".join(class_names[:20]) + (f" ... ({len(class_names)} classes)" if len(class_names) > 20 else "")
    raise ImgrecError(f"target={target!r} is neither a class of this checkpoint nor an index 0-{len(class_names) - 1}; "
                      f"use target=predicted or one of: {shown}")
