"""imgrec-features' classical methods by name, each turning a dataset's splits into one fixed-length
vector per image: keypoint methods (sift, orb) through a bag of visual words whose codebook is fitted on
the train split only; whole-image ones (hog, lbp, color_hist) image by image."""

import logging
import time
from collections.abc import Mapping

import numpy as np

from imgrec.classical.bag_of_words import BagOfVisualWords
from imgrec.classical.global_descriptors import HOG, LBP, ColourHistogram
from imgrec.classical.keypoints import KeypointDescriptors
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
KEYPOINT_METHODS = ("sift", "orb")
WHOLE_IMAGE_METHODS = {"hog": HOG, "lbp": LBP, "color_hist": ColourHistogram}
METHODS = ("cnn", *KEYPOINT_METHODS, *WHOLE_IMAGE_METHODS)
BAG_KEYS = ("codebook_size", "encoding", "tfidf", "normalisation", "max_descriptors")
KEYPOINT_KEYS = ("keypoints", "step", "size", "max_keypoints", "min_side")
CHUNK = 256  # images decoded at a time


def check_method(settings: Mapping) -> str:
    name = settings.get("name")
    if name not in METHODS:
        raise ImgrecError(f"method={name!r} is not a feature method; choose one of {', '.join(METHODS)}")
    return name


def grey(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) from a uint8 (C, H, W) image (ITU-R 601 luma for RGB)."""
    if image.shape[0] == 1:
        return image[0]
    return np.clip(image[:3].transpose(1, 2, 0).astype(np.float32) @ np.array([0.299, 0.587, 0.114]), 0, 255
                   ).round().astype(np.uint8)


def _each_image(split):
    from imgrec.data.files import images_at

    for start in range(0, len(split), CHUNK):
        yield from images_at(split, range(start, min(start + CHUNK, len(split))))


class ClassicalFeatures:
    """fit(train split) then transform(any split) -> float32 (images, features). Only keypoint methods learn
    anything (the codebook); `fit` of the others checks the image size."""

    def __init__(self, settings: Mapping, seed: int = 0):
        self.name = check_method(settings)
        options = {key: value for key, value in settings.items() if key != "name"}
        if self.name in KEYPOINT_METHODS:
            unknown = set(options) - set(BAG_KEYS) - set(KEYPOINT_KEYS)
            self.describe = KeypointDescriptors(self.name, **{k: options[k] for k in KEYPOINT_KEYS if k in options})
            self.bag = BagOfVisualWords(**{k: options[k] for k in BAG_KEYS if k in options}, seed=seed)
        else:
            import inspect

            maker = WHOLE_IMAGE_METHODS[self.name]
            unknown = set(options) - set(inspect.signature(maker).parameters)
            self.describe, self.bag = maker(**{k: v for k, v in options.items() if k not in unknown}), None
        if unknown:
            raise ImgrecError(f"method.{sorted(unknown)[0]} is not a setting of method={self.name}")
        self.without_keypoints = {}  # split name -> images that gave no descriptors
        self.seconds = 0.0  # time spent describing images and encoding them
        self._train_described = None

    def _describe(self, split, split_name: str) -> list[np.ndarray]:
        found = []
        for index, image in enumerate(_each_image(split)):
            if self.bag is None:
                self.describe.check_size(image.shape[1], image.shape[2], f"{split_name} image {index}")
                found.append(self.describe(image if self.name == "color_hist" else grey(image)))
            else:
                found.append(self.describe(grey(image)))
        if self.bag is not None:
            self.without_keypoints[split_name] = sum(1 for d in found if not len(d))
        return found

    def fit(self, train_split) -> "ClassicalFeatures":
        if self.bag is not None:
            started = time.perf_counter()
            self._train_described = self._describe(train_split, "train")  # transform("train") reuses them
            self.bag.fit(self._train_described)
            self.seconds += time.perf_counter() - started
            log.info(f"{self.name}: codebook of {self.bag.codebook_size} words fitted on {self.bag.fitted_on} "
                     "descriptors of the train split")
        return self

    def forget_train_descriptors(self) -> None:
        """Drop the train split's descriptors kept for transform("train") (not worth saving with the model)."""
        self._train_described = None

    def transform(self, split, split_name: str) -> np.ndarray:
        started = time.perf_counter()
        described = self._train_described if split_name == "train" and self._train_described is not None \
            else self._describe(split, split_name)
        vectors = self.bag.transform(described) if self.bag is not None else np.stack(described)
        self.seconds += time.perf_counter() - started
        if self.without_keypoints.get(split_name):
            log.warning(f"{self.without_keypoints[split_name]} of {len(split)} {split_name} images gave no {self.name} "
                        "descriptors: their vectors are zero (method.keypoints=dense finds some on every image)")
        return vectors
