import numpy as np
import pytest
import torch

from imgrec.data.datasets import digits
from imgrec.data.loaders import InMemoryLoader
from imgrec.data.splits import ImageTensors, normalization_stats, stratified_split
from imgrec.errors import ImgrecError


def test_stratified_split_keeps_class_proportions_and_covers_everything():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    train, val, test = stratified_split(labels, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    for part, size in ((train, 60), (val, 20), (test, 20)):
        assert len(part) == size
        assert np.bincount(labels[part], minlength=3).tolist() == [size * 6 // 10, size * 3 // 10, size // 10]


def test_split_is_seeded():
    labels = np.repeat(np.arange(4), 25)
    first = stratified_split(labels, 0.2, 0.2, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, stratified_split(labels, 0.2, 0.2, seed=1)))
    assert not np.array_equal(first[2], stratified_split(labels, 0.2, 0.2, seed=2)[2])


@pytest.mark.parametrize(
    "val, test, message",
    [(0.0, 0.2, "dataset.val_fraction=0.0 must be between 0 and 1"), (0.5, 0.5, "leaves no training data")],
)
def test_bad_fractions_are_named(val, test, message):
    with pytest.raises(ImgrecError, match=message):
        stratified_split(np.repeat(np.arange(2), 10), val, test, seed=0)


def test_standardize_stats_match_numpy():
    images = torch.randint(0, 256, (20, 3, 5, 5), dtype=torch.uint8)
    mean, std = normalization_stats(images, "standardize")
    pixels = images.numpy().astype(np.float64) / 255.0
    assert mean == pytest.approx(pixels.mean(axis=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(pixels.std(axis=(0, 2, 3)).tolist(), abs=1e-12)
    assert normalization_stats(images, "symmetric") == ([0.5] * 3, [0.5] * 3)
    with pytest.raises(ImgrecError, match="dataset.normalize='zscore' is not one of unit, symmetric, standardize"):
        normalization_stats(images, "zscore")


def test_digits_is_split_stratified_and_scaled_to_uint8():
    splits = digits(image_size=16, val_fraction=0.15, test_fraction=0.2, split_seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert len(splits.test) == 360
    assert splits.train.images.shape[1:] == (1, 16, 16) and splits.train.images.dtype == torch.uint8
    assert splits.train.images.max() == 255 and splits.train.images.min() == 0
    assert splits.class_names == [str(d) for d in range(10)]
    assert min(splits.class_counts("test")) >= 35  # ~36 of each digit, not left to chance
    with pytest.raises(ImgrecError, match="dataset.num_classes=5 but digits has 10"):
        digits(num_classes=5)


def make_loader(n=10, batch_size=4, **kwargs):
    data = ImageTensors(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).repeat(1, 1, 2, 2), torch.arange(n))
    return InMemoryLoader(data, batch_size, mean=[0.0], std=[1 / 255], device=torch.device("cpu"), **kwargs)


def test_loader_serves_every_sample_once_per_epoch_in_a_seeded_order():
    loader = make_loader(shuffle=True, seed=3)
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == list(range(10))
        epochs.append(labels.tolist())
    assert epochs[0] != epochs[1]
    again = make_loader(shuffle=True, seed=3)
    again.set_epoch(1)
    assert torch.cat([y for _, y in again]).tolist() == epochs[1]


def test_repeats_serve_every_sample_that_many_times_per_epoch_shuffled_together():
    loader = make_loader(shuffle=True, seed=3, repeats=3)
    assert len(loader) == 8 and loader.num_samples == 30  # ceil(30 / 4) batches
    labels = torch.cat([y for _, y in loader]).tolist()
    assert sorted(labels) == sorted(list(range(10)) * 3)
    assert len(set(labels[:10])) < 10  # interleaved: not three passes one after another
    assert len(make_loader(shuffle=False, repeats=1)) == 3


def test_loader_normalises_and_keeps_images_with_their_labels():
    loader = make_loader(n=10, batch_size=4)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[1]
    # std = 1/255 undoes the /255, so each pixel equals its uint8 value, which equals its label
    assert x.dtype == torch.float32 and torch.allclose(x[:, 0, 0, 0], y.float())


def test_limit_batches_and_drop_last():
    assert len(make_loader(limit_batches=2)) == 2 and len(list(make_loader(limit_batches=2))) == 2
    assert len(make_loader(drop_last=True)) == 2


def test_a_label_out_of_range_names_the_sample_before_any_training():
    import pytest
    import torch

    from imgrec.data.splits import make_splits
    from imgrec.errors import ImgrecError

    images = torch.zeros(12, 1, 4, 4, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2] * 3 + [0, 1, 3])  # sample 11 says class 3 of three
    with pytest.raises(ValueError, match=r"sample 11 has label 3 but there are 3 classes \(labels 0..2\)"):
        make_splits(images, labels, ["a", "b", "c"], 0.25, 0.25, 0, "unit")
    assert issubclass(ImgrecError, ValueError)
