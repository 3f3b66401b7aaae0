"""What a config may build: the classes and factories imgrec instantiates, named exactly, plus a few
families of library classes (optimizers, augmentations, scikit-learn estimators) checked after import.

A `_target_` is a string that picks what gets called. Configs and checkpoints can come from someone
else, so nothing outside this list (and the exact callables a user names in `allowed_targets` on the
command line) is ever called: not `torch.load`, not `os.system`, not an imgrec function that writes
files, not an attribute path that reaches another module through an import.
"""

import inspect
from dataclasses import dataclass

# Every `_target_` in configs/, by the kind of thing it builds. A test reads every shipped config file
# and checks that each target is listed here under the group it sits in.
REGISTERED: dict[str, frozenset[str]] = {
    "model": frozenset({
        "imgrec.models.small_cnn.SmallCNN",
        "imgrec.models.backbones.torchvision_model",
        "imgrec.models.timm_models.timm_model",
        "imgrec.models.unet.UNet",
        "imgrec.models.segmentation_models.torchvision_segmentation",
        "imgrec.models.segmentation_models.smp_model",
        "imgrec.models.detectors.torchvision_detector",
    }),
    "dataset": frozenset({
        "imgrec.data.datasets.digits",
        "imgrec.data.datasets.fake",
        "imgrec.data.mnist.mnist_family",
        "imgrec.data.torchvision_sets.torchvision_dataset",
        "imgrec.data.folders.image_folder",
        "imgrec.data.folders.csv_table",
        "imgrec.data.segmentation.seg_folder",
        "imgrec.data.segmentation.shapes",
        "imgrec.data.faces.face_images",
        "imgrec.data.faces.digits_people",
        "imgrec.data.detection_datasets.detection_folder",
        "imgrec.data.detection_datasets.shapes_detection",
    }),
    "scheduler": frozenset({
        f"imgrec.training.schedulers.{name}"
        for name in ("constant", "warmup_cosine", "step_decay", "multistep", "exponential", "onecycle", "plateau")
    }),
    "task": frozenset({"imgrec.tasks.classification.ClassificationTask",
                       "imgrec.tasks.segmentation.SegmentationTask",
                       "imgrec.tasks.embedding.EmbeddingTask",
                       "imgrec.tasks.detection.DetectionTask"}),
    "trainer": frozenset({"imgrec.training.settings.TrainerSettings"}),
    "callback": frozenset({
        "imgrec.training.callbacks.EarlyStopping",
        "imgrec.training.callbacks.ModelCheckpoint",
        "imgrec.training.callbacks.ValidationFigures",
    }),
    "logger": frozenset({"imgrec.training.loggers.TensorBoardLogger", "imgrec.training.loggers.CSVLogger",
                         "imgrec.training.loggers.ManyLoggers", "imgrec.training.mlflow_logger.MLflowLogger"}),
    "augment": frozenset({
        *(f"imgrec.data.augment.{name}" for name in
          ("RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotate90", "RandomCrop", "RandomAffine",
           "RandomErasing")),
        *(f"imgrec.data.photometric.{name}" for name in
          ("RandomBrightness", "RandomContrast", "ContrastStretch", "HistogramEqualize", "GaussianNoise",
           "TrivialAugment", "RandAugment")),
    }),
    "hydra_callback": frozenset({"imgrec.commands.sweeps.SweepSummary"}),
    "launcher": frozenset({
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    }),
    "sweeper": frozenset({
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    }),
}

# Targets that moved when the package was arranged by role (issue #16): checkpoints and configs written
# before name the old path, and are read as naming the new one.
RENAMED: dict[str, str] = {
    **{f"imgrec.schedulers.{name}": f"imgrec.training.schedulers.{name}"
       for name in ("constant", "warmup_cosine", "step_decay", "multistep", "exponential", "onecycle", "plateau")},
    "imgrec.trainer.Trainer": "imgrec.training.settings.TrainerSettings",
    "imgrec.callbacks.EarlyStopping": "imgrec.training.callbacks.EarlyStopping",
    "imgrec.callbacks.ModelCheckpoint": "imgrec.training.callbacks.ModelCheckpoint",
    "imgrec.tb_figures.ValidationFigures": "imgrec.training.callbacks.ValidationFigures",
    "imgrec.loggers.TensorBoardLogger": "imgrec.training.loggers.TensorBoardLogger",
    "imgrec.sweeps.SweepSummary": "imgrec.commands.sweeps.SweepSummary",
}


@dataclass(frozen=True)
class Family:
    """Classes of one library package that all derive from `base`: checked after import, so a path that
    walks through an imported module (torch.optim.sgd.os.system) resolves to what it really is."""

    kind: str
    package: str  # the path must start with this, and the class must be defined under it
    base: str  # dotted path of the base class

    def admits(self, target: str) -> bool:
        if not target.startswith(self.package + "."):
            return False
        obj = locate(target)
        base = locate(self.base)
        return (inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj)
                and obj.__module__.startswith(self.package))


FAMILIES = (
    Family("optimizer", "torch.optim", "torch.optim.Optimizer"),
    Family("augment", "albumentations", "albumentations.core.transforms_interface.BasicTransform"),
    Family("augment", "albumentations", "albumentations.core.composition.BaseCompose"),
    Family("augment", "torchvision.transforms.v2", "torchvision.transforms.v2.Transform"),
    Family("classifier", "sklearn", "sklearn.base.BaseEstimator"),
    Family("sampler", "optuna.samplers", "optuna.samplers.BaseSampler"),
)
FAMILY_SUMMARY = ("torch.optim optimizers, albumentations and torchvision.transforms.v2 transforms, "
                  "scikit-learn estimators, optuna samplers")


def locate(path: str):
    """The object a dotted path names (Hydra's own lookup, so the check sees what instantiate will call);
    None when it cannot be imported."""
    from hydra._internal.utils import _locate

    try:
        return _locate(path)
    except Exception:  # ImportError, AttributeError, and whatever a broken module raises while importing
        return None


def real_name(obj) -> str | None:
    """Where an object is defined: `module.qualname`, whatever path reached it."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{name}" if module and name else None


def canonical(target: str) -> str:
    return RENAMED.get(target, target)


def registered_kind(target: str) -> str | None:
    """The kind of a registered target (after renames), or None."""
    target = canonical(target)
    return next((kind for kind, names in REGISTERED.items() if target in names), None)


def family_kind(target: str) -> str | None:
    """The kind of a library class that a family admits, or None. Imports the target's module."""
    return next((family.kind for family in FAMILIES if family.admits(target)), None)


def user_callable_problem(target: str) -> str | None:
    """Why an `allowed_targets` entry cannot be used, or None: it must import, be a class or a function,
    and be defined in the package its path names (not reached through an import of another module)."""
    obj = locate(target)
    if obj is None:
        return f"{target} cannot be imported"
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        kind = "a module" if inspect.ismodule(obj) else f"a {type(obj).__name__}"
        return f"{target} is {kind}, not a class or function; name the exact callable, e.g. mypkg.models.Net"
    defined = real_name(obj) or ""
    if defined.split(".")[0] != target.split(".")[0]:
        return f"{target} is really {defined}, defined outside {target.split('.')[0]}"
    return None
