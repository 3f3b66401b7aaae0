"""Detection annotations read from VOC, COCO and YOLO folders (data/detection_annotations.py)."""

import re
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrec.data.detection_annotations import read_coco, read_voc, read_yolo
from imgrec.errors import ImgrecError

NEU_DET = Path(__file__).resolve().parents[3] / "shared" / "data" / "neu-det"


def write_image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, height), 128).save(path)
    return path


def voc_xml(filename: str | None, objects: list, size: tuple | None = (100, 80)) -> str:
    """objects: (name, xmin, ymin, xmax, ymax) tuples, or raw XML strings for malformed ones."""
    parts = ["<annotation><folder>x</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>1</depth></size>")
    for item in objects:
        if isinstance(item, str):
            parts.append(item)
        else:
            name, *box = item
            fields = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
            parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>{fields}</bndbox></object>")
    return "".join(parts) + "</annotation>"


def voc_folder(root: Path, files: dict[str, str], images=("a.png", "b.png", "c.png"), size=(100, 80)):
    for name in images:
        write_image(root / "images" / name, *size)
    (root / "xml").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / "xml" / name).write_text(text)
    return root / "images", root / "xml"


# ---- VOC ----


def test_voc_boxes_are_read_back_shifted_from_1_based_pixels_with_classes_from_the_names(tmp_path):
    images, xml = voc_folder(tmp_path, {
        "b.xml": voc_xml("b.png", [("dog", 11, 21, 50, 60), ("cat", 1, 1, 100, 80)]),
        "a.xml": voc_xml("a.png", [("cat", 5, 6, 7, 8)]),
        "c.xml": voc_xml("c.png", []),  # an image without objects
    })
    read = read_voc(images, xml)
    assert read.class_names == ["cat", "dog"]  # sorted, not in order of appearance
    assert [image.path.name for image in read.images] == ["a.png", "b.png", "c.png"]
    a, b, c = read.images
    np.testing.assert_array_equal(a.boxes, [[4, 5, 7, 8]])
    np.testing.assert_array_equal(b.boxes, [[10, 20, 50, 60], [0, 0, 100, 80]])  # the whole image is inside
    np.testing.assert_array_equal(b.labels, [1, 0])
    assert (b.boxes.dtype, b.labels.dtype, b.width, b.height) == (np.float32, np.int64, 100, 80)
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,) and c.boxes.dtype == np.float32
    assert (read.dropped_boxes, read.clipped_boxes) == (0, 0)


def test_voc_class_names_given_set_the_indices_and_an_unknown_class_is_named(tmp_path):
    images, xml = voc_folder(tmp_path, {"a.xml": voc_xml("a.png", [("cat", 5, 6, 7, 8), ("dog", 1, 1, 9, 9)])},
                             images=("a.png",))
    read = read_voc(images, xml, class_names=["dog", "bird", "cat"])
    assert read.class_names == ["dog", "bird", "cat"]
    np.testing.assert_array_equal(read.images[0].labels, [2, 0])
    with pytest.raises(ImgrecError, match=r"a\.xml' <object> 2 names class 'dog'.*\['cat', 'bird'\]"):
        read_voc(images, xml, class_names=["cat", "bird"])
    with pytest.raises(ImgrecError, match=r"dataset\.class_names='cat' must be a list"):
        read_voc(images, xml, class_names="cat")
    with pytest.raises(ImgrecError, match=r"dataset\.class_names=\['cat', 'dog', 'cat'\] .* \(\['cat'\] repeat\)"):
        read_voc(images, xml, class_names=["cat", "dog", "cat"])


def test_voc_finds_the_image_by_filename_then_its_stem_then_the_xml_name(tmp_path):
    images, xml = voc_folder(tmp_path, {
        "x1.xml": voc_xml("a", [("cat", 1, 1, 5, 5)]),  # no extension, as in some NEU-DET files
        "x2.xml": voc_xml(r"C:\labels\JPEGImages\b.jpg", [("cat", 1, 1, 5, 5)]),  # another folder and extension
        "c.xml": voc_xml(None, [("cat", 1, 1, 5, 5)]),  # no <filename>: the XML's own name
    })
    assert [image.path.name for image in read_voc(images, xml).images] == ["a.png", "b.png", "c.png"]


def test_voc_size_missing_or_zero_comes_from_the_image_header(tmp_path):
    images, xml = voc_folder(tmp_path, {"a.xml": voc_xml("a.png", [], size=None),
                                        "b.xml": voc_xml("b.png", [], size=(0, 0))}, images=("a.png", "b.png"),
                             size=(37, 23))
    read = read_voc(images, xml, class_names=["cat"])
    assert [(image.width, image.height) for image in read.images] == [(37, 23), (37, 23)]
    with pytest.raises(ImgrecError, match=r"no XML in '.*xml' has an <object>, so there are no class names"):
        read_voc(images, xml)


