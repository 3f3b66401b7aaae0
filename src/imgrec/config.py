"""Where the configs live, and the checks and conversions train.py applies to a composed config."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.errors import ImgrecError

# configs/ sits at the repository root beside src/ (installed with `pip install -e .`)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def build(node, **kwargs):
    """hydra.utils.instantiate, with our own errors unwrapped so users read the message, not a traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ImgrecError):
            raise error.__cause__ from None
        raise ImgrecError(str(error)) from error


def check_top_level(cfg: DictConfig) -> None:
    from imgrec.trainer import logged_metric_names

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
