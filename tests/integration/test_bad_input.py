"""Each bad input fails before training with a message that names the value and the fix."""

import re

import pytest
import torch
from hydra.errors import MissingConfigException

from imgrec.errors import ImgrecError
from imgrec.commands.train import train


def assert_nothing_trained(run_dir):
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "tensorboard").exists()


def test_unknown_config_choice_lists_the_available_ones(compose_cfg):
    with pytest.raises(MissingConfigException) as error:
        compose_cfg("model=resnet_9000")
    assert "resnet_9000" in str(error.value) and "small_cnn" in str(error.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a whole number >= 1"),
        ("trainer.device=tpu", "trainer.device='tpu' is not"),
        ("callbacks.early_stopping.monitor=val/accuracy",
         "callbacks.early_stopping.monitor='val/accuracy' is not a logged metric; choose one of: train/loss"),
        ("optimized_metric=val/f1", "optimized_metric='val/f1' is not a logged metric"),
        ("optimized_mode=maximize", "optimized_mode='maximize' must be 'min' or 'max'"),
        ("dataset.normalize=zscore", "dataset.normalize='zscore' is not one of"),
        ("model.activation=swish", "model.activation='swish' is not one of"),
        ("augment.backend=opencv", "augment.backend='opencv' must be one of batch, albumentations, torchvision"),
        ("model.padding=0 model.convs_per_stage=2", "model=SmallCNN cannot take 16x16 images with 3 channel(s)"),
        ("task.mixup.mixup_alpha=-1", "task.mixup.mixup_alpha=-1 must be >= 0"),
        ("trainer.precision=64", "trainer.precision=64 is not one of 32, bf16-mixed, 16-mixed"),
        ("trainer.compile=maybe", "trainer.compile='maybe' must be true, false or a dict"),
        ("trainer.num_threads=0", "trainer.num_threads=0 must be auto or a whole number >= 1"),
        ("model.hidden=???", "model.hidden must be set: the config leaves it to you (???); add model.hidden=..."),
    ],
)
def test_bad_value_raises_its_message_before_training(compose_cfg, tmp_path, override, message):
    with pytest.raises(ImgrecError, match=re.escape(message)):
        train(compose_cfg("dataset=fake", *override.split()))  # a space separates overrides that work together
    assert_nothing_trained(tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match="trainer.device=cuda but this machine has no usable CUDA GPU"):
        train(compose_cfg("dataset=fake", "trainer.device=cuda"))
    assert_nothing_trained(tmp_path / "run")


def test_missing_ckpt_path(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match=r"ckpt_path '.*missing.pt' does not exist"):
        train(compose_cfg("dataset=fake", f"ckpt_path={tmp_path}/missing.pt"))
    assert_nothing_trained(tmp_path / "run")


def test_ckpt_path_that_is_not_an_imgrec_checkpoint(compose_cfg, tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ImgrecError, match="is not an imgrec checkpoint"):
        train(compose_cfg("dataset=fake", f"ckpt_path={tmp_path}/foreign.pt"))
    assert_nothing_trained(tmp_path / "run")


def test_resume_with_other_classes_is_refused(compose_cfg, tmp_path):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "four"))
    last = tmp_path / "four" / "checkpoints" / "last.pt"
    with pytest.raises(ImgrecError, match=r"was trained on classes \['class_0'.*but dataset has"):
        train(compose_cfg("dataset=fake", "dataset.num_classes=3", f"ckpt_path={last}", run_dir=tmp_path / "three"))


