"""Inference: the batch loop predictions run through (the Trainer's validation and test, imgrec-eval,
classification's -predict and -features; segmentation's -predict goes image by image through
sliding_window, as images may differ in size), and a trained model rebuilt from its checkpoint alone,
with the task it was trained for and the images it expects."""

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch import nn

from imgrec.config import build, stored_component
from imgrec.errors import ImgrecError
from imgrec.tasks.base import Evaluation, Gather, Task

# checkpoints written before tasks existed trained a classifier
DEFAULT_TASK = {"_target_": "imgrec.tasks.classification.ClassificationTask"}


def predict_batches(forward, loader, consume, channels_last: bool = False, amp_dtype: torch.dtype | None = None):
    """`consume(outputs, targets)` for every batch `loader` yields, without gradients; channels_last and
    autocast as the model was trained, when asked."""
    with torch.inference_mode():
        for images, targets in loader:
            device = images[0].device if isinstance(images, list) else images.device  # detection: a list
            if channels_last and not isinstance(images, list):
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = forward(images)
            consume(outputs, targets)


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on its device
    class_names: list[str]
    mean: list[float]
    std: list[float]
    input_shape: list[int]  # channels, height, width
    state: dict  # the whole checkpoint
    task: Task  # what it was trained for (bound to its class names)

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    @property
    def image_size(self) -> int:
        return self.input_shape[1]


class TemperatureScaled(nn.Module):
    """A classifier whose logits are divided by a calibration temperature (a buffer, so exports trace it)."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) / self.temperature


def rebuild_model(model_cfg: dict, in_channels: int, num_classes: int, weights: dict, task: Task) -> nn.Module:
    """The checkpoint's architecture with its trained weights. Pretrained weights it started from are
    not read again (the file may not exist here), and a frozen backbone is rebuilt as a plain network."""
    cfg = OmegaConf.create(stored_component(model_cfg, "model", "the checkpoint's config.model"))
    if "weights" in cfg:
        cfg.weights = None
    if cfg.get("freeze") == "backbone":
        cfg.freeze = "none"
        weights = {key.removeprefix("model."): value for key, value in weights.items()}
    model = task.complete_model(build(cfg, in_channels=in_channels, num_classes=num_classes))
    model.load_state_dict(weights)
    return model


def inference_device(cfg) -> torch.device:
    """What eval, predict, export and features share besides the checkpoint: batch sizes, DataLoader workers
    and CPU threads checked (before anything is loaded), the threads set, and the device resolved."""
    from imgrec.runtime import resolve_device, set_cpu_threads

    for key in ("batch_size", "check_batch_size"):
        value = cfg.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImgrecError(f"{key}={value!r} must be a whole number >= 1")
    workers = cfg.get("num_workers", "auto")
    if workers != "auto" and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ImgrecError(f"num_workers={workers!r} must be auto or a whole number >= 0")
    set_cpu_threads(cfg.get("num_threads", "auto"), "num_threads")
    return resolve_device(cfg.get("device", "cpu"), "device")


def load_trained(ckpt_path: str, device: torch.device) -> TrainedModel:
    from imgrec.checkpoint import load_checkpoint

    if not ckpt_path:
        raise ImgrecError("ckpt_path is required: ckpt_path=outputs/train/runs/<timestamp>/checkpoints/best.pt")
    state = load_checkpoint(ckpt_path, purpose="inference")
    input_shape = list(state["input_shape"])
    task = build(OmegaConf.create(stored_component(state["config"].get("task", DEFAULT_TASK), "task",
                                                   "the checkpoint's config.task")))
    task.bind(list(state["class_names"]), None)
    try:
        model = rebuild_model(state["config"]["model"], input_shape[0], task.num_outputs(len(state["class_names"])),
                              state["model"], task)
    except (RuntimeError, KeyError) as error:
        raise ImgrecError(f"ckpt_path {ckpt_path}: its model could not be rebuilt: {str(error).splitlines()[0]}") from error
    normalization = state["normalization"]
    return TrainedModel(model.to(device).eval(), list(state["class_names"]), list(normalization["mean"]),
                        list(normalization["std"]), input_shape, state, task)


def check_same_classes(expected: list[str], found: list[str], where: str) -> None:
    """Raise with the difference when a dataset's classes are not the model's, in the same order."""
    if expected == found:
        return
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    detail = []
    if missing:
        detail.append(f"missing from the dataset: {missing}")
    if extra:
        detail.append(f"not known to the model: {extra}")
    if not detail:
        detail.append(f"same names in another order: the model has {expected}, the dataset {found}")
    raise ImgrecError(f"{where} classes differ from the checkpoint's: {'; '.join(detail)}")


def evaluate(trained: TrainedModel, loader) -> Evaluation:
    """The checkpoint's task's evaluation of every batch `loader` yields, in order."""
    evaluator = trained.task.evaluator()
    predict_batches(trained.model, loader, evaluator.update)
    return evaluator.finish(Gather())
