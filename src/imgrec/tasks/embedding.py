"""Embeddings (face recognition, re-identification): the model maps an image to a unit vector so that images
of the same person score a high cosine and different people a low one. Trained with a margin loss over the
training people (ArcFace, CosFace, normalised softmax) or a pair loss with a miner (triplet, multi-similarity),
all from pytorch-metric-learning; scored on people the model may never have seen: verification ROC AUC and
equal error rate over every genuine and impostor pair of a split, and rank-1 identification."""

import numpy as np
import torch

from imgrec.errors import ImgrecError
from imgrec.tasks.base import Evaluation, Evaluator, Gather, Report, ROCPlotFigure, Table, Task
from imgrec.tasks.embedding_losses import EmbeddingLoss
from imgrec.tasks.embedding_scores import (
    enrolment, equal_error_rate, leave_one_out_rank1, open_set_rates, operating_point, pair_scores, rank_accuracies,
    roc_auc, threshold_for_far,
)
from imgrec.values import is_number, is_whole

MAX_PAIR_IMAGES = 6000  # above this many images a split's pairs come from a fixed random subset (36M pairs)
REPORT_DEFAULTS = {"enrolled_per_person": 3, "far_levels": [0.01, 0.001], "seed": 0}
LOWER_IS_BETTER = ("eer",)  # of eval_metrics; the others are better higher


def check_report_settings(settings: dict, owner: str) -> dict:
    settings = {**REPORT_DEFAULTS, **{key: value for key, value in settings.items() if value is not None}}
    unknown = sorted(set(settings) - set(REPORT_DEFAULTS))
    if unknown:
        raise ImgrecError(f"{owner.rstrip('.') or 'imgrec-eval'} has unknown key(s) {unknown}; it takes "
                          f"{sorted(REPORT_DEFAULTS)}")
    if not is_whole(settings["enrolled_per_person"], 1):
        raise ImgrecError(f"{owner}enrolled_per_person={settings['enrolled_per_person']!r} must be a whole number >= 1")
    if not is_whole(settings["seed"], 0):
        raise ImgrecError(f"{owner}seed={settings['seed']!r} must be a whole number >= 0")
    levels = settings["far_levels"]
    if not isinstance(levels, (str, bytes, dict)) and hasattr(levels, "__len__"):  # a list, or Hydra's ListConfig
        levels = settings["far_levels"] = [value for value in levels]
    if not isinstance(levels, list) or not levels or not all(is_number(v) and 0 < v < 1 for v in levels):
        raise ImgrecError(f"{owner}far_levels={levels!r} must be a list of false-accept rates in (0, 1), "
                          "e.g. [0.01, 0.001]")
    return settings