def test_voc_boxes_written_0_based_are_not_dropped(tmp_path):
    images, xml = voc_folder(tmp_path, {"a.xml": voc_xml("a.png", [("cat", 0, 0, 99, 79)])}, images=("a.png",))
    read = read_voc(images, xml)
    np.testing.assert_array_equal(read.images[0].boxes, [[0, 0, 99, 79]])  # -1 is within the edge tolerance
    assert read.dropped_boxes == 0


@pytest.mark.parametrize("objects, message", [
    ([("cat", 1, 1, 5, 5), "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"
      "</object>"], r"a\.xml' <object> 2 \(cat\): <bndbox> <ymax> is missing"),
    ([("cat", 1, "one", 5, 5)], r"a\.xml' <object> 1 \(cat\): <bndbox> <ymin> is 'one', not a number"),
    ([("cat", 1, "nan", 5, 5)], r"a\.xml' <object> 1 \(cat\): <bndbox> <ymin> is 'nan', not a number"),
    (["<object><name>cat</name></object>"], r"a\.xml' <object> 1 \(cat\) has no <bndbox>"),
    (["<object><bndbox/></object>"], r"a\.xml' <object> 1 has no <name>"),
])
def test_voc_malformed_objects_are_named_with_file_and_index(tmp_path, objects, message):
    images, xml = voc_folder(tmp_path, {"a.xml": voc_xml("a.png", objects)}, images=("a.png",))
    with pytest.raises(ImgrecError, match=message):
        read_voc(images, xml)


def test_voc_unparsable_xml_missing_image_and_shared_image_are_named(tmp_path):
    images, xml = voc_folder(tmp_path, {"a.xml": "<annotation><filename>a.png</annotation>"}, images=("a.png",))
    with pytest.raises(ImgrecError, match=r"a\.xml' is not valid XML \(mismatched tag: line 1"):
        read_voc(images, xml)
    (xml / "a.xml").unlink()
    (xml / "z.xml").write_text(voc_xml("zebra.png", []))  # neither zebra.* nor z.* is in images
    with pytest.raises(ImgrecError, match=r"z\.xml' is for image 'zebra\.png', which is not in '.*images'"):
        read_voc(images, xml)
    (xml / "z.xml").unlink()
    (xml / "a.xml").write_text(voc_xml("a.png", []))
    (xml / "b.xml").write_text(voc_xml("a.png", []))  # copied, <filename> left unchanged
    with pytest.raises(ImgrecError, match=r"a\.xml' and '.*b\.xml' are both for image '.*a\.png'"):
        read_voc(images, xml)


def test_voc_bad_box_names_file_object_box_and_image_size(tmp_path):
    images, xml = voc_folder(tmp_path, {"a.xml": voc_xml("a.png", [("cat", 1, 1, 5, 5), ("cat", 50, 10, 150, 20)])},
                             images=("a.png",))
    with pytest.raises(ImgrecError, match=r"a\.xml' <object> 2: box .* = \(49, 9, 150, 20\) reaches outside its "
                                          r"100x80 image; fix the annotation, or set dataset\.bad_boxes=clip"):
        read_voc(images, xml, bad_boxes="error")
    read = read_voc(images, xml, bad_boxes="clip")
    np.testing.assert_array_equal(read.images[0].boxes, [[0, 0, 5, 5], [49, 9, 100, 20]])


# ---- bad boxes (through COCO, whose boxes are plain pixels) ----


def coco_folder(root: Path, annotations: list, images=None, categories=None) -> tuple[Path, Path]:
    images = images or [{"id": 1, "file_name": "a.png", "width": 100, "height": 80}]
    for entry in images:
        write_image(root / "images" / entry["file_name"], 100, 80)
    categories = categories or [{"id": 1, "name": "cat"}]
    file = root / "coco.json"
    file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}, indent=1))
    return file, root / "images"


def annotation(id, bbox, image_id=1, category_id=1, **more):
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0, **more}


BAD_BOXES = [
    annotation(1, [10, 10, 20, 20]),  # fine
    annotation(2, [90, 70, 30, 30]),  # reaches outside the 100x80 image
    annotation(3, [120, 10, 5, 5]),  # wholly outside
    annotation(4, [10, 10, 0, 20]),  # zero width
    annotation(5, [10, 10, 20, -3]),  # negative height
    annotation(6, [-0.4, 0, 100.5, 80]),  # within a pixel of the edge: rounding, clipped without counting
]


