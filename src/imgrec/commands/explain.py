"""imgrec-explain: where in each image a checkpoint found its decision: Grad-CAM, Grad-CAM++ and integrated
gradients maps of the predicted class (and of a chosen one) laid over the image, as pictures and a table."""

import logging
from pathlib import Path

from omegaconf import DictConfig

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config, resolve_checkpoint_shortcut
from imgrec.errors import ImgrecError
from imgrec.values import as_list, is_number, is_whole

log = logging.getLogger("imgrec")
METHOD_TITLES = {"gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++", "integrated_gradients": "integrated gradients"}
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")
HEADER = ["path", "method", "layer", "target_class", "target_index", "probability", "predicted_class",
          "predicted_probability", *(f"mass_{q}" for q in QUADRANTS), "peak_row", "peak_col", "picture"]


def check_settings(cfg: DictConfig) -> list[str]:
    """The methods asked for, every setting checked before the checkpoint is read."""
    from imgrec.explain.attributions import BASELINES, METHODS

    methods = as_list(cfg.methods, "methods", "methods=[gradcam,integrated_gradients]")
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise ImgrecError(f"methods={methods} must be a non-empty list of {', '.join(METHODS)}, "
                          "e.g. methods=[gradcam,integrated_gradients]")
    if not is_number(cfg.alpha) or not 0 <= cfg.alpha <= 1:
        raise ImgrecError(f"alpha={cfg.alpha!r} must be a number in [0, 1] (how strongly the map covers the image)")
    if not is_whole(cfg.ig_steps, 2):
        raise ImgrecError(f"ig_steps={cfg.ig_steps!r} must be a whole number >= 2")
    if cfg.ig_baseline not in BASELINES:
        raise ImgrecError(f"ig_baseline={cfg.ig_baseline!r} must be one of {', '.join(BASELINES)}")
    if not is_whole(cfg.shown_images, 0):
        raise ImgrecError(f"shown_images={cfg.shown_images!r} must be a whole number >= 0")
    if cfg.layer is None or str(cfg.layer) == "":
        raise ImgrecError("layer must be auto or a module name such as layer4 (imgrec-explain lists them when unsure)")
    return methods


def refuse_colour_for_grey(paths: list[Path], channels: int) -> None:
    """A colour file given to a grey model: its map would explain a grey copy nobody looked at. Grey files
    for a colour model are fine (the copy into three channels loses nothing), as is grey saved as RGB(A)."""
    from imgrec.data.images import is_colour

    if channels != 1:
        return
    for path in paths:
        if is_colour(path):
            raise ImgrecError(f"{path} is a colour image and the checkpoint takes 1-channel (grey) images; convert "
                              "it to grey first if its grey version is what you want explained")