class EmbeddingEvaluation(Evaluation):
    """A split's unit embeddings (N, D) float32 and person ids (N,), on the CPU, in the split's order."""

    def __init__(self, embeddings: torch.Tensor, labels: torch.Tensor):
        self.embeddings, self.labels = embeddings, labels

    def paired(self) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and labels pairs are scored over: all, or a fixed subset of a very large split."""
        embeddings, labels = self.embeddings.numpy(), self.labels.numpy()
        if len(labels) > MAX_PAIR_IMAGES:
            chosen = np.sort(np.random.default_rng(0).choice(len(labels), MAX_PAIR_IMAGES, replace=False))
            embeddings, labels = embeddings[chosen], labels[chosen]
        return embeddings, labels

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return pair_scores(*self.paired())

    def scores(self, prefix: str) -> dict[str, float]:
        genuine, impostor = self.pairs()
        return {f"{prefix}/roc_auc": roc_auc(genuine, impostor),
                f"{prefix}/eer": equal_error_rate(genuine, impostor).far,
                f"{prefix}/rank1": leave_one_out_rank1(*self.paired())}


class EmbeddingEvaluator(Evaluator):
    def __init__(self):
        self.embeddings: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        self.embeddings.append(embeddings.float())
        self.labels.append(labels)

    def finish(self, gather: Gather) -> EmbeddingEvaluation:
        return EmbeddingEvaluation(*gather.in_order(torch.cat(self.embeddings).cpu(), torch.cat(self.labels).cpu()))


class EmbeddingTask(Task):
    name = "embedding"
    train_metrics = ("loss",)
    eval_metrics = ("roc_auc", "eer", "rank1")  # no val/loss: a margin head knows the training people only
    tie_break, tie_break_mode = "val/eer", "min"  # no val/loss
    headline = "roc_auc"
    predicts = "embeddings"
    open_set = True  # validation and test may hold people the model never trained on
    output_description = "float32 (batch, embedding_size) unit-length embeddings; cosine = dot product"

    def __init__(self, monitor: str = "val/roc_auc", mode: str = "max", embedding_size: int = 128,
                 loss: dict | None = None, report: dict | None = None):
        super().__init__(monitor, mode)
        better = "min" if str(monitor).rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"
        if str(monitor).startswith("val/") and mode != better:
            raise ImgrecError(f"task.monitor={monitor} is better {'lower' if better == 'min' else 'higher'}, but "
                              f"task.mode={mode}: set task.mode={better}")
        if not is_whole(embedding_size, 2):
            raise ImgrecError(f"task.embedding_size={embedding_size!r} must be a whole number >= 2 (64-512 is usual)")
        self.embedding_size = embedding_size
        self.loss_settings = dict(loss or {})
        EmbeddingLoss.check(self.loss_settings)
        self.report_settings = check_report_settings(dict(report or {}), "task.report.")
        self.criterion: EmbeddingLoss | None = None
        self.class_names: list[str] = []

    def num_outputs(self, num_classes: int) -> int:
        return self.embedding_size  # the model's last layer becomes the projection to the embedding

    def bind(self, class_names: list[str], class_counts: list[int] | None) -> None:
        """For training, the loss over the people with training images (numbered first, see data/faces.py)."""
        self.class_names = list(class_names)
        if class_counts is None:
            self.criterion = None
            return
        trained_on = int(np.count_nonzero(class_counts))
        if trained_on < 2:
            raise ImgrecError(f"the train split holds {trained_on} person: an embedding needs at least 2 people to "
                              "tell apart; add people, or lower dataset.val_fraction / test_fraction")
        if any(count == 0 for count in class_counts[:trained_on]):
            raise ImgrecError("the training people must be numbered first (class ids 0..n-1); this dataset is not "
                              "an identity dataset: use dataset=faces (or digits_people)")
        self.criterion = EmbeddingLoss(self.loss_settings, trained_on, self.embedding_size)

    def complete_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from imgrec.models.embedding_net import EmbeddingNet

        return EmbeddingNet(model, self.criterion.head if self.criterion is not None else None)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # in float32 whatever the autocast: a margin of 0.5 rad is lost in bfloat16's 3 digits of cosine
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.criterion(embeddings.float(), labels)

    def add_to_sums(self, sums, loss, embeddings, labels) -> int:
        sums["loss_sum"] += loss.detach() * len(labels)
        return len(labels)

    def train_scores(self, sums: dict[str, float], seen: int) -> dict[str, float]:
        return {"train/loss": sums["loss_sum"] / seen}

    def evaluator(self) -> EmbeddingEvaluator:
        return EmbeddingEvaluator()

    def check_output(self, output, where: str) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape != (1, self.embedding_size):
            shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ImgrecError(f"{where} returns {shape} for one image; an embedding model must return (batch, "
                              f"{self.embedding_size}): choose an image-level model (small_cnn, resnet18 ...)")

    def validation_figures(self, evaluation: EmbeddingEvaluation, images_at, epoch: int, max_images: int) -> list:
        genuine, impostor = evaluation.pairs()
        return [ROCPlotFigure("val/roc", genuine, impostor, [], f"val verification ROC, epoch {epoch}")]

    def check_threshold_settings(self, threshold, target_recall) -> None:
        if threshold is not None or target_recall is not None:
            raise ImgrecError(f"threshold={threshold} / target_recall={target_recall} apply to two-class classifiers; "
                              "an embedding's acceptance threshold is chosen with imgrec-gallery action=calibrate")

    def check_eval_settings(self, settings) -> None:
        check_report_settings({key: settings.get(key) for key in REPORT_DEFAULTS}, "")

    def predicted_classes(self, outputs: torch.Tensor) -> torch.Tensor:
        raise ImgrecError("an embedding model does not predict classes; match its embeddings against enrolled "
                          "people with imgrec-gallery (enroll, identify, verify)")

    # ---- reports ------------------------------------------------------------------------------------

    def report(self, evaluation: EmbeddingEvaluation, settings: dict) -> tuple[dict, np.ndarray, np.ndarray]:
        """Verification (ROC AUC, EER, TAR at each FAR), closed-set rank-1/5 with k enrolled per person and
        open-set identification of a split, with the genuine and impostor pair scores."""
        genuine, impostor = evaluation.pairs()
        eer = equal_error_rate(genuine, impostor)
        summary = {
            "images": len(evaluation.labels), "people": int(len(np.unique(evaluation.labels.numpy()))),
            "genuine_pairs": len(genuine), "impostor_pairs": len(impostor),
            "roc_auc": roc_auc(genuine, impostor), "eer": eer.far, "eer_threshold": eer.threshold,
            "tar_at_far": {},
        }
        for far in settings["far_levels"]:
            point = threshold_for_far(genuine, impostor, far)
            summary["tar_at_far"][str(far)] = {"tar": point.tar, "threshold": point.threshold, "far": point.far,
                                                "measurable": far * len(impostor) >= 1}
        summary.update(identification(evaluation, settings))
        return summary, genuine, impostor

    def test_report(self, evaluation: EmbeddingEvaluation, sample_ids: list[str] | None) -> Report:
        summary, _, _ = self.report(evaluation, self.report_settings)
        summary["scores"] = {"roc_auc": summary["roc_auc"], "eer": summary["eer"],
                             **({"rank1": summary["closed_set"]["rank1"]} if "rank1" in summary.get("closed_set", {})
                                else {})}
        return Report(summary, [], "test split:\n" + describe(summary))

    def eval_report(self, evaluation: EmbeddingEvaluation, sample_ids: list[str], images_at, split_name: str,
                    threshold: dict | None, settings) -> tuple[Report, list]:
        """report.json, roc.csv (the curve's points), and roc.png with the EER and each FAR marked."""
        from sklearn.metrics import roc_curve

        chosen = check_report_settings({key: settings.get(key) for key in REPORT_DEFAULTS}, "")
        summary, genuine, impostor = self.report(evaluation, chosen)
        labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
        false_accept, true_accept, thresholds = roc_curve(labels, np.r_[genuine, impostor])
        table = Table("roc.csv", ["threshold", "far", "tar"],
                      [[f"{t:.6g}", f"{f:.6g}", f"{a:.6g}"] for t, f, a in zip(thresholds, false_accept, true_accept)])
        eer = operating_point(genuine, impostor, summary["eer_threshold"])
        marked = [{"label": f"EER {summary['eer']:.3f}", "far": eer.far, "tar": eer.tar}]
        marked += [{"label": f"FAR {far}", "far": point["far"], "tar": point["tar"]}
                   for far, point in summary["tar_at_far"].items()]
        figure = ROCPlotFigure("roc", genuine, impostor, marked, f"{split_name} verification ROC")
        return Report(summary, [table], describe(summary)), [figure]


def identification(evaluation: EmbeddingEvaluation, settings: dict) -> dict:
    """Closed set: k images of each person enrolled, their other images identified among everyone enrolled.
    Open set: half the people (drawn with the seed) enrolled, the other half's images are strangers to reject."""
    embeddings, labels = evaluation.embeddings.numpy(), evaluation.labels.numpy()
    k, seed = settings["enrolled_per_person"], settings["seed"]
    role = enrolment(labels, k, seed)
    result = {"enrolled_per_person": k}
    if (role == 1).sum() == 0 or len(np.unique(labels[role == 1])) < 2:
        result["closed_set"] = {"skipped": f"fewer than 2 people have more than {k} images"}
        return result
    enrolled, probes = role == 1, role == 0
    ranks = rank_accuracies(embeddings[enrolled], labels[enrolled], embeddings[probes], labels[probes])
    result["closed_set"] = {"people": int(len(np.unique(labels[enrolled]))), "probes": int(probes.sum()),
                            **{f"rank{rank}": value for rank, value in ranks.items()}}
    people = np.unique(labels[role >= 0])
    if len(people) < 3:
        result["open_set"] = {"skipped": "needs at least 3 people with enough images (2 enrolled, 1 stranger)"}
        return result
    watched = np.random.default_rng(seed).permutation(people)[: max(2, len(people) // 2)]
    in_gallery = enrolled & np.isin(labels, watched)
    probing = (probes & np.isin(labels, watched)) | ((role >= 0) & ~np.isin(labels, watched))
    rates = open_set_rates(embeddings[in_gallery], labels[in_gallery], embeddings[probing], labels[probing],
                           settings["far_levels"])
    strangers = int((probing & ~np.isin(labels, watched)).sum())
    result["open_set"] = {"enrolled_people": len(watched), "stranger_people": len(people) - len(watched),
                          "stranger_probes": strangers, "dir_at_far": rates}
    return result


def describe(summary: dict) -> str:
    lines = [f"{summary['images']} images of {summary['people']} people: {summary['genuine_pairs']} genuine and "
             f"{summary['impostor_pairs']} impostor pairs",
             f"verification: ROC AUC {summary['roc_auc']:.4f}, EER {summary['eer']:.4f} (threshold "
             f"{summary['eer_threshold']:.4f})"]
    for far, point in summary["tar_at_far"].items():
        note = "" if point["measurable"] else " (too few impostor pairs to measure this FAR)"
        lines.append(f"  TAR at FAR {far}: {point['tar']:.4f} (threshold {point['threshold']:.4f}){note}")
    closed = summary.get("closed_set", {})
    if "rank1" in closed:
        lines.append(f"closed-set identification, {summary['enrolled_per_person']} enrolled per person, "
                     f"{closed['people']} people, {closed['probes']} probes: rank-1 {closed['rank1']:.4f}"
                     + (f", rank-5 {closed['rank5']:.4f}" if "rank5" in closed else ""))
    elif closed:
        lines.append(f"closed-set identification skipped: {closed['skipped']}")
    opened = summary.get("open_set", {})
    if "dir_at_far" in opened:
        rates = ", ".join(f"DIR {rate['dir']:.4f} at false-alarm rate {rate['false_alarm_rate']:.4f} (target "
                          f"{rate['far']}{'' if rate['measurable'] else ': too few stranger probes to measure'})"
                          for rate in opened["dir_at_far"])
        lines.append(f"open-set identification, {opened['enrolled_people']} people enrolled, "
                     f"{opened['stranger_probes']} probes of {opened['stranger_people']} strangers: {rates}")
    elif opened:
        lines.append(f"open-set identification skipped: {opened['skipped']}")
    return "\n".join(lines)
