"""imgrec-predict: what a checkpoint says of new images: the top-k classes (classification), or a mask
of class ids and a colour overlay per image (segmentation)."""

import glob
import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config, resolve_checkpoint_shortcut
from imgrec.errors import ImgrecError
from imgrec.values import is_number

log = logging.getLogger("imgrec")


def collect_inputs(inputs: str) -> list[Path]:
    """A file, a folder (its image files, recursively) or a glob pattern -> sorted file paths."""
    from imgrec.data.images import IMAGE_EXTENSIONS

    if not inputs:
        raise ImgrecError("inputs is required: an image file, a folder of images, or a glob such as 'photos/*.jpg'")
    path = Path(str(inputs)).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        found = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not found and files and not any(p.suffix for p in files):  # images without extensions (the Yale faces)
            return files
        if not found:
            raise ImgrecError(f"inputs={inputs}: the folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return found
    if path.is_file():
        return [path]
    if any(char in str(inputs) for char in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise ImgrecError(f"inputs={inputs}: the pattern matches no files")
        return found
    raise ImgrecError(f"inputs={inputs}: no such file or folder")


def decode_inputs(paths: list[Path], channels: int, size: int):
    """uint8 images of every readable file, their paths, and (path, reason) for each unreadable one."""
    from imgrec.data.images import BadImage, decode_image

    images, readable, skipped = [], [], []
    for path in paths:
        try:
            images.append(decode_image(path, channels, size))
            readable.append(path)
        except BadImage as error:
            skipped.append((str(path), str(error)))
    return images, readable, skipped


def write_predictions(run_dir: Path, cfg: DictConfig, rows: list[dict], skipped: list, header: list[str], csv_row) -> Path:
    """predictions.json (every row, and the skipped files) or predictions.csv (`csv_row` of each row, and
    skipped.csv when files were skipped), each written whole."""
    from imgrec.evaluation.reports import csv_text, write_whole

    output = run_dir / f"predictions.{cfg.format}"
    if cfg.format == "json":
        write_whole(output, json.dumps({"predictions": rows, "skipped": [{"path": p, "reason": r} for p, r in skipped]},
                                       indent=2))
    else:
        write_whole(output, csv_text(header, [csv_row(row) for row in rows]))
        if skipped:
            write_whole(run_dir / "skipped.csv", csv_text(["path", "reason"], skipped))
    return output


def nothing_readable(paths: list[Path], skipped: list) -> ImgrecError:
    return ImgrecError(f"none of the {len(paths)} input file(s) could be read as an image; first: "
                       f"{skipped[0][0]}: {skipped[0][1]}")


def predict_images(cfg: DictConfig) -> dict:
    from imgrec.evaluation.inference import inference_device, load_trained

    check_tool_config(cfg)  # before anything is built
    resolve_checkpoint_shortcut(cfg)
    if cfg.format not in ("csv", "json"):
        raise ImgrecError(f"format={cfg.format!r} must be csv or json")
    if not isinstance(cfg.top_k, int) or cfg.top_k < 1:
        raise ImgrecError(f"top_k={cfg.top_k!r} must be a whole number >= 1")
    if not isinstance(cfg.tta, bool):
        raise ImgrecError(f"tta={cfg.tta!r} must be true or false")
    device = inference_device(cfg)
    paths = collect_inputs(cfg.inputs)
    if cfg.get("features_run"):
        if cfg.ckpt_path:
            raise ImgrecError("give ckpt_path=... (a trained network) or features_run=... (an imgrec-features run with a "
                              "classical method), not both")
        return predict_with_classical(cfg, paths)
    trained = load_trained(cfg.ckpt_path, device)
    trained.task.check_served_by("predict")
    return PREDICTORS[trained.task.predicts](cfg, trained, paths, device)


def predict_class_scores(cfg: DictConfig, trained, paths: list[Path], device) -> dict:
    """The top_k classes of each readable image, with their probabilities."""
    import torch

    from imgrec.checkpoint import stored_decision_threshold
    from imgrec.data.loaders import make_loader
    from imgrec.data.splits import ImageTensors
    from imgrec.evaluation.inference import predict_batches

    images, readable, skipped = decode_inputs(paths, trained.channels, trained.image_size)
    for path, reason in skipped:
        log.warning(f"skipped {path}: {reason}")
    if not images:
        raise nothing_readable(paths, skipped)
    top_k = min(cfg.top_k, len(trained.class_names))
    rows = []
    decision_threshold = stored_decision_threshold(trained.state) if len(trained.class_names) == 2 else None
    if decision_threshold is not None:
        log.info(f"decision: {trained.class_names[1]} when its probability is >= {decision_threshold:.4f} (chosen on "
                 "val by imgrec-eval threshold=auto, stored in the checkpoint)")

    calibration = trained.state.get("calibration")
    if calibration is not None:
        log.info(f"probabilities calibrated by {calibration.get('method')} (fitted on val by imgrec-eval calibration=..., "
                 "stored in the checkpoint)")

    def calibrated(logits):
        if calibration is None:
            return logits.float().softmax(dim=1)
        from imgrec.evaluation.calibration import apply_calibration

        return torch.from_numpy(apply_calibration(calibration, logits.float().cpu().numpy())).float().to(logits.device)

    def probabilities_of(batch):
        probabilities = calibrated(trained.model(batch))
        if cfg.tta:  # the mean with the mirror image: horizontal flips are label-preserving for most photos
            probabilities = (probabilities + calibrated(trained.model(batch.flip(-1)))) / 2
        return probabilities

    def keep(probabilities, _):
        values, indices = probabilities.topk(top_k, dim=1)
        for value_row, index_row, positive in zip(values.cpu().tolist(), indices.cpu().tolist(),
                                                   probabilities[:, -1].cpu().tolist()):
            rows.append({"path": str(readable[len(rows)]), "predictions": [
                {"class": trained.class_names[i], "probability": p} for i, p in zip(index_row, value_row)]})
            if decision_threshold is not None:
                rows[-1]["decision"] = trained.class_names[int(positive >= decision_threshold)]

    unlabelled = ImageTensors(torch.stack(images), torch.zeros(len(images), dtype=torch.int64))
    predict_batches(probabilities_of, make_loader(unlabelled, cfg.batch_size, trained.mean, trained.std, device), keep)

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = ["path", *(f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "prob"))]
    decided = [] if decision_threshold is None else ["decision"]
    output = write_predictions(run_dir, cfg, rows, skipped, header + decided, lambda row: [
        row["path"], *(v for p in row["predictions"] for v in (p["class"], f"{p['probability']:.6g}")),
        *(row[key] for key in decided)])
    log.info(f"{len(rows)} image(s) predicted, {len(skipped)} skipped; written to {output.resolve()}")
    return {"predictions": rows, "skipped": skipped, "output": output}


def predict_with_classical(cfg: DictConfig, paths: list[Path]) -> dict:
    """The top_k classes of each readable image by a classical model imgrec-features saved (signed) in
    `features_run`: the images described as its method describes them, then its classifier's probabilities."""
    import numpy as np
    import torch

    from imgrec.classical.saved_model import load_classical_model
    from imgrec.data.splits import ImageTensors

    model, manifest = load_classical_model(cfg.features_run)
    class_names = list(manifest["class_names"])
    images, readable, skipped = decode_inputs(paths, int(manifest["channels"]), int(manifest["image_size"]))
    for path, reason in skipped:
        log.warning(f"skipped {path}: {reason}")
    if not images:
        raise nothing_readable(paths, skipped)
    vectors = model["features"].transform(ImageTensors(torch.stack(images), torch.zeros(len(images), dtype=torch.int64)),
                                          "predict")
    probabilities = np.zeros((len(images), len(class_names)))
    classifier = model["classifier"]
    probabilities[:, classifier.classes_] = classifier.predict_proba(vectors)
    top_k = min(cfg.top_k, len(class_names))
    rows = [{"path": str(path), "predictions": [{"class": class_names[i], "probability": float(row[i])}
                                                for i in np.argsort(-row, kind="stable")[:top_k]]}
            for path, row in zip(readable, probabilities)]
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = ["path", *(f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "prob"))]
    output = write_predictions(run_dir, cfg, rows, skipped, header, lambda row: [
        row["path"], *(v for p in row["predictions"] for v in (p["class"], f"{p['probability']:.6g}"))])
    log.info(f"{len(rows)} image(s) predicted by {manifest['method']['name']} + "
             f"{manifest['classifier'].rsplit('.', 1)[-1]}, {len(skipped)} skipped; written to {output.resolve()}")
    return {"predictions": rows, "skipped": skipped, "output": output}


