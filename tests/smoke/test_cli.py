"""The installed console script, run the way a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

IMGREC_TRAIN = str(Path(sys.executable).parent / "imgrec-train")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([IMGREC_TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_smoke_experiment_trains_tests_and_writes_the_run_dir(tmp_path):
    result = run_cli("experiment=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "outputs" / "train" / "runs").iterdir()  # outputs/ is relative to where it ran
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "test_report.json", "test_predictions.csv",
                 "classes.json", "train.log", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard" / "experiment=smoke").glob("events.out.tfevents.*"))  # named by overrides
    assert (run_dir / "environment.json").is_file()
    log = (run_dir / "train.log").read_text()
    assert "epoch 2/2" in log and "macro avg" in log and "tensorboard --logdir" in log
    assert json.loads((run_dir / "test_report.json").read_text())["num_samples"] == 40


def test_bad_value_exits_2_with_the_message_and_no_traceback(tmp_path):
    result = run_cli("experiment=smoke", "trainer.max_epochs=0", cwd=tmp_path)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "error: trainer.max_epochs=0 must be a whole number >= 1" in output
    assert "Traceback" not in output


def test_unknown_group_choice_fails_and_lists_the_choices(tmp_path):
    result = run_cli("optimizer=adamm", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("error: optimizer=adamm is not one of the optimizer choices (did you mean adam?): adagrad, adam, adam_detector, adamw"
            in result.stderr)
    assert not (tmp_path / "outputs").exists()


def test_multirun_puts_each_job_in_its_own_dir(tmp_path):
    result = run_cli("-m", "experiment=smoke", "optimizer=sgd,adam", "trainer.max_epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [sweep_dir] = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep_dir / job / "checkpoints" / "best.pt").is_file()


def test_show_augment_writes_a_grid_of_originals_and_augmented_copies(tmp_path):
    from PIL import Image

    tool = str(Path(sys.executable).parent / "imgrec-show-augment")
    result = subprocess.run([tool, "dataset=fake", "augment=classic", "num_images=3", "repeats=4"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "outputs" / "show_augment" / "runs").iterdir()
    grid = Image.open(run_dir / "augment_grid.png")
    # 3 rows x (1 original + 4 copies) of 16 px images, 2 px padding around each
    assert grid.size == (5 * 18 + 2, 3 * 18 + 2)
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_lr_find_prints_the_train_line_with_the_same_overrides_and_writes_no_checkpoint(tmp_path):
    import re

    tool = str(Path(sys.executable).parent / "imgrec-lr-find")
    result = subprocess.run([tool, "model.widths=[8,16]", "lr_find.num_steps=30", "lr_find.max_lr=1000"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    suggestion = re.search(r"suggested lr (\S+) \(steepest; .*the config uses 3\.0e-03, .*\): (imgrec-train .*)", output)
    assert suggestion.group(2) == f"imgrec-train 'model.widths=[8,16]' optimizer.lr={suggestion.group(1)}"
    [run_dir] = (tmp_path / "outputs" / "lr_find" / "runs").iterdir()
    assert (run_dir / "lr_find.png").is_file() and not (run_dir / "checkpoints").exists()
    assert not (tmp_path / "outputs" / "train").exists()
    bad = subprocess.run([tool, "lr_find.num_steps=5"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert "error: lr_find.num_steps=5 must be a whole number >= 30" in bad.stdout + bad.stderr


def test_features_cli_writes_embeddings_and_report(tmp_path):
    tool = str(Path(sys.executable).parent / "imgrec-features")
    result = subprocess.run([tool, "dataset=fake", "model=small_cnn"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "outputs" / "features" / "runs").iterdir()
    for name in ("features.npz", "test_report.json", "test_predictions.csv", "classes.json", "features.log"):
        assert (run_dir / name).is_file(), name
    assert "randomly initialised network" in (run_dir / "features.log").read_text()
    bad = subprocess.run([tool, "dataset=fake", "batch_size=0"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "error: batch_size=0 must be a whole number >= 1" in bad.stdout + bad.stderr


def test_eval_predict_export_commands_on_a_trained_checkpoint(tmp_path):
    bin_dir = Path(sys.executable).parent
    assert run_cli("experiment=smoke", "dataset.image_size=32", cwd=tmp_path).returncode == 0
    [run_dir] = (tmp_path / "outputs" / "train" / "runs").iterdir()
    ckpt = f"ckpt_path={run_dir / 'checkpoints' / 'best.pt'}"

    def command(tool, *args):
        return subprocess.run([str(bin_dir / tool), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    evaluated = command("imgrec-eval", ckpt)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "balanced accuracy" in evaluated.stdout + evaluated.stderr
    [eval_dir] = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    assert (eval_dir / "report.json").is_file() and (eval_dir / "confusion_matrix.png").is_file()

    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.jpg")
    predicted = command("imgrec-predict", ckpt, f"inputs={tmp_path / 'red.jpg'}")
    assert predicted.returncode == 0, predicted.stderr
    assert next((tmp_path / "outputs" / "predict" / "runs").iterdir()).joinpath("predictions.csv").is_file()

    exported = command("imgrec-export", ckpt, "format=safetensors")
    assert exported.returncode == 0, exported.stderr
    missing = command("imgrec-eval")
    assert missing.returncode == 2 and "error: ckpt_path is required" in missing.stdout + missing.stderr


SIGNAL_RUN = ["dataset=fake", "dataset.size=1600", "trainer.batch_size=8", "trainer.max_epochs=2",
              "trainer.progress=false", "augment=basic"]


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory):
    """The final weights of the run the signal tests interrupt, trained without a break."""
    from imgrec.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("unbroken")
    result = run_cli(*SIGNAL_RUN, "hydra.run.dir=whole", cwd=root)
    assert result.returncode == 0, result.stderr
    return load_checkpoint(root / "whole" / "checkpoints" / "last.pt")["model"]


@pytest.mark.parametrize("signum, exit_code", [(2, 130), (15, 143), (10, 138)])  # SIGINT, SIGTERM, SIGUSR1
def test_a_signal_mid_training_saves_and_the_resume_ends_where_an_unbroken_run_ends(tmp_path, unbroken_run,
                                                                                     signum, exit_code):
    import signal as signals
    import time

    import torch

    from imgrec.checkpoint import load_checkpoint

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([IMGREC_TRAIN, *SIGNAL_RUN, "hydra.run.dir=first"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in child.stdout:  # training has started once the model is announced
        if "training SmallCNN" in line:
            break
    time.sleep(0.5)  # an epoch takes about a second here: the signal lands inside the first one
    child.send_signal(signum)
    output = line + child.stdout.read()
    assert child.wait(timeout=120) == exit_code, output
    assert f"{signals.Signals(signum).name} received" in output and "Resume with:" in output
    resume_line = output.split("Resume with:")[1].strip().splitlines()[0]
    assert resume_line.startswith("imgrec-train ") and "ckpt_path=" in resume_line
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    resumed = run_cli(*SIGNAL_RUN, "hydra.run.dir=resumed", f"ckpt_path={last}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(final[name], tensor) for name, tensor in unbroken_run.items())


def test_a_segmentation_run_is_trained_evaluated_and_predicted_through_the_commands(tmp_path):
    tools = Path(sys.executable).parent
    result = run_cli("experiment=seg_smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    evaluated = subprocess.run([str(tools / "imgrec-eval"), "ckpt_path=best"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    [eval_dir] = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    report = json.loads((eval_dir / "report.json").read_text())
    assert report["headline"] == "mean_dice" and report["split"] == "test" and "per_class" in report


def test_face_recognition_through_the_commands(tmp_path):
    """Train an embedding on people in folders, enrol them, identify a face, list, remove, as a user types it."""
    from tests.integration.test_faces import make_people

    make_people(tmp_path / "faces", people=8, per_person=6)
    trained = run_cli("task=embedding", "dataset=faces", "dataset.root=faces", "dataset.detect=none",
                      "dataset.image_size=24", "trainer.max_epochs=2", "model.widths=[8,16]", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}

    def gallery(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "imgrec-gallery"), "gallery=staff.db", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    enrolled = gallery("action=enroll", "ckpt_path=best", "folder=faces")
    assert enrolled.returncode == 0, enrolled.stderr
    assert "faces/person00/0.png" not in enrolled.stdout + enrolled.stderr  # no image paths unless show_paths=true
    identified = gallery("action=identify", "ckpt_path=best", "images=[faces/person03/5.png]", "top_k=2")
    assert identified.returncode == 0, identified.stderr
    [run_dir] = [d for d in (tmp_path / "outputs" / "gallery" / "runs").iterdir() if (d / "identify.csv").exists()]
    row = (run_dir / "identify.csv").read_text().splitlines()[1].split(",")
    assert row[0] == "faces/person03/5.png" and row[1].startswith("person")
    removed = gallery("action=remove", "person=person00")
    assert removed.returncode == 0, removed.stderr
    listed = gallery("action=list")
    assert listed.returncode == 0 and "7 people in staff.db" in listed.stdout + listed.stderr
    bad = gallery("action=find")
    assert bad.returncode == 2 and "action='find' must be one of" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr


def test_gan_trains_samples_and_refuses_bad_input_from_the_command_line(tmp_path):
    import json

    tool = str(Path(sys.executable).parent / "imgrec-gan")
    tiny = ["gan.width=16", "gan.latent_dim=8", "trainer.batch_size=16", "trainer.steps_per_epoch=2", "trainer.epochs=1"]
    result = subprocess.run([tool, *tiny], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "outputs" / "gan" / "runs").iterdir()
    assert "imgrec-gan sample ckpt_path=" in result.stdout + result.stderr
    ckpt = run_dir / "checkpoints" / "last.pt"
    result = subprocess.run([tool, "sample", f"ckpt_path={ckpt}", "per_class=2", "out=generated"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "generated" / "manifest.json").read_text())["counts"] == {str(d): 2 for d in range(10)}
    # one refusal per entry point as a subprocess (exit 2, one line); the others are in tests/integration/test_gan.py
    for arguments, message in ((["dataset.image_size=30"], "error: dataset.image_size=30 cannot be made by the generator"),
                               (["sample", f"ckpt_path={ckpt}", "out=generated"], "error: out=")):
        bad = subprocess.run([tool, *arguments], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr, bad.stderr
        assert message in bad.stdout + bad.stderr
