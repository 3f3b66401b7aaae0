"""Building the optimizer from its config: its settings checked, parameter groups for weight-decay exemption."""


from omegaconf import DictConfig, OmegaConf
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.values import is_number

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, exempt_norm_and_bias: bool,
                     backbone_lr_scale: float = 1.0) -> list[dict]:
    """The model's trainable parameters in up to four groups: head or backbone, with or without weight decay.

    The backbone (a model's `backbone` or `encoder` part, or everything but a classifier's last Linear
    layer) trains at lr * backbone_lr_scale, the usual fine-tuning split; each group's `lr_scale` says
    which. Decay pulls weights towards zero; on a bias or a norm layer's scale that only fights the
    normalisation, which is why recipes exempt them. (check_optimizer_settings checks the values.)
    """
    from imgrec.models.backbones import head_parameter_ids

    head = head_parameter_ids(model) if backbone_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool], list] = {}
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            exempt = exempt_norm_and_bias and (
                name.endswith("bias") or isinstance(module, NORM_LAYERS) or parameter.ndim <= 1
            )
            groups.setdefault((id(parameter) in head, exempt), []).append(parameter)
    scales = {in_head: 1.0 if in_head or not head else backbone_lr_scale for in_head, _ in groups}
    return [
        {"params": params, "lr": lr * scales[in_head], "lr_scale": scales[in_head],
         "weight_decay": 0.0 if exempt else weight_decay}
        for (in_head, exempt), params in sorted(groups.items())
    ]


NON_NEGATIVE = ("weight_decay", "momentum", "dampening", "eps", "alpha", "lr_decay", "initial_accumulator_value")


def check_optimizer_settings(optimizer_cfg: DictConfig) -> None:
    """The `optimizer` group's values, checked before any data is loaded: lr > 0, decays and momenta >= 0,
    betas in [0, 1), and every key an argument of the optimizer class (the class's own signature)."""
    import difflib
    import inspect

    from imgrec.registry import locate

    settings = OmegaConf.to_container(optimizer_cfg, resolve=True)
    target = settings.pop("_target_", None)
    settings.pop("_partial_", None)
    if "exempt_norm_and_bias" in settings and not isinstance(settings.pop("exempt_norm_and_bias"), bool):
        raise ImgrecError(f"optimizer.exempt_norm_and_bias={optimizer_cfg.exempt_norm_and_bias!r} must be true or false")
    scale = settings.pop("backbone_lr_scale", 1.0)
    if not is_number(scale) or scale <= 0:
        raise ImgrecError(f"optimizer.backbone_lr_scale={scale!r} must be a number > 0 (freeze with model.freeze)")
    lr = settings.get("lr")
    if not is_number(lr) or lr <= 0:
        raise ImgrecError(f"optimizer.lr={lr!r} must be a number > 0, e.g. optimizer.lr=0.001")
    for key in NON_NEGATIVE:
        if key in settings and (not is_number(settings[key]) or settings[key] < 0):
            raise ImgrecError(f"optimizer.{key}={settings[key]!r} must be a number >= 0")
    betas = settings.get("betas")
    if betas is not None and (not isinstance(betas, list) or len(betas) != 2
                              or not all(is_number(b) and 0 <= b < 1 for b in betas)):
        raise ImgrecError(f"optimizer.betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    optimizer_class = locate(target) if isinstance(target, str) else None
    if optimizer_class is None:
        raise ImgrecError(f"optimizer._target_={target!r} cannot be imported; use a torch.optim class such as torch.optim.AdamW")
    accepted = [name for name in inspect.signature(optimizer_class).parameters if name != "params"]
    for key in settings:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean optimizer.{close[0]}?)" if close else f"; it takes {', '.join(accepted)}"
            raise ImgrecError(f"optimizer.{key} is not an argument of {target}{hint}")


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
    if wants_fused(settings, groups):
        settings["fused"] = True
    return build(OmegaConf.create(settings))(groups)


# torch's optimizers whose fused CUDA step skips itself on `found_inf` (what a deferred non-finite guard needs)
FUSED_ON_CUDA = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


def wants_fused(settings: dict, groups: list[dict]) -> bool:
    """On CUDA, Adam, AdamW and SGD run fused unless the config chose (`fused` or `foreach` set): one kernel
    for every parameter, and the non-finite guard can then skip a step without a host synchronisation."""
    parameters = [p for group in groups for p in group["params"]]
    return (settings.get("_target_") in FUSED_ON_CUDA and settings.get("fused") is None
            and settings.get("foreach") is None and all(p.is_cuda and p.is_floating_point() for p in parameters))
