"""What every command checks before Hydra acts on its config.

Hydra does work of its own before it calls a command: it instantiates `hydra.callbacks`, the launcher
and the sweeper, configures logging from `hydra.job_logging` (whose `()` and `class` keys call code),
creates the run folder and writes `.hydra/` and the log file into it. So the command line is composed
here first, the way Hydra will compose it, and refused with one line (exit 2) when it names code
imgrec does not build, has a typo, or points at a run folder that cannot or must not be used. The run
folder is then locked for the life of the process, so a second run started in it is refused.
"""

import difflib
import fcntl
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.config import CONFIG_DIR, allow_targets, check_targets
from imgrec.errors import ImgrecError

LOCK_NAME = ".imgrec.lock"
# logging.config.dictConfig builds handlers from `class` and factories from `()`: only these may be named
LOGGING_HANDLER_CLASSES = frozenset({
    "logging.StreamHandler", "logging.FileHandler", "logging.NullHandler",
    "logging.handlers.RotatingFileHandler", "logging.handlers.TimedRotatingFileHandler",
    "logging.handlers.WatchedFileHandler",
})
LOGGING_STREAMS = frozenset({"ext://sys.stdout", "ext://sys.stderr"})
HYDRA_BUILT = {"callbacks": "hydra_callback", "launcher": "launcher", "sweeper": "sweeper"}
_held_locks: list = []  # open lock files; the lock lasts as long as the process


def preflight(config_name: str, argv: list[str], task_name: str) -> list[str]:
    """Check the command line before Hydra runs; returns argv with the run (or sweep) folder pinned to the
    one that was checked and locked. --help, --cfg and --info are left to Hydra untouched."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun:
        return argv
    hydra, config_name = _hydra(args, config_name, task_name)
    try:
        mode = hydra.get_mode(config_name=config_name, overrides=list(args.overrides))
        multirun = args.multirun or (mode is not None and mode.name == "MULTIRUN")
        cfg = _compose(hydra, config_name, list(args.overrides), multirun)
        check_composed(cfg, list(args.overrides), _known_top_level(hydra, config_name, multirun))
        for alternative in sweep_alternatives(cfg, list(args.overrides)):
            check_composed(_compose(hydra, config_name, alternative, True), alternative)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(str(OmegaConf.select(cfg, key)))
    check_run_folder(folder, key)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 holds the lock for every process
        if not multirun and task_name == "train" and not cfg.get("ckpt_path"):
            refuse_finished_run(folder)
        lock_run_folder(folder, key)
    return [a for a in argv if not a.startswith(f"{key}=")] + [f"{key}={folder}"]


def _hydra(args, config_name: str, task_name: str):
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    search_path = create_automatic_config_search_path(None, None, str(args.config_path or CONFIG_DIR))
    if args.config_dir is not None:
        config_dir = Path(args.config_dir).expanduser().resolve()
        if not config_dir.is_dir():
            raise ImgrecError(f"--config-dir {args.config_dir}: no such folder")
        search_path.prepend(provider="command-line", path=f"file://{config_dir}", anchor=SearchPathQuery(provider="schema"))
    return Hydra.create_main_hydra2(task_name=f"imgrec-{task_name}", config_search_path=search_path), \
        args.config_name or config_name


def _compose(hydra, config_name: str, overrides: list[str], multirun: bool) -> DictConfig:
    """The config Hydra will run, without configuring logging (that would already call code)."""
    from hydra.types import RunMode

    try:
        return hydra.compose_config(config_name=config_name, overrides=overrides, with_log_configuration=False,
                                    run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
    except Exception as error:  # Hydra raises many types for a bad command line
        raise ImgrecError(explain_composition_error(error, hydra, config_name, overrides)) from None


def _known_top_level(hydra, config_name: str, multirun: bool) -> set[str]:
    """Top-level keys of the command's config as shipped, and every config group's name."""
    bare = _compose(hydra, config_name, [], multirun)
    groups = {name.split("/")[0] for name in bare.hydra.runtime.choices}
    return {*bare.keys(), *groups}


def explain_composition_error(error: Exception, hydra, config_name: str, overrides: list[str]) -> str:
    """Hydra's composition error as one line, with the nearest valid name where there is one."""
    from hydra.errors import MissingConfigException

    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    message = " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        return (f"{group}={choice} is not one of the {group} choices{_did_you_mean(choice, error.options)}: "
                f"{', '.join(error.options)}")
    bad_key = _bad_override_key(str(error))
    if bad_key is not None:
        parent, _, leaf = bad_key.rpartition(".")
        try:
            base = _compose(hydra, config_name, [o for o in overrides if not o.lstrip("+~").startswith(bad_key)], False)
            node = OmegaConf.select(base, parent) if parent else base
            names = list(node.keys()) if isinstance(node, DictConfig) else []
            if not parent:
                names += [name.split("/")[0] for name in base.hydra.runtime.choices if not name.startswith("hydra")]
        except ImgrecError:
            names = []
        where = f"in {parent}" if parent else "at the top level"
        return f"{bad_key}: there is no such key {where}{_did_you_mean(leaf, names, parent)}"
    override = getattr(error, "override", None)
    return f"{override}: {message}" if override else message