def unique_names(paths: list[Path]) -> list[str]:
    """A file name per input for the mask and overlay files: its stem, numbered when two share one."""
    names, seen = [], {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return names


def predict_masks(cfg: DictConfig, trained, paths: list[Path], device) -> dict:
    """For each readable image: masks/<name>.png (class ids, the image's own size), overlays/<name>.png,
    and a row of predictions.csv with the share of pixels of each class."""
    import numpy as np
    import torch
    from PIL import Image

    from imgrec.data.batching import Preprocess
    from imgrec.data.images import BadImage, load_pil, to_channels
    from imgrec.evaluation.sliding_window import full_size_logits
    from imgrec.tasks.segmentation import overlay

    if cfg.tile is not None and (not isinstance(cfg.tile, int) or cfg.tile < 16):
        raise ImgrecError(f"tile={cfg.tile!r} must be null (resize to the model's input) or a whole number >= 16")
    if not is_number(cfg.overlap) or not 0.0 <= cfg.overlap < 0.95:
        raise ImgrecError(f"overlap={cfg.overlap!r} must be a number in [0, 0.95), e.g. 0.25")
    run_dir = Path(cfg.paths.output_dir)
    for folder in ("masks", "overlays"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    preprocess = Preprocess(trained.mean, trained.std, device)
    # a model trained on images at their own size (dataset.image_size=null) predicts at each image's size
    trained_on = (trained.state.get("config") or {}).get("dataset") or {}
    model_size = None if "image_size" in trained_on and trained_on["image_size"] is None else trained.image_size
    names, rows, skipped = unique_names(paths), [], []
    for path, name in zip(paths, names):
        try:
            with load_pil(path) as image:
                pixels = np.asarray(to_channels(image, trained.channels), dtype=np.uint8)
        except BadImage as error:
            skipped.append((str(path), str(error)))
            log.warning(f"skipped {path}: {error}")
            continue
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        image_tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
        batch = preprocess(image_tensor[None].to(device))
        with torch.inference_mode():
            logits = full_size_logits(trained.model, batch, model_size, cfg.tile, cfg.overlap, flip=cfg.tta)
        mask = trained.task.predicted_classes(logits)[0].to(torch.uint8).cpu().numpy()
        Image.fromarray(mask, mode="L").save(run_dir / "masks" / f"{name}.png")
        Image.fromarray(overlay(image_tensor.numpy(), mask).transpose(1, 2, 0)).save(run_dir / "overlays" / f"{name}.png")
        shares = np.bincount(mask.ravel(), minlength=len(trained.class_names)) / mask.size
        rows.append({"path": str(path), "mask": f"masks/{name}.png", "overlay": f"overlays/{name}.png",
                     "class_shares": {c: float(v) for c, v in zip(trained.class_names, shares)}})
    if not rows:
        raise nothing_readable(paths, skipped)
    header = ["path", "mask", "overlay", *(f"share_{c}" for c in trained.class_names)]
    output = write_predictions(run_dir, cfg, rows, skipped, header, lambda r: [
        r["path"], r["mask"], r["overlay"], *(f"{v:.6g}" for v in r["class_shares"].values())])
    log.info(f"{len(rows)} mask(s) written to {(run_dir / 'masks').resolve()}, {len(skipped)} skipped")
    return {"predictions": rows, "skipped": skipped, "output": output}


def predict_embeddings(cfg: DictConfig, trained, paths: list[Path], device) -> dict:
    """Each readable image's unit embedding (faces cropped as the model was trained): embeddings.npy, float32
    (images, embedding_size), row i the i-th row of predictions.csv; skipped files in skipped.csv."""
    import io

    import numpy as np

    from imgrec.evaluation.reports import write_whole
    from imgrec.gallery.embedder import FaceEmbedder

    vectors, readable, skipped = FaceEmbedder(trained, device, cfg.batch_size).embed(paths)
    for path, reason in skipped:
        log.warning(f"skipped {path}: {reason}")
    if not len(vectors):
        raise nothing_readable(paths, skipped)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"path": str(path), "row": row} for row, path in enumerate(readable)]
    output = write_predictions(run_dir, cfg, rows, skipped, ["path", "row"], lambda row: [row["path"], row["row"]])
    buffer = io.BytesIO()
    np.save(buffer, vectors.astype(np.float32))
    write_whole(run_dir / "embeddings.npy", buffer.getvalue())
    log.info(f"{len(rows)} image(s) embedded, {len(skipped)} skipped; embeddings.npy and {output.name} in "
             f"{run_dir.resolve()} (cosine = dot product; imgrec-gallery matches images against enrolled people)")
    return {"predictions": rows, "skipped": skipped, "output": output, "embeddings": vectors}


