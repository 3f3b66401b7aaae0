"""Object-detection annotations on disk (Pascal VOC XML, COCO JSON, YOLO txt) read into plain records.

Each image becomes a BoxedImage: boxes as (x1, y1, x2, y2) pixels of the image as stored, labels as 0-based
indices into the class names (the detection task adds torchvision's background offset, not this module).
Nothing here decodes pixels: an image's size comes from its annotation, else from its file's header.
"""

import json
import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgrec.data.folders import image_files_under
from imgrec.data.images import IMAGE_EXTENSIONS
from imgrec.errors import ImgrecError
from imgrec.values import as_list, is_whole

log = logging.getLogger("imgrec")
BAD_BOX_CHOICES = ("drop", "clip", "error")
# A coordinate at most this many pixels beyond the image's edge is rounding, not a bad box, and is clipped
# without counting: YOLO's 6-decimal fractions, COCO's float sums (x + w = 640.0001), and VOC files written
# 0-based by some tools (xmin=0 becomes x1=-1 after the 1-based shift below).
EDGE_TOLERANCE = 1.0
# LabelImg writes the class names next to the YOLO label files: a list of names, not a label file
YOLO_CLASS_LIST = "classes.txt"
BAD_BOX_FIX = "fix the annotation, or set dataset.bad_boxes=clip (cut it to the image) or drop (leave it out)"


@dataclass
class BoxedImage:
    """One image and the objects annotated in it."""

    path: Path
    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2 in pixels of the image as stored; N may be 0
    labels: np.ndarray  # (N,) int64 indices into Annotations.class_names
    width: int  # as the annotation says, else as the image file's header says
    height: int


@dataclass
class Annotations:
    images: list[BoxedImage]  # sorted by path
    class_names: list[str]
    dropped_boxes: int  # bad boxes left out (bad_boxes=drop, or clip that left no area)
    clipped_boxes: int  # bad boxes cut to the image and kept (bad_boxes=clip)
    first_bad_box: str | None = None  # its file and what was wrong, for the warning


class _BadBoxRule:
    """bad_boxes (drop | clip | error) for a box reaching outside its image or without area; each bad box
    is counted once, as clipped (kept) or dropped (gone)."""

    def __init__(self, bad_boxes: str):
        if bad_boxes not in BAD_BOX_CHOICES:
            raise ImgrecError(f"dataset.bad_boxes={bad_boxes!r} must be one of {', '.join(BAD_BOX_CHOICES)}")
        self.mode, self.dropped, self.clipped = bad_boxes, 0, 0
        self.first: str | None = None  # where the first bad box was, for the warning

    def apply(self, box: list[float], width: int, height: int, where: str) -> list[float] | None:
        """The box to keep (clipped to the image) or None when it is dropped."""
        limits = (width, height, width, height)
        inside = [min(max(value, 0.0), limit) for value, limit in zip(box, limits)]
        has_area = inside[2] > inside[0] and inside[3] > inside[1]
        reaches_out = max(abs(a - b) for a, b in zip(box, inside)) > EDGE_TOLERANCE
        if has_area and not reaches_out:
            return inside
        problem = "reaches outside" if reaches_out else "has no area in"
        shown = ", ".join(f"{value:g}" for value in box)
        if self.mode == "error":
            fix = BAD_BOX_FIX if has_area else "fix the annotation, or set dataset.bad_boxes=drop (leave it out)"
            raise ImgrecError(f"{where}: box (x1, y1, x2, y2) = ({shown}) {problem} its {width}x{height} image; {fix}")
        if self.first is None:
            self.first = f"{where}: ({shown}) {problem} its {width}x{height} image"
        if self.mode == "clip" and has_area:
            self.clipped += 1
            return inside
        self.dropped += 1
        return None


def _number(text) -> float | None:
    """A finite number from text or JSON, else None ('nan' and 'inf' parse as floats but are no coordinates)."""
    if isinstance(text, bool):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _folder(path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ImgrecError(f"{what} '{path}' is not a folder; check the path")
    return path


def _checked_class_names(class_names) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(name) for name in as_list(class_names, "dataset.class_names", "[cat, dog]")]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if not names or repeated:
        repeats = f" ({repeated} repeat)" if repeated else ""
        raise ImgrecError(f"dataset.class_names={names} must name each class once{repeats}, or be null to take "
                          "them from the annotations")
    return names


