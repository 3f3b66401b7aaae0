"""trainer.adversarial: training on PGD / FGSM-with-random-start images, train/adv_loss and val/robust_acc,
what it makes of a model's robustness, exact resume, and the settings and tasks it refuses."""

import os
import signal

import pytest
import torch

from imgrec.checkpoint import load_checkpoint
from imgrec.commands.robustness import accuracy_of
from imgrec.commands.train import train
from imgrec.data.building import build_dataset
from imgrec.data.files import images_at
from imgrec.errors import ImgrecError
from imgrec.evaluation.inference import load_trained
from imgrec.robustness.attacks import PixelModel, pgd
from imgrec.training.adversarial import AdversarialBatches, AdversarialSettings
from imgrec.training.signals import TrainingInterrupted
from tests.integration.test_interrupts import recorded_steps  # noqa: F401 (a fixture)

FAKE = ["dataset=fake", "trainer.max_epochs=2", "~callbacks.validation_figures"]
PGD2 = "trainer.adversarial={method:pgd,eps:0.05,steps:2,val_steps:3}"


def test_training_logs_adv_loss_and_robust_acc_and_keeps_the_most_robust_epoch(compose_cfg, tmp_path, caplog):
    caplog.set_level("INFO", logger="imgrec")
    result = train(compose_cfg("trainer.max_epochs=3", "~callbacks.validation_figures", PGD2,
                               "optimized_metric=val/robust_acc", run_dir=tmp_path))  # the digits
    metrics = result["metrics"]
    assert metrics["train/adv_loss"] == metrics["train/loss"]  # ratio 1: the whole batch is adversarial
    assert 0 < metrics["val/robust_acc"] < metrics["val/acc"]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert result["best_score"] == result["best_metrics"]["val/robust_acc"] >= metrics["val/robust_acc"]
    assert best["callbacks"]["model_checkpoint"]["best_score"] == result["best_score"]
    log = caplog.text
    assert "adversarial training: PGD-2 at eps 0.05 (linf) on 100% of each batch; val/robust_acc under PGD-3" in log
    assert log.count("train/adv_loss") == 3


def test_at_eps_0_robust_accuracy_is_the_clean_accuracy(compose_cfg, tmp_path):
    result = train(compose_cfg(*FAKE, "trainer.adversarial={method:fgsm_rs,eps:0.0,ratio:0.5}", run_dir=tmp_path))
    assert result["metrics"]["val/robust_acc"] == result["metrics"]["val/acc"]


def test_half_the_batch_adversarial_logs_its_own_loss(compose_cfg, tmp_path):
    result = train(compose_cfg(*FAKE, "trainer.adversarial={method:fgsm_rs,eps:0.2,ratio:0.5,val_steps:null}",
                               run_dir=tmp_path))
    metrics = result["metrics"]
    assert "val/robust_acc" not in metrics
    assert metrics["train/adv_loss"] > metrics["train/loss"]  # the clean half is easier


def test_adversarial_training_makes_a_digits_model_robust(compose_cfg, tmp_path):
    """The point of it: PGD-10 at eps 0.1 leaves the standard model far less accuracy than the model trained
    on FGSM-with-random-start images at that eps."""
    common = ["trainer.max_epochs=8", "callbacks.early_stopping.patience=50", "~callbacks.validation_figures"]
    robust_accuracy = {}
    for name, extra in (("standard", []), ("adversarial", ["trainer.adversarial={method:fgsm_rs,eps:0.1}"])):
        train(compose_cfg(*common, *extra, "test=false", run_dir=tmp_path / name))
        trained = load_trained(str(tmp_path / name / "checkpoints" / "best.pt"), torch.device("cpu"))
        test = build_dataset(compose_cfg(run_dir=tmp_path / "x").dataset, "classification").test
        pixels = torch.from_numpy(images_at(test, range(len(test)))).float().div(255)
        model = PixelModel(trained.model, trained.mean, trained.std).eval()
        generator = torch.Generator().manual_seed(0)
        robust_accuracy[name] = accuracy_of(model, pixels, test.labels, 512, lambda batch, truth: pgd(
            model, batch, truth, eps=0.1, steps=10, generator=generator))
    assert robust_accuracy["adversarial"] > robust_accuracy["standard"] + 0.3, robust_accuracy


