import pytest
import torch
from torch.nn.utils import parametrize

from imgrec.errors import ImgrecError
from imgrec.gan.diffaugment import check_policy, diff_augment
from imgrec.gan.losses import LOSSES, check_loss, discriminator_loss, generator_loss
from imgrec.gan.models import Discriminator, Generator, check_image_size, generator_sizes


@pytest.mark.parametrize(("image_size", "upsamplings", "channels"), [(16, 2, 3), (28, 2, 1), (32, 2, 3), (64, 3, 1)])
def test_generator_makes_images_of_the_asked_size_in_minus_one_to_one(image_size, upsamplings, channels):
    torch.manual_seed(0)
    generator = Generator(num_classes=5, channels=channels, image_size=image_size, width=32, upsamplings=upsamplings)
    images = generator(torch.randn(4, generator.latent_dim), torch.tensor([0, 1, 2, 4]))
    assert images.shape == (4, channels, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1
    assert (generator.num_classes, generator.channels, generator.image_size) == (5, channels, image_size)


def test_a_size_the_generator_cannot_make_lists_the_ones_it_can():
    assert generator_sizes(2) == [12, 16, 20, 24, 28, 32]
    assert check_image_size(28, 2) == 7
    sizes_listed = r"dataset.image_size=30 .* gan.upsamplings=2: it makes 12, 16, 20, 24, 28, 32 "
    with pytest.raises(ImgrecError, match=sizes_listed):
        Generator(num_classes=10, channels=1, image_size=30)
    with pytest.raises(ImgrecError, match=r"gan.upsamplings=0 must be a whole number in 1..5"):
        check_image_size(28, 0)


def test_the_label_changes_the_image_for_the_same_z():
    torch.manual_seed(0)
    generator = Generator(num_classes=10, channels=1, image_size=16, width=32).eval()
    z = torch.randn(1, generator.latent_dim).repeat(2, 1)
    images = generator(z, torch.tensor([3, 7]))
    assert not torch.allclose(images[0], images[1], atol=1e-3)


def test_discriminator_gives_one_logit_per_image_and_spectral_norm_is_switchable():
    torch.manual_seed(0)
    discriminator = Discriminator(num_classes=10, channels=3, image_size=32, width=32)
    logits = discriminator(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4,)
    weighted = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)
    layers = [m for m in discriminator.modules() if isinstance(m, weighted)]
    assert layers and all(parametrize.is_parametrized(layer, "weight") for layer in layers)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    plain = Discriminator(num_classes=10, channels=3, image_size=32, width=32, spectral_norm=False)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


def test_discriminator_depends_on_the_label():
    torch.manual_seed(0)
    discriminator = Discriminator(num_classes=10, channels=1, image_size=16, width=32)
    image = torch.randn(1, 1, 16, 16).repeat(2, 1, 1, 1)
    logits = discriminator(image, torch.tensor([2, 5]))
    assert not torch.isclose(logits[0], logits[1])


def test_losses_match_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # hinge: D = mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, 0])) = .25 + .5; G = -mean([-2, 0]) = 1
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(0.75)
    assert generator_loss("hinge", fake).item() == pytest.approx(1.0)
    # non-saturating with log(1 + e^x): D = mean(sp(-2), sp(-.5)) + mean(sp(-2), sp(0))
    softplus = lambda x: torch.log1p(torch.exp(torch.tensor(x))).item()  # noqa: E731
    expected_d = (softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-2.0) + softplus(0.0)) / 2
    assert discriminator_loss("non_saturating", real, fake).item() == pytest.approx(expected_d)
    assert generator_loss("non_saturating", fake).item() == pytest.approx((softplus(2.0) + softplus(0.0)) / 2)
    assert LOSSES == ("hinge", "non_saturating")


def test_a_bad_loss_name_is_named():
    with pytest.raises(ImgrecError, match="gan.loss='wasserstein' is not one of hinge, non_saturating"):
        check_loss("wasserstein")
    with pytest.raises(ImgrecError, match="gan.loss='lsgan'"):
        generator_loss("lsgan", torch.zeros(2))


@pytest.mark.parametrize("channels", [1, 3])
def test_diff_augment_keeps_shape_changes_images_and_passes_gradients(channels):
    images = (torch.rand(6, channels, 16, 16) * 2 - 1).requires_grad_()
    augmented = diff_augment(images, "color,translation,cutout")
    assert augmented.shape == images.shape
    assert not torch.allclose(augmented, images)
    augmented.sum().backward()
    assert images.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", ["color", "translation", "cutout"])
def test_each_policy_is_reproducible_under_a_seed_and_changes_images(policy):
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    first = diff_augment(images, [policy])
    torch.manual_seed(1)
    assert torch.equal(first, diff_augment(images, [policy]))
    assert not torch.equal(first, images)


def test_cutout_zeroes_a_square_of_half_the_side_and_translation_pads_with_zeros():
    torch.manual_seed(0)
    cut = diff_augment(torch.ones(16, 1, 16, 16), "cutout")
    zeroed = (cut == 0).sum(dim=(1, 2, 3))
    assert zeroed.max() <= 64 and (zeroed > 0).all()
    shifted = diff_augment(torch.ones(64, 1, 16, 16), "translation")
    assert set(shifted.unique().tolist()) <= {0.0, 1.0} and (shifted == 0).any()


def test_policy_accepts_lists_and_strings_and_names_a_bad_entry():
    assert check_policy("color, cutout") == ("color", "cutout")
    assert check_policy(["translation"]) == ("translation",)
    assert check_policy("") == check_policy(None) == check_policy([]) == ()
    images = torch.randn(2, 3, 8, 8)
    assert diff_augment(images, None) is images
    with pytest.raises(ImgrecError, match="gan.diffaugment entry 'rotate' is not one of color, translation, cutout"):
        check_policy("color,rotate")
    with pytest.raises(ImgrecError, match="gan.diffaugment=3 must be a list"):
        check_policy(3)
