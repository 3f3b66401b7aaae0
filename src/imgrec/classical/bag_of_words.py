"""A bag of visual words: a codebook of descriptor clusters (MiniBatchKMeans) fitted on the train split's
descriptors only, then each image as a fixed-length vector: a histogram of its descriptors' nearest words
(tf-idf weighted, L2 or Hellinger normalised), or VLAD (the summed residuals to each word).

An image without descriptors gets a zero vector; how many did is counted for the log."""

import numpy as np

from imgrec.errors import ImgrecError

ENCODINGS = ("histogram", "vlad")
NORMALISATIONS = ("l2", "hellinger", "none")


class BagOfVisualWords:
    def __init__(self, codebook_size: int = 256, encoding: str = "histogram", tfidf: bool = True,
                 normalisation: str = "hellinger", max_descriptors: int = 100_000, seed: int = 0):
        if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 2:
            raise ImgrecError(f"method.codebook_size={codebook_size!r} must be a whole number >= 2")
        if encoding not in ENCODINGS:
            raise ImgrecError(f"method.encoding={encoding!r} must be one of {', '.join(ENCODINGS)}")
        if normalisation not in NORMALISATIONS:
            raise ImgrecError(f"method.normalisation={normalisation!r} must be one of {', '.join(NORMALISATIONS)}")
        self.codebook_size, self.encoding, self.tfidf = codebook_size, encoding, tfidf
        self.normalisation, self.max_descriptors, self.seed = normalisation, max_descriptors, seed
        self.kmeans = None
        self.idf = None
        self.fitted_on = 0  # descriptors the codebook saw

    def fit(self, train_descriptors: list[np.ndarray]) -> "BagOfVisualWords":
        """The codebook from the train split's descriptors (a seeded sample of at most max_descriptors)."""
        from sklearn.cluster import MiniBatchKMeans

        pool = np.concatenate([d for d in train_descriptors if len(d)] or [np.zeros((0, 1), np.float32)])
        if len(pool) < self.codebook_size:
            raise ImgrecError(f"method.codebook_size={self.codebook_size} is more than the {len(pool)} descriptors "
                              f"the train split gave; lower it (e.g. method.codebook_size={max(2, len(pool) // 10)}) "
                              "or get more descriptors (method.keypoints=dense, or a smaller method.step)")
        rng = np.random.default_rng(self.seed)
        if len(pool) > self.max_descriptors:
            pool = pool[rng.choice(len(pool), self.max_descriptors, replace=False)]
        self.kmeans = MiniBatchKMeans(self.codebook_size, random_state=self.seed, n_init=3,
                                      batch_size=max(1024, 4 * self.codebook_size)).fit(pool)
        self.fitted_on = len(pool)
        if self.tfidf and self.encoding == "histogram":  # words in every train image say little
            present = np.stack([self._counts(d) > 0 for d in train_descriptors])
            self.idf = np.log((1 + len(present)) / (1 + present.sum(axis=0))) + 1.0
        return self

    def _counts(self, descriptors: np.ndarray) -> np.ndarray:
        if not len(descriptors):
            return np.zeros(self.codebook_size)
        return np.bincount(self.kmeans.predict(descriptors), minlength=self.codebook_size).astype(np.float64)

    def _vlad(self, descriptors: np.ndarray) -> np.ndarray:
        centres = self.kmeans.cluster_centers_
        vector = np.zeros_like(centres, dtype=np.float64)
        if len(descriptors):
            words = self.kmeans.predict(descriptors)
            np.add.at(vector, words, descriptors - centres[words])
        vector = np.sign(vector) * np.sqrt(np.abs(vector))  # power normalisation (Jégou et al.)
        return vector.ravel()

    def transform(self, descriptors: list[np.ndarray]) -> np.ndarray:
        """float32 (images, codebook_size) histograms or (images, codebook_size * descriptor size) VLADs."""
        if self.kmeans is None:
            raise RuntimeError("fit the codebook on the train split first")
        rows = []
        for found in descriptors:
            vector = self._vlad(found) if self.encoding == "vlad" else self._counts(found)
            if self.idf is not None:
                vector = vector * self.idf
            if self.normalisation == "hellinger" and self.encoding == "histogram":
                total = vector.sum()
                vector = np.sqrt(vector / total) if total > 0 else vector
            elif self.normalisation != "none":
                norm = np.linalg.norm(vector)
                vector = vector / norm if norm > 0 else vector
            rows.append(vector)
        return np.asarray(rows, dtype=np.float32)