def _unknown_class(where: str, name, known: list[str]) -> ImgrecError:
    return ImgrecError(f"{where} names class {name!r}, which is not among the known classes {known}; "
                       "add it to dataset.class_names or fix the annotation")


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; Image.open does not decode the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImgrecError(f"image '{path}' cannot be read ({error}); fix or remove it") from error


def _checked_size(path: Path, declared: tuple | None, where: str) -> tuple[int, int]:
    """The image's (width, height) from its header, which also proves the file is an image Pillow reads; an
    annotation declaring another size is refused, since its boxes would be in another image's pixels."""
    actual = _header_size(path)
    if declared is not None and tuple(int(v) for v in declared) != tuple(actual):
        raise ImgrecError(f"{where} says its image is {int(declared[0])}x{int(declared[1])} but '{path}' is "
                          f"{actual[0]}x{actual[1]}; fix the annotation's size (or the image)")
    return actual


def _boxed(path: Path, boxes: list, labels: list, width: int, height: int) -> BoxedImage:
    return BoxedImage(path, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                      np.asarray(labels, dtype=np.int64), int(width), int(height))


def _annotations(images: list[BoxedImage], class_names: list[str], rule: _BadBoxRule) -> Annotations:
    return Annotations(sorted(images, key=lambda image: image.path), class_names, rule.dropped, rule.clipped,
                       rule.first)


def _listed_images(folder: Path) -> list[Path]:
    # names starting with a dot are not images (macOS writes ._name resource forks next to copied files)
    return [path for path in image_files_under(folder) if not path.name.startswith(".")]


# ---- Pascal VOC ----


class _VocImageFinder:
    """The image of an XML: by its <filename> (just the name: tools write full paths, Windows ones too), by
    that name's stem (NEU-DET writes some without the extension), else by the XML's own stem."""

    def __init__(self, folder: Path):
        self.folder, self.by_name, self.by_stem = folder, defaultdict(list), defaultdict(list)
        for path in _listed_images(folder):
            self.by_name[path.name].append(path)
            self.by_stem[path.stem].append(path)

    def find(self, filename: str | None, xml: Path) -> Path:
        name = re.split(r"[\\/]", filename.strip())[-1] if filename else ""
        tries = [self.by_name.get(name), self.by_stem.get(name), self.by_stem.get(Path(name).stem),
                 self.by_stem.get(xml.stem)] if name else [self.by_stem.get(xml.stem)]
        found = next((paths for paths in tries if paths), None)
        if found is None:
            named = f"image {filename!r}" if filename else "an image it does not name (no <filename>)"
            raise ImgrecError(f"'{xml}' is for {named}, which is not in '{self.folder}' (looked for that "
                              f"name and for '{xml.stem}' with any of {', '.join(IMAGE_EXTENSIONS)}); "
                              "add the image or remove the XML")
        if len(found) > 1:
            raise ImgrecError(f"'{xml}' could be for any of {[str(p) for p in found]}; rename all but one")
        return found[0]


def _voc_size(root) -> tuple[int, int] | None:
    width, height = _number(root.findtext("size/width")), _number(root.findtext("size/height"))
    # labelling tools write 0 (or nothing) when they could not read the image: the header says it then
    return (int(width), int(height)) if width and height and width > 0 and height > 0 else None


def _voc_objects(root, xml: Path) -> list[tuple[str, list[float], str]]:
    """(class name, x1 y1 x2 y2, where) of each <object>.

    VOC numbers pixels from 1 and xmax is the last pixel inside the box; pixel i covers [i - 1, i] in
    0-based image coordinates, so the box is x1 = xmin - 1, x2 = xmax (the reading of torchvision's and
    mmdetection's VOC loaders). NEU-DET's boxes run from 1 to 200 in 200x200 images: [0, 200], all inside.
    """
    objects = []
    for index, element in enumerate(root.findall("object"), 1):
        where = f"'{xml}' <object> {index}"
        name = (element.findtext("name") or "").strip()
        if not name:
            raise ImgrecError(f"{where} has no <name>; add the class name or remove the object")
        bndbox = element.find("bndbox")
        if bndbox is None:
            raise ImgrecError(f"{where} ({name}) has no <bndbox>; add xmin, ymin, xmax, ymax or remove the object")
        values = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = bndbox.findtext(key)
            value = _number(text)
            if value is None:
                found = "is missing" if text is None else f"is {text.strip()!r}, not a number"
                raise ImgrecError(f"{where} ({name}): <bndbox> <{key}> {found}; fix the box or remove the object")
            values.append(value)
        xmin, ymin, xmax, ymax = values
        objects.append((name, [xmin - 1, ymin - 1, xmax, ymax], where))
    return objects


