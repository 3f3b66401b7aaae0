import pytest
import torch
import torch.nn.functional as F

from imgrec.errors import ImgrecError
from tests.unit.test_losses_and_steps import build_loss
from imgrec.tasks.mixing import MixUpCutMix


def batch(n=6, classes=3):
    images = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return images, torch.arange(n) % classes


def test_mixup_blends_images_and_targets_by_the_same_lambda():
    images, labels = batch()
    torch.manual_seed(1)
    mixed, targets = MixUpCutMix(3, mixup_alpha=0.4)(images, labels)
    assert targets.shape == (6, 3) and torch.allclose(targets.sum(dim=1), torch.ones(6))
    lam = targets[0, labels[0]].item()  # image 0 is paired with image 5, of another class
    assert 0 < lam < 1 and targets[0, labels[5]].item() == pytest.approx(1 - lam)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)


def test_cutmix_targets_equal_the_pasted_area():
    images = torch.stack([torch.ones(1, 10, 10), torch.zeros(1, 10, 10)])
    labels = torch.tensor([0, 1])
    for seed in range(20):
        torch.manual_seed(seed)
        mixed, targets = MixUpCutMix(2, cutmix_alpha=1.0)(images, labels)
        kept = mixed[0].mean().item()  # the share of image 0's ones still there
        assert targets[0].tolist() == pytest.approx([kept, 1 - kept])
        assert targets[1].tolist() == pytest.approx([1 - kept, kept])
        assert set(mixed.unique().tolist()) <= {0.0, 1.0}  # pasted, not blended


def test_switch_prob_picks_cutmix_or_mixup():
    images, labels = batch()
    torch.manual_seed(0)
    only_cutmix = MixUpCutMix(3, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
    for _ in range(5):
        mixed, _ = only_cutmix(images, labels)
        pasted_or_own = (mixed == images) | (mixed == images.flip(0))
        assert pasted_or_own.all()


def test_prob_zero_or_no_alpha_leaves_the_batch_alone():
    images, labels = batch()
    for mix in (MixUpCutMix(3, mixup_alpha=0.2, prob=0.0), MixUpCutMix(3)):
        out_images, out_targets = mix(images, labels)
        assert out_images is images and out_targets is labels


def test_bad_mixup_settings_are_named():
    with pytest.raises(ImgrecError, match=r"task.mixup.mixup_alpha=-1 must be >= 0"):
        MixUpCutMix(3, mixup_alpha=-1)
    with pytest.raises(ImgrecError, match="task.mixup.prob=1.5 must be between 0 and 1"):
        MixUpCutMix(3, mixup_alpha=0.2, prob=1.5)


@pytest.mark.parametrize("options", [
    {}, {"label_smoothing": 0.1}, {"class_weights": [1, 2, 3]}, {"focal_gamma": 2.0},
    {"label_smoothing": 0.1, "class_weights": [1, 2, 3], "focal_gamma": 1.0},
])
def test_one_hot_targets_give_the_hard_label_loss(options):
    logits, labels = torch.randn(12, 3, generator=torch.Generator().manual_seed(3)), torch.arange(12) % 3
    loss = build_loss((1, 1, 1), **options)
    assert loss(logits, F.one_hot(labels, 3).float()).item() == pytest.approx(loss(logits, labels).item(), rel=1e-5)


def test_mixed_targets_give_the_mixed_loss():
    logits, labels = torch.randn(4, 3, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0])
    targets = 0.7 * F.one_hot(labels, 3).float() + 0.3 * F.one_hot(labels.flip(0), 3).float()
    expected = 0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(logits, labels.flip(0))
    assert build_loss((1, 1, 1))(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
