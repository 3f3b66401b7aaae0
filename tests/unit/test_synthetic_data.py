"""dataset.train_per_class and dataset.synthetic on hand-made splits: what train gains or loses, and that val and
test never change."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgrec.data.splits import FileSplit, make_splits
from imgrec.data.synthetic import apply_training_options
from imgrec.errors import ImgrecError

CLASS_NAMES = ["T-shirt/top", "Coat", "Bag"]
FOLDERS = ["T-shirt_top", "Coat", "Bag"]
SIZE = 8
REAL_MAX = 200  # real pixels are 0..200; every generated image is 255 but for two pixels that name it
GENERATED_MARK = 255
PER_CLASS_ON_DISK = 40


def real_splits(seed: int = 0):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, REAL_MAX + 1, size=(150, 1, SIZE, SIZE), dtype=np.uint8))
    labels = torch.arange(150) % 3
    return make_splits(images, labels, CLASS_NAMES, 0.2, 0.2, seed, "standardize")


def write_samples(root: Path, per_class: int = PER_CLASS_ON_DISK, size: int = SIZE, manifest_changes=None,
                  mode: str = "L") -> Path:
    """A folder as imgrec-gan sample writes it. Pixel (0,0) says the class (210 + id), (0,1) the file's index,
    so a test can tell which image landed with which label. The manifest lists the classes in reverse order:
    labels must follow the names, not the positions."""
    for class_id, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.full((size, size), GENERATED_MARK, dtype=np.uint8)
            pixels[0, 0], pixels[0, 1] = 210 + class_id, index
            Image.fromarray(pixels).convert(mode).save(root / folder / f"{index:04d}.png")
    manifest = {"format": "imgrec-gan-samples", "format_version": 1, "class_names": CLASS_NAMES[::-1],
                "folders": FOLDERS[::-1], "counts": {folder: per_class for folder in FOLDERS}, "channels": 1,
                "image_size": SIZE, "generator": "not.a.Callable"}
    manifest.update(manifest_changes or {})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def mixed(splits, root, ratio, train_per_class=None, seed=0):
    return apply_training_options(splits, train_per_class, {"root": str(root), "ratio": ratio}, seed, "standardize")


def generated(split) -> torch.Tensor:
    """Which images of a split carry the generated marker."""
    return (split.images == GENERATED_MARK).flatten(1).any(dim=1)


@pytest.fixture
def samples(tmp_path):
    return write_samples(tmp_path / "samples")


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_train_grows_by_the_ratio_per_class_with_the_right_labels(samples, ratio):
    splits = real_splits()
    real_counts = splits.class_counts("train")
    result = mixed(splits, samples, ratio)
    expected = [round(ratio / (1 - ratio) * n) for n in real_counts]
    assert result.class_counts("train") == [n + e for n, e in zip(real_counts, expected)]
    added = result.train.images[len(splits.train):]
    assert torch.equal(result.train.images[:len(splits.train)], splits.train.images)  # real ones kept as they were
    assert generated(result.train).sum() == sum(expected) == len(added)
    assert torch.equal(added[:, 0, 0, 0].long() - 210, result.train.labels[len(splits.train):])
    assert result.synthetic == {"root": str(samples), "ratio": ratio, "added": sum(expected),
                                "added_per_class": expected, "real": len(splits.train)}


def test_val_and_test_stay_bit_identical_and_hold_no_generated_image(samples):
    splits = real_splits()
    result = mixed(splits, samples, 0.5)
    for name in ("val", "test"):
        before, after = getattr(splits, name), getattr(result, name)
        assert torch.equal(after.images, before.images) and torch.equal(after.labels, before.labels)
        assert not generated(after).any() and int(after.images.max()) <= REAL_MAX
    assert not generated(splits.train).any()  # the marker really is absent from real data, so the checks above bite


def test_normalisation_stays_that_of_the_real_training_images(samples):
    splits = real_splits()
    result = mixed(splits, samples, 0.5)
    assert (result.mean, result.std) == (splits.mean, splits.std)


def test_the_same_seed_draws_the_same_generated_images(samples):
    first, again = mixed(real_splits(), samples, 0.25), mixed(real_splits(), samples, 0.25)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.train.labels, again.train.labels)
    other_seed = apply_training_options(real_splits(), None, {"root": str(samples), "ratio": 0.25}, 1, "standardize")
    assert not torch.equal(first.train.images[-10:], other_seed.train.images[-10:])


def test_train_per_class_keeps_k_per_class_the_same_every_run_and_leaves_val_and_test(samples):
    splits = real_splits()
    kept = apply_training_options(splits, 5, None, 0, "standardize")
    assert kept.class_counts("train") == [5, 5, 5]
    for name in ("val", "test"):
        assert torch.equal(getattr(kept, name).images, getattr(splits, name).images)
        assert torch.equal(getattr(kept, name).labels, getattr(splits, name).labels)
    again = apply_training_options(real_splits(), 5, None, 0, "standardize")
    assert torch.equal(kept.train.images, again.train.images)
    fewer = apply_training_options(real_splits(), 3, None, 0, "standardize")
    as_rows = lambda split: {tuple(image.flatten().tolist()) for image in split.images}  # noqa: E731
    assert as_rows(fewer.train) < as_rows(kept.train) < as_rows(splits.train)  # k=3's images are among k=5's
    assert kept.mean[0] == pytest.approx(kept.train.images.double().mean().item() / 255)  # of the kept images


def test_train_per_class_comes_first_and_the_ratio_is_of_the_kept_images(samples):
    result = mixed(real_splits(), samples, 0.5, train_per_class=4)
    assert result.class_counts("train") == [8, 8, 8] and result.synthetic["real"] == 12


def test_root_with_ratio_zero_adds_nothing_and_says_so(samples, caplog):
    splits = real_splits()
    with caplog.at_level(logging.INFO, logger="imgrec"):
        result = mixed(splits, samples, 0.0)
    assert result is splits and result.synthetic is None
    assert "ratio 0: no generated images added" in caplog.text


def test_the_mix_is_logged(samples, caplog):
    with caplog.at_level(logging.INFO, logger="imgrec"):
        mixed(real_splits(), samples, 0.5)
    assert "dataset.synthetic: added 90 generated images" in caplog.text
    assert "to the 90 real training images (ratio 0.50); val and test are real only" in caplog.text


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, "half", True])
def test_a_ratio_outside_zero_to_one_says_what_it_means(samples, ratio):
    with pytest.raises(ImgrecError, match=r"ratio=.* must be in \[0, 1\).*ratio 0.5 means half the training images"):
        mixed(real_splits(), samples, ratio)


def test_a_ratio_without_root_asks_for_it():
    with pytest.raises(ImgrecError, match=r"ratio=0.5 needs dataset.synthetic.root"):
        apply_training_options(real_splits(), None, {"root": None, "ratio": 0.5}, 0, "standardize")


def test_a_missing_root_or_manifest_or_a_foreign_format_is_named(tmp_path):
    with pytest.raises(ImgrecError, match=r"root=.*nowhere is not a folder"):
        mixed(real_splits(), tmp_path / "nowhere", 0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImgrecError, match=r"empty has no manifest.json"):
        mixed(real_splits(), tmp_path / "empty", 0.5)
    foreign = write_samples(tmp_path / "foreign", manifest_changes={"format": "something-else"})
    with pytest.raises(ImgrecError, match=r"format 'something-else', not 'imgrec-gan-samples'"):
        mixed(real_splits(), foreign, 0.5)
    newer = write_samples(tmp_path / "newer", manifest_changes={"format_version": 2})
    with pytest.raises(ImgrecError, match=r"format_version 2; this imgrec reads version 1"):
        mixed(real_splits(), newer, 0.5)


def test_a_folder_name_that_leaves_root_is_refused(tmp_path):
    root = write_samples(tmp_path / "s", manifest_changes={"folders": ["../Bag", "Coat", "T-shirt_top"]})
    with pytest.raises(ImgrecError, match=r"class folder '../Bag'; expected one plain folder name"):
        mixed(real_splits(), root, 0.5)


def test_other_class_names_are_named(tmp_path):
    root = write_samples(tmp_path / "s", manifest_changes={"class_names": ["Bag", "Coat", "Sandal"]})
    with pytest.raises(ImgrecError, match=r"missing \['T-shirt/top'\]; not in the dataset \['Sandal'\]"):
        mixed(real_splits(), root, 0.5)


def test_other_channels_or_size_are_named(tmp_path):
    with pytest.raises(ImgrecError, match=r"holds 3-channel images but the dataset has 1; set dataset.channels=3"):
        mixed(real_splits(), write_samples(tmp_path / "rgb", manifest_changes={"channels": 3}), 0.5)
    with pytest.raises(ImgrecError, match=r"holds 28 px images but the dataset's are 8x8; set dataset.image_size=28"):
        mixed(real_splits(), write_samples(tmp_path / "big", manifest_changes={"image_size": 28}), 0.5)


def test_a_png_of_another_size_than_the_manifest_is_refused(tmp_path):
    root = write_samples(tmp_path / "s", size=SIZE + 2, manifest_changes={"image_size": SIZE})
    with pytest.raises(ImgrecError, match=r"0000.png is 10x10 but its manifest says 8 px"):
        mixed(real_splits(), root, 0.5)


def test_rgb_files_are_read_as_the_manifest_channels(tmp_path):
    result = mixed(real_splits(), write_samples(tmp_path / "s", mode="RGB"), 0.5)
    assert result.train.images.shape[1:] == (1, SIZE, SIZE) and generated(result.train).sum() == 90


def test_too_few_generated_images_says_how_many_to_sample(tmp_path):
    root = write_samples(tmp_path / "s", per_class=10)
    with pytest.raises(ImgrecError, match=r"needs 30 generated images of class 'T-shirt/top' but .*T-shirt_top holds "
                                          r"10: sample more with imgrec-gan sample per_class=30 or lower "
                                          r"dataset.synthetic.ratio"):
        mixed(real_splits(), root, 0.5)


def test_a_split_read_from_files_asks_for_one_in_memory(samples):
    splits = real_splits()
    on_disk = replace(splits, train=FileSplit([Path(f"{i}.png") for i in range(len(splits.train))],
                                              splits.train.labels, 1, SIZE))
    with pytest.raises(ImgrecError, match=r"needs the training images held in memory.*use a dataset held in memory"):
        mixed(on_disk, samples, 0.5)


@pytest.mark.parametrize("per_class", [0, -3, 2.5, True, "10"])
def test_train_per_class_must_be_a_whole_number_of_at_least_one(per_class):
    with pytest.raises(ImgrecError, match=r"train_per_class=.* must be a whole number >= 1"):
        apply_training_options(real_splits(), per_class, None, 0, "standardize")


def test_train_per_class_above_a_class_count_names_the_class():
    with pytest.raises(ImgrecError, match=r"train_per_class=31 but class 'T-shirt/top' has only 30 training images; "
                                          r"choose train_per_class <= 30"):
        apply_training_options(real_splits(), 31, None, 0, "standardize")
