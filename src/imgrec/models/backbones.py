"""torchvision classification networks by name, adapted to the dataset: input channels, small
images, number of classes, pretrained weights, and a frozen backbone for linear probes."""

import logging
from pathlib import Path

import torch
from torch import nn

from imgrec.downloads import fetch_with_sha256_prefix
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
FREEZE_CHOICES = ("none", "backbone")


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attribute = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attribute, module
    raise ImgrecError(f"{type(model).__name__} has no Conv2d layer to adapt")


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parent_name, _, attribute = name.rpartition(".")
            found = (model.get_submodule(parent_name) if parent_name else model, attribute, module)
    if found is None:
        raise ImgrecError(f"{type(model).__name__} has no Linear classifier to replace")
    return found


def head_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters that are not the (pretrained) backbone: everything outside the shallowest
    submodule named `backbone` or `encoder` (torchvision's segmentation models, smp), else the last Linear
    layer (classifiers). What optimizer.backbone_lr_scale leaves at the full learning rate."""
    parts = [(name.count("."), module) for name, module in model.named_modules()
             if name.rpartition(".")[2] in ("backbone", "encoder")]
    if parts:
        backbone = min(parts, key=lambda part: part[0])[1]
        inside = {id(parameter) for parameter in backbone.parameters()}
        return {id(parameter) for parameter in model.parameters() if id(parameter) not in inside}
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ImgrecError(f"optimizer.backbone_lr_scale needs a model with a backbone (a `backbone` or `encoder` "
                          f"part, or a last Linear classifier); {type(model).__name__} has neither: leave "
                          "optimizer.backbone_lr_scale=1.0")
    return {id(parameter) for parameter in linears[-1].parameters()}


def _replace_first_conv(model: nn.Module, in_channels: int, small_input: bool) -> None:
    parent, attribute, conv = _first_conv(model)
    if conv.in_channels == in_channels and not small_input:
        return
    kernel, stride, padding = (3, 1, 1) if small_input else (conv.kernel_size, conv.stride, conv.padding)
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, bias=conv.bias is not None)
    if not small_input:  # keep what pretrained weights learned: grey = the sum of the RGB filters
        with torch.no_grad():
            weight = conv.weight.sum(dim=1, keepdim=True) if in_channels == 1 else conv.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(weight.expand(-1, in_channels, -1, -1) if in_channels != 1 else weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    setattr(parent, attribute, new)


def _resolve_weights(weights: str, key: str = "model.weights") -> Path:
    """A local file, or a torchvision weights name (ResNet18_Weights.IMAGENET1K_V1, ResNet18_Weights.DEFAULT) read
    from the torch hub cache, downloaded into it first when missing unless IMGREC_OFFLINE=1."""
    path = Path(weights).expanduser()
    if path.suffix in (".pt", ".pth", ".safetensors") or path.exists():
        if not path.is_file():
            raise ImgrecError(f"{key} '{weights}' does not exist; give a .pt/.pth/.safetensors file")
        return path
    from torchvision.models import get_weight

    try:
        url = get_weight(weights).url
    except (ValueError, AttributeError, KeyError) as error:
        raise ImgrecError(
            f"{key}={weights!r} is neither a file nor a torchvision weights name such as "
            "ResNet18_Weights.IMAGENET1K_V1"
        ) from error
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        fetch_with_sha256_prefix(url, cached, f"{key}={weights}", f"Download it on a machine with internet and put it "
                                 f"at {cached}, or pass its path as {key}")
    return cached


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImgrecError("model.weights is a .safetensors file: pip install safetensors") from error
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ImgrecError(f"model.weights '{path}' could not be read as weights: {str(error).splitlines()[0]}") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # an imgrec checkpoint
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    """Load every tensor whose name and shape match; a differing classifier head keeps its fresh init."""
    state = _read_state_dict(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(matched))
    if len(matched) < len(own) // 2:
        raise ImgrecError(
            f"model.weights '{path}' fits only {len(matched)} of {len(own)} tensors of {type(model).__name__}; "
            "are they weights for this architecture?"
        )
    model.load_state_dict(matched, strict=False)
    if skipped:
        log.info(f"loaded {len(matched)} tensors from {path}; these differ in name or shape (for example a head "
                 f"for another number of classes) and start from a fresh init: {', '.join(skipped)}")


class FrozenBackbone(nn.Module):
    """Wraps a network so that only its classifier head trains; the rest stays in eval mode
    (batch-norm statistics frozen too), which is what a linear probe means."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model = model
        object.__setattr__(self, "_head", head)  # a reference into model, not a second copy in state_dict
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in head.parameters():
            parameter.requires_grad_(True)

    def train(self, mode: bool = True):
        super().train(False)
        self._head.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def torchvision_model(name: str, in_channels: int, num_classes: int, small_input: bool = False,
                      weights: str | None = None, freeze: str = "none") -> nn.Module:
    import torchvision.models

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ImgrecError(f"model.name={name!r} is not a torchvision classification model; e.g. resnet18, convnext_tiny")
    if freeze not in FREEZE_CHOICES:
        raise ImgrecError(f"model.freeze={freeze!r} must be one of {', '.join(FREEZE_CHOICES)}")
    if freeze == "backbone" and not weights:
        raise ImgrecError(
            "model.freeze=backbone trains only the head, so it needs pretrained weights: set model.weights to a local "
            "file (e.g. model.weights=~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth) or a torchvision weights "
            "name (e.g. model.weights=ResNet18_Weights.IMAGENET1K_V1); a frozen random backbone would learn nothing"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if weights:  # a head for another number of classes does not fit, so it keeps its fresh init
        load_weights(model, _resolve_weights(weights))
    head = last_linear(model)[2]
    _replace_first_conv(model, in_channels, small_input)
    if small_input and hasattr(model, "maxpool"):
        model.maxpool = nn.Identity()  # the CIFAR ResNet stem: 3x3 conv, stride 1, no max-pool
    return FrozenBackbone(model, head) if freeze == "backbone" else model
