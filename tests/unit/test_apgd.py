"""APGD-CE against torchattacks.APGD (the reference implementation, a test-only dependency) and against our PGD,
on a small classifier trained here on scikit-learn's digits; its budget, schedule, modes and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.robustness.apgd import _checkpoints, apgd
from imgrec.robustness.attacks import PixelModel, pgd

torchattacks = pytest.importorskip("torchattacks")


def correct(model, pixels, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(pixels).argmax(1) == labels


def accuracy(model, pixels, labels) -> float:
    return float(correct(model, pixels, labels).float().mean())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_within_budget(adversarial, pixels, eps, norm):
    delta = (adversarial - pixels).flatten(1)
    if norm == "linf":
        assert float(delta.abs().amax()) <= eps + 1e-6
    else:
        assert float(delta.norm(dim=1).amax()) <= eps + 1e-5
    assert adversarial.min() >= 0 and adversarial.max() <= 1


# Measured with 100 steps (ours | torchattacks, of 128; clean 117): linf 0.05: 99 | 99, linf 0.1: 67 | 67,
# l2 0.5: 65 | 65. The random starts differ (other random numbers), so 3 of 128 images (0.023) are allowed.
@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("linf", 0.1), ("l2", 0.5)])
def test_apgd_reaches_torchattacks_robust_accuracy(digits_model, norm, eps):
    model, pixels, labels = digits_model
    ours = apgd(model, pixels, labels, eps, steps=100, norm=norm, generator=seeded())
    reference = torchattacks.APGD(model, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=100,
                                  n_restarts=1, seed=0, loss="ce")(pixels, labels)
    assert accuracy(model, ours, labels) == pytest.approx(accuracy(model, reference, labels), abs=3 / 128)
    assert accuracy(model, ours, labels) < accuracy(model, pixels, labels) - 0.1
    assert_within_budget(ours, pixels, eps, norm)


# At these budgets PGD-20 leaves 69 (linf 0.1) and 3 (l2 1.0) of 128 images right, APGD-20 67 and 1.
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_is_at_least_as_strong_as_pgd_with_as_many_steps(digits_model, norm, eps):
    model, pixels, labels = digits_model
    ours = apgd(model, pixels, labels, eps, steps=20, norm=norm, generator=seeded())
    projected = pgd(model, pixels, labels, eps, steps=20, norm=norm, generator=seeded())
    assert accuracy(model, ours, labels) <= accuracy(model, projected, labels) + 1 / 128
    assert_within_budget(ours, pixels, eps, norm)


def test_more_restarts_only_break_more_images_and_misclassified_images_stay_clean(digits_model):
    model, pixels, labels = digits_model
    once = apgd(model, pixels, labels, 0.08, steps=10, generator=seeded(3))
    thrice = apgd(model, pixels, labels, 0.08, steps=10, restarts=3, generator=seeded(3))
    # The same seed makes the first restart the same: what it broke stays broken.
    assert not (correct(model, thrice, labels) & ~correct(model, once, labels)).any()
    assert accuracy(model, thrice, labels) <= accuracy(model, once, labels)
    unbroken = correct(model, thrice, labels)
    with torch.no_grad():  # and where none broke the image, the highest loss of the three is kept
        loss_once, loss_thrice = (F.cross_entropy(model(images[unbroken]), labels[unbroken], reduction="none")
                                  for images in (once, thrice))
    assert unbroken.sum() > 20 and bool((loss_thrice >= loss_once).all()) and bool((loss_thrice > loss_once).any())
    already_wrong = ~correct(model, pixels, labels)
    assert already_wrong.sum() > 0 and torch.equal(thrice[already_wrong], pixels[already_wrong])
    assert_within_budget(thrice, pixels, 0.08, "linf")


class Recording(nn.Module):
    """The model, keeping every batch of points it is asked about."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, pixels):
        self.seen.append(pixels.detach().clone())
        return self.model(pixels)


