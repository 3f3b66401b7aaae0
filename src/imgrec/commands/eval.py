"""imgrec-eval: the full report of a checkpoint on a dataset split, as files, figures and a table."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import build, check_tool_config, resolve_checkpoint_shortcut, stored_component
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


def check_threshold_settings(cfg: DictConfig, num_classes: int) -> None:
    if cfg.threshold is None:
        return
    if num_classes != 2:
        raise ImgrecError(f"threshold={cfg.threshold} applies to two-class tasks; this model has {num_classes} "
                          "classes. Leave threshold=null")
    if cfg.threshold != "auto" and (isinstance(cfg.threshold, bool) or not isinstance(cfg.threshold, (int, float))
                                    or not 0.0 <= cfg.threshold <= 1.0):
        raise ImgrecError(f"threshold={cfg.threshold!r} must be null, auto or a probability between 0 and 1")
    if cfg.target_recall is not None and cfg.threshold != "auto":
        raise ImgrecError(f"target_recall={cfg.target_recall} is used with threshold=auto only")


def resolve_threshold(cfg: DictConfig, split_name: str, model, splits, probabilities: np.ndarray, labels: np.ndarray,
                      loader_for):
    """None (argmax), or the binary decision threshold as given or as chosen on the validation split."""
    from imgrec.evaluation.classification import choose_threshold
    from imgrec.evaluation.inference import predict_logits

    if cfg.threshold is None:
        return None
    if cfg.threshold != "auto":
        return {"threshold": float(cfg.threshold), "chosen_on": "given"}
    if split_name == "val":
        val_probabilities, val_labels = probabilities, labels
    else:  # chosen on validation, never on the split being reported
        logits, val_tensor = predict_logits(model, loader_for(splits.val))
        val_probabilities, val_labels = logits.softmax(dim=1).numpy(), val_tensor.numpy()
    chosen = choose_threshold(val_probabilities[:, 1], val_labels, cfg.target_recall)
    log.info(f"threshold {chosen['threshold']:.4f} chosen on val: precision {chosen['precision']:.4f}, "
             f"recall {chosen['recall']:.4f}" + (f" (target recall {cfg.target_recall})" if cfg.target_recall else
                                                 " (best F1)"))
    return {"threshold": chosen["threshold"], "chosen_on": "val", "target_recall": cfg.target_recall,
            "val_precision": chosen["precision"], "val_recall": chosen["recall"]}


def write_eval_files(run_dir: Path, report: dict, probabilities: np.ndarray, labels: np.ndarray,
                     predicted: np.ndarray, names: list[str], identifiers: list[str]) -> None:
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    with open(run_dir / "per_class.csv", "w", newline="") as file:
        writer = csv.writer(file)
        columns = ["precision", "recall", "f1", "support", "roc_auc", "average_precision"]
        writer.writerow(["class", *columns])
        for name in names:
            writer.writerow([name, *(report["per_class"][name][column] for column in columns)])
    with open(run_dir / "predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "true", "predicted", "true_name", "predicted_name", *(f"prob_{n}" for n in names)])
        for ident, true, pred, probs in zip(identifiers, labels, predicted, probabilities):
            writer.writerow([ident, int(true), int(pred), names[true], names[pred], *(f"{p:.6g}" for p in probs)])
    with open(run_dir / "confusion_matrix.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *names])
        for name, row in zip(names, report["confusion_matrix"]):
            writer.writerow([name, *row])


def confident_errors(split, probabilities, labels, predicted, names, count: int):
    """uint8 images and captions of the `count` wrong predictions made with the highest confidence."""
    import torch

    from imgrec.data.images import decode_image

    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:count]
    if hasattr(split, "images"):
        images = split.images[torch.as_tensor(wrong, dtype=torch.long)].numpy()
    else:
        images = np.stack([decode_image(split.paths[i], split.channels, split.image_size).numpy() for i in wrong]) \
            if len(wrong) else np.zeros((0, split.channels, split.image_size, split.image_size), np.uint8)
    captions = [f"true {names[labels[i]]}\npred {names[predicted[i]]} ({probabilities[i, predicted[i]]:.2f})"
                for i in wrong]
    return images, captions


def stored_dataset(dataset_cfg) -> DictConfig:
    """The dataset a checkpoint was trained on, rebuilt from its stored settings; never downloads."""
    checked = stored_component(dataset_cfg, "dataset", "the checkpoint's config.dataset")
    if "download" in checked:
        checked["download"] = False
    return OmegaConf.create(checked)


SPLIT_CHOICES = ("auto", "all", "test", "val", "train")


def chosen_split(setting: str, from_checkpoint: bool, test_given: bool) -> str:
    """`auto`: the held-out test split of the checkpoint's own data, or of data that comes with a test split
    (a test/ folder, a split column); every image of any other dataset (a new folder to score whole)."""
    if setting != "auto":
        return setting
    chosen = "test" if from_checkpoint or test_given else "all"
    log.info(f"split=auto: scoring {'the test split' if chosen == 'test' else 'every image of the dataset'}"
             + ("" if from_checkpoint else f" ({'it has' if test_given else 'it has no'} test split of its own)"))
    return chosen


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    from imgrec.data.loaders import make_loader
    from imgrec.data.splits import sample_ids
    from imgrec.evaluation.classification import binary_metrics_at, full_report
    from imgrec.evaluation.plots import pr_curves_figure, save_figure
    from imgrec.evaluation.inference import check_same_classes, inference_device, load_trained, predict_logits
    from imgrec.evaluation.classification import format_report
    from imgrec.evaluation.rasters import confusion_matrix_image, image_grid_image

    check_tool_config(cfg)  # before anything is built
    resolve_checkpoint_shortcut(cfg)
    if cfg.split not in SPLIT_CHOICES:
        raise ImgrecError(f"split={cfg.split!r} must be one of {', '.join(SPLIT_CHOICES)}")
    device = inference_device(cfg)
    trained = load_trained(cfg.ckpt_path, device)
    check_threshold_settings(cfg, len(trained.class_names))
    dataset_cfg = cfg.dataset if cfg.get("dataset") else stored_dataset(trained.state["config"].get("dataset"))
    if dataset_cfg.get("channels") == "auto":  # read new images the way the model was trained to see them
        dataset_cfg.channels = trained.channels
    splits = build(dataset_cfg)
    check_same_classes(trained.class_names, splits.class_names, f"dataset ({dataset_cfg._target_})")
    if [splits.channels, splits.image_size] != [trained.channels, trained.image_size]:
        raise ImgrecError(f"the model takes {trained.channels}-channel {trained.image_size}px images and the dataset "
                          f"gives {splits.channels}-channel {splits.image_size}px; set dataset.channels="
                          f"{trained.channels} dataset.image_size={trained.image_size}")

    def loader_for(split):
        return make_loader(split, cfg.batch_size, trained.mean, trained.std, device, num_workers=cfg.num_workers)

    split_name = chosen_split(cfg.split, from_checkpoint=not cfg.get("dataset"), test_given=splits.test_given)
    if split_name == "all" and cfg.threshold == "auto":
        raise ImgrecError("threshold=auto would choose the threshold on the val images of a dataset that is scored "
                          "whole (split=all); give the threshold as a number (e.g. the one an earlier imgrec-eval "
                          "chose on the training data), or use split=test")
    split = splits.everything() if split_name == "all" else getattr(splits, split_name)
    logits, label_tensor = predict_logits(trained.model, loader_for(split))
    probabilities, labels = logits.softmax(dim=1).numpy(), label_tensor.numpy()
    threshold = resolve_threshold(cfg, split_name, trained.model, splits, probabilities, labels, loader_for)
    predicted = probabilities.argmax(axis=1) if threshold is None else (probabilities[:, 1] >= threshold["threshold"]).astype(int)
    names = trained.class_names
    report = full_report(probabilities, labels, names, predicted)
    report.update(split=split_name, checkpoint=str(cfg.ckpt_path), checkpoint_epoch=trained.state.get("epoch"))
    if threshold is not None:
        report["threshold"] = {**threshold, **binary_metrics_at(threshold["threshold"], probabilities[:, 1], labels)}

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identifiers = sample_ids(split)
    write_eval_files(run_dir, report, probabilities, labels, predicted, names, identifiers)
    confusion_matrix_image(report["confusion_matrix"], names, f"{split_name} confusion matrix").save(
        run_dir / "confusion_matrix.png")
    marked = report.get("threshold")
    save_figure(pr_curves_figure(probabilities, labels, names, marked), run_dir / "pr_curves.png")
    images, captions = confident_errors(split, probabilities, labels, predicted, names, cfg.errors_shown)
    image_grid_image(images, captions, f"most confident errors ({len(captions)} shown)").save(
        run_dir / "confident_errors.png")
    log.info(f"{split_name} split of {dataset_cfg._target_.rsplit('.', 1)[-1]}, {len(labels)} images:\n"
             + format_report(report) + "\n" + summary_lines(report))
    log.info(f"evaluation saved in {run_dir.resolve()}")
    return report


def summary_lines(report: dict) -> str:
    parts = [f"balanced accuracy {report['balanced_accuracy']:.4f}"]
    if "top5_accuracy" in report:
        parts.append(f"top-5 accuracy {report['top5_accuracy']:.4f}")
    for key, label in (("macro_roc_auc", "macro ROC-AUC"), ("macro_average_precision", "macro average precision")):
        if report[key] is not None:
            parts.append(f"{label} {report[key]:.4f}")
    if "threshold" in report:
        t = report["threshold"]
        chosen = "chosen on val" if t["chosen_on"] == "val" else "given"
        parts.append(f"threshold {t['threshold']:.4f} ({chosen}): {report['split']} precision {t['precision']:.4f}, "
                     f"{report['split']} recall {t['recall']:.4f}")
    return "; ".join(parts)


@hydra_command("eval", task_name="eval")
def main(cfg: DictConfig) -> float | None:
    return run_command(evaluate_checkpoint, cfg)["accuracy"]


if __name__ == "__main__":
    main()
