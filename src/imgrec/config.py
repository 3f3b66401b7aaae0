"""Where the configs live, and the checks and conversions train.py applies to a composed config."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.errors import ImgrecError

# configs/ sits at the repository root beside src/ (installed with `pip install -e .`)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


# `_target_`s may name only what imgrec.registry lists, and the exact callables the user trusts on the command
# line (`allowed_targets=[mypkg.models.Net]`): a config, or the config stored in a checkpoint someone sent
# you, must not be able to call torch.load, os.system or an imgrec function that writes files.
_user_allowed: set[str] = set()
# resolvers that turn a string into config nodes: the only way an unresolvable value could become a _target_
NODE_MAKING_RESOLVERS = ("oc.create", "oc.decode")


def allow_targets(names) -> None:
    """Trust exactly these callables (the command line's `allowed_targets`), replacing any earlier list."""
    from imgrec.registry import user_callable_problem

    trusted = set()
    for name in names or []:
        if not isinstance(name, str) or not name.strip("."):
            raise ImgrecError(f"allowed_targets entry {name!r} must be the dotted path of a callable, e.g. mypkg.models.Net")
        problem = user_callable_problem(name)
        if problem is not None:
            raise ImgrecError(f"allowed_targets entry {name!r} cannot be trusted: {problem}")
        trusted.add(name)
    _user_allowed.clear()
    _user_allowed.update(trusted)


def target_problem(target) -> str | None:
    """Why `target` may not be called, or None when it may."""
    from imgrec.registry import FAMILY_SUMMARY, family_kind, registered_kind

    if not isinstance(target, str):
        return f"must be a string naming a callable, not {type(target).__name__}"
    if registered_kind(target) is not None or target in _user_allowed or family_kind(target) is not None:
        return None
    return (f"is not allowed: imgrec builds only its own registered components and {FAMILY_SUMMARY}. "
            f"If you trust {target}, add allowed_targets=[{target}] to the command line")


def _resolved_items(node, where: str):
    """(path, value) of each child of a config node, interpolations resolved one value at a time, as
    Hydra's instantiate will resolve them. A value that cannot be resolved yet (a `${hydra:...}` outside
    a run, a `???`) is skipped unless it could turn into config nodes."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, (DictConfig, ListConfig)):
        keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            path = f"{where}[{key}]" if isinstance(node, ListConfig) else (f"{where}.{key}" if where else str(key))
            try:
                yield key, path, node[key]
            except OmegaConfBaseException:
                raw = node._get_node(key)._value()
                if isinstance(raw, str) and any(resolver in raw for resolver in NODE_MAKING_RESOLVERS):
                    raise ImgrecError(f"{path}={raw!r} builds config nodes from a string ({', '.join(NODE_MAKING_RESOLVERS)}), "
                                      "which imgrec does not allow; write the values out") from None
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key, f"{where}.{key}" if where else str(key), value
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield index, f"{where}[{index}]", value


def check_targets(node, where: str | None = None, skip=()) -> None:
    """Raise before anything is instantiated if any `_target_` under `node` may not be called (top-level
    keys in `skip` are left out)."""
    from omegaconf import DictConfig, ListConfig

    if where is None:
        where = node._get_full_key(None) if isinstance(node, (DictConfig, ListConfig)) else ""
    for key, path, value in _resolved_items(node, where):
        if key in skip:
            continue
        if key == "_target_":
            problem = target_problem(value)
            if problem is not None:
                raise ImgrecError(f"{path}={value!r} {problem}")
        elif isinstance(value, (DictConfig, ListConfig, dict, list, tuple)):
            check_targets(value, path)


def stored_component(component, kind: str, where: str) -> dict:
    """A component config read from a checkpoint (data, not code), made safe to build: its `_target_` must
    be one imgrec registers for `kind` (a renamed one is mapped to its new path) or an `allowed_targets`
    entry, and nothing inside it may name another target, use Hydra's `_..._` keys or interpolate."""
    from imgrec.registry import canonical, registered_kind

    if not isinstance(component, dict) or not isinstance(component.get("_target_"), str):
        raise ImgrecError(f"{where} is not a component config with a _target_ string; the checkpoint is damaged")
    target = component["_target_"]
    if registered_kind(target) != kind and target not in _user_allowed:
        raise ImgrecError(f"{where}._target_={target!r} is not allowed: a checkpoint may only name one of imgrec's "
                          f"{kind} builders. If you trust {target}, add allowed_targets=[{target}] to the command line")

    def check_value(value, path: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                if not isinstance(key, str) or key.startswith("_"):
                    raise ImgrecError(f"{path}.{key} is not allowed in a checkpoint's stored config: only plain "
                                      "settings may sit inside a component (no _target_, _args_, _partial_ ...)")
                check_value(child, f"{path}.{key}")
        elif isinstance(value, (list, tuple)):
            for index, child in enumerate(value):
                check_value(child, f"{path}[{index}]")
        elif isinstance(value, str) and "${" in value:
            raise ImgrecError(f"{path}={value!r} is an interpolation; a checkpoint's stored config holds resolved "
                              "values only")
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            raise ImgrecError(f"{path} holds a {type(value).__name__}; a stored config holds plain values only")

    for key, value in component.items():
        if key != "_target_":
            check_value({key: value}, where)
    return {**component, "_target_": canonical(target)}


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


def resolve_checkpoint_shortcut(cfg: DictConfig) -> None:
    """`ckpt_path=last` or `best` becomes that file of the newest training run under paths.log_dir (for
    imgrec-train: of its own task_name), in place, and says which file it picked."""
    import logging

    from omegaconf import open_dict

    from imgrec.checkpoint import SHORTCUTS, resolve_ckpt_path

    if cfg.get("ckpt_path") not in SHORTCUTS:
        return
    # imgrec-train (the config with an optimizer) resumes runs of its own task_name; the others read training runs
    task = cfg.task_name if "optimizer" in cfg else "train"
    path = resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.log_dir) / task)
    logging.getLogger("imgrec").info(f"ckpt_path={cfg.ckpt_path}: {path}")
    with open_dict(cfg):
        cfg.ckpt_path = path


def check_top_level(cfg: DictConfig) -> None:
    from imgrec.training.settings import logged_metric_names

    check_tool_config(cfg)
    resolve_checkpoint_shortcut(cfg)
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
    from imgrec.training.callbacks import Callback
    from imgrec.training.settings import logged_metric_names

    callbacks = {}
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        callback = build(callback_cfg)
        if not isinstance(callback, Callback):
            raise ImgrecError(f"callbacks.{name} builds a {type(callback).__name__}, not an imgrec.training.callbacks.Callback")
        callback.check(logged_metric_names())
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
    for group in ("dataset", "model", "optimizer", "scheduler", "trainer"):
        params.update(_flatten({key: value for key, value in (container.get(group) or {}).items()
                                if key not in ("_target_", "_partial_")}, f"{group}."))
    params = {key: value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
              for key, value in params.items()}
    first = [key for key in params if key in overridden]
    return {**{key: params[key] for key in first}, **{key: v for key, v in params.items() if key not in first}}
