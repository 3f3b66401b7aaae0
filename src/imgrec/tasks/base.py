"""The task seam: what the Trainer and the commands ask of a recognition task, never which one it is.

A task supplies what differs between classification, segmentation, detection and embeddings: the loss,
the running sums of a training epoch, an evaluator that scores a split (gathered over processes), its
metric names and directions, the test report, and the contents of its figures. Tasks compute; the
evaluation package draws figures and writes files from what they return (FigureSpec, Report), so a
task module needs neither Pillow nor a file path.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from imgrec.errors import ImgrecError


@dataclass
class Table:
    """One CSV file of a report."""

    name: str  # file name, e.g. test_predictions.csv
    header: list[str]
    rows: list[list]


@dataclass
class Report:
    """What a task reports on a split: `summary` is written as JSON, `tables` as CSV files, `text` logged."""

    summary: dict
    tables: list[Table] = field(default_factory=list)
    text: str = ""


@dataclass
class ConfusionMatrixFigure:
    tag: str
    counts: np.ndarray  # rows: true class
    class_names: list[str]
    title: str


@dataclass
class ImageGridFigure:
    tag: str
    images: np.ndarray  # uint8 (N, C, H, W)
    captions: list[str]
    title: str
    max_side: int = 128  # larger images are shrunk to this many pixels on their long side
    columns: int = 8


@dataclass
class PRCurveFigure:
    """One class's precision-recall curve, in TensorBoard's own PR-curve format."""

    tag: str
    positives: torch.Tensor  # bool (N,)
    scores: torch.Tensor  # (N,)


@dataclass
class PRPlotFigure:
    """Every class's precision-recall curve in one picture (matplotlib), `marked` an operating point."""

    tag: str
    probabilities: np.ndarray  # (N, classes)
    labels: np.ndarray  # (N,)
    class_names: list[str]
    marked: dict | None = None  # {precision, recall, threshold}


@dataclass
class CurvesPlotFigure:
    """Named curves in one matplotlib plot (e.g. a detector's precision-recall curve per class)."""

    tag: str
    curves: dict  # label -> (x values, y values)
    title: str
    x_label: str
    y_label: str


@dataclass
class ROCPlotFigure:
    """A verification ROC (true-accept rate against false-accept rate, log scale) from pair scores, with
    `marked` operating points ({label, far, tar})."""

    tag: str
    genuine: np.ndarray
    impostor: np.ndarray
    marked: list[dict]
    title: str


FigureSpec = ConfusionMatrixFigure | ImageGridFigure | PRCurveFigure | PRPlotFigure | ROCPlotFigure


