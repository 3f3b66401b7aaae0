"""Training-split options applied after a dataset is loaded: k images per class, and generated images mixed in."""

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from imgrec.data.splits import FileSplit, ImageTensors, Splits, normalization_stats
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "imgrec-gan-samples"
MANIFEST_VERSION = 1
SYNTHETIC_KEYS = ("root", "ratio")
# each option draws from its own stream of split_seed, so changing one never changes what the other picks
KEEP_STREAM, SYNTHETIC_STREAM = 0, 1


# the dataset settings that decide which images are training images: a GAN's samples may be mixed only into
# a run whose split is the one the GAN trained on, or the GAN may have learnt its validation or test images
SPLIT_KEYS = ("_target_", "name", "root", "file", "split_seed", "val_fraction", "test_fraction", "image_size",
              "channels")


def split_record(settings: dict) -> dict:
    """What decides a dataset's training split, from its (resolved) settings: stored with a GAN and its samples."""
    record = {key: settings.get(key) for key in (*SPLIT_KEYS, "train_per_class") if key in settings}
    for key in ("root", "file"):
        if isinstance(record.get(key), str) and "://" not in record[key]:
            record[key] = str(Path(record[key]).expanduser().absolute())
    return record


def check_same_split(generated_from: dict | None, settings: dict | None, root: Path) -> None:
    """Refuse samples of a GAN trained on another split of the data; warn when it saw more real training images."""
    if settings is None:
        return
    if not isinstance(generated_from, dict):
        log.warning(f"dataset.synthetic.root={root}: its manifest does not say which training split its GAN saw; "
                    "make sure that GAN never saw this run's validation or test images")
        return
    here = split_record(settings)
    differing = [key for key in SPLIT_KEYS if key in generated_from and key in here and generated_from[key] != here[key]]
    if differing:
        there = ", ".join(f"{key}={generated_from[key]!r}" for key in differing)
        mine = " ".join(f"dataset.{key}={here[key]}" for key in differing if key != "_target_")
        raise ImgrecError(f"dataset.synthetic.root={root} was drawn from a GAN trained on another split of the data "
                          f"({there}; this run has {', '.join(f'{k}={here[k]!r}' for k in differing)}): its training "
                          f"images may be this run's validation or test images. Train the GAN with this run's dataset "
                          f"settings (imgrec-gan dataset=... {mine}) and sample again")
    gan_k, k = generated_from.get("train_per_class"), here.get("train_per_class")
    if k is not None and (gan_k is None or gan_k > k):
        log.warning(f"dataset.synthetic.root={root}: its GAN trained on {gan_k or 'all'} real images per class, this run "
                    f"on {k}: the generated images carry real training images this run does not otherwise use")


def apply_training_options(splits, train_per_class, synthetic, split_seed: int, normalize: str, mean=None,
                           std=None, settings: dict | None = None):
    """`splits` with dataset.train_per_class, then dataset.synthetic, applied to its training split only."""
    ratio, root = check_synthetic_setting(synthetic)
    if train_per_class is None and ratio == 0.0:
        if root is not None:
            log.info(f"dataset.synthetic.root={root} with ratio 0: no generated images added")
        return splits
    if not isinstance(splits, Splits) or splits.train.labels.ndim != 1:
        raise ImgrecError(f"dataset.train_per_class={train_per_class} / dataset.synthetic.ratio={ratio} apply to "
                          "classification datasets only; leave them out for this dataset")
    if train_per_class is not None:
        splits = keep_per_class(splits, train_per_class, split_seed, normalize, mean, std)
    if ratio > 0.0:
        splits = mix_synthetic(splits, root, ratio, split_seed, settings)
    elif root is not None:
        log.info(f"dataset.synthetic.root={root} with ratio 0: no generated images added")
    return splits


def check_synthetic_setting(synthetic) -> tuple[float, Path | None]:
    """(ratio, root) of dataset.synthetic, checked; (0.0, None) when it is unset."""
    if synthetic is None:
        return 0.0, None
    if not isinstance(synthetic, dict):
        raise ImgrecError(f"dataset.synthetic={synthetic!r} must be a mapping like "
                          "{root: /path/to/samples, ratio: 0.5}")
    unknown = sorted(set(synthetic) - set(SYNTHETIC_KEYS))
    if unknown:
        raise ImgrecError(f"dataset.synthetic has unknown key(s) {', '.join(map(str, unknown))}; "
                          "it takes only root and ratio")
    ratio, root = synthetic.get("ratio", 0.0), synthetic.get("root")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ImgrecError(f"dataset.synthetic.ratio={ratio!r} must be in [0, 1): the share of the training set that is "
                          "generated (ratio 0.5 means half the training images are generated)")
    if ratio > 0.0 and root is None:
        raise ImgrecError(f"dataset.synthetic.ratio={ratio} needs dataset.synthetic.root: the folder imgrec-gan sample "
                          "wrote (with its manifest.json)")
    return float(ratio), None if root is None else Path(str(root)).expanduser()


