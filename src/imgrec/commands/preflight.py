"""What every command checks before Hydra acts on its config.

Hydra does work of its own before it calls a command: it instantiates `hydra.callbacks`, the launcher
and the sweeper, configures logging from `hydra.job_logging` (whose `()` and `class` keys call code),
creates the run folder and writes `.hydra/` and the log file into it. So the command line is composed
here first, the way Hydra will compose it, and refused with one line (exit 2) when it names code
imgrec does not build, has a typo, or points at a run folder that cannot or must not be used. The run
folder is then locked for the life of the process, so a second run started in it is refused.
"""

import difflib
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.config import CONFIG_DIR, allow_targets, check_targets
from imgrec.errors import ImgrecError
from imgrec.locking import lock_folder

# logging.config.dictConfig builds handlers and formatters from `class` and factories from `()`: only these
# classes may be named, only these streams, and a log file only inside the run folder (appended to)
LOGGING_CLASSES = frozenset({
    "logging.StreamHandler", "logging.FileHandler", "logging.NullHandler", "logging.Formatter",
    "logging.handlers.RotatingFileHandler", "logging.handlers.TimedRotatingFileHandler",
    "logging.handlers.WatchedFileHandler",
})
LOGGING_STREAMS = frozenset({"ext://sys.stdout", "ext://sys.stderr"})
RUN_FOLDER_REFERENCES = ("${hydra.runtime.output_dir}/", "${hydra:runtime.output_dir}/")
LOG_FILE_NAMES = ("${hydra.job.name}.log", "${hydra:job.name}.log")
# environment variables a config file may set for its jobs (hydra.job.env_set): thread counts and GPU
# selection. Others change what programs do (GIT_CONFIG_*, LD_PRELOAD, PYTHONPATH ...): type them yourself
ENV_ALLOWED = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                         "CUBLAS_WORKSPACE_CONFIG", "PYTORCH_CUDA_ALLOC_CONF"})
ENV_ALLOWED_PREFIXES = ("NCCL_",)
# launcher settings that run shell lines or pass options to sbatch/srun: they count only when typed
LAUNCHER_COMMANDS = ("setup", "srun_args", "additional_parameters")
MIN_FREE_BYTES = 16 * 2**20  # Hydra writes .hydra/ and the log before imgrec runs: it must not fill the disk
# settings that moved to another group: a command line written for an earlier imgrec is told where
MOVED_KEYS = {"trainer.loss": "task.loss", "trainer.mixup": "task.mixup"}
HYDRA_BUILT = {"callbacks": "hydra_callback", "launcher": "launcher", "sweeper": "sweeper"}


def preflight(config_name: str, argv: list[str], task_name: str) -> list[str]:
    """Check the command line before Hydra runs; returns argv with the run (or sweep) folder pinned to the
    one that was checked and locked. --help, --cfg and --info are checked too (Hydra configures logging
    for them), but lock nothing."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.experimental_rerun:
        raise ImgrecError("--experimental-rerun unpickles a saved config, which can run code; run the command again "
                          "with its overrides instead (they are in <run folder>/.hydra/overrides.yaml)")
    if args.shell_completion:
        return argv
    typed = list(args.overrides)
    hydra, config_name = _hydra(args, config_name, task_name)
    try:
        mode = hydra.get_mode(config_name=config_name, overrides=typed)
        multirun = args.multirun or (mode is not None and mode.name == "MULTIRUN")
        cfg = _compose(hydra, config_name, typed, multirun)
        check_composed(cfg, typed, _known_top_level(hydra, config_name, multirun))
        if multirun:
            for alternative in sweep_alternatives(hydra, cfg, typed):
                check_composed(_compose(hydra, config_name, alternative, True), typed)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    if args.help or args.hydra_help or args.cfg or args.info:
        return argv
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = Path(str(OmegaConf.select(cfg, key)))
    check_run_folder(folder, key)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 holds the lock for every process
        refuse_used_folder(folder, key, task_name, cfg, multirun)
        lock_folder(folder, key)
    return [a for a in argv if not a.startswith(f"{key}=")] + [f"{key}={quoted(str(folder))}"]


def quoted(value: str) -> str:
    """A value as a quoted string of Hydra's override grammar: commas, brackets and quotes stay literal."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


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
    moved = next((old for old in MOVED_KEYS if bad_key and (bad_key == old or bad_key.startswith(old + "."))), None)
    if moved is not None:
        return (f"{bad_key}: {moved} moved to {MOVED_KEYS[moved]} when tasks arrived (imgrec 0.2); write "
                f"{MOVED_KEYS[moved]}{bad_key[len(moved):]}")
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
        if line.startswith(("Could not override '", "Could not delete from config. '")):
            return line.split("'")[1]
    return None


