"""What imgrec-train checks of a composed config before anything is built, and what it records of it:
top-level values, whether a checkpoint can be resumed under it, the callbacks, and the hyperparameters
TensorBoard's HPARAMS tab shows."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.config import resolve_checkpoint_shortcut
from imgrec.errors import ImgrecError
from imgrec.registry import canonical


def check_top_level(cfg: DictConfig, task) -> None:
    """The top-level keys: nothing left `???`, the optimized metric one the task logs, a whole-number seed
    (ckpt_path=last/best is resolved here too). The config's targets were checked before the task was built."""
    resolve_checkpoint_shortcut(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ImgrecError(
            f"{', '.join(missing)} must be set: the config leaves {'them' if len(missing) > 1 else 'it'} to you "
            f"(???); add {' '.join(f'{key}=...' for key in missing)} to the command line"
        )
    if cfg.optimized_mode not in ("min", "max"):
        raise ImgrecError(f"optimized_mode={cfg.optimized_mode!r} must be 'min' or 'max'")
    adversarial_only = ("train/adv_loss", "val/robust_acc")
    if cfg.optimized_metric in adversarial_only and cfg.optimized_metric not in task.metric_names():
        raise ImgrecError(f"optimized_metric={cfg.optimized_metric} is logged only by adversarial training: add "
                          "trainer.adversarial={method:pgd,eps:0.1} (docs/adversarial-training.md), or choose "
                          f"optimized_metric={task.monitor}")
    task.check_metric("optimized_metric", cfg.optimized_metric)
    if not isinstance(cfg.seed, int):
        raise ImgrecError(f"seed={cfg.seed!r} must be a whole number")


# what a resume cannot change: the network, and the kinds of optimizer, schedule and dataset.
# model.in_channels/num_classes follow the dataset, whose class names train.py compares itself.
RESUME_MUST_MATCH = (
    "model.", "optimizer._target_", "optimizer.exempt_norm_and_bias", "optimizer.backbone_lr_scale",
    "scheduler._target_", "dataset._target_", "trainer.ema_decay",
    # the training images themselves: k per class and the generated share
    "dataset.train_per_class", "dataset.synthetic",
    # a resume that dropped or changed the adversarial setting would quietly train something else
    "trainer.adversarial",
)
# settings added after checkpoints were written: a checkpoint without one was trained as its default says
ADDED_SETTINGS = {"dataset.train_per_class": None, "dataset.synthetic.root": None, "dataset.synthetic.ratio": 0.0}
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
        old, new = saved_flat.get(key, ADDED_SETTINGS.get(key)), current_flat.get(key)
        if key.endswith("_target_") and isinstance(old, str):
            old = canonical(old)  # a checkpoint written before a class moved names its old path
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


def instantiate_callbacks(cfg: DictConfig, metric_names: list[str]) -> dict:
    """The `callbacks` group as {name: callback}; names key their state in checkpoints."""
    from imgrec.config import build
    from imgrec.training.callbacks import Callback

    callbacks = {}
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        callback = build(callback_cfg)
        if not isinstance(callback, Callback):
            raise ImgrecError(f"callbacks.{name} builds a {type(callback).__name__}, not an imgrec.training.callbacks.Callback")
        callback.check(metric_names)
        callbacks[name] = callback
    return callbacks


def hyperparameters(cfg: DictConfig) -> dict:
    """The run's settings for TensorBoard's HPARAMS tab, as `group.key: value` (nested settings flattened,
    booleans kept), the keys this run's command line set first: in a sweep those are the columns that vary."""
    params: dict = {"seed": cfg.seed}
    overridden: list[str] = []
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        params.update({group: str(choice) for group, choice in hydra_cfg.runtime.choices.items()
                       if not group.startswith("hydra") and choice is not None})
        overridden = [o.lstrip("+~").split("=", 1)[0] for o in hydra_cfg.overrides.task]
    except ValueError:  # composed outside a Hydra run (tests): no choices recorded
        pass
    container = OmegaConf.to_container(cfg, resolve=True)
    for group in ("task", "dataset", "model", "optimizer", "scheduler", "trainer"):
        params.update(_flatten({key: value for key, value in (container.get(group) or {}).items()
                                if key not in ("_target_", "_partial_")}, f"{group}."))
    params = {key: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
              for key, value in params.items()}
    first = [key for key in params if key in overridden]
    return {**{key: params[key] for key in first}, **{key: v for key, v in params.items() if key not in first}}