def test_a_fresh_run_never_overwrites_another_runs_checkpoints(compose_cfg, tmp_path):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "same"))
    before = (tmp_path / "same" / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ImgrecError, match="already exists and this is not a resume; pass ckpt_path="):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=1", run_dir=tmp_path / "same"))
    assert (tmp_path / "same" / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_with_another_model_or_optimizer_is_refused_with_the_original_settings(compose_cfg, tmp_path):
    run_dir = tmp_path / "sgd_run"
    train(compose_cfg("dataset=fake", "optimizer=sgd", "trainer.max_epochs=1", "test=false", run_dir=run_dir))
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- dataset=fake\n- optimizer=sgd\n")
    last = run_dir / "checkpoints" / "last.pt"
    with pytest.raises(ImgrecError, match=r"optimizer._target_=torch.optim.SGD but this run has "
                                          r"optimizer._target_=torch.optim.Adam.*started with: dataset=fake optimizer=sgd"):
        train(compose_cfg("dataset=fake", f"ckpt_path={last}", run_dir=tmp_path / "adam"))
    with pytest.raises(ImgrecError, match=r"was trained with model.widths=\[32, 64, 128\] but this run has model.widths=\[8, 8\]"):
        train(compose_cfg("dataset=fake", "optimizer=sgd", "model.widths=[8,8]", f"ckpt_path={last}", run_dir=tmp_path / "w"))


def test_resume_warns_that_the_checkpoint_learning_rate_wins(compose_cfg, tmp_path, caplog):
    run_dir = tmp_path / "first"
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=run_dir))
    resumed = train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "optimizer.lr=0.5", "test=false",
                                f"ckpt_path={run_dir / 'checkpoints' / 'last.pt'}", run_dir=tmp_path / "second"))
    assert "optimizer.lr=0.5 differs from the checkpoint's 0.003" in caplog.text
    assert resumed["metrics"]["train/lr"] != 0.5


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=abc", "optimizer.lr='abc' must be a number > 0"),
    ("optimizer.lr=-1", "optimizer.lr=-1 must be a number > 0"),
    ("optimizer.lr=null", "optimizer.lr=None must be a number > 0"),
    ("optimizer.weight_decay=-1", "optimizer.weight_decay=-1 must be a number >= 0"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9, 1.5] must be two numbers in [0, 1)"),
    ("+optimizer.lrr=0.1", "optimizer.lrr is not an argument of torch.optim.Adam (did you mean optimizer.lr?)"),
])
def test_a_bad_optimizer_value_is_refused_before_any_data_is_loaded(compose_cfg, tmp_path, monkeypatch, override, message):
    import imgrec.data.datasets

    def no_data(**kwargs):
        raise AssertionError("the dataset was built before the optimizer settings were checked")

    monkeypatch.setattr(imgrec.data.datasets, "fake", no_data)
    with pytest.raises(ImgrecError, match=re.escape(message)):
        train(compose_cfg("dataset=fake", override))


def test_a_bad_momentum_is_refused_before_any_data_is_loaded(compose_cfg):
    with pytest.raises(ImgrecError, match=re.escape("optimizer.momentum=-5 must be a number >= 0")):
        train(compose_cfg("dataset=fake", "optimizer=sgd", "optimizer.momentum=-5"))


