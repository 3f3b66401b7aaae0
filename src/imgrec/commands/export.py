"""imgrec-export: a checkpoint's model as safetensors, TorchScript or ONNX, with a JSON of what it
expects, each export checked against the PyTorch model on a batch before it is kept."""

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config, resolve_checkpoint_shortcut
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
TOLERANCE = 1e-4


def write_safetensors(trained, example, path: Path):
    """Weights only; loading them back never runs code. Returns logits of the reloaded model."""
    from safetensors.torch import load_file, save_file

    from imgrec.evaluation.inference import rebuild_model

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "imgrec", "class_names": json.dumps(trained.class_names)})
    # a fresh model from the architecture config, as a user would rebuild it
    reloaded = rebuild_model(trained.state["config"]["model"], trained.channels,
                             trained.task.num_outputs(len(trained.class_names)), load_file(str(path)), trained.task).eval()
    return reloaded(example.cpu())


def write_torchscript(trained, example, path: Path):
    import warnings

    import torch

    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what many servers load
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(trained.model.cpu(), example.cpu())
        torch.jit.save(traced, str(path))
        return torch.jit.load(str(path), map_location="cpu")(example.cpu())


def write_onnx(trained, example, path: Path):
    """The graph with a dynamic batch dimension (and, for per-pixel outputs, dynamic height and width); checked
    with onnxruntime when it is installed."""
    import torch

    for name in ("onnxscript", "onnx_ir", "torch.onnx"):  # their INFO lines narrate every graph pass
        logging.getLogger(name).setLevel(logging.WARNING)
    dynamic = {0: torch.export.Dim("batch", min=1, max=4096)}
    if trained.task.spatial_output:  # a fully convolutional model takes any image size
        dynamic.update({2: torch.export.Dim("height", min=8, max=8192), 3: torch.export.Dim("width", min=8, max=8192)})
    try:
        torch.onnx.export(trained.model.cpu(), (example.cpu(),), str(path), dynamo=True, input_names=["images"],
                          output_names=["logits"], dynamic_shapes=(dynamic,), external_data=False,
                          verbose=False)
    except ImportError as error:
        raise ImgrecError(f'format=onnx needs the onnx extra: pip install -e ".[onnx]" ({error})') from error
    except Exception as error:  # torch.export refuses some graphs with dynamic sizes
        raise ImgrecError(f"this model could not be exported to ONNX: {str(error).splitlines()[0]}; export it as "
                          "safetensors or torchscript") from error
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed, so the ONNX file was not checked against PyTorch; "
                    'pip install -e ".[onnx]" to check it')
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if trained.task.spatial_output:  # a size the trace did not see: odd, and not a multiple of any stride
        height, width = example.shape[-2:]
        other = torch.randn(1, example.shape[1], height + 7, width + 13, generator=torch.Generator().manual_seed(1))
        try:
            difference = float((torch.from_numpy(session.run(["logits"], {"images": other.numpy()})[0])
                                - trained.model(other).float()).abs().max())
        except Exception as error:  # onnxruntime's own errors
            difference, reason = float("nan"), str(error).splitlines()[0]
        else:
            reason = f"it differs from PyTorch by {difference:.3g}"
        if not difference < TOLERANCE:
            raise ImgrecError(f"the ONNX export fails on a {height + 7}x{width + 13} image ({reason}), so it does "
                              "not take any height and width; export it as safetensors or torchscript")
    return torch.from_numpy(session.run(["logits"], {"images": example.cpu().numpy()})[0])


WRITERS = {"safetensors": write_safetensors, "torchscript": write_torchscript, "onnx": write_onnx}


