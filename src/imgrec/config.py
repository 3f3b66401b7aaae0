"""Where the configs live, and the checks and conversions train.py applies to a composed config."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.errors import ImgrecError

# configs/ sits at the repository root beside src/ (installed with `pip install -e .`)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


# `_target_`s may name only these packages' callables: a config (or the config stored in a checkpoint
# someone sent you) must not be able to call os.system. `allowed_targets=[mypkg.]` adds a trusted package.
ALLOWED_TARGET_PREFIXES = ("imgrec.", "torch.", "torchvision.", "albumentations.", "timm.", "sklearn.")
_user_allowed_prefixes: list[str] = []


def allow_targets(prefixes) -> None:
    """Trust the packages the user listed in `allowed_targets` (each a module prefix such as `mypkg.`)."""
    for prefix in prefixes or []:
        if not isinstance(prefix, str) or not prefix.strip("."):
            raise ImgrecError(f"allowed_targets entry {prefix!r} must be a module name such as mypkg or mypkg.models")
        prefix = prefix if prefix.endswith(".") else prefix + "."
        if prefix not in _user_allowed_prefixes:
            _user_allowed_prefixes.append(prefix)


def check_targets(node, where: str = "") -> None:
    """Raise before anything is instantiated if any `_target_` under `node` is outside the allowed packages."""
    from omegaconf import ListConfig

    if isinstance(node, (DictConfig, dict)):
        keys = list(node.keys())
        for key in keys:
            if isinstance(node, DictConfig) and not where:
                child_where = node._get_full_key(key)  # e.g. model._target_ for build(cfg.model)
            else:
                child_where = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                target = str(node[key])
                allowed = (*ALLOWED_TARGET_PREFIXES, *_user_allowed_prefixes)
                if not target.startswith(allowed):
                    module = target.rsplit(".", 1)[0]
                    raise ImgrecError(
                        f"{child_where}={target!r} is not allowed: imgrec instantiates only callables from "
                        f"{', '.join(p.rstrip('.') for p in allowed)}. If you trust {module}, add "
                        f"allowed_targets=[{module}] to the command line"
                    )
            else:
                value = node._get_node(key)._value() if isinstance(node, DictConfig) else node[key]
                if isinstance(value, (DictConfig, ListConfig, dict, list)):
                    check_targets(node[key], child_where)
    elif isinstance(node, (ListConfig, list)):
        for index in range(len(node)):
            check_targets(node[index], f"{where}[{index}]")


def build(node, **kwargs):
    """hydra.utils.instantiate, after checking its `_target_`s, with our own errors unwrapped so users
    read the message, not a traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    check_targets(node)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ImgrecError):
            raise error.__cause__ from None
        raise ImgrecError(str(error)) from error


def check_tool_config(cfg: DictConfig) -> None:
    """What every command checks first: the user's trusted packages, then every `_target_` in its config."""
    allow_targets(cfg.get("allowed_targets"))
    check_targets(cfg)


def check_top_level(cfg: DictConfig) -> None:
    from imgrec.trainer import logged_metric_names

    check_tool_config(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ImgrecError(
            f"{', '.join(missing)} must be set: the config leaves {'them' if len(missing) > 1 else 'it'} to you "
            f"(???); add {' '.join(f'{key}=...' for key in missing)} to the command line"
        )
    if cfg.optimized_mode not in ("min", "max"):
        raise ImgrecError(f"optimized_mode={cfg.optimized_mode!r} must be 'min' or 'max'")
    if cfg.optimized_metric not in logged_metric_names():
        raise ImgrecError(
            f"optimized_metric={cfg.optimized_metric!r} is not a logged metric; "
            f"choose one of: {', '.join(logged_metric_names())}"
        )
    if not isinstance(cfg.seed, int):
        raise ImgrecError(f"seed={cfg.seed!r} must be a whole number")


# what a resume cannot change: the network, and the kinds of optimizer, schedule and dataset.
# model.in_channels/num_classes follow the dataset, whose class names train.py compares itself.
RESUME_MUST_MATCH = (
    "model.", "optimizer._target_", "optimizer.exempt_norm_and_bias", "optimizer.backbone_lr_scale",
    "scheduler._target_", "dataset._target_", "trainer.ema_decay",
)
RESUME_FOLLOWS_DATASET = ("model.in_channels", "model.num_classes")
# the optimizer's state carries its hyperparameters (lr, momentum, ...): on resume those win
RESUME_TAKEN_FROM_CHECKPOINT = ("optimizer.",)


def _flatten(container, prefix: str = "") -> dict:
    if not isinstance(container, dict):
        return {prefix[:-1]: container}
    flat = {}
    for key, value in container.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def check_resume_matches(saved: dict, cfg: DictConfig, ckpt_path: str) -> list[str]:
    """Raise if the checkpoint cannot continue under `cfg`; return warnings for values it will ignore."""
    saved_flat = _flatten(saved)
    current_flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    for key in sorted(saved_flat.keys() | current_flat.keys()):
        old, new = saved_flat.get(key), current_flat.get(key)
        if old == new or key in RESUME_FOLLOWS_DATASET:
            continue
        if key.startswith(RESUME_MUST_MATCH):
            raise ImgrecError(
                f"ckpt_path {ckpt_path} was trained with {key}={old} but this run has {key}={new}; "
                f"resume with the settings it was trained with{_original_overrides(Path(ckpt_path))}"
            )
    return [
        f"{key}={current_flat[key]} differs from the checkpoint's {saved_flat.get(key)}; "
        "a resume keeps the optimizer settings saved in the checkpoint"
        for key in current_flat
        if key.startswith(RESUME_TAKEN_FROM_CHECKPOINT) and saved_flat.get(key) != current_flat[key]
    ]


def _original_overrides(ckpt_path: Path) -> str:
    """`, e.g. the overrides it started with: ...` when Hydra's record of the run is beside the checkpoint."""
    record = ckpt_path.parent.parent / ".hydra" / "overrides.yaml"
    if not record.is_file():
        return ""
    overrides = [o for o in OmegaConf.load(record) if not str(o).startswith("ckpt_path=")]
    return f" (it was started with: {' '.join(map(str, overrides)) or 'no overrides'})"


def instantiate_callbacks(cfg: DictConfig) -> dict:
    """The `callbacks` group as {name: callback}; names key their state in checkpoints."""
    from imgrec.callbacks import Callback
    from imgrec.trainer import logged_metric_names

    callbacks = {}
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        callback = build(callback_cfg)
        if not isinstance(callback, Callback):
            raise ImgrecError(f"callbacks.{name} builds a {type(callback).__name__}, not an imgrec.callbacks.Callback")
        callback.check(logged_metric_names())
        callbacks[name] = callback
    return callbacks


def hyperparameters(cfg: DictConfig) -> dict:
    """The config's groups flattened to `group.key: scalar`, the form TensorBoard's HPARAMS tab takes."""
    params: dict = {"seed": cfg.seed}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        params.update({group: str(choice) for group, choice in choices.items() if not group.startswith("hydra")})
    except ValueError:  # composed outside a Hydra run (tests): no choices recorded
        pass
    container = OmegaConf.to_container(cfg, resolve=True)
    for group in ("dataset", "model", "optimizer", "scheduler", "trainer"):
        for key, value in (container.get(group) or {}).items():
            if key in ("_target_", "_partial_"):
                continue
            if value is None or isinstance(value, (list, dict, tuple)):
                value = str(value)
            params[f"{group}.{key}"] = value
    return params
