"""Where the configs live, and what every command does with a composed config: the `_target_` checks,
building components, checkpoint-stored components read back as data, the ckpt_path shortcuts, and the
dataset built for a task."""

from pathlib import Path

from omegaconf import DictConfig

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
                # plain keys: names, or whole numbers (dataset.mask_values maps raw pixel values)
                plain = isinstance(key, str) and not key.startswith("_") or type(key) is int
                if not plain:
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

