"""The layer Grad-CAM reads: the last convolutional stage, found by tracing one forward pass, or one named.

One rule serves every built-in model, so a new backbone needs no entry in a table. A forward pass with a
hook on every module records, in the order modules finish, each one whose output is a 4-D (N, C, H, W)
tensor. The choice is then the last of those with H, W > 1:

- leaving out pooling to a fixed size (the classifier head's AdaptiveAvgPool2d: VGG's repeats a 1x1 map
  into a 7x7 one) and modules that hand their input on unchanged (Identity, dropout in eval mode);
- inside the model's `backbone` or `encoder` when it has one (torchvision's and smp's segmentation
  models: their last stage, not the decoder's logits);
- for models that label every pixel without a named encoder (the U-Net), the deepest map (smallest
  H x W) instead of the last: later maps are the decoder's, the last of all the logits themselves;
- stepping back over a trailing 2x2 pool (small_cnn's stages, VGG's `features`): the map before it has
  twice the resolution and the same information.

That gives resnet*: layer4, convnext/efficientnet/mobilenet: features, vgg16_bn: features.42, small_cnn:
its last activation before the last pool, unet: downs.<depth-1>, torchvision segmentation models:
model.backbone.layer4 (or .16 for MobileNet backbones), smp: encoder.layer4; a map that is 1x1 at the
model's input size (a ResNet on 32 px images) moves the choice to the stage before.
"""

from dataclasses import dataclass

import torch
from torch import nn

from imgrec.errors import ImgrecError

FIXED_SIZE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
HALVING_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
ENCODER_NAMES = ("backbone", "encoder")
NAMES_LISTED = 40  # an unknown layer name lists this many of the valid ones (the deepest)


@dataclass
class LayerOutput:
    name: str
    module: nn.Module
    shape: tuple[int, int, int]  # channels, height, width
    passes_input: bool  # returns its input unchanged (Identity, eval-mode dropout)

    @property
    def spatial(self) -> bool:
        return self.shape[1] > 1 and self.shape[2] > 1


def image_like_outputs(model: nn.Module, pixels: torch.Tensor) -> dict[str, LayerOutput]:
    """Every named module whose output is one 4-D tensor, in the order the modules finish (a module called
    twice, like torchvision's shared ReLU, counts where it finished last)."""
    found: dict[str, LayerOutput] = {}
    handles = []

    def recorder(name: str):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                # an in-place activation returns its input too, but changed: that one is a real map
                passes = bool(inputs) and output is inputs[0] and not getattr(module, "inplace", False)
                found.pop(name, None)
                found[name] = LayerOutput(name, module, tuple(output.shape[1:]), passes)
        return record

    for name, module in model.named_modules():
        if name:  # the model itself is the function explained, not a layer of it
            handles.append(module.register_forward_hook(recorder(name)))
    try:
        with torch.no_grad():
            model(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _encoder_prefix(model: nn.Module) -> str | None:
    """`<name>.` of the shallowest submodule called backbone or encoder, if any."""
    names = [name for name, _ in model.named_modules() if name.rpartition(".")[2] in ENCODER_NAMES]
    return min(names, key=lambda name: name.count(".")) + "." if names else None


def _before_trailing_pool(choice: LayerOutput, model: nn.Module, outputs: dict[str, LayerOutput]) -> LayerOutput:
    """The map a trailing 2x2 pool shrinks, when `choice` is such a pool or a Sequential ending in one."""
    parent_name, _, own = choice.name.rpartition(".")
    if isinstance(choice.module, HALVING_POOLS) and own.isdigit() and int(own) > 0:
        before = f"{parent_name}.{int(own) - 1}" if parent_name else str(int(own) - 1)
    elif isinstance(choice.module, nn.Sequential) and len(choice.module) > 1 and \
            isinstance(choice.module[-1], HALVING_POOLS):
        before = f"{choice.name}.{len(choice.module) - 2}"
    else:
        return choice
    earlier = outputs.get(before)
    return earlier if earlier is not None and earlier.spatial and not earlier.passes_input else choice


def _inside_a_collapsed_block(name: str, outputs: dict[str, LayerOutput]) -> bool:
    """Whether `name` is a part of a block (a module other than a Sequential) whose own output is 1x1: the
    block is the unit, and its 1x1 map says that stage is too deep for this input size."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        block = outputs.get(".".join(parts[:depth]))
        if block is not None and not block.spatial and not isinstance(block.module, nn.Sequential):
            return True
    return False


def automatic_layer(model: nn.Module, pixels: torch.Tensor, per_pixel: bool) -> LayerOutput:
    """The last convolutional stage of `model` on input like `pixels` (see the module docstring)."""
    outputs = image_like_outputs(model, pixels)
    candidates = [o for o in outputs.values() if o.spatial and not o.passes_input
                  and not isinstance(o.module, FIXED_SIZE_POOLS) and not _inside_a_collapsed_block(o.name, outputs)]
    prefix = _encoder_prefix(model)
    inside = [o for o in candidates if prefix and o.name.startswith(prefix)]
    if inside:
        candidates = inside
    if not candidates:
        raise ImgrecError(f"{type(model).__name__} has no layer with an image-like output larger than 1x1 at "
                          f"{pixels.shape[-2]}x{pixels.shape[-1]} px, so Grad-CAM has nothing to map; "
                          "use methods=[integrated_gradients]")
    if per_pixel and not inside:
        smallest = min(o.shape[1] * o.shape[2] for o in candidates)
        choice = [o for o in candidates if o.shape[1] * o.shape[2] == smallest][-1]
    else:
        choice = candidates[-1]
    return _before_trailing_pool(choice, model, outputs)


def named_layer(model: nn.Module, pixels: torch.Tensor, name: str) -> LayerOutput:
    """The module `name` (dotted, as in model.named_modules()), which must output a 4-D map."""
    outputs = image_like_outputs(model, pixels)
    if name in outputs:
        return outputs[name]
    valid = list(outputs)
    shown = valid[-NAMES_LISTED:]
    more = f" ({len(valid) - len(shown)} earlier ones not shown)" if len(valid) > len(shown) else ""
    problem = f"{type(model).__name__} has no module named {name!r}" if name not in dict(model.named_modules()) \
        else f"{name!r} of {type(model).__name__} does not output an image-like (N, C, H, W) map"
    raise ImgrecError(f"layer={name}: {problem}; choose one of{more}: {', '.join(shown)} (or layer=auto)")