def test_each_image_gets_its_first_misclassified_point_or_else_its_highest_loss_point(digits_model):
    model, pixels, labels = digits_model
    recording = Recording(model)
    adversarial = apgd(recording, pixels, labels, 0.05, steps=20, generator=seeded())
    clean, *iterates = recording.seen  # the clean batch, then the start and each step for the images attacked
    attacked = correct(model, clean, labels).nonzero().squeeze(1)
    assert len(iterates) == 21 and all(len(points) == len(attacked) for points in iterates)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(points), labels[attacked], reduction="none")
                              for points in iterates])
    wrong = torch.stack([~correct(model, points, labels[attacked]) for points in iterates])
    broken, unbroken = 0, 0
    for column, image in enumerate(attacked.tolist()):
        if wrong[:, column].any():
            chosen, broken = int(wrong[:, column].nonzero()[0]), broken + 1
        else:
            chosen, unbroken = int(losses[:, column].argmax()), unbroken + 1
        assert torch.equal(adversarial[image], iterates[chosen][column]), image
    assert broken > 10 and unbroken > 10


class Wavy(nn.Module):
    """Logits (0.1, 3 sin(40 (mean pixel - 0.5))): a loss with a peak every 0.16 of a pixel, so steps of a
    fixed size jump from slope to slope, and only a shrinking step climbs one peak."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, pixels):
        self.seen.append(pixels.detach().flatten(1).mean(1))
        wave = 3 * torch.sin(40 * (pixels.flatten(1).mean(1) - 0.5))
        return torch.stack([torch.full_like(wave, 0.1), wave], dim=1)


def test_the_step_size_halves_until_the_points_settle_on_a_peak():
    wavy = Wavy()
    apgd(wavy, torch.full((4, 1, 1, 1), 0.5), torch.zeros(4, dtype=torch.long), 0.3, steps=100,
         generator=seeded())
    iterates = torch.stack(wavy.seen[1:])
    moves = (iterates[1:] - iterates[:-1]).abs()
    assert bool((moves[:22].amax(0) > 0.05).all())  # the first step size, 2 eps = 0.6, moves far
    assert bool((moves[-10:].amax(0) < 0.01).all())  # at a fixed step size the last moves measured 0.04 to 0.2
    assert bool((torch.sin(40 * (iterates[-1] - 0.5)) > 0.99).all())  # on a peak of the loss


def test_the_checkpoints_follow_the_paper():
    """p_0 = 0, p_1 = 0.22, p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06): at 100 steps, stretches of
    22, 19, 16, 13, 10, 7, then 6."""
    assert sorted(_checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert sorted(_checkpoints(10)) == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # every stretch at least one step
    assert sorted(_checkpoints(1)) == [1]


def test_the_attack_runs_the_model_in_eval_mode_and_leaves_it_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 36, 3))
    model = PixelModel(net, [0.5], [0.5])
    pixels, labels = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    statistics = net[1].running_mean.clone()
    in_train_mode = apgd(model.train(), pixels, labels, eps=0.1, steps=10, generator=seeded())
    assert model.training and torch.equal(net[1].running_mean, statistics)  # mode given back, statistics kept
    assert all(parameter.grad is None for parameter in model.parameters())
    in_eval_mode = apgd(model.eval(), pixels, labels, eps=0.1, steps=10, generator=seeded())
    assert not model.training
    assert torch.equal(in_train_mode, in_eval_mode)  # dropout was off: no random masks in the attack
    assert not torch.equal(in_eval_mode, pixels)


def test_eps_zero_gives_the_images_back(digits_model):
    model, pixels, labels = digits_model
    assert torch.equal(apgd(model, pixels, labels, 0.0, steps=5), pixels)


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 1.5}, r"attack eps=1.5 must be in \[0, 1\]"),
    ({"eps": -0.1, "norm": "l2"}, r"attack eps=-0.1 must be >= 0"),
    ({"eps": 0.1, "norm": "l1"}, r"attack norm='l1' must be one of linf, l2"),
    ({"eps": 0.1, "steps": 0}, r"attack steps=0 must be a whole number >= 1"),
    ({"eps": 0.1, "restarts": 0}, r"apgd restarts=0 must be a whole number >= 1"),
    ({"eps": 0.1, "restarts": 1.5}, r"apgd restarts=1.5 must be a whole number >= 1"),
    ({"eps": 0.1, "rho": 0}, r"apgd rho=0 must be in \(0, 1\]"),
])
def test_bad_budgets_are_named(kwargs, message):
    model = PixelModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), [0.5], [0.5])
    with pytest.raises(ImgrecError, match=message):
        apgd(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), **kwargs)
