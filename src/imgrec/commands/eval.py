"""imgrec-eval: the full report of a checkpoint on a dataset split, as files, figures and a table."""

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config, resolve_checkpoint_shortcut, stored_component
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
SPLIT_CHOICES = ("auto", "all", "test", "val", "train")


def stored_dataset(dataset_cfg) -> DictConfig:
    """The dataset a checkpoint was trained on, rebuilt from its stored settings; never downloads, and never
    reads the generated images it trained with (dataset.synthetic): only real images are scored, and that
    folder may be gone."""
    checked = stored_component(dataset_cfg, "dataset", "the checkpoint's config.dataset")
    if "download" in checked:
        checked["download"] = False
    if "synthetic" in checked:
        checked["synthetic"] = None
    return OmegaConf.create(checked)


def chosen_split(setting: str, from_checkpoint: bool, test_given: bool) -> str:
    """`auto`: the held-out test split of the checkpoint's own data, or of data that comes with a test split
    (a test/ folder, a split column); every image of any other dataset (a new folder to score whole)."""
    if setting != "auto":
        return setting
    chosen = "test" if from_checkpoint or test_given else "all"
    log.info(f"split=auto: scoring {'the test split' if chosen == 'test' else 'every image of the dataset'}"
             + ("" if from_checkpoint else f" ({'it has' if test_given else 'it has no'} test split of its own)"))
    return chosen


def resolve_threshold(cfg: DictConfig, task, split_name: str, evaluation, val_evaluation) -> dict | None:
    """None (argmax), or the binary decision threshold as given or as chosen on the validation split
    (`val_evaluation()` scores it; never the split being reported)."""
    if cfg.threshold is None:
        return None
    if cfg.threshold != "auto":
        return {"threshold": float(cfg.threshold), "chosen_on": "given"}
    threshold = task.chosen_threshold(evaluation if split_name == "val" else val_evaluation(), cfg.target_recall)
    log.info(f"threshold {threshold['threshold']:.4f} chosen on val: precision {threshold['val_precision']:.4f}, "
             f"recall {threshold['val_recall']:.4f}"
             + (f" (target recall {cfg.target_recall})" if cfg.target_recall else " (best F1)"))
    return threshold


BASELINES = ("eigenfaces", "lbp")