def _parse_voc(xml: Path, finder: _VocImageFinder):
    try:
        # ElementTree (expat) does not fetch external entities; keep it that way (no lxml resolve_entities)
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as error:
        raise ImgrecError(f"'{xml}' is not valid XML ({error}); fix or remove the file") from error
    image = finder.find(root.findtext("filename"), xml)
    width, height = _checked_size(image, _voc_size(root), f"'{xml}'")
    return image, width, height, _voc_objects(root, xml)


def read_voc(images: Path, annotations: Path, class_names: list[str] | None = None,
             bad_boxes: str = "drop") -> Annotations:
    """Pascal VOC: one XML per image in `annotations`, its image in `images` (see _VocImageFinder).

    The XMLs define the dataset: an image without an XML is left out (with a warning), an XML without
    <object> is an image without objects. Objects marked <difficult> are kept like any other. Class names,
    unless given, are the sorted set of the <name>s.
    """
    rule, class_names = _BadBoxRule(bad_boxes), _checked_class_names(class_names)
    images, annotations = _folder(images, "images folder"), _folder(annotations, "annotations folder")
    xml_files = sorted(p for p in annotations.glob("*.xml") if not p.name.startswith("."))
    if not xml_files:
        raise ImgrecError(f"annotations folder '{annotations}' has no .xml files; expected a Pascal VOC XML per image")
    finder = _VocImageFinder(images)
    parsed = [(xml, *_parse_voc(xml, finder)) for xml in xml_files]
    xml_of_image: dict[Path, Path] = {}
    for xml, image, *_ in parsed:
        if image in xml_of_image:  # often an XML copied from another with its <filename> left unchanged
            raise ImgrecError(f"'{xml_of_image[image]}' and '{xml}' are both for image '{image}'; "
                              "fix the <filename> of the wrong one")
        xml_of_image[image] = xml
    unannotated = sorted(set(path for paths in finder.by_name.values() for path in paths) - set(xml_of_image))
    if unannotated:
        log.warning(f"{len(unannotated)} image(s) in '{images}' have no XML in '{annotations}' and are left out, "
                    f"e.g. {unannotated[0].name}")
    names = class_names or sorted({name for *_, objects in parsed for name, _, _ in objects})
    if not names:
        raise ImgrecError(f"no XML in '{annotations}' has an <object>, so there are no class names to learn; "
                          "annotate some objects or give dataset.class_names")
    index = {name: i for i, name in enumerate(names)}
    records = []
    for xml, image, width, height, objects in parsed:
        boxes, labels = [], []
        for name, box, where in objects:
            if name not in index:
                raise _unknown_class(where, name, names)
            kept = rule.apply(box, width, height, where)
            if kept is not None:
                boxes.append(kept)
                labels.append(index[name])
        records.append(_boxed(image, boxes, labels, width, height))
    return _annotations(records, names, rule)


# ---- COCO ----


def _load_coco(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ImgrecError(f"COCO annotation file '{file}' does not exist; check the path") from error
    except OSError as error:
        raise ImgrecError(f"COCO annotation file '{file}' cannot be read ({error}); check the path") from error
    except UnicodeDecodeError as error:
        raise ImgrecError(f"'{file}' is not UTF-8 text ({error}); save the JSON as UTF-8") from error
    except json.JSONDecodeError as error:
        raise ImgrecError(f"'{file}' is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}; "
                          "fix the file") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list) or not isinstance(data.get("annotations", []), list):
        raise ImgrecError(f"'{file}' is not a COCO annotation file: expected an object with the lists 'images', "
                          "'annotations' and 'categories'")
    return data