def keep_per_class(splits: Splits, per_class, split_seed: int, normalize: str, mean=None, std=None) -> Splits:
    """Only `per_class` training images of each class: the first of a permutation seeded by split_seed, so a
    smaller k keeps a subset of a larger k's images. Val and test are untouched."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ImgrecError(f"dataset.train_per_class={per_class!r} must be a whole number >= 1 (images kept per class), "
                          "or null to keep every training image")
    labels = splits.train.labels.numpy()
    counts = np.bincount(labels, minlength=len(splits.class_names))
    short = [index for index, count in enumerate(counts) if count < per_class]
    if short:
        index = short[0]
        raise ImgrecError(f"dataset.train_per_class={per_class} but class {splits.class_names[index]!r} has only "
                          f"{counts[index]} training images; choose train_per_class <= {counts.min()} "
                          "(the smallest class)")
    kept = []
    for class_id in range(len(splits.class_names)):
        members = np.flatnonzero(labels == class_id)
        order = np.random.default_rng((split_seed, KEEP_STREAM, class_id)).permutation(len(members))
        kept.append(members[order[:per_class]])
    kept = torch.from_numpy(np.sort(np.concatenate(kept)))
    train = subset(splits.train, kept)
    if isinstance(train, ImageTensors):
        # a small-data run must not see statistics of the images it dropped
        mean, std = normalization_stats(train.images, normalize, mean, std)
    else:  # measuring a split read from files costs a pass over them; the full split's stats are a fair stand-in
        mean, std = splits.mean, splits.std
    log.info(f"dataset.train_per_class={per_class}: kept {len(train)} of {len(splits.train)} training images; "
             "val and test unchanged")
    return replace(splits, train=train, mean=mean, std=std)


def subset(split, indices: torch.Tensor):
    """The images of `split` at `indices`, in that order."""
    paths = None if split.paths is None else [split.paths[i] for i in indices.tolist()]
    if isinstance(split, FileSplit):
        return FileSplit(paths, split.labels[indices], split.channels, split.image_size)
    return ImageTensors(split.images[indices].contiguous(), split.labels[indices].contiguous(), paths)


def read_manifest(root: Path) -> dict:
    """The keys of <root>/manifest.json that mixing needs, checked; the manifest is data, nothing in it is run."""
    if not root.is_dir():
        raise ImgrecError(f"dataset.synthetic.root={root} is not a folder; point it at the folder imgrec-gan "
                          "sample wrote")
    path = root / MANIFEST
    if not path.is_file():
        raise ImgrecError(f"dataset.synthetic.root={root} has no {MANIFEST}; point it at the folder imgrec-gan sample "
                          "wrote, or sample again with imgrec-gan sample")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ImgrecError(f"{path} is not readable JSON ({error}); sample again with imgrec-gan sample") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ImgrecError(f"{path} has format {found!r}, not {MANIFEST_FORMAT!r}; point dataset.synthetic.root at a "
                          "folder imgrec-gan sample wrote")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ImgrecError(f"{path} has format_version {manifest.get('format_version')!r}; this imgrec reads version "
                          f"{MANIFEST_VERSION}: sample again with this imgrec's imgrec-gan sample")
    class_names, folders = manifest.get("class_names"), manifest.get("folders")
    if (not isinstance(class_names, list) or not all(isinstance(name, str) for name in class_names)
            or not isinstance(folders, list) or len(folders) != len(class_names)):
        raise ImgrecError(f"{path} must list class_names and folders (one per class) as strings; it is damaged: "
                          "sample again with imgrec-gan sample")
    for folder in folders:
        # a folder name is joined to root: anything but one plain name could point outside it
        if not isinstance(folder, str) or folder in ("", ".", "..") or "/" in folder or "\\" in folder:
            raise ImgrecError(f"{path} names class folder {folder!r}; expected one plain folder name inside {root}")
    for key in ("channels", "image_size"):
        if isinstance(manifest.get(key), bool) or not isinstance(manifest.get(key), int):
            raise ImgrecError(f"{path} has {key}={manifest.get(key)!r}, not a whole number; sample again with "
                              "imgrec-gan sample")
    kept = {key: manifest[key] for key in ("class_names", "folders", "channels", "image_size")}
    generated_from = manifest.get("generated_from")  # plain values compared with this run's, never called
    kept["generated_from"] = generated_from if isinstance(generated_from, dict) else None
    return kept


def check_manifest_fits(manifest: dict, splits: Splits, root: Path) -> None:
    """The generated images must be of the dataset's classes, channels and size."""
    where = f"dataset.synthetic.root={root}"
    missing = [name for name in splits.class_names if name not in manifest["class_names"]]
    extra = [name for name in manifest["class_names"] if name not in splits.class_names]
    if missing or extra:
        details = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                              f"not in the dataset {extra}" if extra else "") if part)
        raise ImgrecError(f"{where} holds classes that differ from the dataset's ({details}); sample with a GAN "
                          "trained on this dataset")
    _, height, width = splits.input_shape
    if manifest["channels"] != splits.channels:
        raise ImgrecError(f"{where} holds {manifest['channels']}-channel images but the dataset has {splits.channels}; "
                          f"set dataset.channels={manifest['channels']} or sample from a GAN trained on this dataset")
    if manifest["image_size"] != height or manifest["image_size"] != width:
        raise ImgrecError(f"{where} holds {manifest['image_size']} px images but the dataset's are {height}x{width}; "
                          f"set dataset.image_size={manifest['image_size']} or sample from a GAN trained at this size")


