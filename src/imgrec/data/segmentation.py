"""Segmentation datasets: every image with a mask of class ids, one per pixel.

Masks are read from PNG/GIF/TIFF/JPEG files and mapped to class ids by `mask_values` ({raw value: class
id}), a `threshold` (binary masks whose compression left grey levels), a `palette` (colour-coded masks),
or, by default, recognised: 0/1 and 0/255 masks are binary, palette (P-mode) PNGs such as Pascal VOC's
hold their class ids already. Pixels valued `ignore_index`, and pixels outside an optional region of
interest, get the class id IGNORE: no loss or metric counts them. Images and masks are resized together
to image_size x image_size (bilinear for images, nearest for masks); a split is held in memory as a
uint8 tensor of images and one of masks.
"""

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgrec.data.images import IMAGE_EXTENSIONS, BadImage, load_pil, to_channels
from imgrec.data.splits import IGNORE, TEST, TRAIN, VAL, ImageTensors, Splits, normalization_stats
from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

log = logging.getLogger("imgrec")
SPLIT_FOLDERS = {"train": TRAIN, "val": VAL, "valid": VAL, "validation": VAL, "test": TEST}
MASK_EXTENSIONS = (*IMAGE_EXTENSIONS, ".tif", ".tiff")
LAYOUT = ("<root>/images/<name>.<ext> with <root>/masks/<name>.<ext> (the same stem), or "
          "<root>/{train,val,test}/{images,masks}/..., or a CSV of image,mask pairs (dataset.file)")
PALETTES = {
    # Pascal VOC's 21 classes, as its PNG palette colours them (class id = palette index)
    "voc": [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
            [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128], [192, 0, 128],
            [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0], [0, 64, 128]],
}


# ---- one mask ------------------------------------------------------------------------------------


def raw_mask(path: Path, palette: list | None) -> np.ndarray:
    """A mask file's values as a 2-D array: grey levels (16-bit integers as they are), palette indices of
    colour-palette PNGs (e.g. VOC's), or the index of each pixel's colour in `palette` (-1 where the colour
    is not in it). A palette image whose colours are all grey (most GIF masks) is read by its grey levels,
    so the same mask reads the same whether it was saved as a grey PNG or a GIF."""
    with load_pil(path) as image:
        if image.mode in ("P", "PA") and palette is None:
            indices = np.asarray(image.convert("P") if image.mode == "PA" else image, dtype=np.int64)
            colours = np.array(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
            used = np.unique(indices)
            if len(colours) > used.max() and (colours[used, 0] == colours[used, 1]).all() \
                    and (colours[used, 1] == colours[used, 2]).all():
                return colours[indices, 0]
            return indices
        if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit masks hold class ids, not brightness
            values = np.asarray(image)
            if image.mode == "F" and not np.array_equal(values, np.round(values)):
                raise BadImage("it is a floating-point image with fractional values; masks hold whole class ids")
            return values.astype(np.int64)
        if palette is not None:
            pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
            codes = pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2]
            colours = np.array([r * 65536 + g * 256 + b for r, g, b in palette])
            found = codes[..., None] == colours
            return np.where(found.any(-1), found.argmax(-1), -1)
        if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
            pixels = np.asarray(image.convert("RGB"))
            if (pixels[..., 0] != pixels[..., 1]).any() or (pixels[..., 1] != pixels[..., 2]).any():
                raise BadImage("it is a colour mask: give dataset.palette (the colour of each class, in class order) "
                               "or dataset.palette=voc")
            return pixels[..., 0].astype(np.int64)
        return np.asarray(to_channels(image, 1), dtype=np.int64)


