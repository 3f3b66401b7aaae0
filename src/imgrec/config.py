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
