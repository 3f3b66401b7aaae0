"""torchrun on CPU (gloo): two processes write one set of run files, report what one process would,
and train to the weights one process reaches with the same global batch."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.data.building import build_dataset
from imgrec.evaluation.inference import load_trained
from tests.conftest import rescored_test_accuracy, tool_cfg

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
# SGD, no dropout (two processes draw other masks than one would) and no batch norm (per-process batch statistics
# differ from the global batch's; SyncBatchNorm, which fixes that, needs CUDA)
COMMON = ["dataset=fake", "dataset.size=320", "trainer.max_epochs=1", "trainer.progress=false", "model.dropout=0.0",
          "model.batch_norm=false", "~callbacks.validation_figures", "optimizer=sgd"]  # SGD: Adam would magnify rounding


def torchrun(processes: int, run_dir: Path, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [TORCHRUN, "--standalone", f"--nproc_per_node={processes}", "-m", "imgrec.commands.train",
               *COMMON, *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    result = torchrun(2, root / "two", "trainer.batch_size=16", cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root, result


def test_two_processes_write_one_set_of_run_files(two_process_run):
    root, result = two_process_run
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert [p.name for p in runs] == ["two"]  # no second run dir from rank 1
    run_dir = root / "two"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    writers = {path.name.split(".")[-2] for path in (run_dir / "tensorboard").glob("*/events.out.tfevents.*")}
    assert len(writers) == 1  # event files of one process (its pid in the name)
    assert (run_dir / "train.log").read_text().count("epoch 1/1") == 1  # rank 1 logs nothing
    assert "x 2 processes (gloo)" in (run_dir / "train.log").read_text()


def test_two_process_test_scores_equal_one_process_evaluating_the_saved_best(two_process_run, tmp_path):
    root, _ = two_process_run
    report = json.loads((root / "two" / "test_report.json").read_text())
    trained = load_trained(str(root / "two" / "checkpoints" / "best.pt"), torch.device("cpu"))
    from imgrec.data.loaders import make_loader
    from imgrec.evaluation.inference import evaluate

    test = build_dataset(tool_cfg("train", tmp_path / "x", *COMMON[:2]).dataset, "classification").test
    evaluation = evaluate(trained, make_loader(test, 512, trained.mean, trained.std, torch.device("cpu")))
    logits, labels = evaluation.logits, evaluation.labels
    assert report["num_samples"] == len(test) == 80  # every test image once: no sampler padding
    assert report["accuracy"] == int((logits.argmax(1) == labels).sum()) / 80
    with open(root / "two" / "test_predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["true"]) for r in rows] == labels.tolist()  # in the split's order, gathered from both processes
    assert [int(r["predicted"]) for r in rows] == logits.argmax(1).tolist()
    assert report["confusion_matrix"] == [[int(((labels == t) & (logits.argmax(1) == p)).sum()) for p in range(4)]
                                          for t in range(4)]


def test_two_processes_reach_the_weights_of_one_with_the_same_global_batch(two_process_run, tmp_path):
    root, _ = two_process_run
    one = torchrun(1, tmp_path / "one", "trainer.batch_size=32", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = load_checkpoint(root / "two" / "checkpoints" / "last.pt")["model"]
    single = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")["model"]
    for name, tensor in single.items():
        if tensor.is_floating_point():
            assert torch.allclose(two[name], tensor, atol=1e-4, rtol=1e-3), name


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    from imgrec.commands.train import train

    root, _ = two_process_run
    cfg = tool_cfg("train", tmp_path / "resumed", *COMMON, "trainer.max_epochs=2", "trainer.batch_size=16",
                   f"ckpt_path={root / 'two' / 'checkpoints' / 'last.pt'}")
    result = train(cfg)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2
    assert result["test"]["accuracy"] == rescored_test_accuracy(tmp_path / "resumed", tmp_path)


def test_a_two_process_segmentation_run_reports_the_pixels_of_the_whole_split(tmp_path):
    """Each process scores half the test images; the summed confusion matrix must be the whole split's."""
    from imgrec.commands.eval import evaluate_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "imgrec.commands.train", "experiment=seg_smoke",
               "dataset.size=30", "trainer.max_epochs=1", "trainer.progress=false", "~callbacks.validation_figures",
               f"hydra.run.dir={tmp_path / 'two'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "two" / "test_report.json").read_text())
    alone = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={tmp_path / 'two' / 'checkpoints' / 'best.pt'}"))
    assert report["confusion_matrix"] == alone["confusion_matrix"]
    assert sum(map(sum, report["confusion_matrix"])) == 6 * 32 * 32  # 6 test images of 32 x 32, each pixel once
    assert report["mean_dice"] == pytest.approx(alone["mean_dice"])


def test_a_two_process_embedding_run_trains_its_margin_head_and_pairs_the_whole_split(tmp_path):
    """The ArcFace head lives in the model DDP wraps (its gradients are averaged like the rest); each process
    embeds half the test images, and the pairs are those of the whole split, in its order."""
    from imgrec.commands.eval import evaluate_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "imgrec.commands.train", "task=embedding",
               "trainer.max_epochs=1", "trainer.progress=false", "~callbacks.validation_figures",
               f"hydra.run.dir={tmp_path / 'two'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "two" / "test_report.json").read_text())
    best = tmp_path / "two" / "checkpoints" / "best.pt"
    assert any(key.startswith("head.") for key in load_checkpoint(best)["model"])
    alone = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={best}"))
    assert report["images"] == alone["images"] and report["genuine_pairs"] == alone["genuine_pairs"]
    assert report["roc_auc"] == pytest.approx(alone["roc_auc"], abs=1e-6)


def test_a_two_process_detection_run_scores_every_box_of_the_whole_split(tmp_path):
    """Each process detects in half the test images; COCO's scores must be those of the whole split, as one
    process evaluating the saved best.pt finds them."""
    from imgrec.commands.eval import evaluate_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "imgrec.commands.train", "experiment=det_smoke",
               "dataset.size=24", "trainer.max_epochs=1", "trainer.batch_size=4", "trainer.progress=false",
               "model.score_threshold=0.0", "~callbacks.validation_figures", f"hydra.run.dir={tmp_path / 'two'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "two" / "test_report.json").read_text())
    alone = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={tmp_path / 'two' / 'checkpoints' / 'best.pt'}"))
    assert report["num_samples"] == alone["num_samples"] == 4  # 24 images: 16 train / 4 val / 4 test
    assert {name: row["boxes"] for name, row in report["per_class"].items()} == \
        {name: row["boxes"] for name, row in alone["per_class"].items()}
    for key in ("map", "map50", "recall"):
        assert report[key] == pytest.approx(alone[key]), key

    def detections(folder):
        with open(folder / "test_detections.csv") as file:
            return sorted((row["image"], row["class"], round(float(row["score"]), 4)) for row in csv.DictReader(file))
    assert detections(tmp_path / "two") == detections(tmp_path / "eval") and len(detections(tmp_path / "eval")) > 0
