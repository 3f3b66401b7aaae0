"""Hostile configs and checkpoints: refused with a clear message before anything runs, leaving no trace.

Each attack below ran code or changed files before issue #15: a checkpoint's stored config calling
torch.load on a pickle, destructive imgrec functions named as targets, attribute paths reaching os and
shutil through an imported module, and Hydra's own callbacks, launcher, sweeper and logging factories.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from imgrec.checkpoint import load_checkpoint, save_checkpoint
from imgrec.config import allow_targets, check_targets
from imgrec.errors import ImgrecError
from imgrec.commands.preflight import preflight
from tests.conftest import tool_cfg


class ShellPayload:
    """Unpickling this runs a shell command: what a hostile pickle does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: compared before and after an attack."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def victim(tmp_path):
    """A folder of a user's files that attacks try to change, plus where a marker file would appear."""
    folder = tmp_path / "victim"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "notes.txt").write_text("keep me")
    return folder


def torch_load_bomb(marker: Path) -> dict:
    """The issue's sketch: torch.load(f=BytesIO(<pickle that runs `touch marker`>), weights_only=False)."""
    return {"_target_": "torch.load", "weights_only": False,
            "f": {"_target_": "torch.serialization.io.BytesIO", "_args_": [pickle.dumps(ShellPayload(f"touch {marker}"))]}}


def hostile_copy(digits_checkpoint: Path, destination: Path, edit) -> Path:
    state = load_checkpoint(digits_checkpoint)
    edit(state)
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")}, destination)
    return destination


def run_command_in_process(name: str, ckpt: Path, run_dir: Path, image: Path):
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.commands.export import export_checkpoint
    from imgrec.commands.features import extract_features
    from imgrec.commands.predict import predict_images

    work = {"eval": evaluate_checkpoint, "predict": predict_images, "export": export_checkpoint,
            "features": extract_features}[name]
    extra = [f"inputs={image}"] if name == "predict" else []
    return work(tool_cfg(name, run_dir, f"ckpt_path={ckpt}", *extra))


@pytest.fixture
def grey_image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "digit.png"
    Image.new("L", (16, 16), 128).save(path)
    return path


@pytest.mark.parametrize("command", ["eval", "predict", "export", "features"])
def test_a_checkpoint_whose_config_calls_torch_load_on_a_pickle_is_refused(digits_checkpoint, tmp_path, victim,
                                                                              grey_image, command):
    marker = victim / "owned"
    before = snapshot(victim)
    hostile = hostile_copy(digits_checkpoint, tmp_path / "sent_to_you.pt",
                           lambda state: state["config"]["model"].update(widths=torch_load_bomb(marker)))
    with pytest.raises(ImgrecError, match=r"config.model.widths._target_ is not allowed in a checkpoint's stored config"):
        run_command_in_process(command, hostile, tmp_path / "out", grey_image)
    assert not marker.exists() and snapshot(victim) == before


