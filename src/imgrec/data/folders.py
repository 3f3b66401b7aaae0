"""Your own images: class folders (`image_folder`) or a CSV of paths and labels (`csv`)."""

import csv
import logging
from pathlib import Path

from imgrec.data.archives import MARKER, content_digest, extract_archive, is_archive
from imgrec.data.files import splits_from_files
from imgrec.data.images import IMAGE_EXTENSIONS
from imgrec.data.splits import TEST, TRAIN, VAL, Splits
from imgrec.errors import ImgrecError

FOLDER_LAYOUT = "<root>/<class>/<image> or <root>/{train,val,test}/<class>/<image> (see README: Your own images)"
log = logging.getLogger("imgrec")
SPLIT_NAMES = {"train": TRAIN, "val": VAL, "valid": VAL, "validation": VAL, "test": TEST}


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files_under(folder: Path) -> list[Path]:
    # a dangling link is kept, so that it is reported (or skipped and listed) like any unreadable image
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or p.is_symlink()))


def _scan(folder: Path, class_names: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels under folder/<class>/; classes are the sorted folder names unless given."""
    folders = _class_folders(folder)
    if not folders:
        raise ImgrecError(f"dataset.root '{folder}' has no class folders; expected {FOLDER_LAYOUT}")
    names = [f.name for f in folders]
    if class_names is None:
        class_names = names
    unknown = sorted(set(names) - set(class_names))
    if unknown:
        raise ImgrecError(
            f"'{folder}' has class folder(s) {unknown} that the train split does not have; every class needs training images"
        )
    paths, labels = [], []
    for class_folder in folders:
        files = image_files_under(class_folder)
        if not files:
            raise ImgrecError(
                f"class folder '{class_folder}' has no image files (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        paths += files
        labels += [class_names.index(class_folder.name)] * len(files)
    return paths, labels, class_names


def extracted_root(archive: Path, extract_dir: Path) -> Path:
    """The archive's contents, extracted on first use into a folder named by the archive's full name and
    content hash (a new version of the archive gets a new folder; nothing is overwritten or deleted),
    descending into a single top-level folder, as archives of a folder usually have one."""
    digest = content_digest(archive)
    destination = extract_dir / f"{archive.name}-{digest[:16]}"
    if not (destination / MARKER).is_file():
        log.info(f"extracting {archive} to {destination}")
    extract_archive(archive, destination, digest)
    entries = [p for p in destination.iterdir() if not p.name.startswith(".")]
    # one folder alone cannot be the class folders (a dataset needs two classes): it wraps them
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else destination


def image_folder(
    root: str,
    image_size: int = 64,
    channels: int | str = "auto",
    num_classes: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
    on_bad_image: str = "error",
    in_memory="auto",
    extract_dir: str | None = None,
) -> Splits:
    """Images in class folders. With train/ (and optionally val/, test/) subfolders those are the splits;
    a missing val/ or test/ is carved out of train/ by its fraction. Otherwise all images are split
    stratified by val_fraction/test_fraction. `root` may be a .zip/.tar(.gz) of such a folder: it is
    extracted safely into `extract_dir` once and read from there."""
    root_path = Path(root).expanduser()
    if is_archive(root_path):
        root_path = extracted_root(root_path, Path(extract_dir or root_path.parent / "extracted"))
    if not root_path.is_dir():
        raise ImgrecError(f"dataset.root '{root}' does not exist or is not a folder; expected {FOLDER_LAYOUT}")
    if (root_path / "train").is_dir():
        paths, labels, class_names = _scan(root_path / "train", None)
        assignment = [TRAIN] * len(paths)
        for split_name, split in (("val", VAL), ("test", TEST)):
            if (root_path / split_name).is_dir():
                split_paths, split_labels, _ = _scan(root_path / split_name, class_names)
                paths, labels, assignment = paths + split_paths, labels + split_labels, assignment + [split] * len(split_paths)
    else:
        paths, labels, class_names = _scan(root_path, None)
        assignment = [TRAIN] * len(paths)
    if num_classes is not None and num_classes != len(class_names):
        raise ImgrecError(
            f"dataset.num_classes={num_classes} but '{root}' has {len(class_names)} class folders {class_names}; "
            "set dataset.num_classes=null to take the folders as they are"
        )
    return splits_from_files(
        paths, labels, assignment, class_names, image_size=image_size, channels=channels,
        val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
        normalize=normalize, mean=mean, std=std, on_bad_image=on_bad_image, in_memory=in_memory,
    )


def _check_label(label: str, class_names: list[str] | None, num_classes: int | None, row: int, file: Path) -> None:
    if class_names is not None:
        if label not in class_names:
            raise ImgrecError(f"{file} row {row}: label {label!r} is not one of dataset.classes {class_names}")
        return
    if num_classes is not None:
        if not label.lstrip("-").isdigit() or not 0 <= int(label) < num_classes:
            raise ImgrecError(
                f"{file} row {row}: label {label!r} is outside [0, {num_classes}) (dataset.num_classes={num_classes}); "
                "fix the row, or give dataset.classes to use names"
            )


def csv_table(
    file: str,
    root: str | None = None,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str | None = None,
    classes: list[str] | None = None,
    image_size: int = 64,
    channels: int | str = "auto",
    num_classes: int | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
    on_bad_image: str = "error",
    in_memory="auto",
) -> Splits:
    """A CSV with an image path and a label per row; paths are relative to `root` (default: the CSV's folder).

    Labels are class names (listed in `classes`, or all distinct labels sorted) or class indices
    0..num_classes-1. An optional split column says train/val/test per row.
    """
    table = Path(file).expanduser()
    if not table.is_file():
        raise ImgrecError(f"dataset.file '{file}' does not exist; give the CSV with columns {path_column},{label_column}")
    base = Path(root).expanduser() if root else table.parent
    class_names = list(map(str, classes)) if classes is not None else None
    wanted = [c for c in (path_column, label_column, split_column) if c]
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in wanted if c not in (reader.fieldnames or [])]
            if missing:
                raise ImgrecError(
                    f"dataset.file '{file}' has no column(s) {missing}; its columns are {reader.fieldnames}. "
                    "Set dataset.path_column / dataset.label_column / dataset.split_column"
                )
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise ImgrecError(f"dataset.file '{file}' is not UTF-8 text (an undecodable byte at offset {error.start}); "
                          "save it as UTF-8 (e.g. from a spreadsheet: CSV UTF-8)") from None
    except csv.Error as error:
        raise ImgrecError(f"dataset.file '{file}' is not a readable CSV: {error}") from None
    if not rows:
        raise ImgrecError(f"dataset.file '{file}' has no rows")
    paths, raw_labels, assignment = [], [], []
    for row_number, row in enumerate(rows, start=2):  # row 1 is the header
        short = [column for column in wanted if row.get(column) is None]
        if short:
            raise ImgrecError(f"{table} row {row_number} has fewer fields than the header: no {', '.join(short)} "
                              "value; every row needs one value per column")
        if not row[path_column].strip():
            raise ImgrecError(f"{table} row {row_number}: the {path_column} is empty")
        path = base / row[path_column].strip()
        if not path.is_file():
            raise ImgrecError(f"{table} row {row_number}: image file '{path}' does not exist (paths are relative to {base})")
        label = row[label_column].strip()
        if not label:
            raise ImgrecError(f"{table} row {row_number}: the {label_column} is empty; give every image its class "
                              "(or leave the row out)")
        _check_label(label, class_names, num_classes, row_number, table)
        split = TRAIN
        if split_column:
            split_value = row[split_column].strip().lower()
            if split_value not in SPLIT_NAMES:
                raise ImgrecError(f"{table} row {row_number}: split {split_value!r} is not one of train, val, test")
            split = SPLIT_NAMES[split_value]
        paths.append(path)
        raw_labels.append(label)
        assignment.append(split)
    if class_names is not None:
        labels = [class_names.index(label) for label in raw_labels]
    elif all(label.isdigit() for label in raw_labels):  # indices: class i is named "i"
        labels = [int(label) for label in raw_labels]
        class_names = [str(i) for i in range(num_classes if num_classes is not None else max(labels) + 1)]
    else:
        class_names = sorted(set(raw_labels))
        labels = [class_names.index(label) for label in raw_labels]
    if num_classes is not None and num_classes != len(class_names):
        raise ImgrecError(f"dataset.num_classes={num_classes} but '{file}' has {len(class_names)} classes {class_names}")
    return splits_from_files(
        paths, labels, assignment, class_names, image_size=image_size, channels=channels,
        val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
        normalize=normalize, mean=mean, std=std, on_bad_image=on_bad_image, in_memory=in_memory,
    )
