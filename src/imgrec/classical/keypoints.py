"""SIFT and ORB descriptors of one image, from OpenCV: at detected keypoints, or on a dense grid (every
`step` pixels, at scale `size`), which suits small images and textures where detectors find little.

ORB's binary descriptors (32 bytes) are unpacked to 256 bits of 0/1, so that k-means and the Euclidean
distance work on them as the Hamming distance does (squared Euclidean = Hamming on bits)."""

import numpy as np

from imgrec.errors import ImgrecError

DESCRIPTOR_SIZE = {"sift": 128, "orb": 256}
KEYPOINT_MODES = ("detected", "dense")


def check_keypoint_settings(method: str, keypoints: str, step: int, size: int, min_side: int) -> None:
    if method not in DESCRIPTOR_SIZE:
        raise ImgrecError(f"method.name={method!r} is not a keypoint method; choose one of {', '.join(DESCRIPTOR_SIZE)}")
    if keypoints not in KEYPOINT_MODES:
        raise ImgrecError(f"method.keypoints={keypoints!r} must be one of {', '.join(KEYPOINT_MODES)}")
    for key, value in (("step", step), ("size", size), ("min_side", min_side)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImgrecError(f"method.{key}={value!r} must be a whole number >= 1")


class KeypointDescriptors:
    """descriptors(grey uint8 image) -> float32 (n, 128 | 256); n may be 0 (a blank or tiny image)."""

    def __init__(self, method: str, keypoints: str = "dense", step: int = 8, size: int = 16,
                 max_keypoints: int = 500, min_side: int = 64):
        check_keypoint_settings(method, keypoints, step, size, min_side)
        self.method, self.keypoints, self.step, self.size = method, keypoints, step, size
        self.max_keypoints, self.min_side = max_keypoints, min_side

    def _extractor(self):
        import cv2

        # made per call: OpenCV's feature objects are not safe to share between threads or pickle to workers
        if self.method == "sift":
            return cv2.SIFT_create(nfeatures=self.max_keypoints)
        # ORB skips keypoints within edgeThreshold of the border: keep it no larger than a patch
        return cv2.ORB_create(nfeatures=self.max_keypoints, edgeThreshold=max(3, self.size // 2),
                              patchSize=max(3, self.size // 2))

    def _grid(self, height: int, width: int):
        import cv2

        margin = self.size // 2
        return [cv2.KeyPoint(float(x), float(y), float(self.size))
                for y in range(margin, max(margin + 1, height - margin + 1), self.step)
                for x in range(margin, max(margin + 1, width - margin + 1), self.step)]

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        import cv2

        height, width = grey.shape
        if min(height, width) < self.min_side:  # keypoints need room: small images (digits' 8x8) are enlarged
            factor = self.min_side / min(height, width)
            grey = cv2.resize(grey, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_LINEAR)
        extractor = self._extractor()
        if self.keypoints == "dense":
            _, descriptors = extractor.compute(grey, self._grid(*grey.shape))
        else:
            _, descriptors = extractor.detectAndCompute(grey, None)
        if descriptors is None or not len(descriptors):
            return np.zeros((0, DESCRIPTOR_SIZE[self.method]), np.float32)
        if self.method == "orb":
            return np.unpackbits(descriptors, axis=1).astype(np.float32)
        return descriptors.astype(np.float32)