class MaskMapping:
    """Raw mask values -> class ids, as the dataset settings say; recognised from the masks when unset."""

    def __init__(self, num_classes: int, mask_values: dict | None, threshold, ignore_index: int | None,
                 palette: list | None):
        self.num_classes, self.mask_values, self.threshold = num_classes, mask_values, threshold
        self.ignore_index, self.palette = ignore_index, palette
        self.jpeg_noted = False
        given = [name for name, value in (("mask_values", mask_values), ("threshold", threshold),
                                          ("palette", palette)) if value is not None]
        if len(given) > 1:
            raise ImgrecError(f"dataset.{' and dataset.'.join(given)} are both set; they are alternative ways to read "
                              "masks: keep one")
        if threshold is not None:
            if not is_number(threshold) or not 0 < threshold <= 65535:
                raise ImgrecError(f"dataset.threshold={threshold!r} must be a number above 0 (e.g. 128): raw >= "
                                  "threshold is class 1")
            if num_classes != 2:
                raise ImgrecError(f"dataset.threshold={threshold} makes two classes but there are {num_classes}; map "
                                  "the values with dataset.mask_values instead")
        if ignore_index is not None and not is_whole(ignore_index, -(2**31)):
            raise ImgrecError(f"dataset.ignore_index={ignore_index!r} must be null or a whole number (e.g. 255)")
        if mask_values is not None:
            if not isinstance(mask_values, dict):
                raise ImgrecError(f"dataset.mask_values={mask_values!r} must be a map of raw value to class id, e.g. "
                                  "'dataset.mask_values={0: 0, 255: 1}'")
            for raw in mask_values:
                try:
                    int(raw)
                except (TypeError, ValueError):
                    raise ImgrecError(f"dataset.mask_values has the key {raw!r}; keys are raw pixel values (whole "
                                      "numbers), e.g. {0: 0, 255: 1}") from None
            for raw, class_id in mask_values.items():
                if class_id != "ignore" and not (isinstance(class_id, int) and 0 <= class_id < num_classes):
                    raise ImgrecError(f"dataset.mask_values maps {raw} to {class_id!r}; class ids are 0..{num_classes - 1} "
                                      "or ignore")

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ignored = raw == self.ignore_index if self.ignore_index is not None else np.zeros(raw.shape, bool)
        if self.palette is not None:
            if (raw[~ignored] < 0).any():
                raise BadImage("it holds colours that are not in dataset.palette")
            mapped = raw
        elif self.threshold is not None:
            mapped = (raw >= self.threshold).astype(np.int64)
        elif self.mask_values is not None:
            mapped = np.full(raw.shape, -1, dtype=np.int64)
            for value, class_id in self.mask_values.items():
                mapped[raw == int(value)] = IGNORE if class_id == "ignore" else class_id
            unknown = np.unique(raw[(mapped < 0) & ~ignored])
            if len(unknown):
                raise BadImage(f"it holds value(s) {unknown[:10].tolist()} that dataset.mask_values does not map "
                               f"(it maps {sorted(int(v) for v in self.mask_values)})")
        else:
            mapped = self.recognised(raw[~ignored], path)(raw)
        mapped = np.where(ignored, IGNORE, mapped)
        valid = mapped[mapped != IGNORE]
        if len(valid) and (valid.min() < 0 or valid.max() >= self.num_classes):
            raise BadImage(f"it holds class ids up to {int(valid.max())} but there are {self.num_classes} classes "
                           "(set dataset.class_names or dataset.mask_values)")
        return mapped.astype(np.uint8)

    def recognised(self, values: np.ndarray, path: Path):
        """0/1 and 0/255 masks are binary; palette indices and small class ids are taken as they are; a
        two-class JPEG mask is cut at 128 (its compression always leaves grey levels at the edges)."""
        if self.num_classes == 2 and path.suffix.lower() in (".jpg", ".jpeg"):
            if not self.jpeg_noted:
                log.info("JPEG masks: raw >= 128 is class 1 (compression leaves grey levels; set dataset.threshold "
                         "or dataset.mask_values to choose otherwise)")
                self.jpeg_noted = True
            return lambda raw: (raw >= 128).astype(np.int64)
        found = np.unique(values)
        if set(found.tolist()) <= {0, 255} and self.num_classes == 2:
            return lambda raw: (raw == 255).astype(np.int64)
        if len(found) == 0 or found.max() < self.num_classes:
            return lambda raw: raw
        hint = ("; they look like a compressed binary mask: set dataset.threshold=128"
                if len(found) > self.num_classes and self.num_classes == 2
                else "; map them with dataset.mask_values, e.g. {0: 0, 128: 1, 255: 2}")
        raise BadImage(f"it holds {len(found)} distinct values ({found[:8].tolist()}{'...' if len(found) > 8 else ''}) "
                       f"for {self.num_classes} classes{hint}")