@pytest.mark.parametrize("target", [
    "os.system", "builtins.eval", "subprocess.run", "torch.load",
    "imgrec.data.archives.extract_archive",     # wiped a destination folder
    "imgrec.checkpoint.save_checkpoint",         # overwrote a file
    "imgrec.checkpoint.shutil.copyfile",         # an attribute path through an import
    "imgrec.checkpoint.os.system", "torch.os.system", "torch.optim.sgd.os.system",
])
def test_a_checkpoint_may_name_only_imgrec_model_and_dataset_builders(digits_checkpoint, tmp_path, victim, target):
    from imgrec.commands.eval import evaluate_checkpoint

    before = snapshot(victim)

    def edit(state):
        state["config"]["model"] = {"_target_": target, "src": str(victim / "data" / "notes.txt"),
                                    "dst": str(victim / "data" / "notes.txt"), "archive": str(victim),
                                    "destination": str(victim / "data")}

    hostile = hostile_copy(digits_checkpoint, tmp_path / "sent.pt", edit)
    with pytest.raises(ImgrecError, match=rf"config.model._target_='{target}' is not allowed: a checkpoint may only "
                                          r"name one of imgrec's model builders"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={hostile}"))
    assert snapshot(victim) == before


def test_a_checkpoint_whose_dataset_names_a_model_builder_is_refused(digits_checkpoint, tmp_path):
    """A registered target in the wrong place is refused too: the dataset slot takes dataset builders only."""
    from imgrec.commands.eval import evaluate_checkpoint

    hostile = hostile_copy(digits_checkpoint, tmp_path / "sent.pt", lambda state: state["config"]["dataset"].update(
        _target_="imgrec.models.small_cnn.SmallCNN"))
    with pytest.raises(ImgrecError, match=r"config.dataset._target_='imgrec.models.small_cnn.SmallCNN' is not allowed"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={hostile}"))


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "torch.load",
                                    "imgrec.checkpoint.shutil.copyfile", "torch.os.system"])
def test_a_hostile_target_in_the_command_config_is_refused_before_anything_is_built(compose_cfg, tmp_path, target):
    from imgrec.commands.train import train

    marker = tmp_path / "marker"
    cfg = compose_cfg("dataset=fake", f"model._target_={target}", f"+model.command='touch {marker}'")
    with pytest.raises(ImgrecError, match=rf"model._target_='{target}' is not allowed: imgrec builds only its own "
                                          "registered components"):
        train(cfg)
    assert not marker.exists() and not (tmp_path / "run").exists()


def write_experiment(config_dir: Path, body: str) -> Path:
    (config_dir / "experiment").mkdir(parents=True, exist_ok=True)
    (config_dir / "experiment" / "evil.yaml").write_text("# @package _global_\n" + body)
    return config_dir


@pytest.mark.parametrize("body, message", [
    # a value that calls torch.load, as in the issue
    ("model:\n  activation:\n    _target_: torch.load\n    f: x\n", r"model.activation._target_='torch.load' is not allowed"),
    # Hydra instantiates its callbacks, launcher and sweeper before imgrec's command runs
    ("hydra:\n  callbacks:\n    x:\n      _target_: torch.load\n      f: x\n",
     r"hydra.callbacks.x._target_='torch.load' is not allowed"),
    ("hydra:\n  launcher:\n    _target_: os.system\n", r"hydra.launcher._target_='os.system' is not allowed"),
    ("hydra:\n  sweeper:\n    _target_: imgrec.checkpoint.os.system\n",
     r"hydra.sweeper._target_='imgrec.checkpoint.os.system' is not allowed"),
    # logging.config.dictConfig calls `()` factories and `class` handlers
    ("hydra:\n  job_logging:\n    handlers:\n      x:\n        (): os.system\n", r"logging factories \('\(\)'\) call code"),
    ("hydra:\n  hydra_logging:\n    handlers:\n      console:\n        class: os.system\n",
     r"hydra.hydra_logging.handlers.console.class='os.system' is not allowed"),
    # a string that becomes a node with a _target_ only when resolved
    ("model:\n  activation: \"${oc.create:'{_target_: os.system}'}\"\n",
     r"model.activation._target_='os.system' is not allowed"),
    # a config file cannot trust code on the user's behalf
    ("allowed_targets: [os.system]\n", r"allowed_targets=\['os.system'\] is set in a config file"),
])
def test_an_experiment_file_that_names_code_is_refused_before_hydra_acts(tmp_path, body, message):
    config_dir = write_experiment(tmp_path / "my_configs", body)
    run_dir = tmp_path / "run"
    with pytest.raises(ImgrecError, match=message):
        preflight("train", ["--config-dir", str(config_dir), "experiment=evil", f"hydra.run.dir={run_dir}"], "train")
    assert not run_dir.exists()  # refused before Hydra made the run folder, wrote .hydra/ or the log


