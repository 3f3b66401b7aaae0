"""imgrec-show-augment: a grid of augmented training images (segmentation masks drawn over them), as a
PNG and in TensorBoard."""

import logging
from pathlib import Path

from omegaconf import DictConfig

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


def augment_grid(images, augment, repeats: int, masks=None):
    """uint8 (N*(repeats+1), C, H, W): each image followed by `repeats` augmented versions of it. With
    segmentation `masks`, every version is drawn with its (equally moved) mask over it, in RGB."""
    import numpy as np
    import torch

    from imgrec.tasks.segmentation import overlay

    versions = []
    for repeat in range(repeats + 1):
        if repeat == 0 or augment is None:
            moved, moved_masks = images, masks
        elif masks is None:
            moved, moved_masks = augment(images), None
        else:
            moved, moved_masks = augment.joint(images, masks)
        moved = moved.float().round().clamp(0, 255).to(torch.uint8)
        if moved_masks is not None:
            moved = torch.from_numpy(np.stack([overlay(image, mask) for image, mask in
                                               zip(moved.numpy(), moved_masks.numpy())]))
        versions.append(moved)
    return torch.stack(versions, dim=1).flatten(0, 1)


def show_augment(cfg: DictConfig) -> Path:
    from PIL import Image
    from torchvision.utils import make_grid

    from imgrec.data.augment import build_augment
    from imgrec.training.seeding import seed_everything

    check_tool_config(cfg)  # before anything is built
    for key in ("num_images", "repeats"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ImgrecError(f"{key}={cfg[key]!r} must be a whole number >= 1")
    seed_everything(cfg.seed)
    augment = build_augment(cfg.augment, masks=cfg.dataset.get("task") == "segmentation")
    splits = build_dataset(cfg.dataset, cfg.dataset.get("task", "classification"))  # any task's images
    images = splits.train.images[: cfg.num_images]
    masks = splits.train.labels[: cfg.num_images] if splits.train.labels.ndim == 3 else None
    grid = make_grid(augment_grid(images, augment, cfg.repeats, masks), nrow=cfg.repeats + 1, padding=2, pad_value=128)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "augment_grid.png"
    pixels = grid.permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    if cfg.get("logger"):
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir / "tensorboard")) as writer:
            writer.add_image("augment/grid", grid, global_step=0)
    log.info(f"augmented images ({'none' if augment is None else len(augment.transforms)} transforms): {path.resolve()}")
    if augment is None:
        log.warning("augment lists no transforms: every column shows the original")
    return path


@hydra_command("show_augment", task_name="show_augment")
def main(cfg: DictConfig) -> None:
    run_command(show_augment, cfg)


if __name__ == "__main__":
    main()