@pytest.mark.parametrize("override, message", [
    ("scheduler.warmup_epochs=-1", "scheduler.warmup_epochs=-1 must be a number in [0, inf]"),
    ("scheduler.min_lr_ratio=2", "scheduler.min_lr_ratio=2 must be a number in [0, 1]"),
    ("model.widths=abc", "model.widths='abc' must be a list of whole numbers >= 1"),
    ("dataset.num_classes=1", "dataset.num_classes=1 must be at least 2"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 must be null (epoch curves only) or a whole number"),
])
def test_values_that_used_to_be_accepted_or_crash_are_named(compose_cfg, tmp_path, override, message):
    with pytest.raises(ImgrecError, match=re.escape(message)):
        train(compose_cfg("dataset=fake", override))
    assert_nothing_trained(tmp_path / "run")


def test_a_one_class_folder_is_refused_not_scored_100_percent(compose_cfg, tmp_path):
    from tests.integration.test_datasets import make_folder

    root = make_folder(tmp_path / "one", per_class=8, classes=("only",))
    with pytest.raises(ImgrecError, match=r"the dataset has 1 class \(only\); a classifier needs at least two"):
        train(compose_cfg("dataset=image_folder", f"dataset.root={root}", "dataset.image_size=8"))


def test_a_resume_with_nothing_left_to_train_says_so(compose_cfg, tmp_path, caplog):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=2", "test=false", run_dir=tmp_path / "done"))
    last = tmp_path / "done" / "checkpoints" / "last.pt"
    with pytest.raises(ImgrecError, match=r"has already trained 2 epochs and trainer.max_epochs=1, so there is nothing "
                                          r"left to train: raise trainer.max_epochs \(e.g. trainer.max_epochs=12\)"):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=1", f"ckpt_path={last}", run_dir=tmp_path / "again"))
    assert_nothing_trained(tmp_path / "again")
    # stopped after its last epoch (a signal while testing): the resume only tests, and says so
    result = train(compose_cfg("dataset=fake", "trainer.max_epochs=2", f"ckpt_path={last}", run_dir=tmp_path / "test"))
    assert "has trained all 2 epochs: nothing is left to train; scoring best.pt on the test split" in caplog.text
    assert result["epochs"] == 2 and result["test"]["num_samples"] == 40


def test_a_folder_as_ckpt_path_names_the_checkpoints_in_it(compose_cfg, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "best.pt").write_bytes(b"")
    with pytest.raises(ImgrecError, match=r"ckpt_path '.*ck' is a folder, not a checkpoint file; .*ck holds best.pt: "
                                          r"give the file, e.g. ckpt_path=.*ck/best.pt"):
        train(compose_cfg("dataset=fake", f"ckpt_path={tmp_path / 'ck'}"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a run folder: pointed into its checkpoints/
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(ImgrecError, match=r"give the file, e.g. ckpt_path=.*run/checkpoints/last.pt"):
        train(compose_cfg("dataset=fake", f"ckpt_path={tmp_path / 'run'}", run_dir=tmp_path / "other"))


def damaged(path, edit, destination):
    from imgrec.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(path)
    edit(state)
    return save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")}, destination)


def drop(key):
    return lambda state: state.pop(key)


DAMAGE = {
    "input_shape": (drop("input_shape"), "'input_shape' is None, not [channels, height, width]"),
    "config": (drop("config"), "'config' (the settings it was trained with) or its 'model' section is missing"),
    "class_names": (lambda s: s.update(class_names="abc"), "'class_names' is missing or not a list of at least two"),
    "dataset section": (lambda s: s["config"].update(dataset="abc"), "its config's 'dataset' section is str, not a section"),
    "task section": (lambda s: s["config"].update(task=[1]), "its config's 'task' section is list, not a section"),
    "epoch": (lambda s: s.update(epoch="abc"), "'epoch' is 'abc', not a whole number >= 0"),
    "nan weights": (lambda s: s["model"][next(iter(s["model"]))].fill_(float("nan")),
                    "the weights hold NaN or Inf values (first in features.0.weight)"),
    "normalization": (lambda s: s.update(normalization={"mean": [0.5]}), "'normalization' is"),
    "tiny std": (lambda s: s.update(normalization={"mean": [0.5], "std": [1e-300]}), "'normalization' is {'mean': [0.5], 'std': [1e-300]}, not"),
    "huge input": (lambda s: s.update(input_shape=[1, 200000, 200000]), "'input_shape' is [1, 200000, 200000], not [channels, height, width] with at"),
    # a 1 KB file whose weight claims 40000 x 40000 values through a zero stride
    "stride trick": (lambda s: s["model"].update({"features.0.weight": torch.zeros(1).expand(40000, 40000)}),
                     "weight features.0.weight of shape [40000, 40000] is not a plain tensor imgrec wrote"),
}
RESUME_DAMAGE = {
    "rng": (drop("rng"), "'rng' is missing, so training cannot continue where it stopped"),
    "scheduler": (drop("scheduler"), "'scheduler' is missing"),
    "callbacks": (drop("callbacks"), "'callbacks' is missing"),
    "epoch_progress": (lambda s: s.update(epoch_progress={"batches": 0, "seen": 0, "sums": {}}),
                       "'epoch_progress' (where in an epoch it stopped) is"),
    "bad rng": (lambda s: s["rng"].update(torch=torch.zeros(3)), "'rng' does not hold the python, numpy and torch"),
}
# damage the file's checks cannot see, named when the state is put back
RESTORE_DAMAGE = {
    "callbacks state": (lambda s: s["callbacks"]["model_checkpoint"].pop("best_epoch"),
                        "the checkpoint's callbacks.model_checkpoint state cannot be restored (KeyError"),
    "scheduler state": (lambda s: s.update(scheduler={"nonsense": 1}), "the checkpoint's scheduler state cannot be"),
    "sums": (lambda s: s.update(epoch_progress={"batches": 1, "seen": 16, "sums": {"loss_sum": torch.tensor(1.0)}}),
             "the checkpoint's epoch_progress holds the sums ['loss_sum'], but the classification task keeps"),
}


@pytest.mark.parametrize("command", ["eval", "predict", "export", "features"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_with_what_is_wrong_in_every_command(digits_checkpoint, tmp_path, command, kind):
    from tests.integration.test_security import run_command_in_process

    from PIL import Image

    Image.new("L", (16, 16), 9).save(tmp_path / "x.png")
    edit, message = DAMAGE[kind]
    broken = damaged(digits_checkpoint, edit, tmp_path / "broken.pt")
    with pytest.raises(ImgrecError, match=rf"checkpoint '.*broken.pt' is damaged: {re.escape(message)}"):
        run_command_in_process(command, broken, tmp_path / "out", tmp_path / "x.png")


@pytest.mark.parametrize("kind", [*DAMAGE, *RESUME_DAMAGE])
def test_a_damaged_checkpoint_is_named_when_resuming(compose_cfg, tmp_path, kind):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "first"))
    edit, message = {**DAMAGE, **RESUME_DAMAGE}[kind]
    broken = damaged(tmp_path / "first" / "checkpoints" / "last.pt", edit, tmp_path / "broken.pt")
    with pytest.raises(ImgrecError, match=rf"checkpoint '.*broken.pt' is damaged: {re.escape(message)}"):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=2", f"ckpt_path={broken}", run_dir=tmp_path / "second"))
    assert_nothing_trained(tmp_path / "second")


def test_a_bogus_mid_epoch_position_is_named(compose_cfg, tmp_path):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "first"))

    def far_into_the_epoch(state):
        state["epoch_progress"] = {"batches": 50, "seen": 800, "sums": {"loss_sum": torch.tensor(1.0),
                                                                        "correct": torch.tensor(3)}}

    broken = damaged(tmp_path / "first" / "checkpoints" / "last.pt", far_into_the_epoch, tmp_path / "broken.pt")
    with pytest.raises(ImgrecError, match=r"stopped after batch 50 of an epoch, but an epoch here has 2 batches"):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=2", f"ckpt_path={broken}", run_dir=tmp_path / "second"))


@pytest.mark.parametrize("command, override, message", [
    ("eval", "batch_size=0", "batch_size=0 must be a whole number >= 1"),
    ("predict", "batch_size=0", "batch_size=0 must be a whole number >= 1"),
    ("export", "check_batch_size=0", "check_batch_size=0 must be a whole number >= 1"),
    ("features", "num_threads=0", "num_threads=0 must be auto or a whole number >= 1"),
    ("predict", "device=tpu", "device='tpu' is not a device; use auto, cpu, cuda or cuda:N"),
])
def test_command_settings_are_checked_and_named_as_typed(digits_checkpoint, tmp_path, command, override, message):
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.commands.export import export_checkpoint
    from imgrec.commands.features import extract_features
    from imgrec.commands.predict import predict_images
    from tests.conftest import tool_cfg

    work = {"eval": evaluate_checkpoint, "predict": predict_images, "export": export_checkpoint,
            "features": extract_features}[command]
    extra = [f"inputs={tmp_path}"] if command == "predict" else []
    with pytest.raises(ImgrecError, match=re.escape(message)):
        work(tool_cfg(command, tmp_path / "out", f"ckpt_path={digits_checkpoint}", override, *extra))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_predict_on_cuda_without_cuda_names_its_own_setting(digits_checkpoint, tmp_path):
    from imgrec.commands.predict import predict_images
    from tests.conftest import tool_cfg

    with pytest.raises(ImgrecError, match=r"^device=cuda but this machine has no usable CUDA GPU .*use device=cpu"):
        predict_images(tool_cfg("predict", tmp_path / "out", f"ckpt_path={digits_checkpoint}", "device=cuda",
                                f"inputs={tmp_path}"))


def test_a_run_whose_loss_ends_above_where_it_started_is_warned_about(compose_cfg, caplog):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=3", "optimizer.lr=1e6", "scheduler=none", "test=false",
                      "~callbacks.early_stopping"))
    assert re.search(r"train/loss ended at \S+, not below the first batch's \S+: training diverged", caplog.text)


