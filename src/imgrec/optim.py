"""Building the optimizer from its config: parameter groups for weight-decay exemption."""

from omegaconf import DictConfig, OmegaConf
from torch import nn

from imgrec.errors import ImgrecError

# keys of an optimizer config that imgrec reads itself; everything else goes to the torch class
IMGREC_KEYS = ("exempt_norm_and_bias",)
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, weight_decay: float, exempt_norm_and_bias: bool) -> list[dict]:
    """One group with weight decay and, when exempting, one without it for biases and norm weights.

    Decay pulls weights towards zero; on a bias or a norm layer's scale that only fights the
    normalisation, which is why most ImageNet recipes exempt them.
    """
    if not exempt_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            exempt = name.endswith("bias") or isinstance(module, NORM_LAYERS) or parameter.ndim <= 1
            (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module):
    """The `optimizer` group (a partial torch.optim class plus imgrec's own keys) over `model`'s parameters."""
    from imgrec.config import build

    settings = OmegaConf.to_container(optimizer_cfg, resolve=False)
    exempt = bool(settings.pop("exempt_norm_and_bias", False))
    groups = parameter_groups(model, settings.get("weight_decay", 0.0), exempt)
    if not any(group["params"] for group in groups):
        raise ImgrecError("the model has no trainable parameters (is everything frozen?)")
    return build(OmegaConf.create(settings))(groups)
