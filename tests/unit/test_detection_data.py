"""Detection splits and their loader: folders and the synthetic set split at random, batches as lists of
[0, 1] images and 0-based targets, the (seed, epoch) order, a mid-epoch skip, and augmentation that is the
same for the same (seed, epoch, sample) and no other."""

import numpy as np
import pytest
import torch
from PIL import Image

from imgrec.data.detection import DetectionLoader, split_indices
from imgrec.data.detection_datasets import detection_folder, shapes_detection
from imgrec.errors import ImgrecError

CPU = torch.device("cpu")


def voc_folder(root, count: int = 12):
    """`count` RGB images of 40 x 30 with one box each, class cat or dog, in VOC's default layout."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for index in range(count):
        Image.fromarray(np.full((30, 40, 3), index * 10, np.uint8)).save(root / "JPEGImages" / f"img{index:02d}.png")
        name = "cat" if index % 2 else "dog"
        (root / "Annotations" / f"img{index:02d}.xml").write_text(
            f"<annotation><filename>img{index:02d}.png</filename><size><width>40</width><height>30</height>"
            f"<depth>3</depth></size><object><name>{name}</name><bndbox><xmin>{index + 1}</xmin><ymin>2</ymin>"
            f"<xmax>{index + 20}</xmax><ymax>25</ymax></bndbox></object></annotation>")
    return root


def test_a_voc_folder_splits_at_random_and_serves_lists(tmp_path):
    splits = detection_folder(str(voc_folder(tmp_path / "voc")), val_fraction=0.25, test_fraction=0.25, seed=3)
    assert splits.class_names == ["cat", "dog"] and (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    everything = sorted(p.name for part in (splits.train, splits.val, splits.test) for p in part.paths)
    assert everything == [f"img{i:02d}.png" for i in range(12)]  # each image in exactly one split
    assert splits.class_counts("train") == [sum(int(p.name[3:5]) % 2 for p in splits.train.paths),
                                            sum(1 - int(p.name[3:5]) % 2 for p in splits.train.paths)]
    assert splits.input_shape == [3, 30, 40] and splits.mean == [0.485, 0.456, 0.406]
    images, targets = next(iter(DetectionLoader(splits.train, 4, [0.0] * 3, [1.0] * 3, CPU)))
    assert len(images) == len(targets) == 4
    first = int(splits.train.paths[0].name[3:5])
    assert images[0].shape == (3, 30, 40) and images[0].dtype == torch.float32
    assert torch.allclose(images[0], torch.full((3, 30, 40), first * 10 / 255))  # mean 0, std 1: the pixels
    normalised, _ = next(iter(DetectionLoader(splits.train, 4, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0], CPU)))
    assert torch.allclose(normalised[0][:, 0, 0], (first * 10 / 255 - 0.5) / torch.tensor([0.25, 0.5, 1.0]))
    assert targets[0]["boxes"].tolist() == [[float(first), 1.0, first + 20.0, 25.0]]  # VOC's 1-based corner
    assert targets[0]["labels"].tolist() == [first % 2 == 0]  # dog (1) for even numbers, 0-based


def test_the_order_follows_seed_and_epoch_and_a_resume_skips_what_was_served(tmp_path):
    split = shapes_detection(size=40, image_size=32, seed=0).train

    def served(epoch, skip=0, seed=5):
        loader = DetectionLoader(split, 4, [0.0] * 3, [1.0] * 3, CPU, shuffle=True, seed=seed)
        loader.set_epoch(epoch, skip=skip)
        return [targets[0]["boxes"].sum().item() + len(targets[0]["boxes"]) for _, targets in loader]

    assert served(1) == served(1) and served(1) != served(2) and served(1) != served(1, seed=6)
    assert served(1, skip=3) == served(1)[3:]


def test_augmentation_is_drawn_from_seed_epoch_and_sample_alone():
    split = shapes_detection(size=20, image_size=32, seed=1).train
    draws = []

    def recording_flip(image, boxes, labels, generator):
        flip = bool(torch.rand((), generator=generator) < 0.5)
        draws.append(flip)
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0],
                                 boxes[:, 3]], dim=1)
        return image, boxes, labels

    def epoch_images(epoch):
        loader = DetectionLoader(split, 5, [0.0] * 3, [1.0] * 3, CPU, augment=recording_flip, seed=2)
        loader.set_epoch(epoch)
        return [torch.stack(images) for images, _ in loader]

    first, again, later = epoch_images(0), epoch_images(0), epoch_images(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, later))
    assert 0 < sum(draws) < len(draws)


def test_the_synthetic_set_holds_its_pixels_and_mean(tmp_path):
    splits = shapes_detection(size=50, image_size=32, channels=1, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (34, 8, 8)  # round(50 x 0.15) = round(7.5) = 8
    assert len(splits.mean) == 3 and splits.mean[0] == splits.mean[1]  # grey served as RGB
    assert splits.train.pixels(0).shape == (3, 32, 32)
    assert len(splits.everything()) == 50 and splits.everything().images.shape == (50, 1, 32, 32)


@pytest.mark.parametrize("settings, message", [
    ({"format": "kitti"}, r"dataset.format='kitti' must be one of voc, coco, yolo"),
    ({"images": "photos"}, r"dataset.images: .*photos does not exist; set dataset.images="),
    ({"format": "yolo", "images": "JPEGImages", "annotations": "Annotations"},
     r"dataset.class_names must list the classes for a YOLO dataset"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, r"dataset.val_fraction \+ dataset.test_fraction = 1.1 leaves"),
])
def test_bad_settings_are_named(tmp_path, settings, message):
    root = voc_folder(tmp_path / "voc", count=3)
    with pytest.raises(ImgrecError, match=message):
        detection_folder(str(root), **settings)


def test_a_missing_root_and_fractions_out_of_range_are_named(tmp_path):
    with pytest.raises(ImgrecError, match=r"dataset.root='.*nowhere' is not a folder"):
        detection_folder(str(tmp_path / "nowhere"))
    with pytest.raises(ImgrecError, match=r"dataset.val_fraction=1.2 must be in \[0, 1\)"):
        split_indices(10, 1.2, 0.1, 0)


def brighten_at_random(image, boxes, labels, generator):
    return (image.int() + int(torch.randint(0, 50, (), generator=generator))).clamp(0, 255).byte(), boxes, labels


def test_worker_processes_serve_what_the_main_process_would(tmp_path):
    split = detection_folder(str(voc_folder(tmp_path / "voc")), seed=0).train

    def served(workers):
        loader = DetectionLoader(split, 3, [0.5] * 3, [0.25] * 3, CPU, shuffle=True, seed=1,
                                 augment=brighten_at_random, num_workers=workers)
        loader.set_epoch(2)
        return [torch.stack(images) for images, _ in loader]

    assert all(torch.equal(a, b) for a, b in zip(served(0), served(2)))