def evaluate_baseline(cfg: DictConfig) -> dict:
    """A classical face baseline (eigenfaces, LBP histograms) fitted on the dataset's train split and scored
    on a split with the report and files an embedding checkpoint gets, so the lines compare."""
    import numpy as np
    import torch

    from imgrec.data.building import build_dataset
    from imgrec.data.files import images_at
    from imgrec.data.splits import sample_ids
    from imgrec.evaluation.figures import to_file
    from imgrec.evaluation.reports import write_report
    from imgrec.models.classical_faces import Eigenfaces, LBPHistograms
    from imgrec.tasks.embedding import EmbeddingEvaluation, EmbeddingTask

    if cfg.baseline not in BASELINES:
        raise ImgrecError(f"baseline={cfg.baseline!r} must be one of {', '.join(BASELINES)} (or null with ckpt_path=...)")
    if cfg.ckpt_path:
        raise ImgrecError("give baseline=... or ckpt_path=..., not both")
    if not cfg.get("dataset") or cfg.dataset.get("task") != "embedding":
        raise ImgrecError(f"baseline={cfg.baseline} needs a face dataset: dataset=faces dataset.root=... (the split it "
                          "is fitted on and scored on, as a trained model's)")
    if cfg.split not in ("auto", "test", "val"):
        raise ImgrecError(f"split={cfg.split} with a baseline: test (auto) or val; it is fitted on train")
    splits = build_dataset(cfg.dataset, "embedding")
    split_name = "val" if cfg.split == "val" else "test"
    split = getattr(splits, split_name)

    def grey(images: torch.Tensor) -> np.ndarray:
        return images.float().mean(dim=1).numpy()

    method = Eigenfaces(min(50, len(splits.train) - 1)) if cfg.baseline == "eigenfaces" else LBPHistograms()
    method.fit(grey(splits.train.images))
    evaluation = EmbeddingEvaluation(torch.from_numpy(method.embed(grey(split.images))), split.labels)
    report, figures = EmbeddingTask().eval_report(evaluation, sample_ids(split), lambda i: images_at(split, i),
                                                  split_name, None, cfg)
    report.summary.update(split=split_name, baseline=cfg.baseline, headline="roc_auc")
    run_dir = Path(cfg.paths.output_dir)
    report.text = f"{cfg.baseline} fitted on {len(splits.train)} train images; {split_name} split, {len(split)} images:\n" \
        + report.text
    write_report(report, run_dir, "report.json", log)
    for figure in figures:
        to_file(figure, run_dir)
    log.info(f"evaluation saved in {run_dir.resolve()}")
    return report.summary


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    from imgrec.data.files import images_at
    from imgrec.data.loaders import make_loader
    from imgrec.data.splits import sample_ids
    from imgrec.evaluation.figures import to_file
    from imgrec.evaluation.inference import check_same_classes, evaluate, inference_device, load_trained
    from imgrec.evaluation.reports import write_report

    check_tool_config(cfg)  # before anything is built
    if cfg.get("baseline") is not None:
        return evaluate_baseline(cfg)
    resolve_checkpoint_shortcut(cfg)
    if cfg.split not in SPLIT_CHOICES:
        raise ImgrecError(f"split={cfg.split!r} must be one of {', '.join(SPLIT_CHOICES)}")
    device = inference_device(cfg)
    trained = load_trained(cfg.ckpt_path, device)
    trained.task.check_served_by("eval")
    task = trained.task
    task.check_threshold_settings(cfg.threshold, cfg.target_recall)
    screening = task.name == "classification"
    if screening:
        from imgrec.evaluation.screening import check_screening_settings

        check_screening_settings(cfg, len(trained.class_names))
    elif cfg.get("calibration") is not None:
        raise ImgrecError(f"calibration={cfg.calibration} calibrates a classifier's probabilities; this checkpoint is "
                          f"for the {task.name} task. Leave calibration=null")
    task.check_eval_settings(cfg)
    for key in ("gradcam_errors", "store_threshold"):
        if not isinstance(cfg.get(key), bool):
            raise ImgrecError(f"{key}={cfg.get(key)!r} must be true or false")
    if cfg.gradcam_errors and task.predicts != "class_scores":
        raise ImgrecError(f"gradcam_errors=true draws Grad-CAM beside a classifier's most confident errors; this "
                          f"checkpoint is for the {task.name} task. Leave it false, or use imgrec-explain")
    dataset_cfg = cfg.dataset if cfg.get("dataset") else stored_dataset(trained.state["config"].get("dataset"))
    # read images as the model was trained to see them: at its input size, unless a per-pixel model was
    # trained on images at their own size (dataset.image_size=null), which it then takes at theirs
    trained_on = (trained.state.get("config") or {}).get("dataset") or {}
    own_size = task.any_image_size or (task.spatial_output and "image_size" in trained_on
                                       and trained_on["image_size"] is None)
    fixed = [("channels", trained.channels)] + ([] if own_size else [("image_size", trained.image_size)])
    for key, value in fixed:
        if "image_size" in dataset_cfg and key in dataset_cfg and dataset_cfg.get(key) != value:
            if dataset_cfg.get(key) != "auto":
                log.info(f"dataset.{key}={dataset_cfg.get(key)} -> {value}: images are read the way the model takes them")
            dataset_cfg[key] = value
    if task.classes_from_checkpoint and "class_names" in dataset_cfg and dataset_cfg.class_names is None:
        dataset_cfg.class_names = list(trained.class_names)
    splits = build_dataset(dataset_cfg, task.name)
    if not task.open_set:  # an embedding is scored on people it never saw
        check_same_classes(trained.class_names, splits.class_names, f"dataset ({dataset_cfg._target_})")
    if splits.channels != trained.channels or (not own_size and splits.image_size != trained.image_size):
        raise ImgrecError(f"the model takes {trained.channels}-channel {trained.image_size}px images and the dataset "
                          f"gives {splits.channels}-channel {splits.image_size}px; set dataset.channels="
                          f"{trained.channels} dataset.image_size={trained.image_size}")

    def evaluated(split):
        return evaluate(trained, make_loader(split, cfg.batch_size, trained.mean, trained.std, device,
                                             num_workers=cfg.num_workers))

    split_name = chosen_split(cfg.split, from_checkpoint=not cfg.get("dataset"), test_given=splits.test_given)
    if split_name == "all" and cfg.threshold == "auto":
        raise ImgrecError("threshold=auto would choose the threshold on the val images of a dataset that is scored "
                          "whole (split=all); give the threshold as a number (e.g. the one an earlier imgrec-eval "
                          "chose on the training data), or use split=test")
    split = splits.everything() if split_name == "all" else getattr(splits, split_name)
    evaluation = evaluated(split)
    run_dir = Path(cfg.paths.output_dir)
    scored_val: list = []
    applied: dict = {}  # the calibration in use, once known: val's probabilities get it too

    def val_evaluation():  # scored once, when a step needs it
        if not scored_val:
            scored_val.append(evaluation if split_name == "val" else evaluated(splits.val))
        scored_val[0].calibrate = applied.get("function")
        return scored_val[0]

    calibration = None
    if screening:
        from imgrec.evaluation.screening import bounded_choice, calibrate

        if split_name == "all" and cfg.calibration is not None:
            raise ImgrecError("calibration fits on the val images of a dataset that is scored whole (split=all); "
                              "use split=test, or calibrate with the checkpoint's own data first")
        calibration = calibrate(cfg, trained.state, evaluation, val_evaluation, split_name, run_dir)
        applied["function"] = evaluation.calibrate
    threshold = bounded_choice(cfg, val_evaluation) if screening and cfg.threshold == "auto" else None
    if threshold is not None:
        from imgrec.tasks.classification_scores import binary_metrics_at

        val = val_evaluation()
        at_val = binary_metrics_at(threshold["threshold"], val.probabilities[:, 1], val.labels.numpy())
        threshold.update(val_precision=at_val["precision"], val_recall=at_val["recall"])
    else:
        threshold = resolve_threshold(cfg, task, split_name, evaluation, val_evaluation)
    if threshold is not None and threshold["chosen_on"] == "val" and cfg.store_threshold \
            and not threshold.get("val_recall"):
        log.warning(f"threshold {threshold['threshold']:.4f} finds nothing right on val (recall 0), so it is not stored "
                    "in the checkpoint; train longer, or give imgrec-predict a threshold")
    elif threshold is not None and threshold["chosen_on"] == "val" and cfg.store_threshold:
        from imgrec.checkpoint import store_decision_threshold

        store_decision_threshold(cfg.ckpt_path, threshold)
        threshold["stored_in"] = str(cfg.ckpt_path)
        log.info(f"threshold {threshold['threshold']:.4f} stored in {cfg.ckpt_path}: imgrec-predict applies it "
                 "(store_threshold=false leaves the checkpoint as it was)")
    report, figures = task.eval_report(evaluation, sample_ids(split), lambda indices: images_at(split, indices),
                                       split_name, threshold, cfg)
    report.summary.update(split=split_name, checkpoint=str(cfg.ckpt_path), checkpoint_epoch=trained.state.get("epoch"),
                          headline=task.headline)
    if calibration is not None:
        report.summary["calibration"] = calibration
        if cfg.calibration is not None and cfg.store_calibration:
            from imgrec.checkpoint import store_calibration

            store_calibration(cfg.ckpt_path, calibration)
            log.info(f"calibration stored in {cfg.ckpt_path}: imgrec-predict and imgrec-export apply it "
                     "(store_calibration=false leaves the checkpoint as it was)")
    if screening and len(trained.class_names) == 2 and split_name != "all":
        from imgrec.evaluation.screening import operating_points

        report.summary["operating_point"] = operating_points(cfg, evaluation, threshold, split_name, run_dir,
                                                             val_evaluation if threshold is not None else None)
    if cfg.gradcam_errors:
        from imgrec.explain.overlays import with_gradcam

        figures = [with_gradcam(f, trained, device, threshold) if f.tag == "confident_errors" else f for f in figures]

    target = dataset_cfg._target_.rsplit(".", 1)[-1]
    report.text = f"{split_name} split of {target}, {len(split)} images:\n" + report.text
    write_report(report, run_dir, "report.json", log)
    for figure in figures:
        to_file(figure, run_dir)
    log.info(f"evaluation saved in {run_dir.resolve()}")
    return report.summary


@hydra_command("eval", task_name="eval")
def main(cfg: DictConfig) -> float | None:
    summary = run_command(evaluate_checkpoint, cfg)
    return summary[summary["headline"]]


if __name__ == "__main__":
    main()