def _did_you_mean(name: str, candidates, parent: str = "") -> str:
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {parent + '.' if parent else ''}{close[0]}?)"


def check_composed(cfg: DictConfig, typed: list[str], known_top_level: set[str] | None = None) -> None:
    """Every check that needs no data: top-level keys, what only the command line may set, every `_target_`
    in the command's config and in the parts of Hydra's config that Hydra builds, logging factories and
    files, environment variables and launcher commands. `typed`: the overrides the user typed."""
    if known_top_level is not None:
        for key in cfg:
            if key not in known_top_level:
                groups = sorted(known_top_level - {"hydra"})
                raise ImgrecError(f"{key} is not a config group or setting of this command{_did_you_mean(key, groups)} "
                                  f"(a +{key}=... override adds an unused key instead of choosing a group)")
    allowed = cfg.get("allowed_targets") or []
    if allowed and not _typed(typed, "allowed_targets"):
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
    check_hydra_writes(cfg, typed)


def _typed(typed: list[str], key: str) -> bool:
    """Whether the user typed an override of `key` (or of something under it)."""
    return any(o.lstrip("+~").split("=", 1)[0].split("@")[0] in (key,) or o.lstrip("+~").startswith(key + ".")
               for o in typed)


def check_logging_config(node, where: str) -> None:
    """A logging.config.dictConfig dict may name only standard classes and streams, and write a log file only
    inside the run folder, appending. Its strings are read as written: an interpolation could hide a stream."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}"
            if key == "()":
                raise ImgrecError(f"{path}: logging factories ('()') call code; imgrec's logging configs may not use them")
            if key == "class" and value not in LOGGING_CLASSES:
                raise ImgrecError(f"{path}={value!r} is not allowed: a logging class must be one of "
                                  f"{', '.join(sorted(LOGGING_CLASSES))}")
            if key == "filename":
                inside = next((value[len(r):] for r in RUN_FOLDER_REFERENCES if isinstance(value, str)
                               and value.startswith(r)), None)
                if inside is None or ".." in Path(inside).parts or ("${" in inside and inside not in LOG_FILE_NAMES):
                    raise ImgrecError(f"{path}={value!r} is not allowed: a log file goes inside the run folder, e.g. "
                                      "${hydra.runtime.output_dir}/${hydra.job.name}.log")
            elif key == "mode" and value != "a":
                raise ImgrecError(f"{path}={value!r} is not allowed: log files are appended to (mode: a)")
            elif isinstance(value, str) and "${" in value:
                raise ImgrecError(f"{path}={value!r}: interpolations are not allowed in logging settings (only a log "
                                  "file's name under ${hydra.runtime.output_dir})")
            elif isinstance(value, str) and value.startswith(("ext://", "cfg://")) and value not in LOGGING_STREAMS:
                raise ImgrecError(f"{path}={value!r} is not allowed: only ext://sys.stdout and ext://sys.stderr")
            check_logging_config(value, path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_logging_config(value, f"{where}[{index}]")


def check_hydra_writes(cfg: DictConfig, typed: list[str]) -> None:
    """What else in Hydra's config acts outside the run folder: where .hydra/ goes, environment variables of
    the jobs, shell lines and scheduler options of a launcher, the Optuna study's database."""
    subdir = OmegaConf.select(cfg, "hydra.output_subdir", throw_on_resolution_failure=False)
    if subdir is not None and (Path(str(subdir)).is_absolute() or ".." in Path(str(subdir)).parts):
        raise ImgrecError(f"hydra.output_subdir={subdir!r} is not allowed: Hydra's record goes inside the run folder "
                          "(e.g. .hydra)")
    env = OmegaConf.select(cfg, "hydra.job.env_set") or {}
    for name in env:
        if name not in ENV_ALLOWED and not name.startswith(ENV_ALLOWED_PREFIXES) and not _typed(typed, f"hydra.job.env_set.{name}"):
            raise ImgrecError(f"hydra.job.env_set.{name} is not allowed in a config file: environment variables change "
                              f"what programs do. A config may set {', '.join(sorted(ENV_ALLOWED))} and NCCL_*; type "
                              "others on the command line")
    launcher = OmegaConf.select(cfg, "hydra.launcher") or {}
    for key in LAUNCHER_COMMANDS:
        if launcher.get(key) and not _typed(typed, f"hydra.launcher.{key}"):
            raise ImgrecError(f"hydra.launcher.{key} is set in a config file: it runs commands or passes options to the "
                              "cluster scheduler, so it counts only when typed on the command line")
    storage = OmegaConf.select(cfg, "hydra.sweeper.storage") if OmegaConf.select(cfg, "hydra.sweeper") else None
    if storage is not None and not _typed(typed, "hydra.sweeper.storage"):
        raw = cfg.hydra.sweeper._get_node("storage")._value()
        if not (isinstance(raw, str) and raw.startswith("sqlite:///${hydra.sweep.dir}/") and ".." not in raw):
            raise ImgrecError(f"hydra.sweeper.storage={raw!r} is not allowed in a config file: the study's database goes "
                              "in the sweep folder (sqlite:///${hydra.sweep.dir}/optuna.db), or type it on the command line")