def read_png(path: Path, channels: int, image_size: int) -> torch.Tensor:
    """One generated PNG as uint8 (C, H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # the size is in the header: checked before any pixels are decoded
            if image.size != (image_size, image_size):
                raise ImgrecError(f"{path} is {image.size[0]}x{image.size[1]} but its manifest says {image_size} px; "
                                  "sample again with imgrec-gan sample")
            pixels = np.array(image.convert("L" if channels == 1 else "RGB"))  # a writable copy for torch
    except OSError as error:  # truncated or not an image: not a disk-space problem
        raise ImgrecError(f"{path} is not a readable PNG ({error}); sample again with imgrec-gan sample") from None
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels))


def mix_synthetic(splits: Splits, root: Path, ratio: float, split_seed: int, settings: dict | None = None) -> Splits:
    """`splits` with generated images added to train so they make up `ratio` of it; val and test stay real."""
    if not isinstance(splits.train, ImageTensors):
        raise ImgrecError(f"dataset.synthetic.ratio={ratio} needs the training images held in memory, but this "
                          "dataset reads them from files each epoch; set dataset.in_memory=true or use a dataset held "
                          "in memory")
    manifest = read_manifest(root)
    check_manifest_fits(manifest, splits, root)
    check_same_split(manifest.get("generated_from"), settings, root)
    folder_of = dict(zip(manifest["class_names"], manifest["folders"]))
    real_counts = splits.class_counts("train")
    most_needed = max(round(ratio / (1.0 - ratio) * real) for real in real_counts)  # what one sampling must give
    added_per_class, images, labels, paths = [], [], [], []
    for class_id, (name, real) in enumerate(zip(splits.class_names, real_counts)):
        # generated share = ratio of the final set: g / (real + g) = ratio
        needed = round(ratio / (1.0 - ratio) * real)
        folder = root / folder_of[name]
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if len(files) < needed:
            raise ImgrecError(f"dataset.synthetic.ratio={ratio} needs {needed} generated images of class {name!r} but "
                              f"{folder} holds {len(files)}: sample more with imgrec-gan sample per_class={most_needed} "
                              "or lower dataset.synthetic.ratio")
        order = np.random.default_rng((split_seed, SYNTHETIC_STREAM, class_id)).permutation(len(files))[:needed]
        chosen = [files[i] for i in sorted(order)]
        images += [read_png(path, manifest["channels"], manifest["image_size"]) for path in chosen]
        labels += [class_id] * needed
        paths += [str(path) for path in chosen]
        added_per_class.append(needed)
    added = sum(added_per_class)
    if added == 0:
        log.info(f"dataset.synthetic: ratio {ratio:.2f} of {len(splits.train)} real training images rounds to no "
                 "generated image; nothing added")
        return splits
    real_train = splits.train
    train = ImageTensors(
        torch.cat([real_train.images, torch.stack(images)]).contiguous(),
        torch.cat([real_train.labels, torch.tensor(labels, dtype=real_train.labels.dtype)]),
        None if real_train.paths is None else [*real_train.paths, *paths],
    )
    log.info(f"dataset.synthetic: added {added} generated images from {root} to the {len(real_train)} real training "
             f"images (ratio {ratio:.2f}); val and test are real only")
    # mean/std stay those of the real training images: val and test are real, and the model is scored on them
    return replace(splits, train=train, synthetic={
        "root": str(root), "ratio": ratio, "added": added, "added_per_class": added_per_class,
        "real": len(real_train),
    })