def _coco_categories(data: dict, file: Path, class_names: list[str] | None):
    """(class names, category id -> class index, or None for a category outside the given class names)."""
    names_by_id = {}
    for category in data["categories"]:
        if not isinstance(category, dict) or not isinstance(category.get("name"), str) \
                or not is_whole(category.get("id")):
            raise ImgrecError(f"'{file}' has category {category!r}; each needs a whole-number 'id' and a 'name'")
        if category["id"] in names_by_id:
            raise ImgrecError(f"'{file}' has two categories with id {category['id']!r}; give each its own id")
        names_by_id[category["id"]] = category["name"]
    ids = sorted(names_by_id)
    names = class_names or [names_by_id[i] for i in ids]
    if class_names is None and len(set(names)) < len(names):
        raise ImgrecError(f"'{file}' has several categories of the same name ({names}); merge them, or give "
                          "dataset.class_names")
    index = {name: i for i, name in enumerate(names)}
    return names, {i: index.get(names_by_id[i]) for i in ids}, names_by_id


def _coco_images(data: dict, file: Path, folder: Path) -> dict:
    """image id -> [path, width, height, boxes, labels]; file_name is relative to `folder` (or just its name)."""
    entries = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise ImgrecError(f"'{file}' has image entry {entry!r} without an 'id' and a 'file_name'; add them")
        if not isinstance(entry["id"], (int, str)) or isinstance(entry["id"], bool):
            raise ImgrecError(f"'{file}' has image entry {entry!r} whose id is not a number or a string; fix it")
        if entry["id"] in entries:
            raise ImgrecError(f"'{file}' has two image entries with id {entry['id']!r}; give each its own id")
        path = folder / entry["file_name"]
        if not path.is_file():
            path = folder / re.split(r"[\\/]", entry["file_name"])[-1]
        if not path.is_file():
            raise ImgrecError(f"'{file}' lists image id {entry['id']!r} as {entry['file_name']!r}, which is not in "
                              f"'{folder}'; add the image or remove its entry")
        width, height = _number(entry.get("width")), _number(entry.get("height"))
        declared = (width, height) if width and height and width > 0 and height > 0 else None
        width, height = _checked_size(path, declared, f"'{file}' image id {entry['id']!r}")
        entries[entry["id"]] = [path, int(width), int(height), [], []]
    return entries


def read_coco(annotation_file: Path, images: Path, class_names: list[str] | None = None,
              bad_boxes: str = "drop") -> Annotations:
    """COCO JSON: `images` entries (file_name relative to the `images` folder), `annotations` with bbox
    [x, y, w, h] in pixels, and `categories`, whose ids (any, e.g. 1, 3, 7) map in id order to 0, 1, 2 unless
    class names are given (then by name). Every listed image is kept, with no boxes if it has no annotation.

    iscrowd=1 annotations are left out: they mark a crowd region, not one object (COCO's evaluation ignores
    detections there, and torchvision's references train without them). `segmentation` (the optional
    instance masks) is not read now; it stays in the file for the task that will want it.
    """
    rule, class_names = _BadBoxRule(bad_boxes), _checked_class_names(class_names)
    annotation_file, images = Path(annotation_file), _folder(images, "images folder")
    data = _load_coco(annotation_file)
    names, class_of_category, names_by_id = _coco_categories(data, annotation_file, class_names)
    entries = _coco_images(data, annotation_file, images)
    for position, annotation in enumerate(data.get("annotations", []), 1):
        if not isinstance(annotation, dict):
            raise ImgrecError(f"'{annotation_file}' annotation {position} is {annotation!r}, not an object")
        where = f"'{annotation_file}' annotation id {annotation.get('id', f'#{position} (no id)')}"
        if annotation.get("iscrowd", 0):
            continue
        image_id = annotation.get("image_id")
        entry = entries.get(image_id) if isinstance(image_id, (int, str)) else None
        if entry is None:
            raise ImgrecError(f"{where} has image_id {image_id!r}, which no entry in 'images' "
                              "has; add the image entry or remove the annotation")
        category = annotation.get("category_id")
        if not is_whole(category) or category not in class_of_category:
            raise ImgrecError(f"{where} has category_id {category!r}, which is not in 'categories' "
                              f"{sorted(names_by_id.items())}; fix the id or add the category")
        if class_of_category[category] is None:
            raise _unknown_class(where, names_by_id[category], names)
        bbox = annotation.get("bbox")
        values = [_number(value) for value in bbox] if isinstance(bbox, list) else []
        if len(values) != 4 or None in values:
            raise ImgrecError(f"{where} has bbox {bbox!r}; expected [x, y, width, height] in pixels")
        x, y, w, h = values
        path, width, height, boxes, labels = entry
        kept = rule.apply([x, y, x + w, y + h], width, height, f"{where} (image '{path.name}')")
        if kept is not None:
            boxes.append(kept)
            labels.append(class_of_category[category])
    records = [_boxed(path, boxes, labels, width, height) for path, width, height, boxes, labels in entries.values()]
    return _annotations(records, names, rule)