def test_bad_boxes_drop_removes_and_counts_them(tmp_path):
    read = read_coco(*coco_folder(tmp_path, BAD_BOXES), bad_boxes="drop")
    np.testing.assert_array_equal(read.images[0].boxes, [[10, 10, 30, 30], [0, 0, 100, 80]])
    assert (read.dropped_boxes, read.clipped_boxes) == (4, 0)
    assert read_coco(*coco_folder(tmp_path, BAD_BOXES)).dropped_boxes == 4  # drop is the default


def test_bad_boxes_clip_cuts_to_the_image_and_drops_what_has_no_area_left(tmp_path):
    read = read_coco(*coco_folder(tmp_path, BAD_BOXES), bad_boxes="clip")
    np.testing.assert_array_equal(read.images[0].boxes, [[10, 10, 30, 30], [90, 70, 100, 80], [0, 0, 100, 80]])
    assert (read.dropped_boxes, read.clipped_boxes) == (3, 1)


@pytest.mark.parametrize("bad, message", [
    (BAD_BOXES[1], r"annotation id 2 \(image 'a\.png'\): box \(x1, y1, x2, y2\) = \(90, 70, 120, 100\) reaches "
                   r"outside its 100x80 image"),
    (BAD_BOXES[3], r"annotation id 4 \(image 'a\.png'\): box .* = \(10, 10, 10, 30\) has no area in its 100x80 "
                   r"image; fix the annotation, or set dataset\.bad_boxes=drop \(leave it out\)$"),
])
def test_bad_boxes_error_names_file_annotation_box_and_image_size(tmp_path, bad, message):
    with pytest.raises(ImgrecError, match=r"coco\.json' " + message):
        read_coco(*coco_folder(tmp_path, [BAD_BOXES[0], bad]), bad_boxes="error")


def test_an_unknown_bad_boxes_rule_lists_the_choices(tmp_path):
    with pytest.raises(ImgrecError, match=r"dataset\.bad_boxes='skip' must be one of drop, clip, error"):
        read_coco(*coco_folder(tmp_path, []), bad_boxes="skip")


# ---- COCO ----


def test_coco_maps_category_ids_in_id_order_skips_crowds_and_keeps_images_without_objects(tmp_path):
    images = [{"id": 9, "file_name": "b.png", "width": 100, "height": 80},
              {"id": 4, "file_name": "sub/a.png", "width": 100, "height": 80},
              {"id": 5, "file_name": "empty.png", "width": 100, "height": 80}]
    categories = [{"id": 7, "name": "car"}, {"id": 1, "name": "person"}, {"id": 3, "name": "bike"}]
    square = [[1, 1, 1, 2, 2, 2, 2, 1]]  # instance masks are allowed and not read
    annotations = [annotation(1, [1.5, 2, 10, 20], image_id=9, category_id=7, segmentation=square),
                   annotation(2, [0, 0, 5, 5], image_id=9, category_id=1),
                   annotation(3, [0, 0, 50, 50], image_id=9, category_id=3, iscrowd=1),
                   annotation(4, [3, 4, 5, 6], image_id=4, category_id=3)]
    read = read_coco(*coco_folder(tmp_path, annotations, images, categories))
    assert read.class_names == ["person", "bike", "car"]  # ids 1, 3, 7 -> 0, 1, 2
    assert [image.path.relative_to(tmp_path / "images").as_posix() for image in read.images] == \
        ["b.png", "empty.png", "sub/a.png"]
    b, empty, a = read.images
    np.testing.assert_array_equal(b.boxes, [[1.5, 2, 11.5, 22], [0, 0, 5, 5]])  # the crowd is left out
    np.testing.assert_array_equal(b.labels, [2, 0])
    np.testing.assert_array_equal(a.boxes, [[3, 4, 8, 10]])
    np.testing.assert_array_equal(a.labels, [1])
    assert empty.boxes.shape == (0, 4)
    given = read_coco(*coco_folder(tmp_path, annotations, images, categories), class_names=["car", "bike", "person"])
    np.testing.assert_array_equal(given.images[0].labels, [0, 2])  # by name when the names are given
    with pytest.raises(ImgrecError, match=r"coco\.json' annotation id 2 names class 'person'.*\['car', 'bike'\]"):
        read_coco(*coco_folder(tmp_path, annotations, images, categories), class_names=["car", "bike"])


def test_coco_size_missing_comes_from_the_image_header(tmp_path):
    read = read_coco(*coco_folder(tmp_path, [], images=[{"id": 1, "file_name": "a.png"}]))
    assert (read.images[0].width, read.images[0].height) == (100, 80)


