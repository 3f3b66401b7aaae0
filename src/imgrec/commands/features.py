"""imgrec-features: embed every image with a CNN minus its classifier head, save the embeddings, and fit a
scikit-learn classifier on them: the "deep features" baseline to compare fine-tuning against."""

import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import build, check_tool_config, resolve_checkpoint_shortcut
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
SPLITS = ("train", "val", "test")


def headless(model):
    """The model with its last Linear layer replaced by Identity: it returns that layer's input, the
    embedding (a ResNet's pooled 512 features, small_cnn's last hidden layer, VGG's fc7)."""
    from torch import nn

    from imgrec.models.backbones import last_linear

    parent, attribute, _ = last_linear(model)
    setattr(parent, attribute, nn.Identity())
    return model.eval()


def embed(model, loader) -> tuple[np.ndarray, np.ndarray]:
    """float32 embeddings (N, D) and int64 labels (N,) of every image `loader` yields, in order."""
    import torch

    from imgrec.evaluation.inference import predict_batches

    features, labels = [], []

    def keep(outputs, batch_labels):
        features.append(outputs.flatten(1).float().cpu())
        labels.append(batch_labels.cpu())

    predict_batches(model, loader, keep)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def model_and_normalization(cfg: DictConfig, splits, device):
    """`ckpt_path`'s model, weights and normalisation when given; otherwise `model` with the dataset's."""
    from imgrec.evaluation.inference import load_trained

    if not cfg.ckpt_path:
        if not cfg.model.get("weights"):
            log.warning("model.weights is null: these are features of a randomly initialised network, a baseline "
                        "only. Set model.weights (pretrained) or ckpt_path (a network you trained)")
        model = build(cfg.model, in_channels=splits.channels, num_classes=len(splits.class_names))
        return model.to(device), splits.mean, splits.std, OmegaConf.select(cfg, "model._target_")
    trained = load_trained(cfg.ckpt_path, device)
    trained.task.check_served_by("features")
    if trained.channels != splits.channels:
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} takes {trained.channels}-channel images but dataset has "
                          f"{splits.channels}; set dataset.channels={trained.channels}")
    log.info(f"embedding with the model of {cfg.ckpt_path} (epoch {trained.state['epoch']})")
    return trained.model, trained.mean, trained.std, trained.state["config"]["model"]["_target_"]


def make_classifier(classifier_cfg: DictConfig):
    """Standardise the features, then classify; a classifier without probabilities (SVC) is calibrated
    (Platt scaling on internal folds), since the report needs them."""
    from sklearn.base import is_classifier
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = build(classifier_cfg)
    if not is_classifier(classifier):
        raise ImgrecError(f"classifier._target_={classifier_cfg._target_} is not a scikit-learn classifier; "
                          "use classifier=logistic, svc, linear_svc or random_forest, or another sklearn classifier class")
    if not hasattr(classifier, "predict_proba"):
        classifier = CalibratedClassifierCV(classifier, method="sigmoid", ensemble=False)
    return make_pipeline(StandardScaler(), classifier)


def cnn_features(cfg: DictConfig, splits, device) -> dict[str, np.ndarray]:
    """Each split's embeddings by `model` (or ckpt_path's) without its last Linear layer, and its labels."""
    from imgrec.data.loaders import make_loader
    from imgrec.models.checks import check_model_fits

    model, mean, std, target = model_and_normalization(cfg, splits, device)
    check_model_fits(model, OmegaConf.create({"_target_": target}),
                     [splits.channels, splits.image_size, splits.image_size], device)
    model = headless(model)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        loader = make_loader(getattr(splits, split), cfg.batch_size, mean, std, device, num_workers=cfg.num_workers)
        arrays[f"{split}_features"], arrays[f"{split}_labels"] = embed(model, loader)
    return arrays


def classical_features(method: dict, splits, seed: int):
    """Each split's hand-designed features (imgrec.classical), anything learnt fitted on train only, and the
    fitted method (to save for imgrec-predict)."""
    from imgrec.classical.methods import ClassicalFeatures

    features = ClassicalFeatures(method, seed).fit(splits.train)
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        arrays[f"{split}_features"] = features.transform(getattr(splits, split), split)
        arrays[f"{split}_labels"] = np.asarray(getattr(splits, split).labels, dtype=np.int64)
    features.forget_train_descriptors()
    return arrays, features


def extract_features(cfg: DictConfig) -> dict:
    """One method (features.npz and the classifier's test report in the run dir), or with `compare` several
    on the same split, each in a sub-folder, and one table; returns {'val_accuracy', 'test': report} or
    {'compare': rows}."""
    from imgrec.classical.methods import check_method
    from imgrec.evaluation.inference import inference_device
    from imgrec.evaluation.reports import record_dataset
    from imgrec.training.seeding import seed_everything

    check_tool_config(cfg)  # before anything is built
    resolve_checkpoint_shortcut(cfg)
    device = inference_device(cfg)
    make_classifier(cfg.classifier)  # a bad classifier fails before anything is embedded
    compared = compared_methods(cfg.get("compare"))
    methods = compared or [OmegaConf.to_container(cfg.method, resolve=True) if cfg.get("method") else {"name": "cnn"}]
    for method in methods:
        check_method(method)
    if cfg.dataset.get("task", "classification") != "classification":
        raise ImgrecError(f"imgrec-features fits classifiers on image classes; dataset "
                          f"{cfg.dataset._target_.rsplit('.', 1)[-1]} serves the {cfg.dataset.task} task")
    seed_everything(cfg.seed)
    splits = build_dataset(cfg.dataset, "classification")
    run_dir = Path(cfg.paths.output_dir)
    record_dataset(splits, run_dir, log)
    if not compared:
        return score_method(cfg, methods[0], splits, device, run_dir)
    rows = []
    for method in methods:
        log.info(f"---- method={method['name']}")
        summary = score_method(cfg, method, splits, device, run_dir / method["name"])["test"]
        rows.append({"method": method["name"], "accuracy": summary["accuracy"],
                     "macro_f1": summary["macro_avg"]["f1"], "feature_size": summary["feature_size"],
                     "feature_seconds": summary["feature_seconds"], "fit_seconds": summary["fit_seconds"]})
    write_comparison(rows, run_dir, f"{len(splits.train)} train / {len(splits.test)} test images, "
                                    f"{cfg.classifier._target_.rsplit('.', 1)[-1]}")
    return {"compare": rows}