class Gather:
    """How one split's results come together from every process (DDP). With one process, as they are;
    training.distributed.SplitGather does it under torchrun."""

    def in_order(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-sample rows of this process's share, put together in the split's order."""
        return tensors

    def sum(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Totals over every process (confusion matrices, counts)."""
        return tensors

    def objects_in_order(self, items: list) -> list:
        """Per-sample Python objects of this process's share (a detector's boxes per image), put together
        in the split's order."""
        return items


class Evaluation:
    """A whole split's results (every process's share gathered)."""

    def scores(self, prefix: str) -> dict[str, float]:
        """The epoch metrics, named `prefix/name` (val/acc, test/loss)."""
        raise NotImplementedError


class Evaluator:
    """Collects a split batch by batch; finish() returns its Evaluation."""

    def update(self, outputs, targets) -> None:
        raise NotImplementedError

    def finish(self, gather: Gather) -> Evaluation:
        raise NotImplementedError


class Task:
    """What differs between tasks. A subclass names its metrics, its loss, what a training epoch sums, how
    a split is scored and reported, and what its figures show."""

    name = "task"
    train_metrics: tuple[str, ...] = ("loss",)  # logged as train/<name> each epoch
    eval_metrics: tuple[str, ...] = ("loss",)  # logged as val/<name> each epoch (and test/<name> at the end)
    headline = "loss"  # the report summary's key imgrec-eval returns (what an eval sweep compares)
    # what imgrec-predict writes for an image: "class_scores" (top-k classes) or "masks" (a class per pixel);
    # a task predicting something else adds its writer to commands/predict.py's PREDICTORS
    predicts = "class_scores"
    spatial_output = False  # outputs per pixel at the input's size: ONNX exports take any height and width
    open_set = False  # True: a split may hold classes the model never trained on (people), so eval takes any
    output_description = "float32 logits"  # what an exported model returns, for model.json
    # metrics the training loop adds to the task's own (trainer.adversarial's train/adv_loss, val/robust_acc);
    # the Trainer sets them from its settings
    loop_metrics: tuple[str, ...] = ()
    torchrun = True  # False: the task's evaluation cannot gather over processes yet, and torchrun is refused
    served_by = ("eval", "predict", "export", "features")  # the commands that take this task's checkpoints
    any_image_size = False  # True: the model takes images at their own size (detection)
    # True: imgrec-eval reads a dataset with the checkpoint's class names (dataset.class_names, when the dataset
    # has that setting and leaves it null), so a new batch lacking some classes is scored
    classes_from_checkpoint = False

    # what decides between epochs with an equal monitored score (best.pt; callbacks.model_checkpoint.tie_break)
    tie_break: str | None = "val/loss"
    tie_break_mode = "min"

    def __init__(self, monitor: str, mode: str = "max"):
        # the metric this task's runs optimise by default (optimized_metric follows it unless set)
        self.monitor, self.mode = monitor, mode

    def metric_names(self) -> list[str]:
        """Every key fit logs each epoch: what `monitor`, `optimized_metric` and schedules may name."""
        return [*(f"train/{name}" for name in self.train_metrics), "train/lr",
                *(f"val/{name}" for name in self.eval_metrics), *self.loop_metrics]

    def check_metric(self, owner: str, name: str) -> None:
        if name not in self.metric_names():
            raise ImgrecError(f"{owner}={name!r} is not a logged metric of the {self.name} task; choose one of: "
                              f"{', '.join(self.metric_names())}")

    def check_served_by(self, command: str) -> None:
        """Raise, naming what does work, when imgrec-<command> cannot take this task's checkpoints yet."""
        if command not in self.served_by:
            raise ImgrecError(f"imgrec-{command} does not take {self.name} checkpoints yet; imgrec-train wrote the "
                              "test report (test_report.json, per-class CSV) next to the checkpoint's run")

    def num_outputs(self, num_classes: int) -> int:
        """How many outputs the model needs for `num_classes` classes (its num_classes)."""
        return num_classes

    def bind(self, class_names: list[str], class_counts: list[int] | None) -> None:
        """What the data decides (class names; training counts for class weights, None for inference)."""

    def complete_model(self, model):
        """The network trained and saved: the built model, or the model wrapped with what the task adds to it
        (an embedding's normalisation and margin head). Called after bind, for training and for inference."""
        return model

    def train_batch(self, images: torch.Tensor, targets):
        """Batch-level training transforms that change targets too (mixup); none by default."""
        return images, targets

    def loss(self, outputs, targets) -> torch.Tensor:
        raise NotImplementedError

    def new_sums(self, device: torch.device) -> dict[str, torch.Tensor]:
        """A training epoch's running sums, zero, on the device (no host sync per step)."""
        return {"loss_sum": torch.zeros((), device=device)}

    def add_to_sums(self, sums: dict[str, torch.Tensor], loss: torch.Tensor, outputs, targets) -> int:
        """Add one training batch to the epoch's running sums (on the device); returns its sample count."""
        raise NotImplementedError

    def train_scores(self, sums: dict[str, float], seen: int) -> dict[str, float]:
        """The epoch's training metrics from its sums over every process."""
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def check_output(self, output, where: str) -> None:
        """Raise naming `where` when a model's output for one image is not what this task trains."""

    def validation_figures(self, evaluation: Evaluation, images_at, epoch: int, max_images: int) -> list:
        """FigureSpecs for TensorBoard; `images_at(indices)` returns the split's uint8 images."""
        return []

    def test_report(self, evaluation: Evaluation, sample_ids: list[str]) -> Report:
        raise NotImplementedError

    def eval_report(self, evaluation: Evaluation, sample_ids: list[str], images_at, split_name: str,
                    threshold: dict | None, settings) -> tuple[Report, list]:
        """imgrec-eval's report and figures (FigureSpecs) of a split; `threshold` as check_threshold_settings
        allowed, `settings` imgrec-eval's config (errors_shown, enrolled_per_person ...)."""
        raise NotImplementedError

    def check_threshold_settings(self, threshold, target_recall) -> None:
        """imgrec-eval's threshold / target_recall: a binary decision threshold, which only some tasks have."""
        if threshold is not None or target_recall is not None:
            raise ImgrecError(f"threshold={threshold} / target_recall={target_recall} apply to binary classification; "
                              f"this checkpoint is a {self.name} model. Leave them null")

    def check_eval_settings(self, settings) -> None:
        """imgrec-eval's own settings for this task (checked before the data is read); none by default."""

    def predicted_classes(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class ids from a batch of raw model outputs (one per image, or one per pixel)."""
        raise NotImplementedError