def sweep_alternatives(hydra, cfg: DictConfig, typed: list[str]) -> list[list[str]]:
    """The command lines of a sweep's jobs, one setting at a time: every listed value of the command line's
    sweeps (`group=a,b`, `glob(...)`), and every entry of the sweeper's `params` (which a config file writes).
    Each is composed and checked, since a value can pick a group file, and a group file can set anything,
    Hydra's own config included. Intervals are numbers and need no check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    candidates = [(text, True) for text in typed] + [(f"{key}={value}", False) for key, value in params.items()]
    parser = OverridesParser.create()
    alternatives = []
    for text, was_typed in candidates:
        try:
            override = parser.parse_override(text)
        except Exception as error:
            raise ImgrecError(f"{text}: {str(error).splitlines()[0]}") from None
        key = override.key_or_group
        if not was_typed and key in ("allowed_targets", "hydra.sweeper.params"):
            raise ImgrecError(f"hydra.sweeper.params.{key} is not allowed: a search may not set what imgrec trusts")
        rest = [o for o in typed if o != text]
        if not override.is_sweep_override():
            if not was_typed:  # a fixed setting of every trial
                alternatives.append([*rest, text])
            continue
        if isinstance(override.value(), Glob):
            values = override.value().filter(hydra.config_loader.get_group_options(key))
        else:
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # an interval or range of numbers
                continue
        alternatives += [[*rest, f"{override.get_key_element()}={value}"] for value in values]
    return alternatives


def check_run_folder(folder: Path, key: str) -> None:
    """The run folder must be a folder we can create or write to, on a disk with some room left."""
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
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ImgrecError(f"{key}={folder}: only {free / 2**20:.1f} MiB free on its disk; free some space or choose "
                          f"another {key}")


def refuse_used_folder(folder: Path, key: str, task_name: str, cfg: DictConfig, multirun: bool) -> None:
    """A new run never writes into another run's folder: Hydra would rewrite its .hydra/ record and log, and
    the run its files. A training run may continue in its own folder (ckpt_path inside it); an Optuna study
    continues in its sweep folder (each trial gets a time-stamped folder of its own)."""
    if multirun:
        optuna = str(OmegaConf.select(cfg, "hydra.sweeper._target_") or "").endswith("OptunaSweeper")
        if (folder / "multirun.yaml").exists() and not optuna:
            raise ImgrecError(f"{folder} already holds a sweep (its multirun.yaml); its jobs' folders would be "
                              f"overwritten: choose another {key}")
        return
    last = folder / "checkpoints" / "last.pt"
    ckpt = cfg.get("ckpt_path")
    resuming_here = task_name == "train" and ckpt and Path(str(ckpt)).resolve().is_relative_to(folder.resolve())
    if resuming_here:
        return
    if last.exists():
        raise ImgrecError(f"{folder} already holds a run ({last}); resume it with ckpt_path={last}, or start the new run "
                          f"in another folder ({key}=...)")
    # under torchrun every process runs Hydra in the same folder, and another rank may have written .hydra/ first
    if (folder / ".hydra").exists() and "RANK" not in os.environ:
        raise ImgrecError(f"{folder} already holds another run's record (.hydra/); start this one in another folder "
                          f"({key}=...)")