def predict_boxes(cfg: DictConfig, trained, paths: list[Path], device) -> dict:
    """Each readable image's detections scoring at least the threshold: predictions.csv (a row per box) or
    .json, detections.json in COCO's format (images, categories, annotations with bbox [x, y, w, h] and
    score), and the image with its boxes drawn in drawn/."""
    import numpy as np
    import torch
    from PIL import Image

    from imgrec.checkpoint import stored_decision_threshold
    from imgrec.data.images import BadImage, load_pil
    from imgrec.evaluation.reports import write_whole
    from imgrec.tasks.detection import DetectionEvaluation, boxes_drawn

    if cfg.score_threshold is not None and (not is_number(cfg.score_threshold) or not 0 <= cfg.score_threshold <= 1):
        raise ImgrecError(f"score_threshold={cfg.score_threshold!r} must be null (the threshold imgrec-eval stored in "
                          "the checkpoint, else its task.score_threshold) or a number in [0, 1]")
    stored = None if cfg.score_threshold is not None else stored_decision_threshold(trained.state)
    threshold, source = next((value, source) for value, source in (
        (cfg.score_threshold, "score_threshold"), (stored, "chosen on val by imgrec-eval, stored in the checkpoint"),
        (trained.task.score_threshold, "the checkpoint's task.score_threshold")) if value is not None)
    log.info(f"score threshold {threshold:g} ({source})")
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / "drawn").mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(trained.mean, device=device).view(-1, 1, 1)
    std = torch.tensor(trained.std, device=device).view(-1, 1, 1)
    names, rows, skipped, images, detections = unique_names(paths), [], [], [], []
    for path, name in zip(paths, names):
        try:
            with load_pil(path) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (BadImage, OSError, ValueError) as error:
            skipped.append((str(path), str(error)))
            log.warning(f"skipped {path}: {error}")
            continue
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
        with torch.inference_mode():
            found = trained.model([(tensor.to(device).float() / 255 - mean) / std])[0]
        keep = (found["labels"] > 0) & (found["scores"] >= threshold)  # label 0: torchvision's background
        boxes = found["boxes"][keep].cpu().numpy()
        scores = found["scores"][keep].cpu().numpy()
        labels = (found["labels"][keep] - 1).cpu().numpy()
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": str(path), "width": int(tensor.shape[2]),
                       "height": int(tensor.shape[1])})
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            rows.append({"path": str(path), "class": trained.class_names[label], "score": score,
                         "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3]})
            detections.append({"id": len(detections) + 1, "image_id": image_id, "category_id": label + 1,
                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
        shown = DetectionEvaluation([{"boxes": boxes, "scores": scores, "labels": labels}],
                                    [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}], trained.class_names, 0.0)
        picture = boxes_drawn(tensor.numpy()[None], shown, trained.class_names, 0.0)[0]
        Image.fromarray(picture.transpose(1, 2, 0)).save(run_dir / "drawn" / f"{name}.png")
    if not images:
        raise nothing_readable(paths, skipped)
    header = ["path", "class", "score", "x1", "y1", "x2", "y2"]
    output = write_predictions(run_dir, cfg, rows, skipped, header, lambda r: [
        r["path"], r["class"], f"{r['score']:.6g}", *(f"{r[k]:.2f}" for k in ("x1", "y1", "x2", "y2"))])
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(trained.class_names)]
    write_whole(run_dir / "detections.json", json.dumps({"images": images, "categories": categories,
                                                         "annotations": detections}, indent=1))
    log.info(f"{len(rows)} box(es) scoring >= {threshold:g} in {len(images)} image(s), {len(skipped)} skipped; "
             f"{output.name}, detections.json (COCO) and drawn/ in {run_dir.resolve()}")
    return {"predictions": rows, "skipped": skipped, "output": output, "images": images}


PREDICTORS = {"class_scores": predict_class_scores, "masks": predict_masks,  # by Task.predicts
              "embeddings": predict_embeddings, "boxes": predict_boxes}


@hydra_command("predict", task_name="predict")
def main(cfg: DictConfig) -> None:
    run_command(predict_images, cfg)


if __name__ == "__main__":
    main()
