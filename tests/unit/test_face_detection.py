"""The face-detection front end (data/face_detection.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrec.data.face_detection import FaceCropper
from imgrec.data.images import BadImage
from imgrec.errors import ImgrecError

YALE = Path(__file__).resolve().parents[3] / "shared" / "data" / "yalefaces"


class FixedDetector:
    """Stands in for the cascade: returns the boxes it was given (x, y, width, height)."""

    def __init__(self, boxes):
        self.boxes, self.calls = np.array(boxes).reshape(-1, 4), []

    def detectMultiScale(self, grey, scaleFactor, minNeighbors, minSize):
        self.calls.append((grey.shape, minSize))
        return self.boxes


def test_the_largest_face_is_cropped_with_its_margin_and_clipped_to_the_image():
    image = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(80, 100).astype(np.uint8))
    detector = FixedDetector([[10, 10, 20, 20], [40, 30, 30, 30]])
    crop = FaceCropper("haar", margin=0.2, min_face=0.25, detector=detector).crop(image)
    assert crop.size == (42, 42)  # the 30 px face plus 6 px each side
    assert np.array_equal(np.asarray(crop), np.asarray(image)[24:66, 34:76])
    assert detector.calls == [((80, 100), (20, 20))]  # smallest face: 0.25 of the shorter side
    corner = FaceCropper("haar", margin=0.5, detector=FixedDetector([[0, 0, 20, 20]])).crop(image)
    assert corner.size == (30, 30)  # clipped at the image's edge


def test_an_image_without_a_face_is_skipped_or_named():
    image = Image.new("L", (64, 64), 128)
    assert FaceCropper("haar", detector=FixedDetector([])).crop(image) is None
    with pytest.raises(BadImage, match=r"no face found \(dataset.on_no_face=skip leaves such images out"):
        FaceCropper("haar", on_no_face="error", detector=FixedDetector([])).crop(image)
    assert FaceCropper("none").crop(image) is image
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8))
    assert FaceCropper("haar").crop(noise) is None  # the real cascade, on noise


def test_bad_detection_settings_are_named():
    for settings, message in (({"detect": "mtcnn"}, r"dataset.detect='mtcnn' must be one of none, haar"),
                              ({"margin": 2}, r"dataset.crop_margin=2 must be between 0 and 1"),
                              ({"min_face": 0}, r"dataset.min_face=0 must be in \(0, 1\]"),
                              ({"on_no_face": "drop"}, r"dataset.on_no_face='drop' must be skip or error")):
        with pytest.raises(ImgrecError, match=message):
            FaceCropper(**settings)


@pytest.mark.skipif(not YALE.is_dir(), reason="needs ../shared/data/yalefaces (not shipped with imgrec)")
def test_the_haar_cascade_finds_the_yale_faces_in_even_light():
    cropper = FaceCropper("haar", margin=0.2)
    found = {}
    for path in sorted(YALE.glob("subject*.normal")):
        with Image.open(path) as image:
            crop = cropper.crop(image.convert("L"))
        found[path.name] = crop is not None and 100 <= crop.size[0] <= 243
    assert sum(found.values()) >= 14, found  # 15 people, frontal, even light
