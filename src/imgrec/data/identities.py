"""Face (identity) datasets: images grouped by the person they show, split by people or by images.

Where the person comes from: person folders (`root/<person>/<image>`), a CSV of path,person rows, or
the file name through a regular expression whose first group is the person (the Yale faces'
`subject01.glasses` with `subject(\\d+)`). `split_by: identity` puts every person in exactly one split,
so validation and test measure faces the model never trained on (open set); `split_by: image` keeps
every person in every split (closed set). Validation and test pairs need people with at least
`min_images` images each.
"""

import csv
import re
from pathlib import Path

import numpy as np

from imgrec.data.splits import TEST, TRAIN, VAL
from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

SPLIT_BY = ("identity", "image", "none")


def person_folders(root: Path) -> tuple[list[Path], list[str]]:
    """Every (non-hidden) file under root/<person>/ and its person."""
    people = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not people:
        raise ImgrecError(f"'{root}' has no person folders; expected root/<person>/<image> (a face dataset also "
                          "takes file names that carry the person, dataset.pattern, or a CSV, dataset.file)")
    paths, persons = [], []
    for folder in people:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                paths.append(path)
                persons.append(folder.name)
    if not paths:
        raise ImgrecError(f"the person folders in '{root}' hold no files; expected root/<person>/<image>")
    return paths, persons


def named_files(root: Path, pattern: str) -> tuple[list[Path], list[str]]:
    """Every (non-hidden) file directly in root whose name the pattern matches; group 1 is the person."""
    try:
        expression = re.compile(pattern)
    except re.error as error:
        raise ImgrecError(f"dataset.pattern={pattern!r} is not a regular expression ({error})") from None
    if expression.groups < 1:
        raise ImgrecError(f"dataset.pattern={pattern!r} has no group: put the person in parentheses, e.g. subject(\\d+)")
    paths, persons, unmatched = [], [], []
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        match = expression.match(path.name)
        if match is None or not match.group(1):
            unmatched.append(path.name)
            continue
        paths.append(path)
        persons.append(match.group(1))
    if not paths:
        raise ImgrecError(f"no file name in '{root}' matches dataset.pattern={pattern!r} (e.g. {unmatched[:3]})")
    if unmatched:
        raise ImgrecError(f"{len(unmatched)} file(s) in '{root}' do not match dataset.pattern={pattern!r}, e.g. "
                          f"{unmatched[0]}; move them out or widen the pattern")
    return paths, persons


def listed_files(file: Path, root: Path, path_column: str, person_column: str) -> tuple[list[Path], list[str]]:
    """path,person rows of a CSV; paths relative to root."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in (path_column, person_column) if c not in (reader.fieldnames or [])]
            if missing:
                raise ImgrecError(f"dataset.file '{file}' has no column(s) {missing}; its columns are {reader.fieldnames}")
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise ImgrecError(f"dataset.file '{file}' is not UTF-8 text (an undecodable byte at offset {error.start})") from None
    paths, persons = [], []
    for number, row in enumerate(rows, start=2):
        path, person = (row.get(path_column) or "").strip(), (row.get(person_column) or "").strip()
        if not path or not person:
            raise ImgrecError(f"{file} row {number}: the {path_column} or {person_column} is empty")
        if not (root / path).is_file():
            raise ImgrecError(f"{file} row {number}: '{root / path}' does not exist (paths are relative to {root})")
        paths.append(root / path)
        persons.append(person)
    if not paths:
        raise ImgrecError(f"dataset.file '{file}' has no rows")
    return paths, persons


def identity_assignment(persons: list[str], split_by: str, val_fraction: float, test_fraction: float, seed: int,
                        min_images: int) -> np.ndarray:
    """TRAIN / VAL / TEST per image. By identity: round(fraction x pairable people) people each for val and
    test (at least 2, for impostor pairs), drawn among those with at least min_images images (pairs need
    them), the rest train, people with fewer images too (sets like LFW, where most people have one image,
    keep them for training). By image: each
    person's images spread over the three splits, so every person needs min_images in val and test
    each plus one to train on."""
    if split_by not in SPLIT_BY:
        raise ImgrecError(f"dataset.split_by={split_by!r} must be identity (people split: open set), image "
                          "(every person in every split: closed set) or none (no split: a folder scored whole)")
    if split_by == "none":  # imgrec-eval split=all of new people: every image in one split, nothing held out
        return np.full(len(persons), TRAIN)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not is_number(value) or not 0 < value < 1:
            raise ImgrecError(f"dataset.{name}={value!r} must be between 0 and 1 (exclusive), e.g. 0.2")
    if not is_whole(min_images, 2):
        raise ImgrecError(f"dataset.min_images={min_images!r} must be a whole number >= 2 (a genuine pair needs two)")
    names, person_of = np.unique(np.asarray(persons), return_inverse=True)
    counts = np.bincount(person_of, minlength=len(names))
    rng = np.random.default_rng(seed)
    assignment = np.full(len(persons), TRAIN)
    if split_by == "identity":
        eligible = rng.permutation(np.flatnonzero(counts >= min_images))
        n_test, n_val = max(2, round(test_fraction * len(eligible))), max(2, round(val_fraction * len(eligible)))
        if len(eligible) < n_test + n_val or len(names) - n_test - n_val < 2:
            raise ImgrecError(f"{len(names)} people, {len(eligible)} of them with at least {min_images} images: too few "
                              f"for {n_val} validation and {n_test} test people and 2 to train on; add people, lower "
                              "dataset.min_images or the fractions, or use dataset.split_by=image (or split_by=none "
                              "to score a folder whole: imgrec-eval split=all)")
        for code, chosen in ((TEST, eligible[:n_test]), (VAL, eligible[n_test:n_test + n_val])):
            assignment[np.isin(person_of, chosen)] = code
        return assignment
    needed = 2 * min_images + 1
    short = [f"{names[i]} ({counts[i]})" for i in np.flatnonzero(counts < needed)]
    if short:
        raise ImgrecError(f"dataset.split_by=image puts every person in train, val and test, which needs {needed} images "
                          f"each ({min_images} for val and test pairs); too few: {', '.join(short[:5])}"
                          f"{' ...' if len(short) > 5 else ''}; lower dataset.min_images or use split_by=identity")
    for person in range(len(names)):
        images = rng.permutation(np.flatnonzero(person_of == person))
        n_test = max(min_images, round(test_fraction * len(images)))
        n_val = max(min_images, round(val_fraction * len(images)))
        assignment[images[:n_test]] = TEST
        assignment[images[n_test:n_test + n_val]] = VAL
    return assignment