def explain_images(cfg: DictConfig) -> dict:
    import numpy as np

    from imgrec.commands.predict import collect_inputs, decode_inputs, nothing_readable, unique_names
    from imgrec.evaluation.figures import to_file
    from imgrec.evaluation.inference import inference_device, load_trained
    from imgrec.evaluation.reports import csv_text, write_whole
    from imgrec.explain.attributions import LAYER_METHODS, attribution, baseline_image
    from imgrec.explain.overlays import as_rgb, overlay
    from imgrec.explain.targets import EXPLAINED, chosen_class, scores_of
    from imgrec.robustness.attacks import PixelModel
    from imgrec.tasks.base import ImageGridFigure

    check_tool_config(cfg)
    resolve_checkpoint_shortcut(cfg)
    methods = check_settings(cfg)
    device = inference_device(cfg)
    paths = collect_inputs(cfg.inputs)
    trained = load_trained(cfg.ckpt_path, device)
    task = trained.task
    if task.predicts not in EXPLAINED:
        raise ImgrecError(f"ckpt_path {cfg.ckpt_path} was trained for the {task.name} task, which gives no class "
                          "score to explain; imgrec-explain takes classification and segmentation checkpoints")
    chosen = chosen_class(cfg.target, trained.class_names)
    refuse_colour_for_grey(paths, trained.channels)
    images, readable, skipped = decode_inputs(paths, trained.channels, trained.image_size)
    for path, reason in skipped:
        log.warning(f"skipped {path}: {reason}")
    if not images:
        raise nothing_readable(paths, skipped)

    model = PixelModel(trained.model, trained.mean, trained.std).to(device).eval()
    layer = None
    if any(method in LAYER_METHODS for method in methods):
        layer = chosen_layer(cfg.layer, trained, images[0], model)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    names = trained.class_names
    rows, grid_tiles, grid_captions = [], [], []
    for number, (image, path, name) in enumerate(zip(images, readable, unique_names(readable))):
        pixels = image[None].float().div(255).to(device)
        scores = scores_of(model, pixels, task.predicts, task.predicted_classes)
        targets = [scores.predicted] + ([chosen] if chosen is not None else [])
        baseline = baseline_image(cfg.ig_baseline, pixels, trained.mean)
        original = as_rgb(image.numpy())
        tiles, captions = [original], [path.name]
        for method in methods:
            maps = {}
            for target in dict.fromkeys(targets):
                maps[target] = attribution(method, scores.scores, pixels, target,
                                           layer.module if method in LAYER_METHODS else None, baseline,
                                           cfg.ig_steps, cfg.batch_size)
                rows.append(table_row(path, method, layer.name if method in LAYER_METHODS else "", target,
                                      scores, names, maps[target], f"{name}_{method}.png"))
            method_tiles = [overlay(image.numpy(), maps[target], cfg.alpha) for target in targets]
            method_captions = [f"{METHOD_TITLES[method]}\n{'pred' if target == scores.predicted else 'class'} "
                               f"{names[target]} ({scores.probabilities[target]:.2f})" for target in targets]
            where = f" at {layer.name}" if method in LAYER_METHODS else ""
            to_file(ImageGridFigure(f"{name}_{method}", np.stack([original, *method_tiles]),
                                    [path.name, *method_captions], f"{METHOD_TITLES[method]}{where}", max_side=256,
                                    columns=1 + len(method_tiles)), run_dir)
            tiles += method_tiles
            captions += method_captions
        if number < cfg.shown_images:
            grid_tiles += tiles
            grid_captions += captions
    shown = min(len(readable), cfg.shown_images)
    if shown:
        to_file(ImageGridFigure("explanations", np.stack(grid_tiles), grid_captions,
                                f"{shown} of {len(readable)} images: " + " | ".join(
                                    ["image", *(METHOD_TITLES[m] for m in methods)]), columns=len(tiles)), run_dir)
    write_whole(run_dir / "explanations.csv", csv_text(HEADER, rows))
    if skipped:
        write_whole(run_dir / "skipped.csv", csv_text(["path", "reason"], skipped))
    log.info(f"{len(readable)} image(s) explained ({', '.join(methods)}), {len(skipped)} skipped; written to "
             f"{run_dir.resolve()}")
    return {"layer": layer.name if layer else None, "rows": [dict(zip(HEADER, row)) for row in rows],
            "skipped": skipped, "output": run_dir}


def chosen_layer(setting, trained, image, model):
    """The layer Grad-CAM reads: layer=auto's choice for this model, or the one named."""
    from imgrec.explain.layers import automatic_layer, named_layer

    example = (image[None].float().div(255).to(model.mean.device) - model.mean) / model.std
    if str(setting) == "auto":
        layer = automatic_layer(trained.model, example, per_pixel=trained.task.spatial_output)
    else:
        layer = named_layer(trained.model, example, str(setting))
    channels, height, width = layer.shape
    log.info(f"Grad-CAM reads layer {layer.name} ({type(layer.module).__name__}, {channels} channels of "
             f"{height}x{width}){' chosen automatically' if str(setting) == 'auto' else ''}")
    if not layer.spatial:
        log.warning(f"layer {layer.name} gives a {height}x{width} map: its Grad-CAM is the same everywhere; choose an "
                    "earlier layer")
    return layer


def table_row(path: Path, method: str, layer_name: str, target: int, scores, names: list[str], found, picture: str):
    from imgrec.explain.attributions import mass_by_quadrant, peak

    mass = mass_by_quadrant(found)
    if mass is None:
        log.warning(f"{path.name}: the {method} map of {names[target]} has no positive attribution")
    row, column = peak(found)
    return [str(path), method, layer_name, names[target], target, f"{scores.probabilities[target]:.6g}",
            names[scores.predicted], f"{scores.probabilities[scores.predicted]:.6g}",
            *(f"{mass[q]:.6g}" if mass else "" for q in QUADRANTS), row, column, picture]


@hydra_command("explain", task_name="explain")
def main(cfg: DictConfig) -> None:
    run_command(explain_images, cfg)


if __name__ == "__main__":
    main()