def resized(image: torch.Tensor, size: int | None, nearest: bool) -> torch.Tensor:
    """(C, H, W) or (H, W) uint8 at size x size: bilinear with antialiasing for images, nearest for masks."""
    if size is None or tuple(image.shape[-2:]) == (size, size):
        return image
    batch = image[None, None] if image.ndim == 2 else image[None]
    if nearest:
        out = F.interpolate(batch.float(), size=(size, size), mode="nearest")
    else:
        out = F.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.round().clamp(0, 255).to(torch.uint8)
    return out[0, 0] if image.ndim == 2 else out[0]


def read_pair(image_path: Path, mask_path: Path, roi_path: Path | None, channels: int, size: int | None,
              mapping: MaskMapping) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (uint8 C, H, W) and its mask of class ids (uint8 H, W), checked to be the same size."""
    with load_pil(image_path) as image:
        pixels = np.asarray(to_channels(image, channels), dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    try:
        mask = mapping(raw_mask(mask_path, mapping.palette), mask_path)
    except BadImage as problem:
        raise BadImage(f"mask {mask_path}: {problem}") from None
    if mask.shape != pixels.shape[:2]:
        raise BadImage(f"its mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} px but the image is "
                       f"{pixels.shape[1]}x{pixels.shape[0]} px; a mask must cover its image pixel for pixel")
    if roi_path is not None:
        roi = raw_mask(roi_path, None)
        if roi.shape != mask.shape:
            raise BadImage(f"its region of interest {roi_path} is not the image's size")
        mask = np.where(roi > 0, mask, IGNORE).astype(np.uint8)
    image_tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
    return resized(image_tensor, size, nearest=False), resized(torch.from_numpy(mask.copy()), size, nearest=True)


# ---- finding the pairs ----------------------------------------------------------------------------


def _files(folder: Path, extensions) -> dict[str, Path]:
    """stem -> file of the folder's images; hidden files (macOS's ._name resource forks) are not images."""
    if not folder.is_dir():
        return {}
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in extensions and (path.is_file() or path.is_symlink()) and not path.name.startswith("."):
            if path.stem in files:
                raise ImgrecError(f"'{files[path.stem]}' and '{path}' have the same name: images and masks are "
                                  "paired by name; remove or rename one")
            files[path.stem] = path
    return files


def paired_files(folder: Path, images: str, masks: str, mask_suffix: str) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of folder/images and folder/masks, matched by file stem (+ mask_suffix)."""
    image_files = _files(folder / images, IMAGE_EXTENSIONS)
    mask_files = _files(folder / masks, MASK_EXTENSIONS)
    if not image_files:
        raise ImgrecError(f"'{folder / images}' holds no image files; expected {LAYOUT}")
    lonely_images = [str(image_files[s]) for s in image_files if s + mask_suffix not in mask_files]
    if lonely_images:
        raise ImgrecError(f"{len(lonely_images)} image(s) have no mask in '{folder / masks}' (matched by file name"
                          f"{' + ' + repr(mask_suffix) if mask_suffix else ''}), e.g. {lonely_images[0]}; add the masks, "
                          "remove the images, or set dataset.mask_suffix")
    stems = {s + mask_suffix for s in image_files}
    lonely_masks = [str(p) for s, p in mask_files.items() if s not in stems]
    if lonely_masks:
        raise ImgrecError(f"{len(lonely_masks)} mask(s) have no image in '{folder / images}', e.g. {lonely_masks[0]}; "
                          "remove them or add their images")
    return [(image_files[s], mask_files[s + mask_suffix]) for s in image_files]


