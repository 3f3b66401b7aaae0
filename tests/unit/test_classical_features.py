"""imgrec.classical: SIFT / ORB bags of visual words, HOG, LBP and colour histograms."""

import numpy as np
import pytest
import torch

from imgrec.classical.bag_of_words import BagOfVisualWords
from imgrec.classical.methods import ClassicalFeatures
from imgrec.data.splits import ImageTensors
from imgrec.errors import ImgrecError


def textured(count: int, seed: int, side: int = 48, channels: int = 1) -> ImageTensors:
    """Random blocky textures (corners and edges for keypoints), two classes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (count, channels, side // 8, side // 8)) * 255
    images = np.repeat(np.repeat(blocks, 8, axis=2), 8, axis=3).astype(np.uint8)
    return ImageTensors(torch.from_numpy(images), torch.arange(count) % 2)


@pytest.mark.parametrize("method", ["sift", "orb"])
def test_the_codebook_sees_the_train_split_only(method, monkeypatch):
    train, test = textured(12, seed=0), textured(6, seed=1)
    seen = []
    original_fit = BagOfVisualWords.fit

    def spying_fit(bag, descriptors):
        seen.append(sum(len(d) for d in descriptors))
        return original_fit(bag, descriptors)

    monkeypatch.setattr(BagOfVisualWords, "fit", spying_fit)
    features = ClassicalFeatures({"name": method, "codebook_size": 16, "keypoints": "dense"}).fit(train)
    train_descriptors = sum(len(features.describe(image[0].numpy())) for image in train.images)
    centres = features.bag.kmeans.cluster_centers_.copy()
    vectors = features.transform(test, "test")
    assert seen == [train_descriptors] and features.bag.fitted_on == train_descriptors  # no test descriptor
    np.testing.assert_array_equal(features.bag.kmeans.cluster_centers_, centres)  # transforming test learns nothing
    assert vectors.shape == (6, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # Hellinger: unit length


def test_an_image_without_keypoints_gets_a_zero_vector_and_is_counted():
    train = textured(10, seed=0)
    blank = ImageTensors(torch.zeros(3, 1, 48, 48, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    features = ClassicalFeatures({"name": "sift", "codebook_size": 8, "keypoints": "detected"}).fit(train)
    vectors = features.transform(blank, "test")
    assert features.without_keypoints["test"] == 3 and not vectors.any()


def test_the_same_seed_gives_the_same_features_and_another_seed_another_codebook():
    train, test = textured(12, seed=0), textured(4, seed=1)
    settings = {"name": "orb", "codebook_size": 12}
    first = ClassicalFeatures(settings, seed=3).fit(train).transform(test, "test")
    again = ClassicalFeatures(settings, seed=3).fit(train).transform(test, "test")
    other = ClassicalFeatures(settings, seed=4).fit(train).transform(test, "test")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_hog_lbp_and_colour_histograms_describe_each_image_alike_for_any_split():
    images = textured(4, seed=0, side=32, channels=3)
    hog = ClassicalFeatures({"name": "hog", "pixels_per_cell": 8, "cells_per_block": 2}).fit(images)
    assert hog.transform(images, "train").shape == (4, 9 * 3 * 3 * 2 * 2)  # 3x3 blocks of 2x2 cells, 9 bins
    lbp = ClassicalFeatures({"name": "lbp", "points": 8, "grid": 2}).fit(images).transform(images, "train")
    assert lbp.shape == (4, 4 * 10) and np.allclose(lbp.reshape(4, 4, 10).sum(-1), 1.0)  # a histogram per cell
    colours = ClassicalFeatures({"name": "color_hist", "bins": 4}).fit(images).transform(images, "train")
    black_share = (images.images[0, 0] == 0).float().mean().item()
    assert colours.shape == (4, 12) and colours[0, 0] == pytest.approx(black_share)  # channel 0's darkest bin


def test_bad_settings_are_named_with_the_fix():
    with pytest.raises(ImgrecError, match=r"method='surf' is not a feature method; choose one of cnn, sift, orb, hog, "
                                          r"lbp, color_hist"):
        ClassicalFeatures({"name": "surf"})
    tiny = ImageTensors(torch.zeros(2, 1, 12, 12, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ImgrecError, match=r"train image 0: a 12x12 image is smaller than one HOG block \(16 px = "
                                          r"method.pixels_per_cell 8 x method.cells_per_block 2\); use images of at "
                                          r"least 16 px"):
        ClassicalFeatures({"name": "hog"}).fit(tiny).transform(tiny, "train")
    with pytest.raises(ImgrecError, match=r"method.codebook_size=5000 is more than the \d+ descriptors the train split "
                                          r"gave; lower it"):
        ClassicalFeatures({"name": "sift", "codebook_size": 5000}).fit(textured(2, seed=0))
    with pytest.raises(ImgrecError, match=r"method.cell_size is not a setting of method=hog"):
        ClassicalFeatures({"name": "hog", "cell_size": 8})