def test_coco_json_syntax_error_names_file_line_and_column(tmp_path):
    file = tmp_path / "coco.json"
    file.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(ImgrecError, match=r"coco\.json' is not valid JSON: .* at line 3, column 19"):
        read_coco(file, tmp_path)


def test_coco_annotation_without_its_image_and_image_without_its_file_are_named(tmp_path):
    with pytest.raises(ImgrecError, match=r"coco\.json' annotation id 8 has image_id 2, which no entry in 'images'"):
        read_coco(*coco_folder(tmp_path, [annotation(8, [1, 1, 2, 2], image_id=2)]))
    file, images = coco_folder(tmp_path, [])
    (images / "a.png").unlink()
    with pytest.raises(ImgrecError, match=r"coco\.json' lists image id 1 as 'a\.png', which is not in '.*images'"):
        read_coco(file, images)


@pytest.mark.parametrize("bad, message", [
    (annotation(3, [1, 1, "2", None]), r"annotation id 3 has bbox \[1, 1, '2', None\]; expected \[x, y, width"),
    (annotation(3, [1, 1, 2]), r"annotation id 3 has bbox \[1, 1, 2\]"),
    (annotation(3, [1, 1, 2, 2], category_id=2), r"annotation id 3 has category_id 2, which is not in 'categories'"),
])
def test_coco_malformed_annotations_are_named_with_their_id(tmp_path, bad, message):
    with pytest.raises(ImgrecError, match=r"coco\.json' " + message):
        read_coco(*coco_folder(tmp_path, [bad]))


# ---- YOLO ----


def yolo_folder(root: Path, labels: dict[str, str], images=("a.png", "b.png"), size=(200, 100)):
    for name in images:
        write_image(root / "images" / name, *size)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for name, text in labels.items():
        (root / "labels" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / name).write_text(text)
    return root / "images", root / "labels"


def test_yolo_fractions_become_pixels_of_the_image_header_size(tmp_path):
    images, labels = yolo_folder(tmp_path, {"a.txt": "1 0.5 0.5 0.2 0.4\n\n0 0.125 0.25 0.25 0.5\n",
                                            "train/c.txt": "0 0.5 0.5 1 1",
                                            "classes.txt": "cat\ndog\n"},  # LabelImg's list of names
                                 images=("a.png", "b.jpg", "train/c.png"))
    read = read_yolo(images, labels, ["cat", "dog"])
    assert [image.path.relative_to(images).as_posix() for image in read.images] == ["a.png", "b.jpg", "train/c.png"]
    a, b, c = read.images
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [0, 0, 50, 50]], atol=1e-4)
    np.testing.assert_array_equal(a.labels, [1, 0])
    assert (a.width, a.height) == (200, 100)
    assert b.boxes.shape == (0, 4)  # no label file: an image without objects
    np.testing.assert_allclose(c.boxes, [[0, 0, 200, 100]], atol=1e-4)


def test_yolo_empty_label_file_and_bad_boxes(tmp_path):
    images, labels = yolo_folder(tmp_path, {"a.txt": "", "b.txt": "0 0.9 0.5 0.4 0.2\n0 0.5 0.5 0 0.2\n"})
    read = read_yolo(images, labels, ["cat"], bad_boxes="clip")
    assert read.images[0].boxes.shape == (0, 4)
    np.testing.assert_allclose(read.images[1].boxes, [[140, 40, 200, 60]], atol=1e-4)
    assert (read.dropped_boxes, read.clipped_boxes) == (1, 1)
    with pytest.raises(ImgrecError, match=r"b\.txt' line 1 \(image 'b\.png'\): box .* = \(140, 40, 220, 60\) "
                                          r"reaches outside its 200x100 image"):
        read_yolo(images, labels, ["cat"], bad_boxes="error")


def test_yolo_needs_class_names(tmp_path):
    images, labels = yolo_folder(tmp_path, {})
    with pytest.raises(ImgrecError, match=r"YOLO labels hold class numbers only: give dataset\.class_names"):
        read_yolo(images, labels, None)


