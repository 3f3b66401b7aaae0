"""Drawing images from a trained generator, and writing them as an image folder with a manifest of how
they were made (what dataset.synthetic reads back)."""

import json
import re
import time
from pathlib import Path

import torch
from torch import nn

from imgrec.errors import ImgrecError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "imgrec-gan-samples"


def generate(generator: nn.Module, noise: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, C, H, W) on the CPU from `noise` and `labels`, in batches; tanh's [-1, 1] mapped
    to 0..255 as the real images were mapped to [-1, 1]."""
    generator.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            images = generator(noise[start:start + batch_size].to(device), labels[start:start + batch_size].to(device))
            parts.append(((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def draw(generator: nn.Module, per_class: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` images of every class and their labels, class by class; the noise from `seed` alone."""
    labels = torch.arange(generator.num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    return generate(generator, noise, labels, device), labels


def folder_name(class_name: str) -> str:
    """A class name as a folder name on every file system ('T-shirt/top' -> 'T-shirt_top')."""
    name = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", class_name).strip(" .")
    return name or "_"


def class_folders(class_names: list[str]) -> list[str]:
    """One folder per class, distinct even where two names clean up to the same text."""
    folders: list[str] = []
    for index, name in enumerate(class_names):
        folder = folder_name(name)
        folders.append(folder if folder not in folders else f"{folder}_{index}")
    return folders


def write_samples(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], out: Path,
                  provenance: dict) -> dict:
    """PNG files `out/<class folder>/<index>.png` and `out/manifest.json`, written last: a folder without a
    manifest is an interrupted write, which dataset.synthetic refuses."""
    from PIL import Image

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ImgrecError(f"out={out} is not empty; give a new folder (samples are never written over others)")
    folders = class_folders(class_names)
    counts = {}
    for index, folder in enumerate(folders):
        chosen = images[labels == index]
        (out / folder).mkdir(parents=True, exist_ok=True)
        for number, image in enumerate(chosen):
            pixels = image.permute(1, 2, 0).numpy()
            picture = Image.fromarray(pixels[:, :, 0], mode="L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")
            picture.save(out / folder / f"{number:05d}.png")
        counts[folder] = int(len(chosen))
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "class_names": list(class_names),
        "folders": folders,
        "counts": counts,
        "channels": int(images.shape[1]),
        "image_size": int(images.shape[-1]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **provenance,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
