"""Any timm model by name (`pip install -e ".[timm]"`), with weights from a local file or the Hugging Face cache
(downloaded into it when missing): timm's own loader adapts the stem to `in_channels` and drops a head for
another number of classes."""

from pathlib import Path

from torch import nn

from imgrec.downloads import one_line, refuse_if_offline
from imgrec.errors import ImgrecError
from imgrec.models.backbones import FREEZE_CHOICES, FrozenBackbone, log


def import_timm():
    try:
        import timm
    except ImportError as error:
        raise ImgrecError('model=timm needs the timm package: pip install -e ".[timm]" (or pip install timm)') from error
    return timm


def pretrained_file(timm, name: str, cache_dir: str | None = None) -> Path:
    """The pretrained weights of `name` (e.g. resnet18.a1_in1k) from the local Hugging Face cache, downloaded into it
    first when missing unless IMGREC_OFFLINE=1 (or Hugging Face's own HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    repo = pretrained_cfg.hf_hub_id if pretrained_cfg is not None else None
    if not repo:
        raise ImgrecError(f"timm has no Hugging Face weights for model.name={name}; give a local file as model.weights")
    filenames = ("model.safetensors", "pytorch_model.bin")  # timm's order: safetensors where the repo has them
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found)
    url = f"https://huggingface.co/{repo}"
    subject = f"model.weights=pretrained: timm weights for {name}"
    fix = (f"On a machine with internet run `python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` "
           "and copy ~/.cache/huggingface here, or pass a downloaded .safetensors/.pth file as model.weights")
    refuse_if_offline(subject, url, fix)
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=cache_dir))
        except LocalEntryNotFoundError as error:  # the Hub could not be reached, and the cache has no copy
            why = ("HF_HUB_OFFLINE=1 forbids downloads" if constants.HF_HUB_OFFLINE else
                   "huggingface.co cannot be reached; this machine appears to be offline")
            raise ImgrecError(f"{subject}: could not download {url}/resolve/main/{filename}: {why}. {fix}") from error
        except EntryNotFoundError:  # not in this repo: the other file is
            continue
        except OSError as error:  # the Hub refused (a gated or missing repo), or the disk failed
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            raise ImgrecError(one_line(f"{subject}: could not download {url}/resolve/main/{filename}: {first_line}. "
                                       f"{fix}")) from error
    raise ImgrecError(f"{subject}: {url} has none of {', '.join(filenames)}; give a local file as model.weights")


def timm_model(name: str, in_channels: int, num_classes: int, weights: str | None = None, freeze: str = "none",
               **timm_kwargs) -> nn.Module:
    """`weights`: null (random init), `pretrained` (the name's default tag, from the HF cache) or a file."""
    timm = import_timm()
    if freeze not in FREEZE_CHOICES:
        raise ImgrecError(f"model.freeze={freeze!r} must be one of {', '.join(FREEZE_CHOICES)}")
    if freeze == "backbone" and not weights:
        raise ImgrecError("model.freeze=backbone trains only the head: it needs model.weights (a random backbone)")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise ImgrecError(f"model.name={name!r} is not a timm model; similar names: {', '.join(close) or 'none'}")
    options = {"in_chans": in_channels, "num_classes": num_classes, **timm_kwargs}
    if weights:
        path = pretrained_file(timm, name) if weights == "pretrained" else Path(weights).expanduser()
        if not path.is_file():
            raise ImgrecError(f"model.weights '{weights}' does not exist; give a .pt/.pth/.safetensors file or `pretrained`")
        # timm's loader: adapts the first conv to in_chans and leaves a head of another size freshly initialised
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        log.info(f"timm {name}: weights from {path}")
    try:
        model = timm.create_model(name, **options)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ImgrecError(f"timm could not build {name} from {weights or 'scratch'}: {str(error).splitlines()[0]}") from error
    return FrozenBackbone(model, model.get_classifier()) if freeze == "backbone" else model
