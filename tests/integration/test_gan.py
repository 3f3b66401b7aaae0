"""imgrec-gan: training on the train split, exact resume after a signal, sampling to an image folder, the
judge's measures, bad input, and the small-data study end to end on digits."""

import json
import os
import signal

import pytest
import torch
from PIL import Image

from imgrec.checkpoint import load_checkpoint
from imgrec.commands.gan import sample, train_gan
from imgrec.errors import ImgrecError
from imgrec.gan.trainer import GanTrainer
from imgrec.training.signals import TrainingInterrupted
from tests.conftest import tool_cfg

# digits at 16 px, 4 steps of 16 images an epoch, small networks, every DiffAugment policy on
TINY = ["dataset=digits", "gan.width=32", "gan.latent_dim=16", "trainer.batch_size=16", "trainer.steps_per_epoch=4",
        "trainer.epochs=3", "trainer.progress=false", "trainer.grid_per_class=2", "print_config=false",
        "gan.diff_augment=[color,translation,cutout]", "trainer.device=cpu"]


def gan_cfg(run_dir, *overrides):
    return tool_cfg("gan_train", run_dir, *TINY, *overrides)


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    """(result, run dir) of one uninterrupted 3-epoch tiny GAN run, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("gan") / "whole"
    return train_gan(gan_cfg(run_dir)), run_dir


def test_a_gan_run_writes_its_checkpoint_grids_history_and_tensorboard(gan_run):
    result, run_dir = gan_run
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["kind"] == "imgrec-gan" and state["epoch"] == 3 and state["step"] == 12
    assert state["class_names"] == [str(d) for d in range(10)] and state["input_shape"] == [1, 16, 16]
    assert state["train_images"] == result["train_images"] == 1167  # the train split only: val and test held out
    grids = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert grids == ["epoch_001.png", "epoch_002.png", "epoch_003.png"]
    assert Image.open(run_dir / "samples" / "epoch_003.png").size == (2 * 18 + 2, 10 * 18 + 2)  # 2 per class, padded
    history = (run_dir / "gan_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train/d_loss,train/g_loss") and len(history) == 4
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # the EMA generator is what is sampled, and it differs from the raw weights training continues from
    assert any(not torch.equal(state["generator"][k], state["train_generator"][k]) for k in state["generator"]
               if state["generator"][k].is_floating_point())


@pytest.fixture
def signal_after_step(monkeypatch):
    record = {"after": None, "steps": 0}
    original = GanTrainer.train_step

    def counting_step(self, images, labels):
        sums = original(self, images, labels)
        record["steps"] += 1
        if record["after"] == record["steps"]:
            os.kill(os.getpid(), signal.SIGUSR1)  # a real signal: the handler sets the flag
        return sums

    monkeypatch.setattr(GanTrainer, "train_step", counting_step)
    return record


@pytest.mark.parametrize("stop_after", [6, 4])  # mid-epoch 2, and at the end of epoch 1
def test_resume_after_a_signal_equals_the_uninterrupted_run(gan_run, tmp_path, signal_after_step, stop_after):
    _, whole_dir = gan_run
    signal_after_step["after"] = stop_after
    with pytest.raises(TrainingInterrupted) as stopped:
        train_gan(gan_cfg(tmp_path / "first"))
    assert stopped.value.exit_code == 128 + signal.SIGUSR1
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    assert saved["step"] == stop_after
    assert ("epoch_progress" in saved) == bool(stop_after % 4)
    signal_after_step["after"] = None
    train_gan(gan_cfg(tmp_path / "resumed", f"ckpt_path={last}"))
    whole, resumed = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (whole_dir, tmp_path / "resumed"))
    for part in ("generator", "train_generator", "discriminator"):
        for name, tensor in whole[part].items():
            assert torch.equal(resumed[part][name], tensor), (part, name)
    for part in ("g_optimizer", "d_optimizer"):
        for index, values in whole[part]["state"].items():
            for name, value in values.items():
                assert torch.equal(resumed[part]["state"][index][name], value), (part, index, name)
    assert [row["train/d_loss"] for row in resumed["history"]] == [row["train/d_loss"] for row in whole["history"]]


def sample_cfg(run_dir, ckpt, out, *overrides):
    return tool_cfg("gan_sample", run_dir, f"ckpt_path={ckpt}", f"out={out}", "device=cpu", *overrides)


def test_sampling_writes_the_requested_images_per_class_and_a_manifest(gan_run, tmp_path):
    _, run_dir = gan_run
    ckpt = run_dir / "checkpoints" / "last.pt"
    manifest = sample(sample_cfg(tmp_path / "run", ckpt, tmp_path / "out", "per_class=7"))
    for digit in range(10):
        files = sorted((tmp_path / "out" / str(digit)).glob("*.png"))
        assert len(files) == 7
        assert Image.open(files[0]).size == (16, 16) and Image.open(files[0]).mode == "L"
    written = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert written == manifest and written["counts"] == {str(d): 7 for d in range(10)}
    assert written["epoch"] == 3 and written["class_names"] == [str(d) for d in range(10)]
    # the same seed draws the same images; another seed others
    sample(sample_cfg(tmp_path / "run2", ckpt, tmp_path / "again", "per_class=7"))
    sample(sample_cfg(tmp_path / "run3", ckpt, tmp_path / "other", "per_class=7", "seed=1"))
    first, again, other = (Image.open(tmp_path / folder / "3" / "00002.png").tobytes() for folder in ("out", "again", "other"))
    assert first == again and first != other
    with pytest.raises(ImgrecError, match="is not an empty folder"):
        sample(sample_cfg(tmp_path / "run4", ckpt, tmp_path / "out", "per_class=7"))


def test_generated_images_train_a_classifier_and_the_ratio_is_stored(gan_run, tmp_path, compose_cfg):
    from imgrec.commands.train import train

    _, run_dir = gan_run
    sample(sample_cfg(tmp_path / "run", run_dir / "checkpoints" / "last.pt", tmp_path / "out", "per_class=10"))
    cfg = compose_cfg("dataset.train_per_class=10", f"dataset.synthetic.root={tmp_path / 'out'}",
                      "dataset.synthetic.ratio=0.5", "trainer.max_epochs=1", run_dir=tmp_path / "classifier")
    train(cfg)
    state = load_checkpoint(tmp_path / "classifier" / "checkpoints" / "last.pt")
    assert state["config"]["dataset"]["synthetic"] == {"root": str(tmp_path / "out"), "ratio": 0.5}
    assert state["synthetic"]["added"] == 100 and state["synthetic"]["real"] == 100
    # samples of a GAN trained on another split could hold this run's val or test images: refused
    other_split = compose_cfg("dataset.split_seed=1", f"dataset.synthetic.root={tmp_path / 'out'}",
                              "dataset.synthetic.ratio=0.5", run_dir=tmp_path / "other")
    with pytest.raises(ImgrecError, match=r"drawn from a GAN trained on another split of the data \(split_seed=0"):
        train(other_split)


def test_the_judge_measures_every_epoch(digits_checkpoint, tmp_path):
    result = train_gan(gan_cfg(tmp_path / "judged", "trainer.epochs=1", f"quality.ckpt_path={digits_checkpoint}",
                               "quality.per_class=10"))
    row = result["history"][0]
    assert row["quality/frechet_distance"] > 0 and 0 <= row["quality/class_accuracy"] <= 1
    assert {"quality/precision", "quality/recall"} <= set(row)


@pytest.mark.parametrize("overrides, message", [
    (["dataset=shapes"], "imgrec-gan trains on a classification dataset"),
    (["dataset.image_size=30"], r"dataset.image_size=30 cannot be made .* 12, 16, 20, 24, 28, 32"),
    (["gan.loss=wasserstein"], "gan.loss='wasserstein' is not one of hinge, non_saturating"),
    (["trainer.batch_size=5000"], "trainer.batch_size=5000 is more than the 1167 training images"),
    (["dataset.synthetic.root=/nonexistent", "dataset.synthetic.ratio=0.5"], "real images only"),
])
def test_bad_input_is_one_line_before_any_training(tmp_path, overrides, message):
    with pytest.raises(ImgrecError, match=message):
        train_gan(gan_cfg(tmp_path / "run", *overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_of_other_classes_or_another_kind_is_refused(gan_run, digits_checkpoint, tmp_path):
    _, run_dir = gan_run
    with pytest.raises(ImgrecError, match=r"was trained with dataset._target_='imgrec.data.datasets.digits'"):
        train_gan(gan_cfg(tmp_path / "run", "dataset=fake", "dataset.channels=1", "dataset.image_size=16",
                          f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}", "trainer.epochs=5"))
    with pytest.raises(ImgrecError, match="is a classifier .* checkpoint from imgrec-train"):
        sample(sample_cfg(tmp_path / "s", digits_checkpoint, tmp_path / "out"))
    from imgrec.commands.eval import evaluate_checkpoint

    with pytest.raises(ImgrecError, match="is an imgrec-gan checkpoint .* imgrec-gan sample"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "e", f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}"))
    with pytest.raises(ImgrecError, match=r"was trained with seed=0 .*this run: seed=1"):
        train_gan(gan_cfg(tmp_path / "seed", f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}", "seed=1",
                          "trainer.epochs=5"))
    with pytest.raises(ImgrecError, match="out is required"):
        sample(tool_cfg("gan_sample", tmp_path / "s2", f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}"))
    with pytest.raises(ImgrecError, match="per_class=60000 is more than 50000"):
        sample(sample_cfg(tmp_path / "s3", run_dir / "checkpoints" / "last.pt", tmp_path / "out3", "per_class=60000"))
    with pytest.raises(ImgrecError, match="already trained 3 epochs"):
        train_gan(gan_cfg(tmp_path / "again", f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}"))


def test_the_small_data_study_writes_one_table(tmp_path):
    from imgrec.commands.gan_study import run_study

    cfg = tool_cfg("gan_study", tmp_path / "study", "dataset=digits", "study.per_class=[6]", "study.seeds=[0,1]",
                   "study.judge_epochs=1", "gan_trainer.epochs=1", "gan_trainer.steps_per_epoch=2",
                   "gan_trainer.batch_size=16", "gan.width=32", "gan.latent_dim=16", "trainer.max_epochs=1",
                   "trainer.device=cpu", "quality.per_class=10", "~logger")
    summary = run_study(cfg)
    rows = summary["runs"]
    assert [(r["seed"], r["arm"]) for r in rows] == [(0, "real"), (0, "real+gan"), (1, "real"), (1, "real+gan")]
    entry = summary["table"][0]
    assert entry["per_class"] == 6 and entry["seeds"] == 2
    real = [r["test_acc"] for r in rows if r["arm"] == "real"]
    assert entry["real_mean"] == pytest.approx(sum(real) / 2)
    paired = [rows[1]["test_acc"] - rows[0]["test_acc"], rows[3]["test_acc"] - rows[2]["test_acc"]]
    assert entry["difference_mean"] == pytest.approx(sum(paired) / 2)
    table = (tmp_path / "study" / "study.md").read_text()
    assert "| 6 | 2 |" in table and "real + GAN" in table
    # the GAN arm trained on 6 real + 6 generated images per class, the real arm on the 6 alone
    gan_arm = load_checkpoint(tmp_path / "study" / "k6_seed0" / "real_gan" / "checkpoints" / "last.pt")
    assert gan_arm["synthetic"]["added"] == 60 and gan_arm["synthetic"]["real"] == 60
    real_arm = load_checkpoint(tmp_path / "study" / "k6_seed0" / "real" / "checkpoints" / "last.pt")
    assert real_arm.get("synthetic") is None


def test_non_finite_losses_are_skipped_and_too_many_in_a_row_stop_the_run(tmp_path, monkeypatch):
    import imgrec.gan.trainer as gan_trainer

    calls = {"n": 0}
    original = gan_trainer.generator_loss

    def broken_after_five(name, fake_logits):
        calls["n"] += 1
        loss = original(name, fake_logits)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(gan_trainer, "generator_loss", broken_after_five)
    with pytest.raises(ImgrecError, match=r"3 steps in a row had a non-finite loss .*checkpoints/last.pt holds the "
                                          r"last good epoch\. Lower gan.lr_generator"):
        train_gan(gan_cfg(tmp_path / "run"))
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1  # epoch 1 (steps 1-4) was saved; steps 6-8 of epoch 2 were skipped, then the stop
    assert all(torch.isfinite(t).all() for t in saved["train_generator"].values() if t.is_floating_point())


@pytest.mark.parametrize("name", __import__("tests.conftest", fromlist=["config_names"]).config_names("gan"))
def test_every_gan_config_builds_networks_that_draw_and_judge_images(name, tmp_path):
    from omegaconf import OmegaConf

    from imgrec.commands.gan import build_networks, check_gan_section

    cfg = tool_cfg("gan_train", tmp_path, f"gan={name}")
    generator, discriminator = build_networks(check_gan_section(OmegaConf.to_container(cfg.gan)), 10, 1, 28)
    labels = torch.arange(4)
    images = generator(torch.randn(4, generator.latent_dim), labels)
    assert images.shape == (4, 1, 28, 28) and images.abs().max() <= 1
    assert discriminator(images, labels).shape == (4,)


def test_a_gan_checkpoint_with_damaged_settings_is_refused(gan_run, tmp_path):
    from imgrec.checkpoint import save_checkpoint

    _, run_dir = gan_run
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for damage, message in (({"width": "os.system"}, "gan.width='os.system' must be a whole number"),
                            ({"_target_": "os.system"}, r"unknown settings \['_target_'\]")):
        damaged = {**state, "gan": {**state["gan"], **damage}}
        save_checkpoint(damaged, tmp_path / "damaged.pt")
        with pytest.raises(ImgrecError, match=message):
            sample(sample_cfg(tmp_path / "run", tmp_path / "damaged.pt", tmp_path / "out"))