def _bad_override_key(message: str) -> str | None:
    """The key of an override Hydra could not apply ("Could not override 'optimzer'", "full_key: optimizer.lrr")."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("full_key:"):
            return line.split(":", 1)[1].strip() or None
        if line.startswith("Could not override '"):
            return line.split("'")[1]
    return None


def _did_you_mean(name: str, candidates, parent: str = "") -> str:
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)"


def check_composed(cfg: DictConfig, overrides: list[str], known_top_level: set[str] | None = None) -> None:
    """Every check that needs no data: top-level keys, who may set allowed_targets, every `_target_` in the
    command's config and in the parts of Hydra's config that Hydra builds, and logging factories."""
    if known_top_level is not None:
        for key in cfg:
            if key not in known_top_level:
                groups = sorted(known_top_level - {"hydra"})
                raise ImgrecError(f"{key} is not a config group or setting of this command{_did_you_mean(key, groups)} "
                                  f"(a +{key}=... override adds an unused key instead of choosing a group)")
    allowed = cfg.get("allowed_targets") or []
    if allowed and not any(o.startswith(("allowed_targets=", "+allowed_targets=")) for o in overrides):
        raise ImgrecError(f"allowed_targets={list(allowed)} is set in a config file: it counts only when typed on the "
                          "command line (allowed_targets=[mypkg.models.Net]), so a config cannot trust code for you")
    allow_targets(allowed)
    check_targets(cfg, "", skip=("hydra",))
    for key in HYDRA_BUILT:
        node = OmegaConf.select(cfg, f"hydra.{key}")
        if node is not None:
            check_targets(node, f"hydra.{key}")
    for key in ("job_logging", "hydra_logging"):
        node = OmegaConf.select(cfg, f"hydra.{key}")
        if node is not None:
            check_logging_config(OmegaConf.to_container(node, resolve=False), f"hydra.{key}")


def check_logging_config(node, where: str) -> None:
    """A logging.config.dictConfig dict may name only standard handler classes and standard streams."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}"
            if key == "()":
                raise ImgrecError(f"{path}: logging factories ('()') call code; imgrec's logging configs may not use them")
            if key == "class" and value not in LOGGING_HANDLER_CLASSES:
                raise ImgrecError(f"{path}={value!r} is not allowed: a logging handler must be one of "
                                  f"{', '.join(sorted(LOGGING_HANDLER_CLASSES))}")
            if isinstance(value, str) and value.startswith(("ext://", "cfg://")) and value not in LOGGING_STREAMS:
                raise ImgrecError(f"{path}={value!r} is not allowed: only ext://sys.stdout and ext://sys.stderr")
            check_logging_config(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_logging_config(value, f"{where}[{index}]")


def sweep_alternatives(cfg: DictConfig, overrides: list[str]) -> list[list[str]]:
    """For a sweep, the command lines that pick each listed choice of a config group (from the command line's
    `group=a,b` and the sweeper's `params`): each is composed and checked, since a group file can set
    anything, Hydra's own config included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = {name for name in cfg.hydra.runtime.choices}
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    candidates = [*overrides, *(f"{key}={value}" for key, value in params.items())]
    parser = OverridesParser.create()
    alternatives = []
    for text in candidates:
        try:
            override = parser.parse_override(text)
        except Exception:
            continue  # Hydra reports it when the sweep starts
        if not override.is_sweep_override() or override.key_or_group not in groups:
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # an interval: numbers, not files
            continue
        rest = [o for o in overrides if o != text]
        alternatives += [[*rest, f"{override.key_or_group}={value}"] for value in values]
    return alternatives


def check_run_folder(folder: Path, key: str) -> None:
    """The run folder must be a folder we can create or write to."""
    if folder.exists() and not folder.is_dir():
        raise ImgrecError(f"{key}={folder} is a file, not a folder; choose another {key}")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ImgrecError(f"{key}={folder}: {existing} is a file, so the folder cannot be created; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImgrecError(f"{key}={folder}: {existing} is not writable by this user; choose another {key} "
                          "(e.g. paths.log_dir=~/imgrec-outputs)")


def refuse_finished_run(folder: Path) -> None:
    """A new run never writes into another run's folder (its .hydra/ and log would be changed first)."""
    last = folder / "checkpoints" / "last.pt"
    if last.exists():
        raise ImgrecError(f"{folder} already holds a run ({last}); resume it with ckpt_path={last}, or start the new run "
                          "in another folder (hydra.run.dir=...)")


def lock_run_folder(folder: Path, key: str) -> None:
    """An exclusive lock on the run folder, held until the process ends (the OS drops it even after SIGKILL)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_NAME, "a+")
    except OSError as error:
        raise ImgrecError(f"{key}={folder} cannot be used: {error.strerror or error}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ImgrecError(f"{folder} is in use by another imgrec process (pid {holder}); wait for it to finish or "
                          f"choose another {key}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_locks.append(handle)
    logging.getLogger("imgrec").debug(f"locked {folder}")
