import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.models.small_cnn import ACTIVATIONS, SmallCNN


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_activation_gives_logits_per_class(activation, channels):
    model = SmallCNN(in_channels=channels, num_classes=7, activation=activation).eval()
    assert model(torch.randn(2, channels, 16, 16)).shape == (2, 7)


@pytest.mark.parametrize("size", [8, 16, 28, 32, 33])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_any_image_size_and_pool(size, pool):
    model = SmallCNN(in_channels=3, num_classes=4, widths=[8, 16, 32], pool=pool).eval()
    assert model(torch.randn(3, 3, size, size)).shape == (3, 4)


def test_options_change_the_network():
    plain = SmallCNN(1, 10, widths=[8], convs_per_stage=1, batch_norm=False, hidden=[], kernel_size=5)
    convs = [m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (5, 5) and convs[0].bias is not None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    deep = SmallCNN(1, 10, widths=[8, 8], convs_per_stage=3, hidden=[32, 16])
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deep.modules()) == 6
    assert [m.out_features for m in deep.modules() if isinstance(m, torch.nn.Linear)] == [32, 16, 10]


def test_bad_choices_are_named():
    with pytest.raises(ImgrecError, match="model.activation='relu6' is not one of relu, leaky_relu"):
        SmallCNN(1, 10, activation="relu6")
    with pytest.raises(ImgrecError, match="model.pool='median'"):
        SmallCNN(1, 10, pool="median")
    with pytest.raises(ImgrecError, match=r"model.dropout=1.5 must be in \[0, 1\)"):
        SmallCNN(1, 10, dropout=1.5)


def test_stride_and_padding_set_the_feature_map_size():
    strided = SmallCNN(1, 5, widths=[4, 4], convs_per_stage=2, stride=2, hidden=[])
    convs = [m for m in strided.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (2, 2), (1, 1)]  # the first conv of each stage
    # 32 -> conv/2 16 -> pool 8 -> conv/2 4 -> pool 2
    assert strided.features(torch.zeros(1, 1, 32, 32)).shape[-2:] == (2, 2)
    valid = SmallCNN(1, 5, widths=[4], convs_per_stage=2, kernel_size=5, padding=0, hidden=[])
    # 20 -> 16 -> 12 (no padding, 5x5) -> pool 6
    assert valid.features(torch.zeros(1, 1, 20, 20)).shape[-2:] == (6, 6)
    assert SmallCNN(1, 5, widths=[4], kernel_size=5).features(torch.zeros(1, 1, 20, 20)).shape[-2:] == (10, 10)
    with pytest.raises(ImgrecError, match="model.stride=0 must be a whole number >= 1"):
        SmallCNN(1, 5, stride=0)
    with pytest.raises(ImgrecError, match="model.padding='valid' must be 'same' or a whole number >= 0"):
        SmallCNN(1, 5, padding="valid")


def test_head_pool_size_keeps_a_grid_of_positions():
    flat = SmallCNN(1, 10, widths=[4, 8], convs_per_stage=1, hidden=[16], head_pool_size=7)
    first_linear = next(m for m in flat.modules() if isinstance(m, torch.nn.Linear))
    assert first_linear.in_features == 8 * 7 * 7
    assert flat(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ImgrecError, match="model.head_pool_size=0 must be a whole number >= 1"):
        SmallCNN(1, 10, head_pool_size=0)


def test_the_head_pool_passes_a_map_of_its_size_through_and_pools_any_other():
    from imgrec.models.small_cnn import HeadPool

    pool = HeadPool(7)
    sized = torch.randn(2, 3, 7, 7, requires_grad=True)
    assert pool(sized) is sized  # nothing computed, nothing in the backward pass
    larger = torch.randn(2, 3, 14, 14)
    assert torch.equal(pool(larger), torch.nn.functional.adaptive_avg_pool2d(larger, 7))
    assert torch.allclose(HeadPool(1)(larger), larger.mean(dim=(2, 3), keepdim=True), atol=1e-6)