@pytest.mark.parametrize("extra", [
    [PGD2],
    ["trainer.adversarial={method:fgsm_rs,eps:0.1,ratio:0.5}", "trainer.precision=bf16-mixed",
     "trainer.channels_last=true", "trainer.ema_decay=0.9"],
])
def test_a_resumed_adversarial_run_ends_where_an_unbroken_one_does(compose_cfg, tmp_path, extra):
    if "trainer.precision=bf16-mixed" in extra:
        from imgrec.runtime import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            pytest.skip("this CPU has no fast bfloat16")
    run = ["dataset=fake", "scheduler=none", "model.dropout=0.5", "augment=classic", "~callbacks.validation_figures",
           *extra]
    straight = train(compose_cfg(*run, "trainer.max_epochs=3", run_dir=tmp_path / "straight"))
    train(compose_cfg(*run, "trainer.max_epochs=1", "test=false", run_dir=tmp_path / "first"))
    resumed = train(compose_cfg(*run, "trainer.max_epochs=3", f"ckpt_path={tmp_path / 'first/checkpoints/last.pt'}",
                                run_dir=tmp_path / "resumed"))
    assert straight["metrics"] == resumed["metrics"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_signal_mid_epoch_resumes_to_the_same_adversarial_steps(compose_cfg, tmp_path, recorded_steps):  # noqa: F811
    run = ["dataset=fake", "trainer.max_epochs=2", "trainer.batch_size=16", "task.mixup.mixup_alpha=0.2",
           "trainer.adversarial={method:pgd,eps:0.05,steps:2,ratio:0.5}", "~callbacks.validation_figures"]
    whole = train(compose_cfg(*run, run_dir=tmp_path / "whole"))
    whole_losses = list(recorded_steps["losses"])
    recorded_steps.update(losses=[], signal_after=7, signal=signal.SIGUSR1)
    with pytest.raises(TrainingInterrupted):
        train(compose_cfg(*run, run_dir=tmp_path / "first"))
    assert load_checkpoint(tmp_path / "first" / "checkpoints" / "last.pt")["epoch_progress"]["batches"] == 2
    first_losses = list(recorded_steps["losses"])
    recorded_steps.update(losses=[], signal_after=None)
    resumed = train(compose_cfg(*run, f"ckpt_path={tmp_path / 'first/checkpoints/last.pt'}", run_dir=tmp_path / "r"))
    assert first_losses + recorded_steps["losses"] == whole_losses
    assert resumed["metrics"]["train/adv_loss"] == whole["metrics"]["train/adv_loss"]


@pytest.mark.parametrize("override, message", [
    ("trainer.adversarial={eps:1.5}", "trainer.adversarial.eps=1.5 must be in [0, 1]"),
    ("trainer.adversarial={steps:0}", "trainer.adversarial.steps=0 must be a whole number >= 1"),
    ("trainer.adversarial={method:fgsm}", "trainer.adversarial.method='fgsm' must be one of pgd, fgsm_rs"),
    ("trainer.adversarial={ratio:0}", "trainer.adversarial.ratio=0 must be in (0, 1]"),
    ("trainer.adversarial={method:fgsm_rs,norm:l2}", "fgsm_rs is an L-inf attack; use method=pgd for norm=l2"),
    ("trainer.adversarial={epsilon:0.1}",
     "trainer.adversarial has unknown key(s) ['epsilon']; the keys are method, eps"),
    ("trainer.adversarial={val_steps:0}", "trainer.adversarial.val_steps=0 must be a whole number >= 1, or null"),
])
def test_bad_settings_are_named_before_any_data_is_read(compose_cfg, tmp_path, override, message):
    with pytest.raises(ImgrecError, match=message.replace("[", r"\[").replace("(", r"\(").replace("]", r"\]")
                       .replace(")", r"\)").replace(".", r"\.")):
        train(compose_cfg("dataset=fake", override, run_dir=tmp_path))
    assert not (tmp_path / "dataset.json").exists()


def test_robust_acc_is_no_metric_without_adversarial_training(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match=r"optimized_metric=val/robust_acc is logged only by adversarial training: "
                                          r"add trainer.adversarial=\{method:pgd,eps:0.1\}"):
        train(compose_cfg("dataset=fake", "optimized_metric=val/robust_acc", run_dir=tmp_path))


def test_a_resume_must_keep_the_adversarial_setting(compose_cfg, tmp_path):
    adversarial = "trainer.adversarial={method:fgsm_rs,eps:0.1,val_steps:null}"
    train(compose_cfg("dataset=fake", "trainer.max_epochs=1", "test=false", adversarial, run_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    for changed, mismatch in (([], r"eps=0.1 but this run has trainer.adversarial.eps=None"),
                              (["trainer.adversarial={method:pgd,eps:0.1,val_steps:null}"],
                               r"method=fgsm_rs but this run has trainer.adversarial.method=pgd")):
        with pytest.raises(ImgrecError, match=rf"was trained with trainer.adversarial.{mismatch}; resume with"):
            train(compose_cfg("dataset=fake", "trainer.max_epochs=2", f"ckpt_path={last}", *changed,
                              run_dir=tmp_path / "b"))


def test_another_task_is_refused(compose_cfg, tmp_path):
    with pytest.raises(ImgrecError, match="trainer.adversarial is built for classification .* task=segmentation"):
        train(compose_cfg("task=segmentation", "dataset=shapes", "model=unet", PGD2, run_dir=tmp_path))


def test_the_attack_stays_in_the_budget_leaves_the_clean_share_and_touches_no_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3)).train()
    mean, std = [0.5], [0.25]
    pixels = torch.rand(8, 1, 8, 8)
    images, labels = (pixels - 0.5) / 0.25, torch.randint(0, 3, (8,))
    statistics = net[1].running_mean.clone()
    batches = AdversarialBatches(AdversarialSettings(eps=0.1, steps=3, ratio=0.5), mean, std,
                                 torch.nn.functional.cross_entropy, None)
    attacked, count = batches.perturb(net, images, labels)
    assert count == 4 and net.training
    assert torch.equal(attacked[4:], images[4:])
    change = (attacked[:4] * 0.25 + 0.5) - pixels[:4]
    assert 0.05 < change.abs().max() <= 0.1 + 1e-6
    assert all(parameter.grad is None for parameter in net.parameters())
    assert torch.equal(net[1].running_mean, statistics)  # the attack's passes run in eval mode


@pytest.mark.slow  # a torchrun subprocess, like tests/integration/test_ddp.py
def test_a_process_group_of_two_trains_adversarially(tmp_path):
    pytest.importorskip("torch.distributed")
    from tests.integration.test_ddp import torchrun

    result = torchrun(2, tmp_path / "two", "trainer.batch_size=16", PGD2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("val/robust_acc") == 2 and "x 2 processes (gloo)" in log
    assert os.path.exists(tmp_path / "two" / "checkpoints" / "best.pt")
