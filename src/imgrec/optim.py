"""Building the optimizer from its config: parameter groups for weight-decay exemption."""

from omegaconf import DictConfig, OmegaConf
from torch import nn

from imgrec.errors import ImgrecError

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, exempt_norm_and_bias: bool,
                     backbone_lr_scale: float = 1.0) -> list[dict]:
    """The model's trainable parameters in up to four groups: head or backbone, with or without weight decay.

    The head is the model's last Linear layer; the backbone (everything else) trains at
    lr * backbone_lr_scale, the usual fine-tuning split. Decay pulls weights towards zero; on a bias or
    a norm layer's scale that only fights the normalisation, which is why recipes exempt them.
    """
    from imgrec.models.backbones import last_linear

    if backbone_lr_scale <= 0:
        raise ImgrecError(f"optimizer.backbone_lr_scale={backbone_lr_scale} must be > 0 (freeze with model.freeze)")
    head = set(id(p) for p in last_linear(model)[2].parameters()) if backbone_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool], list] = {}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            exempt = exempt_norm_and_bias and (
                name.endswith("bias") or isinstance(module, NORM_LAYERS) or parameter.ndim <= 1
            )
            groups.setdefault((id(parameter) in head, exempt), []).append(parameter)
    return [
        {"params": params, "lr": lr * (1.0 if in_head or not head else backbone_lr_scale),
         "weight_decay": 0.0 if exempt else weight_decay}
        for (in_head, exempt), params in sorted(groups.items())
    ]


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module):
    """The `optimizer` group (a partial torch.optim class plus imgrec's own keys) over `model`'s parameters."""
    from imgrec.config import build

    settings = OmegaConf.to_container(optimizer_cfg, resolve=True)
    # imgrec reads these two keys itself; everything else goes to the torch.optim class
    exempt = bool(settings.pop("exempt_norm_and_bias", False))
    scale = float(settings.pop("backbone_lr_scale", 1.0))
    groups = parameter_groups(model, settings["lr"], settings.get("weight_decay", 0.0), exempt, scale)
    if not any(group["params"] for group in groups):
        raise ImgrecError("the model has no trainable parameters (is everything frozen?)")
    return build(OmegaConf.create(settings))(groups)