def test_a_sweep_over_experiment_files_checks_each_of_them(tmp_path):
    config_dir = write_experiment(tmp_path / "c", "hydra:\n  callbacks:\n    x:\n      _target_: os.system\n")
    (config_dir / "experiment" / "fine.yaml").write_text("# @package _global_\ntrainer:\n  max_epochs: 1\n")
    with pytest.raises(ImgrecError, match=r"hydra.callbacks.x._target_='os.system' is not allowed"):
        preflight("train", ["--config-dir", str(config_dir), "-m", "experiment=fine,evil",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}"], "train")


@pytest.mark.slow
def test_the_installed_command_refuses_a_hostile_experiment_with_exit_2_and_no_trace(tmp_path):
    marker = tmp_path / "owned"
    config_dir = write_experiment(tmp_path / "c", f"hydra:\n  callbacks:\n    x:\n      _target_: os.system\n"
                                                  f"      _args_: ['touch {marker}']\n")
    done = subprocess.run([str(Path(sys.executable).parent / "imgrec-train"), "--config-dir", str(config_dir),
                           "experiment=evil"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "error: hydra.callbacks.x._target_='os.system' is not allowed" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "outputs").exists()


def test_allowed_targets_trusts_exact_callables_only(monkeypatch):
    import imgrec.config

    monkeypatch.setattr(imgrec.config, "_user_allowed", set())  # this test's trust ends with it
    node = OmegaConf.create({"model": {"_target_": "collections.OrderedDict"}, "aug": [{"_target_": "os.system"}]})
    with pytest.raises(ImgrecError, match=r"model._target_='collections.OrderedDict' is not allowed.*"
                                          r"allowed_targets=\[collections.OrderedDict\]"):
        check_targets(node)
    allow_targets(["collections.OrderedDict"])
    check_targets(node.model)
    with pytest.raises(ImgrecError, match=r"aug\[0\]._target_='os.system' is not allowed"):
        check_targets(node)
    # a package is not a callable, and a path through an import is what it really is
    with pytest.raises(ImgrecError, match=r"allowed_targets entry 'collections' cannot be trusted: collections is a module"):
        allow_targets(["collections"])
    with pytest.raises(ImgrecError, match=r"'logging.os.system' cannot be trusted: .* is really posix.system"):
        allow_targets(["logging.os.system"])


def test_library_classes_are_checked_after_import():
    """torch.optim, albumentations, torchvision.transforms.v2 and sklearn classes are admitted by what they
    are (a subclass of the family's base, defined in that package), not by the prefix of their path."""
    check_targets(OmegaConf.create({"o": {"_target_": "torch.optim.AdamW"}, "a": {"_target_": "albumentations.Affine"},
                                    "t": {"_target_": "torchvision.transforms.v2.RandomCrop"},
                                    "c": {"_target_": "sklearn.svm.SVC"}}))
    for target in ("torch.optim.sgd.os.system", "torch.optim.lr_scheduler.LambdaLR", "torchvision.io.write_png",
                   "sklearn.utils.Bunch", "albumentations.core.serialization.load", "torch.hub.load"):
        with pytest.raises(ImgrecError, match="is not allowed"):
            check_targets(OmegaConf.create({"x": {"_target_": target}}))


def test_every_shipped_config_target_is_registered_for_its_group():
    from imgrec.config import CONFIG_DIR
    from imgrec.registry import family_kind, registered_kind

    kind_of_group = {"task": "task", "model": "model", "dataset": "dataset", "scheduler": "scheduler", "trainer": "trainer",
                     "callbacks": "callback", "logger": "logger", "augment": "augment", "optimizer": "optimizer",
                     "classifier": "classifier", "hydra": "hydra_callback"}
    checked = 0
    for path in Path(CONFIG_DIR).rglob("*.yaml"):
        group = path.relative_to(CONFIG_DIR).parts[0]
        for line in path.read_text().splitlines():
            if line.strip().lstrip("- ").startswith("_target_:"):
                target = line.split(":", 1)[1].split("#")[0].strip()
                kind = registered_kind(target) or family_kind(target)
                assert kind == kind_of_group[group], (path, target, kind)
                checked += 1
    assert checked > 40  # every group's files were read


def test_a_stored_component_may_not_nest_targets_or_interpolate(digits_checkpoint, tmp_path):
    from imgrec.evaluation.inference import load_trained

    for value, message in (({"_target_": "imgrec.models.small_cnn.SmallCNN"}, r"activation._target_ is not allowed"),
                           ("${oc.env:HOME}", r"activation='\$\{oc.env:HOME\}' is an interpolation")):
        hostile = hostile_copy(digits_checkpoint, tmp_path / "sent.pt",
                               lambda state: state["config"]["model"].update(activation=value))
        with pytest.raises(ImgrecError, match=message):
            load_trained(str(hostile), torch.device("cpu"))


def test_checkpoint_weights_alone_cannot_smuggle_code(tmp_path):
    """The pickle-level attack is covered in tests/unit/test_checkpoint.py; here, a tensor-only file with the
    marker but another architecture is refused by the rebuild, not executed."""
    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": {"model": {"_target_": "imgrec.models.small_cnn.SmallCNN"}},
                     "class_names": ["a", "b"], "input_shape": [1, 8, 8], "normalization": {"mean": [0.5], "std": [0.5]},
                     "epoch": 1}, tmp_path / "odd.pt")
    from imgrec.evaluation.inference import load_trained

    with pytest.raises(ImgrecError, match="its model could not be rebuilt"):
        load_trained(str(tmp_path / "odd.pt"), torch.device("cpu"))


