import pytest
import torch

from imgrec.data.backends import Albumentations, Torchvision


def batch(n=6, channels=3, size=12):
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("channels", [1, 3])
def test_albumentations_runs_image_by_image_and_keeps_layout(channels):
    import albumentations

    images = batch(channels=channels)
    flipped = Albumentations([albumentations.HorizontalFlip(p=1.0)])(images)
    assert flipped.dtype == torch.uint8 and torch.equal(flipped, images.flip(-1))


def test_albumentations_is_seeded_by_torch():
    import albumentations

    augment = Albumentations([albumentations.Affine(rotate=(-40, 40), p=1.0)])
    images = batch(n=8)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    assert torch.equal(first, augment(images))
    assert not torch.equal(first, augment(images))


def test_albumentations_that_change_the_size_are_refused():
    import albumentations

    with pytest.raises(ValueError, match="must keep the image size"):
        Albumentations([albumentations.Resize(8, 8)])(batch())


def test_torchvision_draws_parameters_per_image():
    from torchvision.transforms import v2

    torch.manual_seed(0)
    images = batch(n=1).repeat(16, 1, 1, 1)
    out = Torchvision([v2.RandomCrop(12, padding=3)])(images)
    assert out.shape == images.shape
    assert len({tuple(o.flatten().tolist()) for o in out}) > 4  # identical inputs, different crops