def csv_pairs(file: Path, root: Path, image_column: str, mask_column: str, split_column: str | None):
    """(image, mask, split) rows of a CSV; paths relative to `root`."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in (image_column, mask_column, split_column) if c and c not in (reader.fieldnames or [])]
            if missing:
                raise ImgrecError(f"dataset.file '{file}' has no column(s) {missing}; its columns are {reader.fieldnames}")
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise ImgrecError(f"dataset.file '{file}' is not UTF-8 text (an undecodable byte at offset {error.start})") from None
    pairs = []
    for number, row in enumerate(rows, start=2):
        if any(row.get(c) in (None, "") for c in (image_column, mask_column)):
            raise ImgrecError(f"{file} row {number}: the {image_column} or {mask_column} is empty or missing")
        image, mask = root / row[image_column].strip(), root / row[mask_column].strip()
        for kind, path in (("image", image), ("mask", mask)):
            if not path.is_file():
                raise ImgrecError(f"{file} row {number}: {kind} file '{path}' does not exist (paths are relative to {root})")
        split = TRAIN
        if split_column:
            value = (row.get(split_column) or "").strip().lower()
            if value not in SPLIT_FOLDERS:
                raise ImgrecError(f"{file} row {number}: split {value!r} is not one of train, val, test")
            split = SPLIT_FOLDERS[value]
        pairs.append((image, mask, split))
    if not pairs:
        raise ImgrecError(f"dataset.file '{file}' has no rows")
    seen = {}
    for number, (image, _, split) in enumerate(pairs, start=2):
        if image.resolve() in seen:
            raise ImgrecError(f"{file} rows {seen[image.resolve()]} and {number} both list '{image}'; an image "
                              "listed twice (or in two splits) would be scored on what it trained on")
        seen[image.resolve()] = number
    return pairs


# ---- the datasets -----------------------------------------------------------------------------------


def seg_folder(
    root: str | None = None,
    file: str | None = None,
    images: str = "images",
    masks: str = "masks",
    mask_suffix: str = "",
    roi: str | None = None,
    image_column: str = "image",
    mask_column: str = "mask",
    split_column: str | None = None,
    class_names: list[str] | None = None,
    num_classes: int | None = None,
    mask_values: dict | None = None,
    threshold: float | None = None,
    palette=None,
    ignore_index: int | None = None,
    image_size: int | None = 256,
    channels: int | str = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
    patch_size: int | None = None,
    patches_per_image: int = 1,
) -> Splits:
    """Images and their masks: <root>/images + <root>/masks matched by file stem, or train/val/test folders
    of those, or a CSV of image,mask(,split) rows. Splits not given are drawn at random (val_fraction,
    test_fraction of the whole, or of train when only test is given). `roi`: a folder of region-of-interest
    masks (matched by stem); pixels outside them are ignored."""
    from imgrec.data.images import detect_channels

    names = list(map(str, class_names)) if class_names else None
    if names is None:
        if num_classes is None:
            num_classes = 2
        names = ["background", "foreground"] if num_classes == 2 else [f"class_{i}" for i in range(num_classes)]
    if num_classes is not None and num_classes != len(names):
        raise ImgrecError(f"dataset.num_classes={num_classes} but dataset.class_names has {len(names)} names {names}")
    if len(names) < 2:
        raise ImgrecError(f"dataset.class_names={names}: segmentation needs at least two classes (e.g. background, lesion)")
    if isinstance(palette, str):
        if palette not in PALETTES:
            raise ImgrecError(f"dataset.palette={palette!r} is not one of {', '.join(PALETTES)}; or give the colours")
        palette = PALETTES[palette][: len(names)]
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ImgrecError(f"dataset.image_size={image_size!r} must be null (keep each image's size) or a whole number >= 8")
    check_sampling_settings(val_fraction, test_fraction, patch_size, patches_per_image)
    mask_values = dict(mask_values) if isinstance(mask_values, Mapping) else mask_values
    mapping = MaskMapping(len(names), mask_values, threshold, ignore_index,
                          [list(c) for c in palette] if palette is not None else None)
    entries = _entries(root, file, images, masks, mask_suffix, roi, image_column, mask_column, split_column)
    if channels == "auto":
        channels = detect_channels([entry[0] for entry in entries])
        log.info(f"dataset.channels=auto: the images are {'colour' if channels == 3 else 'grey'}, read with {channels} "
                 "channel(s)")
    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels!r} must be auto, 1 or 3")
    pairs = []
    for image_path, mask_path, roi_path, _ in entries:
        try:
            pairs.append(read_pair(image_path, mask_path, roi_path, channels, image_size, mapping))
        except BadImage as problem:
            raise ImgrecError(f"image '{image_path}' cannot be used: {problem}") from None
    sizes = {tuple(image.shape[-2:]) for image, _ in pairs}
    if len(sizes) > 1:
        raise ImgrecError(f"the images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}) and "
                          "dataset.image_size=null keeps them; set dataset.image_size (e.g. 256) to resize them")
    images_tensor = torch.stack([image for image, _ in pairs])
    masks_tensor = torch.stack([mask for _, mask in pairs])
    assignment = np.array([entry[3] for entry in entries])
    paths = [str(entry[0]) for entry in entries]
    return segmentation_splits(images_tensor, masks_tensor, names, assignment, val_fraction, test_fraction,
                               split_seed, normalize, mean, std, paths, patch_size, patches_per_image)


def _entries(root, file, images, masks, mask_suffix, roi, image_column, mask_column, split_column):
    """(image, mask, roi or None, split) of every sample, from the folder layout or the CSV."""
    if file:
        table = Path(file).expanduser()
        if not table.is_file():
            raise ImgrecError(f"dataset.file '{file}' does not exist; give a CSV with columns {image_column},{mask_column}")
        base = Path(root).expanduser() if root else table.parent
        return [(image, mask, None, split)
                for image, mask, split in csv_pairs(table, base, image_column, mask_column, split_column)]
    if not root:
        raise ImgrecError("dataset.root is not set: point it at your images and masks (dataset.root=/path/to/data); "
                          f"expected {LAYOUT}")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise ImgrecError(f"dataset.root '{root}' does not exist or is not a folder; expected {LAYOUT}")
    split_dirs = {name: code for name, code in SPLIT_FOLDERS.items() if (root_path / name / images).is_dir()}
    folders = [(root_path / name, code) for name, code in split_dirs.items()] or [(root_path, TRAIN)]
    if split_dirs and "train" not in split_dirs:
        raise ImgrecError(f"'{root_path}' has {sorted(split_dirs)} folders but no train/; expected {LAYOUT}")
    entries = []
    for folder, code in folders:
        for image_path, mask_path in paired_files(folder, images, masks, mask_suffix):
            roi_path = None
            if roi:
                candidates = _files(folder / roi, MASK_EXTENSIONS)
                if image_path.stem not in candidates:
                    raise ImgrecError(f"image '{image_path}' has no region-of-interest mask in '{folder / roi}'")
                roi_path = candidates[image_path.stem]
            entries.append((image_path, mask_path, roi_path, code))
    return entries


def check_sampling_settings(val_fraction, test_fraction, patch_size, patches_per_image) -> None:
    """The split and patch settings, checked before any image is read."""
    if not is_whole(patches_per_image, 1) or patches_per_image > 10_000:
        raise ImgrecError(f"dataset.patches_per_image={patches_per_image!r} must be a whole number from 1 to 10000 "
                          "(training samples drawn from each image per epoch)")
    if patch_size is not None and not is_whole(patch_size, 8):
        raise ImgrecError(f"dataset.patch_size={patch_size!r} must be null or a whole number from 8 to the image size")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not is_number(value) or not 0.0 < value < 1.0:
            raise ImgrecError(f"dataset.{name}={value!r} must be between 0 and 1 (exclusive), e.g. 0.15")


def segmentation_splits(images: torch.Tensor, masks: torch.Tensor, class_names: list[str], assignment: np.ndarray,
                        val_fraction: float, test_fraction: float, split_seed: int, normalize: str, mean=None,
                        std=None, paths: list[str] | None = None, patch_size: int | None = None,
                        patches_per_image: int = 1) -> Splits:
    """Splits as assigned, with any missing one drawn at random from train (masks cannot be stratified);
    the normalisation fixed on the train images; a warning for a class no training mask holds.
    `patch_size`: training batches are random crops of that size (validation and test stay whole);
    `patches_per_image`: how many of them (or augmented copies of the whole image) each epoch draws per image."""
    check_sampling_settings(val_fraction, test_fraction, patch_size, patches_per_image)
    if patch_size is not None and patch_size > min(images.shape[-2:]):
        raise ImgrecError(f"dataset.patch_size={patch_size!r} must be null or a whole number from 8 to the image size "
                          f"({min(images.shape[-2:])} px)")
    rng = np.random.default_rng(split_seed)
    train = np.flatnonzero(assignment == TRAIN)
    val, test = np.flatnonzero(assignment == VAL), np.flatnonzero(assignment == TEST)
    if len(val) == 0 and len(test) == 0:
        if val_fraction + test_fraction >= 1.0:
            raise ImgrecError("dataset.val_fraction + dataset.test_fraction leave no training images; make their sum < 1")
        order = rng.permutation(train)
        n_test, n_val = max(1, round(test_fraction * len(order))), max(1, round(val_fraction * len(order)))
        test, val, train = np.sort(order[:n_test]), np.sort(order[n_test:n_test + n_val]), np.sort(order[n_test + n_val:])
    elif len(val) == 0 or len(test) == 0:
        fraction = val_fraction if len(val) == 0 else test_fraction
        order = rng.permutation(train)
        carved, train = np.sort(order[: max(1, round(fraction * len(order)))]), np.sort(order[max(1, round(fraction * len(order))):])
        val, test = (carved, test) if len(val) == 0 else (val, carved)
    if len(train) == 0:
        raise ImgrecError(f"{len(images)} image(s) leave no training images after the val and test splits; add images")

    def part(indices):
        return ImageTensors(images[indices].contiguous(), masks[indices].contiguous(),
                            [paths[i] for i in indices] if paths is not None else None)

    train_part = part(train)
    mean, std = normalization_stats(train_part.images, normalize, mean, std)
    splits = Splits(train_part, part(val), part(test), list(class_names), mean, std,
                    test_given=bool((assignment == TEST).any()), patch_size=patch_size,
                    patches_per_image=patches_per_image)
    counts = splits.class_counts("train")
    absent = [name for name, count in zip(class_names, counts) if count == 0]
    if absent:
        log.warning(f"class(es) {absent} appear in no training mask: the model cannot learn them")
    return splits


# ---- a built-in dataset ------------------------------------------------------------------------------

SHAPE_NAMES = ("background", "disc", "square", "triangle")


def shape_mask(kind: int, height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    if kind == 1:
        return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    if kind == 2:
        return (np.abs(rows - cy) <= radius * 0.85) & (np.abs(cols - cx) <= radius * 0.85)
    # an upward triangle: below the apex, above the base, between the two slanted sides
    top, base = cy - radius, cy + radius * 0.8
    half_width = (rows - top) / (base - top) * radius
    return (rows >= top) & (rows <= base) & (np.abs(cols - cx) <= half_width)


def shapes(size: int = 240, image_size: int = 64, channels: int = 1, num_classes: int = 4, val_fraction: float = 0.2,
           test_fraction: float = 0.2, split_seed: int = 0, normalize: str = "standardize", mean=None, std=None,
           seed: int = 0, patch_size: int | None = None, patches_per_image: int = 1) -> Splits:
    """Discs, squares and triangles (one class each, background the fourth) on textured noise, with their
    exact masks: a segmentation set made in memory, the same for the same seed, for tests and smoke runs.
    Every shape is brighter than most of the background; its outline says which class it is."""
    if num_classes != len(SHAPE_NAMES):
        raise ImgrecError(f"dataset.num_classes={num_classes} but shapes has {len(SHAPE_NAMES)} classes {list(SHAPE_NAMES)}")
    if channels not in (1, 3) or image_size < 16 or size < 10:
        raise ImgrecError(f"shapes needs channels 1 or 3, image_size >= 16 and size >= 10 (got {channels}, {image_size}, {size})")
    rng = np.random.default_rng(seed)
    images = np.empty((size, channels, image_size, image_size), np.uint8)
    masks = np.zeros((size, image_size, image_size), np.uint8)
    for index in range(size):
        coarse = rng.normal(0, 1, (image_size // 8 + 1, image_size // 8 + 1))
        texture = np.kron(coarse, np.ones((8, 8)))[:image_size, :image_size]
        pixels = 100 + 25 * texture + rng.normal(0, 12, (image_size, image_size))
        for _ in range(rng.integers(1, 4)):
            kind = int(rng.integers(1, 4))
            radius = rng.uniform(image_size * 0.1, image_size * 0.22)
            cy, cx = rng.uniform(radius, image_size - radius, 2)
            inside = shape_mask(kind, image_size, image_size, cy, cx, radius)
            pixels[inside] = rng.uniform(140, 220) + rng.normal(0, 12, inside.sum())
            masks[index][inside] = kind
        images[index] = np.clip(pixels, 0, 255).astype(np.uint8)[None].repeat(channels, 0)
    assignment = np.full(size, TRAIN)
    return segmentation_splits(torch.from_numpy(images), torch.from_numpy(masks), list(SHAPE_NAMES), assignment,
                               val_fraction, test_fraction, split_seed, normalize, mean, std, patch_size=patch_size,
                               patches_per_image=patches_per_image)