# Attacks the review of issue #15 found in the first fix: each ran code or changed a file.
REVIEW_ATTACKS = [
    # a search's params are config too: they may not trust code, and each one is checked
    ("hydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      allowed_targets: \"[torch.load]\"\n",
     r"hydra.sweeper.params.allowed_targets is not allowed"),
    ("hydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n"
     "      +callbacks.evil: \"{_target_:shutil.copyfile,src:/etc/hostname,dst:VICTIM}\"\n",
     r"callbacks.evil._target_='shutil.copyfile' is not allowed"),
    # environment variables that make `git status` (environment.json) run a program
    ("hydra:\n  job:\n    env_set:\n      GIT_CONFIG_COUNT: '1'\n      GIT_CONFIG_KEY_0: core.fsmonitor\n",
     r"hydra.job.env_set.GIT_CONFIG_COUNT is not allowed in a config file"),
    # an interpolation that turns into a stream naming any module
    ("hydra:\n  job_logging:\n    handlers:\n      console:\n        stream: ${oc.env:HOME}\n",
     r"interpolations are not allowed in logging settings"),
    # files written outside the run folder
    ("hydra:\n  job_logging:\n    handlers:\n      file:\n        filename: VICTIM\n",
     r"hydra.job_logging.handlers.file.filename=.* is not allowed: a log file goes inside the run folder"),
    ("hydra:\n  job_logging:\n    handlers:\n      file:\n        mode: w\n", r"log files are appended to"),
    ("hydra:\n  output_subdir: /tmp/elsewhere\n", r"hydra.output_subdir='/tmp/elsewhere' is not allowed"),
    # shell lines for the cluster launcher
    ("defaults:\n  - override /hydra/launcher: slurm\nhydra:\n  launcher:\n    setup: ['touch VICTIM']\n",
     r"hydra.launcher.setup is set in a config file"),
]


@pytest.mark.parametrize("body, message", REVIEW_ATTACKS)
def test_what_the_review_found_is_refused_before_hydra_acts(tmp_path, body, message):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    config_dir = write_experiment(tmp_path / "c", body.replace("VICTIM", str(victim)))
    argv = ["--config-dir", str(config_dir), "experiment=evil", f"hydra.run.dir={tmp_path / 'run'}"]
    with pytest.raises(ImgrecError, match=message):
        preflight("train", argv, "train")
    assert victim.read_text() == "mine" and not (tmp_path / "run").exists()


