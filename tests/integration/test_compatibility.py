"""Checkpoints written before the package was arranged by role (commit b0b5d3f, issue #16) still work:
their stored `_target_` paths are read as the new ones, their `trainer.loss`/`trainer.mixup` as the task's,
and a mid-epoch one resumes to the weights the old code reached without stopping.
tests/fixtures/pre_move_b0b5d3f/make_checkpoints.py made the files, with that commit's code."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from imgrec.checkpoint import load_checkpoint
from imgrec.commands.eval import evaluate_checkpoint
from imgrec.commands.export import export_checkpoint
from imgrec.commands.predict import predict_images
from imgrec.commands.train import train
from tests.conftest import tool_cfg

FIXTURES = Path(__file__).parents[1] / "fixtures" / "pre_move_b0b5d3f"
# the overrides the fixtures were trained with
TRAINED_WITH = ["dataset.image_size=8", "model.widths=[4,8]", "model.hidden=[8]", "trainer.progress=false", "~logger",
                "trainer.batch_size=256", "trainer.max_epochs=2", "callbacks.validation_figures.every_n_epochs=null",
                "model.convs_per_stage=2"]  # small_cnn's default when these were written (1 since issue #22)


def test_the_fixtures_name_the_old_paths():
    state = load_checkpoint(FIXTURES / "mid_epoch_last.pt")
    config = state["config"]
    assert config["scheduler"]["_target_"] == "imgrec.schedulers.warmup_cosine"
    assert config["trainer"]["_target_"] == "imgrec.trainer.Trainer"
    assert config["task"]["loss"] == {"label_smoothing": 0.0, "class_weights": None, "focal_gamma": 0.0}  # upgraded
    assert set(state["epoch_progress"]["sums"]) == {"loss_sum", "correct"}  # upgraded from the flat layout


def test_eval_predict_and_export_read_a_pre_move_checkpoint(tmp_path):
    best = FIXTURES / "best.pt"
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={best}"))
    # the same network built by hand from the stored weights scores the same on the same test split
    from omegaconf import OmegaConf

    from imgrec.data.building import build_dataset
    from imgrec.data.batching import Preprocess
    from imgrec.models.small_cnn import SmallCNN

    state = load_checkpoint(best)
    model = SmallCNN(1, 10, widths=[4, 8], hidden=[8]).eval()
    model.load_state_dict(state["model"])
    test = build_dataset(OmegaConf.create(state["config"]["dataset"]), "classification").test
    with torch.no_grad():
        predicted = model(Preprocess(**state["normalization"], device=torch.device("cpu"))(test.images)).argmax(1)
    assert report["split"] == "test" and report["num_samples"] == len(test) == 360
    assert report["accuracy"] == int((predicted == test.labels).sum()) / len(test)
    Image.new("L", (8, 8), 200).save(tmp_path / "digit.png")
    predicted = predict_images(tool_cfg("predict", tmp_path / "predict", f"ckpt_path={best}",
                                        f"inputs={tmp_path / 'digit.png'}"))
    assert len(predicted["predictions"]) == 1 and len(predicted["predictions"][0]["predictions"]) == 3
    exported = export_checkpoint(tool_cfg("export", tmp_path / "export", f"ckpt_path={best}"))
    assert exported["max_abs_difference"] < 1e-4 and exported["model_config"]["num_classes"] == 10


def test_a_pre_move_mid_epoch_checkpoint_resumes_to_the_old_codes_uninterrupted_weights(tmp_path):
    train(tool_cfg("train", tmp_path / "resumed", *TRAINED_WITH, "test=false",
                   f"ckpt_path={FIXTURES / 'mid_epoch_last.pt'}"))
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    unbroken = load_checkpoint(FIXTURES / "unbroken_last.pt")
    assert resumed["epoch"] == unbroken["epoch"] == 2 and resumed["step"] == unbroken["step"]
    for name, tensor in unbroken["model"].items():
        # bit for bit on the machine that made the fixtures; CPUs with other kernels may round differently
        assert torch.allclose(resumed["model"][name].float(), tensor.float(), atol=1e-5, rtol=1e-4), name


def test_a_resume_with_another_schedule_is_still_refused(tmp_path):
    from imgrec.errors import ImgrecError

    with pytest.raises(ImgrecError, match=r"was trained with scheduler._target_=imgrec.training.schedulers.warmup_cosine "
                                          r"but this run has scheduler._target_=imgrec.training.schedulers.constant"):
        train(tool_cfg("train", tmp_path / "r", *TRAINED_WITH, "scheduler=none", f"ckpt_path={FIXTURES / 'best.pt'}"))
