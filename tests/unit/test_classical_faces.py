"""Eigenfaces and LBP histograms (models/classical_faces.py)."""

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.models.classical_faces import Eigenfaces, LBPHistograms


def identities(people=6, per_person=5, size=24, seed=0):
    """Each person a fixed texture (four random waves, a face's shading and edges stand-in), each image it plus
    pixel noise and a brightness change."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size

    def texture():
        waves = [np.sin(2 * np.pi * (f * (np.cos(a) * cols + np.sin(a) * rows)) + phase)
                 for f, a, phase in zip(rng.uniform(1, 4, 4), rng.uniform(0, np.pi, 4), rng.uniform(0, 2 * np.pi, 4))]
        return 128 + 25 * np.sum(waves, axis=0)

    bases = np.stack([texture() for _ in range(people)])
    images, labels = [], []
    for person, base in enumerate(bases):
        for _ in range(per_person):
            images.append(np.clip(base + rng.normal(0, 4, base.shape) + rng.uniform(-15, 15), 0, 255))
            labels.append(person)
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize("method", [Eigenfaces(components=10), LBPHistograms(grid=3)])
def test_each_baseline_tells_the_people_apart_by_cosine(method):
    images, labels = identities()
    gallery, probes = np.arange(len(labels)) % 5 == 0, np.arange(len(labels)) % 5 != 0
    method.fit(images[gallery])
    enrolled, queries = method.embed(images[gallery]), method.embed(images[probes])
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    nearest = labels[gallery][np.argmax(queries @ enrolled.T, axis=1)]
    assert (nearest == labels[probes]).mean() == 1.0


def test_lbp_histograms_are_frequencies_of_the_uniform_codes():
    lbp = LBPHistograms(points=8, grid=2)
    flat = lbp.histograms(np.full((16, 16), 100.0))
    assert flat.shape == (4, 10) and np.allclose(flat.sum(axis=1), 1.0)
    # a flat image: every neighbour >= the centre gives code P, except on the image's border row and column
    # (outside neighbours read as 0): 7 x 7 of each corner cell's 8 x 8 pixels
    assert np.allclose(flat[:, 8], 49 / 64)
    with pytest.raises(ImgrecError, match=r"a 3x3 face is too small for an LBP grid of 2"):
        lbp.histograms(np.zeros((3, 3)))


def test_eigenfaces_are_fitted_first_and_on_faces_of_one_size():
    images, _ = identities(people=2, per_person=3)
    with pytest.raises(ImgrecError, match=r"must be fitted on training faces before they embed"):
        Eigenfaces().embed(images)
    fitted = Eigenfaces(components=3).fit(images)
    assert fitted.pca.n_components_ == 3
    with pytest.raises(ImgrecError, match=r"these faces have 100 pixels, the eigenfaces were fitted on 576"):
        fitted.embed(np.zeros((1, 10, 10)))