def test_sweeps_over_globs_and_groups_outside_the_defaults_are_checked(tmp_path):
    config_dir = write_experiment(tmp_path / "c", "hydra:\n  job_logging:\n    handlers:\n      x:\n        (): os.system\n")
    (config_dir / "experiment" / "zfine.yaml").write_text("# @package _global_\n")
    (config_dir / "recipe").mkdir()
    (config_dir / "recipe" / "a.yaml").write_text("# @package _global_\n")
    (config_dir / "recipe" / "b.yaml").write_text("# @package _global_\nhydra:\n  job_logging:\n    formatters:\n"
                                                  "      x:\n        (): os.system\n")
    for sweep in ("experiment=glob(*)", "+recipe=a,b"):
        with pytest.raises(ImgrecError, match=r"logging factories \('\(\)'\) call code"):
            preflight("train", ["--config-dir", str(config_dir), "-m", sweep, f"hydra.sweep.dir={tmp_path / 's'}"], "train")


def test_help_and_rerun_do_not_skip_the_checks(tmp_path):
    config_dir = write_experiment(tmp_path / "c", "hydra:\n  hydra_logging:\n    handlers:\n      x:\n        (): os.system\n")
    with pytest.raises(ImgrecError, match=r"logging factories"):
        preflight("train", ["--config-dir", str(config_dir), "experiment=evil", "--help"], "train")
    with pytest.raises(ImgrecError, match=r"--experimental-rerun unpickles a saved config"):
        preflight("eval", ["--experimental-rerun", str(tmp_path / "config.pickle")], "eval")


def test_a_checkpoint_folder_outside_the_run_is_locked_and_never_emptied(compose_cfg, tmp_path):
    """dirpath pointed at a user's folder: their .tmp file was deleted and a best.pt overwritten."""
    from imgrec.commands.train import train

    shared = tmp_path / "mine"
    shared.mkdir()
    (shared / ".notes.tmp").write_text("mine")
    (shared / "best.pt").write_bytes(b"someone else's")
    with pytest.raises(ImgrecError, match=r"already holds best.pt of another run; a new run would overwrite them"):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=1", f"callbacks.model_checkpoint.dirpath={shared}"))
    (shared / "best.pt").unlink()
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", f"callbacks.model_checkpoint.dirpath={shared}"))
    assert (shared / ".notes.tmp").read_text() == "mine"  # only imgrec's own temp files are ever removed
    from imgrec.locking import LOCK_NAME

    assert (shared / LOCK_NAME).is_file()


def test_git_in_environment_json_ignores_the_environment(tmp_path, monkeypatch):
    from imgrec.evaluation.reports import record_environment

    marker = tmp_path / "ran"
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.fsmonitor")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", f"touch {marker}; echo")
    record_environment(tmp_path / "run")
    assert not marker.exists()


def test_a_search_file_may_not_put_its_database_elsewhere(tmp_path):
    (tmp_path / "c" / "hparams_search").mkdir(parents=True)
    (tmp_path / "c" / "hparams_search" / "evil.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: optuna\nhydra:\n  mode: MULTIRUN\n"
        "  sweeper:\n    storage: sqlite:////tmp/elsewhere.db\n")
    with pytest.raises(ImgrecError, match=r"hydra.sweeper.storage='sqlite:////tmp/elsewhere.db' is not allowed"):
        preflight("train", ["--config-dir", str(tmp_path / "c"), "hparams_search=evil",
                            f"hydra.sweep.dir={tmp_path / 's'}"], "train")
    preflight("train", ["hparams_search=optuna", f"hydra.sweep.dir={tmp_path / 'ok'}"], "train")  # the shipped one
