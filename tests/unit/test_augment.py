import math

import pytest
import torch
from torchvision.transforms.v2.functional import equalize

from imgrec.data.augment import RandomAffine, RandomCrop, RandomErasing, RandomHorizontalFlip
from imgrec.data.photometric import ContrastStretch, GaussianNoise, HistogramEqualize, RandomBrightness
from imgrec.errors import ImgrecError


def batch(n=8, channels=3, size=16, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_flip_with_p_1_mirrors_every_image_and_p_0_none():
    images = batch()
    assert torch.equal(RandomHorizontalFlip(p=1.0)(images), images.flip(-1))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(images), images)


def test_flip_decides_per_image():
    torch.manual_seed(0)
    images = batch(n=64)
    flipped = RandomHorizontalFlip(p=0.5)(images)
    changed = [(not torch.equal(a, b)) for a, b in zip(flipped, images)]
    assert 16 < sum(changed) < 48  # about half, drawn image by image


def test_random_crop_shifts_each_image_within_the_padding():
    torch.manual_seed(0)
    images = torch.arange(6 * 6, dtype=torch.uint8).view(1, 1, 6, 6).repeat(32, 1, 1, 1)
    cropped = RandomCrop(padding=2)(images)
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    shifts = set()
    for image in cropped:
        # the value at a surviving pixel tells how far the image moved: value = row * 6 + col
        row, col = (image[0] > 0).nonzero()[0].tolist()
        value = int(image[0, row, col])
        shifts.add((value // 6 - row, value % 6 - col))
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in shifts)
    assert len(shifts) > 5  # offsets differ between images
    assert torch.equal(RandomCrop(padding=0)(images), images)


def test_affine_with_no_range_is_the_identity_and_rotation_by_90_turns_the_image():
    images = batch(n=4, size=8).float()
    assert torch.allclose(RandomAffine()(images), images, atol=1e-3)
    quarter = RandomAffine(degrees=90, interpolation="nearest")
    quarter.matrices = lambda x: torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]]).expand(len(x), -1, -1)
    turned = quarter(images)
    assert torch.equal(turned, torch.rot90(images, k=1, dims=(-2, -1))) or torch.equal(turned, torch.rot90(images, k=-1, dims=(-2, -1)))


def test_affine_matrices_are_drawn_per_image_within_range():
    torch.manual_seed(0)
    affine = RandomAffine(degrees=40, translate=0.2, shear=0.2, zoom=0.2)
    inverse = affine.matrices(torch.zeros(256, 1, 8, 8))
    full = torch.cat([inverse, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(256, -1, -1)], dim=1)
    forward = torch.linalg.inv(full)
    assert forward[:, :2, 2].abs().max() <= 0.4 + 1e-6  # translate 0.2 of a side = 0.4 grid units
    determinant = torch.linalg.det(forward[:, :2, :2])  # rotation and shear keep area: det = scale^2
    assert determinant.min() >= 0.8**2 - 1e-5 and determinant.max() <= 1.2**2 + 1e-5
    assert forward[:, 0, 0].std() > 0.05  # not one draw for the whole batch
    with pytest.raises(ImgrecError, match="fill='wrap' must be one of nearest, constant, reflect"):
        RandomAffine(fill="wrap")


def test_erasing_blanks_one_rectangle_of_the_asked_area():
    torch.manual_seed(0)
    images = torch.full((16, 3, 20, 20), 200, dtype=torch.uint8)
    erased = RandomErasing(p=1.0, scale=(0.1, 0.1), ratio=(1.0, 1.0), value=0)(images)
    blank = (erased[:, 0] == 0)
    assert blank.sum(dim=(1, 2)).tolist() == [36] * 16  # sqrt(0.1 * 400) = 6.3 -> a 6 x 6 box
    assert torch.equal(erased[:, 0], erased[:, 2])  # every channel of the box


def test_contrast_stretch_maps_the_image_range_to_full_scale():
    images = torch.linspace(100, 150, 16 * 16).view(1, 1, 16, 16).repeat(2, 1, 1, 1)
    stretched = ContrastStretch(low=0, high=100, p=1.0)(images)
    assert stretched.min() == 0 and stretched.max() == pytest.approx(255)


def test_equalize_matches_torchvision_image_by_image():
    images = (batch(n=4, channels=1) // 4)  # a narrow histogram to spread
    equalized = HistogramEqualize(p=1.0)(images)
    for image, result in zip(images, equalized):
        assert torch.equal(result.to(torch.uint8), equalize(image))


def test_noise_and_brightness_change_pixels_by_the_asked_amount():
    torch.manual_seed(0)
    flat = torch.full((64, 1, 16, 16), 128.0)
    noisy = GaussianNoise(sigma=0.04, p=1.0)(flat)
    assert (noisy - 128).std().item() == pytest.approx(0.04 * 255, rel=0.05)
    brighter = RandomBrightness(max_delta=0.1)(flat)
    shift = (brighter - 128).flatten(1)
    assert torch.equal(shift.min(dim=1).values, shift.max(dim=1).values)  # one delta per image
    assert shift.abs().max() <= 0.1 * 255 + 1e-4 and shift[:, 0].std() > 1


def test_same_seed_same_augmented_batch():
    from imgrec.data.augment import Compose

    pipeline = Compose([RandomCrop(2), RandomAffine(degrees=30, zoom=0.1), GaussianNoise(p=1.0)])
    images = batch()
    torch.manual_seed(5)
    first = pipeline(images)
    torch.manual_seed(5)
    assert torch.equal(first, pipeline(images))
    assert not math.isclose(first.float().sum().item(), pipeline(images).float().sum().item())
