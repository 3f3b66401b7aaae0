"""A trained detector as safetensors, TorchScript or ONNX, each checked against PyTorch on images of several
sizes: every box the export finds must have a PyTorch twin (same label, score within 1e-4, corners within
0.1 px) and the other way round. Detections are sets, so they are matched, not compared row by row (equal
scores may come out in another order).

What each file takes and returns (model.json says the same):
- safetensors: the weights; rebuilt with imgrec.models.detectors.torchvision_detector from model.json's config.
- torchscript: torch.jit.script of torchvision's detector: `losses, detections = model([image, ...])`.
- onnx: one image (3, height, width) of any size -> boxes (n, 4), labels (n,), scores (n,), through the
  TorchScript-based exporter (torch.export cannot follow torchvision's detectors yet); opset 17.
"""

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
# ONNX Runtime's convolutions round differently from PyTorch's, and box deltas scale that by the box size: a
# barely trained Faster R-CNN's corner came out 0.021 px off on a 64 px image. A tenth of a pixel moves a
# 10 px box's IoU by under 0.02 and still catches a wrong graph.
BOX_TOLERANCE, SCORE_TOLERANCE = 0.1, 1e-4
ONNX_OPSET = 17
OUTPUTS = {
    "safetensors": "torchvision_detector(**model_config) with these weights, in eval mode: a list of dicts per image",
    "torchscript": "losses, detections = model([image, ...]); detections: a dict per image",
    "onnx": "boxes (n, 4), labels (n,), scores (n,) for the one image given",
}
LABELS = ("boxes are x1, y1, x2, y2 in the given image's pixels; labels are class index + 1 (0 is torchvision's "
          "background, never a class); detections scoring under the model's score_threshold are left out")


class SingleImageDetector(nn.Module):
    """One image in, three tensors out: the shape ONNX graphs take (torchvision's detectors take lists)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor):
        found = self.detector([image])[0]
        return found["boxes"], found["labels"], found["scores"]


def check_images(detector: nn.Module, count: int) -> list[torch.Tensor]:
    """Seeded images of up to `count` sizes that the detector takes without rescaling (shorter side
    min_size, longer side within max_size; SSDlite's fixed size): rescaled, the exported graph computes
    the scale in float32 where PyTorch uses float64, and a 200 -> 320 px image comes out 319 px wide there,
    moving boxes by under a pixel. The check compares the networks, not that rounding (see EXPORT_NOTE)."""
    transform = detector.transform
    if getattr(transform, "fixed_size", None):
        height, width = transform.fixed_size
        sizes = [(height, width)] * 4
    else:
        short, longest = int(transform.min_size[-1]), int(transform.max_size)
        longer = [min(longest, short * 5 // 4), min(longest, short * 3 // 2)]
        sizes = [(short, short), (short, longer[0]), (longer[1], short), (short, short)]
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, height, width, generator=generator) for height, width in sizes[:max(1, count)]]


EXPORT_NOTE = ("images whose shorter side is min_size (within max_size) give the same boxes as PyTorch; others are "
               "rescaled with a float32 scale where PyTorch uses float64, which can move boxes by under a pixel")


def unmatched(expected: dict, found: dict) -> str | None:
    """Why two sets of detections differ, or None when each box has a twin in the other set."""
    if len(expected["boxes"]) != len(found["boxes"]):
        return f"{len(found['boxes'])} detections instead of PyTorch's {len(expected['boxes'])}"
    twins = (((expected["boxes"][:, None] - found["boxes"][None]).abs().amax(-1) < BOX_TOLERANCE)
             & (expected["labels"][:, None] == found["labels"][None])
             & ((expected["scores"][:, None] - found["scores"][None]).abs() < SCORE_TOLERANCE))
    missing = max(int((~twins.any(1)).sum()), int((~twins.any(0)).sum()))
    if not missing:
        return None
    if (~twins.any(1)).any():  # describe one detection without a twin, from whichever side has it
        index = int((~twins.any(1)).nonzero()[0])
        side, lonely, nearest_in = "PyTorch's", expected, found
    else:
        index = int((~twins.any(0)).nonzero()[0])
        side, lonely, nearest_in = "the export's", found, expected
    nearest = int((lonely["boxes"][index] - nearest_in["boxes"]).abs().amax(-1).argmin())
    return (f"{missing} detection(s) without a PyTorch twin; {side} {lonely['boxes'][index].tolist()} (label "
            f"{int(lonely['labels'][index])}, score {float(lonely['scores'][index]):.5f}) is nearest to "
            f"{nearest_in['boxes'][nearest].tolist()} (label {int(nearest_in['labels'][nearest])}, score "
            f"{float(nearest_in['scores'][nearest]):.5f})")


def write_detector(trained, export_format: str, path: Path, count: int) -> dict:
    """Write the export and check it; returns what model.json records of the check."""
    detector = trained.model.detector.cpu().eval()
    images = check_images(detector, count)
    with torch.no_grad():
        expected = [detector([image])[0] for image in images]
        run = {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx}[export_format](trained, path)
        found = [run(image) for image in images]
    for image, want, got in zip(images, expected, found):
        reason = unmatched(want, {key: torch.as_tensor(value) for key, value in got.items()})
        if reason:
            raise ImgrecError(f"the {export_format} export of {trained.state['config']['model'].get('name')} differs "
                              f"from PyTorch on a {image.shape[1]}x{image.shape[2]} image ({reason}), so it was not kept; "
                              "export it as safetensors (weights) instead")
    compared = sum(len(want["boxes"]) for want in expected)
    if compared == 0:
        log.warning("the check images (noise) gave no detections, so only the empty outputs were compared")
    return {"check_images": [list(image.shape) for image in images], "detections_compared": compared,
            "output": OUTPUTS[export_format], "detections": LABELS, "sizes": EXPORT_NOTE}


def _safetensors(trained, path: Path):
    from safetensors.torch import load_file, save_file

    from imgrec.evaluation.inference import rebuild_model

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in trained.model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "imgrec", "task": "detection"})
    rebuilt = rebuild_model(trained.state["config"]["model"], trained.channels,
                            trained.task.num_outputs(len(trained.class_names)), load_file(str(path)), trained.task)
    detector = rebuilt.detector.eval()
    return lambda image: detector([image])[0]


def _torchscript(trained, path: Path):
    with warnings.catch_warnings():  # TorchScript is deprecated upstream but still what many servers load
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(trained.model.detector), str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda image: loaded([image])[1][0]


def _onnx(trained, path: Path):
    try:
        import onnxruntime
    except ImportError as error:
        raise ImgrecError(f'format=onnx needs the onnx extra: pip install -e ".[onnx]" ({error})') from error
    example = check_images(trained.model.detector, 1)[0]
    try:
        with warnings.catch_warnings():  # the exporter narrates every traced branch as a warning
            warnings.simplefilter("ignore")
            torch.onnx.export(SingleImageDetector(trained.model.detector).eval(), (example,), str(path), dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["image"], output_names=["boxes", "labels", "scores"],
                              dynamic_axes={"image": {1: "height", 2: "width"}})
    except Exception as error:
        raise ImgrecError(f"this detector could not be exported to ONNX: {str(error).splitlines()[0]}; export it as "
                          "safetensors or torchscript") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(image):
        boxes, labels, scores = session.run(["boxes", "labels", "scores"], {"image": image.numpy()})
        return {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels), "scores": torch.from_numpy(scores)}
    return run