# ---- YOLO ----


def _yolo_objects(label: Path, class_names: list[str]) -> list[tuple[int, list[float], str]]:
    """(class index, cx cy w h as fractions, where) of each line of a YOLO label file."""
    try:
        text = label.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ImgrecError(f"label file '{label}' cannot be read as text ({error}); fix or remove it") from error
    objects = []
    for number, line in enumerate(text.splitlines(), 1):
        fields, where = line.split(), f"'{label}' line {number}"
        if not fields:
            continue
        if len(fields) != 5:
            raise ImgrecError(f"{where} has {len(fields)} values ({line.strip()!r}); expected 5: class cx cy w h "
                              "(polygon segment labels are not supported)")
        values = [_number(field) for field in fields]
        if None in values:
            raise ImgrecError(f"{where} ({line.strip()!r}) holds {fields[values.index(None)]!r}, not a number")
        class_id, *box = values
        if class_id != int(class_id) or not 0 <= class_id < len(class_names):
            raise ImgrecError(f"{where} has class {fields[0]}, but the {len(class_names)} class_names {class_names} "
                              f"are numbered 0 to {len(class_names) - 1}; fix the line or dataset.class_names")
        if not all(0.0 <= value <= 1.0 for value in box):
            raise ImgrecError(f"{where} has cx cy w h = {' '.join(fields[1:])}; YOLO wants them as fractions "
                              "of the image's width and height, in [0, 1]")
        objects.append((int(class_id), box, where))
    return objects


def read_yolo(images: Path, labels: Path, class_names: list[str], bad_boxes: str = "drop") -> Annotations:
    """YOLO txt: for each image under `images`, the file with the same relative path under `labels` and the
    suffix .txt, one `class cx cy w h` line per object, the box as fractions of the image's size (its header
    gives the pixels). An image without a label file has no objects (Ultralytics' convention for background
    images); a label file without an image is an error. Class numbers index the given class_names.
    """
    rule, class_names = _BadBoxRule(bad_boxes), _checked_class_names(class_names)
    if class_names is None:
        raise ImgrecError("YOLO labels hold class numbers only: give dataset.class_names, the names in the order "
                          "of their numbers (as in the names of a YOLO data.yaml)")
    images, labels = _folder(images, "images folder"), _folder(labels, "labels folder")
    image_of_key: dict[Path, Path] = {}
    for path in _listed_images(images):
        key = path.relative_to(images).with_suffix("")
        if key in image_of_key:
            raise ImgrecError(f"'{image_of_key[key]}' and '{path}' would share the label file "
                              f"'{labels / key.with_suffix('.txt')}'; rename one")
        image_of_key[key] = path
    if not image_of_key:
        raise ImgrecError(f"images folder '{images}' has no image files (looked for {', '.join(IMAGE_EXTENSIONS)})")
    label_of_key = {}
    for label in sorted(labels.rglob("*.txt")):
        key = label.relative_to(labels).with_suffix("")
        if label.name.startswith(".") or (label.name == YOLO_CLASS_LIST and key not in image_of_key):
            continue
        if key not in image_of_key:
            raise ImgrecError(f"label file '{label}' has no image '{images / key}.<ext>' in '{images}'; "
                              "add the image or remove the label file")
        label_of_key[key] = label
    records = []
    for key, image in image_of_key.items():
        width, height = _header_size(image)
        objects = _yolo_objects(label_of_key[key], class_names) if key in label_of_key else []
        boxes, classes = [], []
        for class_id, (cx, cy, w, h), where in objects:
            box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            kept = rule.apply(box, width, height, f"{where} (image '{image.name}')")
            if kept is not None:
                boxes.append(kept)
                classes.append(class_id)
        records.append(_boxed(image, boxes, classes, width, height))
    return _annotations(records, class_names, rule)