@pytest.mark.parametrize("text, message", [
    ("0 0.5 0.5 0.2\n", r"line 2 has 4 values \('0 0.5 0.5 0.2'\); expected 5: class cx cy w h"),
    ("0 0.5 0.5 0.2 0.2 0.9 0.9\n", r"line 2 has 7 values .*polygon segment labels are not supported"),
    ("0 0.5 0.5 0.2 x\n", r"line 2 \('0 0.5 0.5 0.2 x'\) holds 'x', not a number"),
    ("0 50 40 20 20\n", r"line 2 has cx cy w h = 50 40 20 20; YOLO wants them as fractions .* in \[0, 1\]"),
    ("0 0.5 0.5 -0.2 0.2\n", r"line 2 has cx cy w h = 0.5 0.5 -0.2 0.2"),
    ("2 0.5 0.5 0.2 0.2\n", r"line 2 has class 2, but the 2 class_names \['cat', 'dog'\] are numbered 0 to 1"),
    ("-1 0.5 0.5 0.2 0.2\n", r"line 2 has class -1"),
    ("0.5 0.5 0.5 0.2 0.2\n", r"line 2 has class 0.5"),
])
def test_yolo_malformed_lines_are_named_with_file_and_line_number(tmp_path, text, message):
    images, labels = yolo_folder(tmp_path, {"a.txt": "1 0.5 0.5 0.1 0.1\n" + text})
    with pytest.raises(ImgrecError, match=r"a\.txt' " + message):
        read_yolo(images, labels, ["cat", "dog"])


def test_yolo_label_without_its_image_is_named(tmp_path):
    images, labels = yolo_folder(tmp_path, {"zebra.txt": "0 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(ImgrecError, match=r"label file '.*zebra\.txt' has no image '.*images/zebra\.<ext>'"):
        read_yolo(images, labels, ["cat"])


# ---- the real NEU-DET folder ----


@pytest.mark.skipif(not (NEU_DET / "ANNOTATIONS").is_dir(), reason="needs ../shared/data/neu-det (not shipped)")
def test_neu_det_voc_folder_reads_every_box(capsys):
    read = read_voc(NEU_DET / "IMAGES", NEU_DET / "ANNOTATIONS")
    assert len(read.images) == 1770
    assert read.class_names == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    per_class = Counter(read.class_names[label] for image in read.images for label in image.labels)
    boxes = np.concatenate([image.boxes for image in read.images])
    validation = read_voc(NEU_DET / "Validation_Images", NEU_DET / "Validation_Annotations")
    validation_boxes = sum(len(image.boxes) for image in validation.images)
    with capsys.disabled():
        print(f"\nNEU-DET: {len(read.images)} images, {len(boxes)} boxes, dropped {read.dropped_boxes}, "
              f"clipped {read.clipped_boxes}; per class {dict(sorted(per_class.items()))}; validation: "
              f"{len(validation.images)} images, {validation_boxes} boxes")
    assert read.dropped_boxes == 0 and read.clipped_boxes == 0
    assert len(boxes) + validation_boxes == 4189  # the README's count over all 1,800 images
    assert len(validation.images) == 30 and validation.class_names == read.class_names
    assert boxes.min() == 0 and boxes[:, 2:].max() == 200  # 1-based 1..200 in 200x200 images: exactly inside
    assert all((image.width, image.height) == (200, 200) and len(image.boxes) for image in read.images)


def test_the_bad_box_warning_names_the_first_bad_box_and_its_file(tmp_path, caplog):
    from imgrec.data.detection_datasets import detection_folder

    annotations, images = coco_folder(tmp_path, BAD_BOXES)
    detection_folder(str(tmp_path), format="coco", images=str(images), annotations=str(annotations),
                     val_fraction=0.0, test_fraction=0.0)
    warning = next(record.getMessage() for record in caplog.records if "dropped" in record.getMessage())
    assert re.search(r"4 box\(es\) dropped and 0 clipped .*; the first: .*coco\.json' annotation id 2 \(image "
                     r"'a\.png'\): \(90, 70, 120, 100\) reaches outside its 100x80 image", warning), warning


def test_an_annotation_declaring_another_size_or_a_file_that_is_no_image_is_named(tmp_path):
    images, annotations = voc_folder(tmp_path / "voc", {"a.xml": voc_xml("a.png", [("cat", 1, 1, 9, 9)], size=(50, 40))})
    with pytest.raises(ImgrecError, match=r"a\.xml' says its image is 50x40 but '.*a\.png' is 100x80; fix the "
                                          r"annotation's size"):
        read_voc(images, annotations)
    images, annotations = voc_folder(tmp_path / "text", {"a.xml": voc_xml("a.png", [("cat", 1, 1, 9, 9)])})
    (images / "a.png").write_text("hello")  # named like an image, holds text
    with pytest.raises(ImgrecError, match=r"image '.*a\.png' cannot be read .*; fix or remove it"):
        read_voc(images, annotations)
    file, folder = coco_folder(tmp_path / "coco", [], images=[{"id": [2], "file_name": "a.png"}])
    with pytest.raises(ImgrecError, match=r"coco\.json' has image entry .* whose id is not a number or a string"):
        read_coco(file, folder)
