"""Face datasets for task=embedding: every image labelled with its person (folders, a CSV or a file-name
pattern, see identities.py), optionally cropped to the face (face_detection.py), decoded into memory and
split by people or by images.

Class ids are people, numbered with the training people first: the margin head of an embedding loss
(ArcFace, CosFace) has one row per person it trains on, ids 0..train_people-1, and validation and test
people of an identity split come after them, never seen by that head.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from imgrec.data.face_detection import FaceCropper
from imgrec.data.identities import identity_assignment, listed_files, named_files, person_folders
from imgrec.data.images import BadImage, _resize_and_center_crop, detect_channels, load_pil, to_channels
from imgrec.data.splits import TEST, TRAIN, VAL, ImageTensors, Splits, normalization_stats
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")
FACE_LAYOUT = ("root/<person>/<image>, a CSV of path,person rows (dataset.file), or file names carrying the person "
               "(dataset.pattern, e.g. 'subject(\\d+)')")


def _listing(root: Path, file: str | None, pattern: str | None, path_column: str, person_column: str):
    if file is not None and pattern is not None:
        raise ImgrecError("set dataset.file (a CSV) or dataset.pattern (file names), not both")
    if file is not None:
        table = Path(file).expanduser()
        if not table.is_file():
            raise ImgrecError(f"dataset.file '{file}' does not exist; expected a CSV with {path_column},"
                              f"{person_column} rows")
        return listed_files(table, root, path_column, person_column)
    return named_files(root, pattern) if pattern is not None else person_folders(root)


def _face(path: Path, cropper: FaceCropper, channels: int, size: int) -> torch.Tensor | None:
    """uint8 (channels, size, size) of the face in `path`; None when the detector found none (skip)."""
    with load_pil(path) as image:
        face = cropper.crop(image)
        if face is None:
            return None
        try:
            pixels = np.asarray(_resize_and_center_crop(to_channels(face, channels), size), dtype=np.uint8)
        except (OSError, ValueError) as error:
            raise BadImage(f"cannot be decoded: {error}") from error
    return torch.from_numpy(pixels.reshape(size, size, channels).copy()).permute(2, 0, 1).contiguous()


def decode_faces(paths: list[Path], cropper: FaceCropper, channels: int, size: int, on_bad_image: str):
    """The decoded faces, the indices of `paths` they came from, and (file, reason) of those left out."""
    if on_bad_image not in ("error", "skip"):
        raise ImgrecError(f"dataset.on_bad_image={on_bad_image!r} must be 'error' or 'skip'")

    def decode(path: Path):
        try:
            face = _face(path, cropper, channels, size)
            return (face, None) if face is not None else (None, "no face found (dataset.detect=haar)")
        except BadImage as problem:
            return None, str(problem)

    faces, kept, skipped, no_face = [], [], [], 0
    # OpenCV and Pillow release the GIL: threads use every core
    with ThreadPoolExecutor(max_workers=4) as pool:
        for index, (path, (face, problem)) in enumerate(zip(paths, pool.map(decode, paths))):
            if face is not None:
                faces.append(face)
                kept.append(index)
            elif problem.startswith("no face") and cropper.on_no_face == "error":
                raise ImgrecError(f"image '{path}': {problem}")
            elif problem.startswith("no face"):
                no_face += 1
                skipped.append((str(path), problem))
            elif on_bad_image == "error":
                raise ImgrecError(f"image '{path}' cannot be used: {problem}. Fix or remove it, or set "
                                  "dataset.on_bad_image=skip to leave such files out")
            else:
                skipped.append((str(path), problem))
    if no_face:
        log.warning(f"no face found in {no_face} of {len(paths)} image(s): left out (on_no_face=skip; "
                    "on_no_face=error stops at the first, naming it)")
    if not faces:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ImgrecError(f"none of the {len(paths)} images could be used{first}; with dataset.detect=haar, try "
                          "detect=none for images that are already face crops")
    return torch.stack(faces), np.asarray(kept, dtype=np.int64), skipped


def face_images(
    root: str,
    file: str | None = None,
    pattern: str | None = None,
    path_column: str = "path",
    person_column: str = "person",
    image_size: int = 64,
    channels: int | str = "auto",
    split_by: str = "identity",
    min_images: int = 2,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
    detect: str = "none",
    crop_margin: float = 0.2,
    min_face: float = 0.1,
    on_no_face: str = "skip",
    on_bad_image: str = "error",
    num_classes: int | None = None,
) -> Splits:
    """Faces labelled by person, decoded into memory (face sets are small enough; a 13k-image set at 64 px
    takes 160 MB) and split by identity (open set) or by image (closed set)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise ImgrecError(f"dataset.root '{root}' does not exist or is not a folder; expected {FACE_LAYOUT}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 16:
        raise ImgrecError(f"dataset.image_size={image_size!r} must be a whole number of pixels >= 16")
    cropper = FaceCropper(detect, crop_margin, min_face, on_no_face)
    paths, persons = _listing(root_path, file, pattern, path_column, person_column)
    if channels == "auto":
        channels = detect_channels(paths)
    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels!r} must be auto, 1 (grayscale) or 3 (RGB)")
    images, kept, skipped = decode_faces(paths, cropper, channels, image_size, on_bad_image)
    splits = people_splits(images, [persons[i] for i in kept], [str(paths[i]) for i in kept], split_by, min_images,
                           val_fraction, test_fraction, split_seed, normalize, mean, std, skipped)
    if num_classes is not None and num_classes != len(splits.class_names):
        raise ImgrecError(f"dataset.num_classes={num_classes} but '{root}' has {len(splits.class_names)} people; set "
                          "dataset.num_classes=null to take them as they are")
    return splits


def people_splits(images: torch.Tensor, persons: list[str], paths: list[str] | None, split_by: str, min_images: int,
                  val_fraction: float, test_fraction: float, split_seed: int, normalize: str, mean, std,
                  skipped=()) -> Splits:
    """Images of people split by identity or by image, class ids numbered with the training people first."""
    assignment = identity_assignment(persons, split_by, val_fraction, test_fraction, split_seed, min_images)
    trained_on = sorted({str(person) for person in np.asarray(persons)[assignment == TRAIN]})
    person_names = trained_on + sorted(set(persons) - set(trained_on))
    index_of = {name: index for index, name in enumerate(person_names)}
    labels = torch.tensor([index_of[name] for name in persons], dtype=torch.int64)
    parts = []
    for code in (TRAIN, VAL, TEST):
        chosen = np.flatnonzero(assignment == code)
        parts.append(ImageTensors(images[chosen].contiguous(), labels[chosen].contiguous(),
                                  [paths[i] for i in chosen] if paths is not None else None))
    mean, std = normalization_stats(parts[0].images, normalize, mean, std)
    return Splits(*parts, person_names, mean, std, list(skipped), people=True)


def digits_people(image_size: int = 16, channels: int = 1, split_by: str = "identity", min_images: int = 2,
                  val_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0,
                  normalize: str = "standardize", mean=None, std=None, num_classes=None) -> Splits:
    """scikit-learn's digits as ten 'people' (each digit one identity, ~180 images each): an embedding
    that has to place digits it never trained on, offline, in seconds. For smoke runs and tests."""
    from imgrec.data.datasets import digits_images

    images, digit = digits_images(image_size, channels)
    return people_splits(images, [f"digit_{d}" for d in digit], None, split_by, min_images, val_fraction,
                         test_fraction, split_seed, normalize, mean, std)
