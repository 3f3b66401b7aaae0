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


def leave_one_out_rank1(embeddings, labels) -> float:
    """Each image whose person has another image in the set: is its most similar other image that person's?
    (validation's rank-1, with no gallery to choose)."""
    embeddings, labels = np.asarray(embeddings, np.float64), np.asarray(labels)
    scores = embeddings @ embeddings.T
    np.fill_diagonal(scores, -np.inf)
    _, person_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    has_pair = counts[person_of] >= 2
    if not has_pair.any():
        return float("nan")
    nearest = np.argmax(scores[has_pair], axis=1)
    return float((labels[nearest] == labels[has_pair]).mean())


def enrolment(labels, per_person: int, seed: int = 0) -> np.ndarray:
    """Which images are enrolled: `per_person` of each person's (drawn with `seed`) when they have more than
    that (the rest are their probes); people with `per_person` or fewer images take no part (-1)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    role = np.zeros(len(labels), np.int8)  # 1 enrolled, 0 probe, -1 left out
    for person in np.unique(labels):
        images = np.flatnonzero(labels == person)
        if len(images) <= per_person:
            role[images] = -1
        else:
            role[rng.choice(images, per_person, replace=False)] = 1
    return role


def person_scores(gallery, gallery_labels, probes) -> tuple[np.ndarray, np.ndarray]:
    """Each probe's score against each enrolled person (their best-matching enrolled image): the people
    (sorted) and a (probes, people) matrix."""
    gallery_labels = np.asarray(gallery_labels)
    people = np.unique(gallery_labels)
    scores = np.asarray(probes, np.float64) @ np.asarray(gallery, np.float64).T
    per_person = np.stack([scores[:, gallery_labels == person].max(axis=1) for person in people], axis=1)
    return people, per_person


def rank_accuracies(gallery, gallery_labels, probes, probe_labels, ranks=(1, 5)) -> dict[int, float]:
    """Closed-set identification: the share of probes whose own person is among the `rank` best people."""
    people, per_person = person_scores(gallery, gallery_labels, probes)
    own = per_person[np.arange(len(per_person)), np.searchsorted(people, np.asarray(probe_labels))]
    position = (per_person > own[:, None]).sum(axis=1)  # people scoring strictly better than the right one
    return {rank: float((position < rank).mean()) for rank in ranks if rank <= len(people)}


def open_set_rates(gallery, gallery_labels, probes, probe_labels, far_levels) -> list[dict]:
    """Open-set identification (watch-list): probes of enrolled people are to be named, probes of people not
    enrolled are to be rejected. At each false-alarm rate (share of non-enrolled probes whose best score
    reaches the threshold) the detection and identification rate: enrolled probes named correctly and
    scoring at least the threshold."""
    people, per_person = person_scores(gallery, gallery_labels, probes)
    probe_labels = np.asarray(probe_labels)
    enrolled = np.isin(probe_labels, people)
    best, named = per_person.max(axis=1), people[per_person.argmax(axis=1)]
    correct = named[enrolled] == probe_labels[enrolled]
    rates = []
    for far in far_levels:
        point = threshold_for_far(best[enrolled], best[~enrolled], far)
        rates.append({"far": float(far), "threshold": point.threshold, "false_alarm_rate": point.far,
                      "dir": float((correct & (best[enrolled] >= point.threshold)).mean()),
                      "measurable": far * int((~enrolled).sum()) >= 1})
    return rates
