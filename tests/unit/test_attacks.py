"""FGSM and PGD against torchattacks (the reference implementation, a test-only dependency) on a small
classifier trained here on scikit-learn's digits, and the attack's budget, modes and gradients."""

import pytest
import torch
from torch import nn

from imgrec.robustness.attacks import PixelModel, fgsm, pgd
from imgrec.errors import ImgrecError

torchattacks = pytest.importorskip("torchattacks")


def accuracy(model, pixels, labels) -> float:
    with torch.no_grad():
        return float((model(pixels).argmax(1) == labels).float().mean())


def test_the_model_is_worth_attacking(digits_model):
    model, pixels, labels = digits_model
    assert accuracy(model, pixels, labels) > 0.9


def test_fgsm_gives_torchattacks_images(digits_model):
    model, pixels, labels = digits_model
    ours = fgsm(model, pixels, labels, eps=0.1)
    reference = torchattacks.FGSM(model, eps=0.1)(pixels, labels)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert accuracy(model, ours, labels) < accuracy(model, pixels, labels) - 0.2


@pytest.mark.parametrize("norm, eps, step_size", [("linf", 0.05, 0.01), ("l2", 1.0, 0.25)])
def test_pgd_without_random_start_gives_torchattacks_images(digits_model, norm, eps, step_size):
    model, pixels, labels = digits_model
    ours = pgd(model, pixels, labels, eps=eps, steps=10, step_size=step_size, norm=norm, random_start=False)
    attack = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    reference = attack(model, eps=eps, alpha=step_size, steps=10, random_start=False)(pixels, labels)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    delta = (ours - pixels).flatten(1)
    bound = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((bound <= eps + 1e-5).all()) and ours.min() >= 0 and ours.max() <= 1


@pytest.mark.parametrize("norm, eps, step_size", [("linf", 0.1, 0.01), ("l2", 1.5, 0.3)])
def test_pgd_with_random_start_reaches_torchattacks_robust_accuracy(digits_model, norm, eps, step_size):
    """Random starts differ (other random numbers), so the robust accuracies are compared: within 4 of the
    128 images (0.031)."""
    model, pixels, labels = digits_model
    torch.manual_seed(1)
    ours = pgd(model, pixels, labels, eps=eps, steps=20, step_size=step_size, norm=norm,
               generator=torch.Generator().manual_seed(0))
    attack = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    reference = attack(model, eps=eps, alpha=step_size, steps=20, random_start=True)(pixels, labels)
    assert accuracy(model, ours, labels) == pytest.approx(accuracy(model, reference, labels), abs=4 / 128)
    assert accuracy(model, ours, labels) < accuracy(model, pixels, labels) - 0.3


def test_eps_is_in_pixels_whatever_the_normalisation(digits_model):
    """The same function of pixels, normalised two ways, is attacked into the same images."""
    model, pixels, labels = digits_model
    net = model.model
    rescaled = PixelModel(nn.Sequential(_Affine(0.4 / 0.2, (0.3 - 0.5) / 0.2), net), mean=[0.5], std=[0.2]).eval()
    torch.testing.assert_close(rescaled(pixels), model(pixels), atol=1e-4, rtol=0)
    first = pgd(model, pixels, labels, eps=0.05, steps=5, step_size=0.01, random_start=False)
    second = pgd(rescaled, pixels, labels, eps=0.05, steps=5, step_size=0.01, random_start=False)
    assert float((first != second).float().mean()) < 0.001  # a sign flipped by rounding at most, rarely


class _Affine(nn.Module):
    """x -> (x - shift) / scale: turns one normalisation's input into another's."""

    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return (x - self.shift) / self.scale


def test_the_attack_runs_the_model_in_eval_mode_and_leaves_it_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 36, 3))
    model = PixelModel(net, [0.5], [0.5]).train()
    pixels, labels = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    statistics = net[1].running_mean.clone()
    first = pgd(model, pixels, labels, eps=0.1, steps=3, random_start=False)
    second = pgd(model, pixels, labels, eps=0.1, steps=3, random_start=False)
    assert torch.equal(first, second)  # dropout off: the same attack twice gives the same images
    assert model.training and torch.equal(net[1].running_mean, statistics)  # mode given back, statistics kept
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 1.5}, r"attack eps=1.5 must be in \[0, 1\]"),
    ({"eps": -0.1, "norm": "l2"}, r"attack eps=-0.1 must be >= 0"),
    ({"eps": 0.1, "norm": "l1"}, r"attack norm='l1' must be one of linf, l2"),
    ({"eps": 0.1, "steps": 0}, r"attack steps=0 must be a whole number >= 1"),
    ({"eps": 0.1, "step_size": 0}, r"attack step_size=0 must be a number > 0"),
])
def test_bad_budgets_are_named(kwargs, message):
    model = PixelModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), [0.5], [0.5])
    with pytest.raises(ImgrecError, match=message):
        pgd(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), **kwargs)


class Detached(nn.Module):
    """Cuts its input off from autograd, as a model with a non-differentiable front end would."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return self.model(pixels.detach())


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "apgd"])
def test_a_model_that_is_not_differentiable_in_its_input_is_named(digits_model, attack):
    from imgrec.robustness.apgd import apgd

    model, pixels, labels = digits_model
    run = {"fgsm": lambda m: fgsm(m, pixels, labels, 0.1), "pgd": lambda m: pgd(m, pixels, labels, 0.1, steps=2),
           "apgd": lambda m: apgd(m, pixels, labels, 0.1, steps=2)}[attack]
    message = "not differentiable with respect to its input .* attacks=\\[\\] still measures"
    with pytest.raises(ImgrecError, match=message):
        run(Detached(model))
