"""A dataset built from its config group file: the task it serves checked, then the training-split options
(dataset.train_per_class, dataset.synthetic) applied to whatever its loader built."""

from omegaconf import DictConfig, OmegaConf

from imgrec.config import build
from imgrec.errors import ImgrecError


def build_dataset(dataset_cfg: DictConfig, task_name: str):
    """The dataset a config group file describes, after checking that it serves `task_name` (a dataset file
    declares `task:`; one without trains a classifier)."""
    declared = dataset_cfg.get("task", "classification")
    if declared != task_name:
        target = str(dataset_cfg.get("_target_", "?")).rsplit(".", 1)[-1]
        raise ImgrecError(f"dataset {target} serves the {declared} task but task={task_name}; add task={declared} to "
                          f"the command line, or choose a {task_name} dataset")
    settings = OmegaConf.to_container(dataset_cfg, resolve=True)  # resolved here: `task` is not an argument
    settings.pop("task", None)
    # options on the training split of whatever the loader built, so no loader takes them as arguments
    train_per_class, synthetic = settings.pop("train_per_class", None), settings.pop("synthetic", None)
    splits = build(OmegaConf.create(settings))
    if train_per_class is None and synthetic is None:
        return splits
    from imgrec.data.synthetic import apply_training_options  # torch: not on the import path of --help

    return apply_training_options(splits, train_per_class, synthetic, settings.get("split_seed", 0),
                                  settings.get("normalize", "standardize"), settings.get("mean"), settings.get("std"),
                                  {**settings, "train_per_class": train_per_class})
