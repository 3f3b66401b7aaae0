"""Segmentation networks from libraries: torchvision's FCN, DeepLabV3 and LR-ASPP, and
segmentation_models_pytorch's encoder-decoders (the `seg` extra), adapted to the dataset's channels and
classes, with weights from local files or torchvision's (downloaded into the torch hub cache when missing)."""

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.models.backbones import _replace_first_conv, _resolve_weights, load_weights

TORCHVISION_SEGMENTATION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                            "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")


class MainOutput(nn.Module):
    """torchvision's segmentation models return {"out": logits, "aux": ...}; the Trainer wants the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def torchvision_segmentation(name: str, in_channels: int, num_classes: int, weights: str | None = None,
                             backbone_weights: str | None = None) -> nn.Module:
    """`weights`: a whole segmentation model's (a local file, or a torchvision weights name; a head for another
    number of classes starts afresh). `backbone_weights`: the
    classification network's, for its backbone only (e.g. ResNet50_Weights.IMAGENET1K_V1)."""
    import torchvision.models.segmentation as segmentation

    if name not in TORCHVISION_SEGMENTATION:
        raise ImgrecError(f"model.name={name!r} is not one of {', '.join(TORCHVISION_SEGMENTATION)}")
    # no weights from the library itself: _resolve_weights below gives one cache, one checksum, one offline switch
    model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    if weights:
        load_weights(model, _resolve_weights(weights))
    if backbone_weights:
        load_weights(model.backbone, _resolve_weights(backbone_weights, key="model.backbone_weights"))
    if in_channels != 3:
        _replace_first_conv(model.backbone, in_channels, small_input=False)
    return MainOutput(model)


def smp_model(in_channels: int, num_classes: int, arch: str = "Unet", encoder: str = "resnet34",
              encoder_weights: str | None = None, **options) -> nn.Module:
    """A segmentation_models_pytorch network (`pip install -e ".[seg]"`): arch Unet, UnetPlusPlus, FPN,
    DeepLabV3Plus ... on any of its encoders. `encoder_weights`: a local file of the encoder's weights (or a
    torchvision weights name, for the ResNet encoders); the library's own download is not used."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as error:
        raise ImgrecError('model=smp_unet needs segmentation_models_pytorch: pip install -e ".[seg]"') from error
    if not hasattr(smp, arch):
        raise ImgrecError(f"model.arch={arch!r} is not a segmentation_models_pytorch architecture; e.g. Unet, "
                          "UnetPlusPlus, FPN, DeepLabV3Plus")
    try:
        model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                                   classes=num_classes, **options)
    except (KeyError, ValueError, TypeError) as error:
        raise ImgrecError(f"segmentation_models_pytorch cannot build {arch} with encoder {encoder}: "
                          f"{str(error).splitlines()[0]}") from error
    if encoder_weights:
        load_weights(model.encoder, _resolve_weights(encoder_weights, key="model.encoder_weights"))
    return model
