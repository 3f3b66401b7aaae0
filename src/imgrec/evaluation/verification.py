"""Face verification figures from genuine-pair and impostor-pair scores (higher = more alike): the
threshold for a target false-accept rate, the equal error rate, and the true-accept rate at a FAR.
A pair is accepted when its score is at least the threshold."""

from dataclasses import dataclass

import numpy as np

from imgrec.errors import ImgrecError


@dataclass
class OperatingPoint:
    threshold: float
    far: float  # impostor pairs accepted / impostor pairs
    frr: float  # genuine pairs rejected / genuine pairs

    @property
    def tar(self) -> float:
        return 1.0 - self.frr


def _scores(genuine, impostor) -> tuple[np.ndarray, np.ndarray]:
    genuine, impostor = np.asarray(genuine, np.float64).ravel(), np.asarray(impostor, np.float64).ravel()
    if len(genuine) == 0 or len(impostor) == 0:
        raise ImgrecError(f"verification needs genuine and impostor pairs; got {len(genuine)} genuine and "
                          f"{len(impostor)} impostor (each person needs at least 2 images, and 2 people are needed)")
    if not (np.isfinite(genuine).all() and np.isfinite(impostor).all()):
        raise ImgrecError("the pair scores hold NaN or Inf values")
    return genuine, impostor


def threshold_for_far(genuine, impostor, target_far: float) -> OperatingPoint:
    """The lowest threshold that accepts at most `target_far` of the impostor pairs. With n impostor
    pairs the finest FAR measurable is 1/n: below it the threshold sits just above the best impostor."""
    genuine, impostor = _scores(genuine, impostor)
    if not 0.0 <= target_far < 1.0:
        raise ImgrecError(f"target FAR {target_far!r} must be in [0, 1), e.g. 0.001")
    allowed = int(np.floor(target_far * len(impostor) + 1e-9))  # impostor pairs that may be accepted
    descending = np.sort(impostor)[::-1]
    threshold = float(np.nextafter(descending[allowed], np.inf)) if allowed < len(impostor) else \
        float(min(impostor.min(), genuine.min()))
    return operating_point(genuine, impostor, threshold)


def operating_point(genuine, impostor, threshold: float) -> OperatingPoint:
    genuine, impostor = _scores(genuine, impostor)
    return OperatingPoint(threshold, float((impostor >= threshold).mean()), float((genuine < threshold).mean()))


def equal_error_rate(genuine, impostor) -> OperatingPoint:
    """The threshold where FAR and FRR are closest (among the thresholds the scores themselves give), with
    the EER as their mean there."""
    genuine, impostor = _scores(genuine, impostor)
    candidates = np.unique(np.concatenate([genuine, impostor]))
    far = 1.0 - np.searchsorted(np.sort(impostor), candidates, side="left") / len(impostor)  # share >= candidate
    frr = np.searchsorted(np.sort(genuine), candidates, side="left") / len(genuine)
    best = int(np.argmin(np.abs(far - frr)))
    rate = float((far[best] + frr[best]) / 2)
    return OperatingPoint(float(candidates[best]), rate, rate)


def roc_auc(genuine, impostor) -> float:
    """The probability that a genuine pair outscores an impostor pair (ties count half): ROC AUC."""
    from sklearn.metrics import roc_auc_score

    genuine, impostor = _scores(genuine, impostor)
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    return float(roc_auc_score(labels, np.r_[genuine, impostor]))


def pair_scores(embeddings, labels) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every pair of unit embeddings: (genuine: same label, impostor: different labels)."""
    embeddings, labels = np.asarray(embeddings, np.float64), np.asarray(labels)
    scores = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    return scores[upper][same], scores[upper][~same]


def rank1(gallery, gallery_labels, probes, probe_labels) -> float:
    """Closed-set identification: the share of probes whose most similar gallery embedding is their own person's."""
    nearest = np.argmax(np.asarray(probes) @ np.asarray(gallery).T, axis=1)
    return float((np.asarray(gallery_labels)[nearest] == np.asarray(probe_labels)).mean())
