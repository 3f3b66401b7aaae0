"""The face-detection front end of face recognition: find the face in a photo and crop it, with a
margin, before the embedding model sees it.

`detect: haar` uses the frontal-face Haar cascade that ships inside opencv-python-headless 4.x (no
download; OpenCV 5 dropped the cascades, hence the `<5` pin). Its limits: upright, roughly frontal
faces of at least `min_face` of the image's shorter side; profiles, faces turned more than about 30
degrees, strong rotation, heavy occlusion and very uneven lighting are often missed, and textured
backgrounds give occasional false faces (the largest detection is kept). `detect: none` takes images
that are already face crops as they are.
"""

import logging
import threading

import numpy as np

from imgrec.data.images import BadImage
from imgrec.errors import ImgrecError
from imgrec.values import is_number

log = logging.getLogger("imgrec")
DETECTORS = ("none", "haar")
ON_NO_FACE = ("skip", "error")
CASCADE = "haarcascade_frontalface_default.xml"


def haar_detector():
    """OpenCV's bundled frontal-face cascade, loaded from the package's own files."""
    import cv2

    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise ImgrecError(f"dataset.detect=haar needs OpenCV's Haar cascades, which opencv-python-headless "
                          f"{cv2.__version__} does not ship; pip install 'opencv-python-headless<5', or detect=none")
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if detector.empty():
        raise ImgrecError(f"OpenCV's {CASCADE} could not be loaded from {cv2.data.haarcascades}; reinstall "
                          "opencv-python-headless, or detect=none")
    return detector


class FaceCropper:
    """`crop(image)`: the largest face in a PIL image, widened by `margin` of its side on every side (clipped
    to the image), or None when there is none and on_no_face=skip."""

    def __init__(self, detect: str = "none", margin: float = 0.2, min_face: float = 0.1, on_no_face: str = "skip",
                 detector=None):
        if detect not in DETECTORS:
            raise ImgrecError(f"dataset.detect={detect!r} must be one of {', '.join(DETECTORS)}")
        if not is_number(margin) or not 0 <= margin <= 1:
            raise ImgrecError(f"dataset.crop_margin={margin!r} must be between 0 and 1 (a share of the face's side)")
        if not is_number(min_face) or not 0 < min_face <= 1:
            raise ImgrecError(f"dataset.min_face={min_face!r} must be in (0, 1] (a share of the image's shorter side)")
        if on_no_face not in ON_NO_FACE:
            raise ImgrecError(f"dataset.on_no_face={on_no_face!r} must be skip or error")
        self.detect, self.margin, self.min_face, self.on_no_face = detect, margin, min_face, on_no_face
        self.detector = detector if detector is not None else (haar_detector() if detect == "haar" else None)
        # a CascadeClassifier is not thread-safe: shared by decoding threads it returned different boxes from
        # run to run, so each thread gets its own (loading one takes ~20 ms)
        self.per_thread = threading.local()
        self.own_detector = detector is None and detect == "haar"

    def _detector(self):
        if not self.own_detector:  # one given by the caller (a test's stand-in) is used as it is
            return self.detector
        if getattr(self.per_thread, "detector", None) is None:
            self.per_thread.detector = haar_detector()
        return self.per_thread.detector

    def crop(self, image):
        if self.detector is None:
            return image
        grey = np.asarray(image.convert("L"))
        smallest = max(8, int(self.min_face * min(grey.shape)))
        boxes = self._detector().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
        if len(boxes) == 0:
            if self.on_no_face == "error":
                raise BadImage("no face found (dataset.on_no_face=skip leaves such images out; the Haar detector "
                               "finds upright, roughly frontal faces)")
            return None
        left, top, width, height = max((tuple(int(v) for v in box) for box in boxes), key=lambda b: b[2] * b[3])
        pad_x, pad_y = round(self.margin * width), round(self.margin * height)
        box = (max(0, left - pad_x), max(0, top - pad_y), min(grey.shape[1], left + width + pad_x),
               min(grey.shape[0], top + height + pad_y))
        return image.crop(box)