def test_a_non_finite_stop_in_the_first_epoch_does_not_promise_a_checkpoint(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match=r"none of them changed the weights, and no checkpoint had been written yet"):
        train(compose_cfg("dataset=fake", "optimizer=sgd", "optimizer.lr=1e30", "trainer.max_bad_steps=1",
                          "scheduler=none", "trainer.batch_size=16"))


@pytest.mark.parametrize("kind", list(RESTORE_DAMAGE))
def test_damage_found_while_restoring_the_training_state_is_named(compose_cfg, tmp_path, kind):
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "first"))
    edit, message = RESTORE_DAMAGE[kind]
    broken = damaged(tmp_path / "first" / "checkpoints" / "last.pt", edit, tmp_path / "broken.pt")
    with pytest.raises(ImgrecError, match=re.escape(message)):
        train(compose_cfg("dataset=fake", "trainer.max_epochs=2", f"ckpt_path={broken}", run_dir=tmp_path / "second"))


def test_a_format_version_that_is_not_a_number_is_named(tmp_path):
    from imgrec.checkpoint import load_checkpoint

    torch.save({"format": "imgrec-checkpoint", "format_version": "2"}, tmp_path / "odd.pt")
    with pytest.raises(ImgrecError, match=r"is damaged: its format_version is '2', not a whole number"):
        load_checkpoint(tmp_path / "odd.pt")