def compared_methods(names) -> list[dict]:
    """compare=[hog,lbp,...]: each method's settings from its own file in configs/method/ (the shipped
    defaults; one method's settings are changed with method=... method.key=... instead)."""
    from imgrec.classical.methods import METHODS
    from imgrec.config import CONFIG_DIR

    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ImgrecError("compare=[] lists no method; name some, e.g. compare=[sift,hog,lbp], or leave compare out "
                          "to run one method (method=...)")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ImgrecError(f"compare={names}: {unknown[0]!r} is not a feature method; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ImgrecError(f"compare={names} names a method twice; list each once")
    return [OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "method" / f"{name}.yaml")) for name in names]


def write_comparison(rows: list[dict], run_dir: Path, described: str) -> None:
    """compare.csv, compare.md and compare.png (accuracy and macro F1 per method)."""
    from imgrec.evaluation.plots import bars_figure, save_figure
    from imgrec.evaluation.reports import csv_text, write_whole

    columns = ["method", "accuracy", "macro_f1", "feature_size", "feature_seconds", "fit_seconds"]
    write_whole(run_dir / "compare.csv", csv_text(columns, [[row[c] for c in columns] for row in rows]))
    lines = [f"Test split, {described}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |"
              for row in rows]
    write_whole(run_dir / "compare.md", "\n".join(lines) + "\n")
    save_figure(bars_figure([row["method"] for row in rows], {"accuracy": [row["accuracy"] for row in rows],
                                                              "macro F1": [row["macro_f1"] for row in rows]},
                            f"test split: {described}"), run_dir / "compare.png")
    log.info("\n".join(lines))


def score_method(cfg: DictConfig, method: dict, splits, device, run_dir: Path) -> dict:
    """Describe every image with `method`, fit the classifier on train, write features.npz and the test
    report in `run_dir`; returns {'val_accuracy', 'test': report summary}."""
    import torch

    from imgrec.evaluation.reports import write_report
    from imgrec.tasks.classification import ClassificationEvaluation, ClassificationTask

    run_dir.mkdir(parents=True, exist_ok=True)
    classifier = make_classifier(cfg.classifier)
    started = time.perf_counter()
    if method["name"] == "cnn":
        arrays, fitted = cnn_features(cfg, splits, device), None
    else:
        arrays, fitted = classical_features(method, splits, cfg.seed)
    feature_seconds = time.perf_counter() - started
    np.savez_compressed(run_dir / "features.npz", class_names=np.array(splits.class_names), **arrays)
    log.info(f"{arrays['train_features'].shape[1]}-dimensional features of "
             f"{sum(len(arrays[f'{s}_labels']) for s in SPLITS)} images saved to {run_dir / 'features.npz'}")

    started = time.perf_counter()
    classifier.fit(arrays["train_features"], arrays["train_labels"])
    fit_seconds = time.perf_counter() - started
    val_accuracy = float(classifier.score(arrays["val_features"], arrays["val_labels"]))
    log.info(f"{cfg.classifier._target_.rsplit('.', 1)[-1]} on the features: val accuracy {val_accuracy:.4f}")
    # columns for every class, in class order, even one the training split lacked
    probabilities = np.zeros((len(arrays["test_labels"]), len(splits.class_names)))
    probabilities[:, classifier.classes_] = classifier.predict_proba(arrays["test_features"])
    # the report reads logits; log-probabilities give the same softmax and argmax
    logits = torch.from_numpy(np.log(np.clip(probabilities, 1e-12, None))).float()
    task = ClassificationTask()  # the features' classifier is scored as a classification model is
    task.bind(splits.class_names, None)
    report = task.test_report(ClassificationEvaluation(logits, torch.from_numpy(arrays["test_labels"])),
                              getattr(splits.test, "paths", None))
    report.summary.update(method=method, classifier=cfg.classifier._target_, feature_seconds=round(feature_seconds, 3),
                          fit_seconds=round(fit_seconds, 3), feature_size=int(arrays["train_features"].shape[1]))
    write_report(report, run_dir, "test_report.json", log)
    if fitted is not None:  # imgrec-predict features_run=<run_dir> applies it to new images
        from imgrec.classical.saved_model import save_classical_model

        save_classical_model(run_dir, {"features": fitted, "classifier": classifier},
                             {"method": method, "classifier": cfg.classifier._target_, "class_names": splits.class_names,
                              "channels": splits.channels, "image_size": splits.image_size,
                              "test_accuracy": report.summary["accuracy"]})
    log.info(f"run saved in {run_dir.resolve()}")
    return {"val_accuracy": val_accuracy, "test": report.summary}


@hydra_command("features", task_name="features")
def main(cfg: DictConfig) -> float | None:
    result = run_command(extract_features, cfg)
    return result["test"]["scores"]["acc"] if "test" in result else max(row["accuracy"] for row in result["compare"])


if __name__ == "__main__":
    main()