def export_checkpoint(cfg: DictConfig) -> dict:
    import numpy as np
    import torch

    from imgrec.evaluation.inference import inference_device, load_trained

    check_tool_config(cfg)  # before anything is built
    resolve_checkpoint_shortcut(cfg)
    if cfg.format not in WRITERS:
        raise ImgrecError(f"format={cfg.format!r} must be one of {', '.join(WRITERS)}")
    inference_device(cfg)  # checks check_batch_size and num_threads; exports are made on the CPU
    trained = load_trained(cfg.ckpt_path, torch.device("cpu"))
    trained.task.check_served_by("export")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"model{SUFFIXES[cfg.format]}"
    if trained.task.predicts == "boxes":
        return export_detector(cfg, trained, path)
    calibration = trained.state.get("calibration")
    in_graph = calibration is not None and calibration.get("method") == "temperature" and cfg.format != "safetensors"
    if in_graph:
        from imgrec.evaluation.calibration import apply_calibration
        from imgrec.evaluation.inference import TemperatureScaled

        apply_calibration(calibration, np.zeros((1, len(trained.class_names))))  # a damaged stored one is named here
        # the graph divides its logits by the fitted temperature: softmax of its output is the calibrated probability
        trained.model = TemperatureScaled(trained.model, calibration["temperature"]).eval()
    example = torch.randn(cfg.check_batch_size, *trained.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.model(example)
        try:
            exported = WRITERS[cfg.format](trained, example, path)
        except BaseException:  # a full disk, an exporter error: never leave a half-written model file
            path.unlink(missing_ok=True)
            raise
    difference = None if exported is None else float((exported.float() - expected.float()).abs().max())
    if difference is not None and not difference < TOLERANCE:  # also catches NaN
        path.unlink(missing_ok=True)
        raise ImgrecError(f"the {cfg.format} export differs from the PyTorch model by {difference:.3g} (more than "
                          f"{TOLERANCE}) on a check batch, so it was not kept")
    normalization = {"mean": trained.mean, "std": trained.std}
    metadata = {
        "format": cfg.format, "file": path.name, "class_names": trained.class_names, "input_shape": trained.input_shape,
        "input": "float32 (batch, channels, height, width): pixels / 255, then (x - mean) / std per channel",
        "output": trained.task.output_description,
        "task": trained.task.name,
        "normalization": normalization,
        # rebuildable as it stands: the sizes the network was built with, whatever the config left to the data
        "model_config": {**trained.state["config"]["model"], "in_channels": trained.channels,
                         "num_classes": trained.task.num_outputs(len(trained.class_names))},
        "checkpoint": str(cfg.ckpt_path), "max_abs_difference": difference,
    }
    if calibration is not None:
        metadata["calibration"] = calibration
        metadata["calibration_applied"] = (
            "in the graph: its logits are divided by the temperature" if in_graph
            else "not in the file: apply it to softmax(logits) as imgrec.evaluation.calibration.apply_calibration does")
    (run_dir / "model.json").write_text(json.dumps(metadata, indent=2))
    checked = "not checked" if difference is None else f"max |logit difference| {difference:.2e}"
    log.info(f"exported {path.resolve()} ({checked}) and model.json")
    return metadata


def export_detector(cfg: DictConfig, trained, path: Path) -> dict:
    """A detector's export (imgrec.evaluation.detector_export), checked on check_batch_size images of different
    sizes, and its model.json."""
    from imgrec.evaluation.detector_export import write_detector

    try:
        check = write_detector(trained, cfg.format, path, cfg.check_batch_size)
    except BaseException:  # a full disk, an exporter error, a failed check: never leave a model file behind
        path.unlink(missing_ok=True)
        raise
    metadata = {
        "format": cfg.format, "file": path.name, "class_names": trained.class_names, "task": trained.task.name,
        "input": "float32 images (3, height, width) of any size: pixels / 255, then (x - mean) / std per channel; "
                 "the model resizes each as it was trained (model_config min_size / max_size)",
        **check, "normalization": {"mean": trained.mean, "std": trained.std},
        "model_config": {**trained.state["config"]["model"], "in_channels": trained.channels,
                         "num_classes": trained.task.num_outputs(len(trained.class_names))},
        "checkpoint": str(cfg.ckpt_path),
    }
    (path.parent / "model.json").write_text(json.dumps(metadata, indent=2))
    log.info(f"exported {path.resolve()} (matches PyTorch on {len(check['check_images'])} images, "
             f"{check['detections_compared']} detections) and model.json")
    return metadata


@hydra_command("export", task_name="export")
def main(cfg: DictConfig) -> None:
    run_command(export_checkpoint, cfg)


if __name__ == "__main__":
    main()
