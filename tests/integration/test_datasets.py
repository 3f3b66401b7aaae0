"""Datasets users bring: class folders, CSVs, the MNIST family, and what happens with bad files."""

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgrec.data.folders import csv_table, image_folder
from imgrec.data.mnist import DEBIAN_FASHION_MNIST, mnist_family, read_idx
from imgrec.data.torchvision_sets import torchvision_dataset
from imgrec.errors import ImgrecError
from imgrec.commands.train import train


def make_image(path: Path, value: int, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(pixels, mode=mode).save(path)


def truncated_png(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:400])  # the header survives, the pixel data does not


def make_folder(root: Path, per_class=10, classes=("cat", "dog", "fox")):
    for label, name in enumerate(classes):
        for i in range(per_class):
            make_image(root / name / f"{i}.png", value=40 * label + i)
    return root


def test_one_folder_is_split_stratified_with_classes_in_sorted_order(tmp_path):
    splits = image_folder(str(make_folder(tmp_path / "pets")), image_size=8, val_fraction=0.2, test_fraction=0.2)
    assert splits.class_names == ["cat", "dog", "fox"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [18, 6, 6]
    assert splits.class_counts("val") == [2, 2, 2] and splits.class_counts("test") == [2, 2, 2]
    assert splits.train.images.shape[1:] == (1, 8, 8)  # channels=auto: grey pixels, although saved as RGB
    # each image keeps its label: dog images were drawn with pixel values 40..49
    dog = splits.train.images[splits.train.labels == 1]
    assert dog.min() >= 40 and dog.max() <= 49


def test_train_val_test_folders_are_used_as_given(tmp_path):
    make_folder(tmp_path / "set" / "train", per_class=6)
    make_folder(tmp_path / "set" / "test", per_class=2)
    splits = image_folder(str(tmp_path / "set"), image_size=8, val_fraction=0.5)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [9, 9, 6]  # val carved out of train/


def test_grayscale_and_odd_modes_mix_in_one_folder(tmp_path):
    root = make_folder(tmp_path / "mixed", per_class=4, classes=("a", "b"))
    make_image(root / "a" / "gray.png", 9, mode="L")
    Image.fromarray(np.zeros((5, 5, 4), dtype=np.uint8), mode="RGBA").save(root / "b" / "clear.png")
    splits = image_folder(str(root), image_size=6, channels=1, val_fraction=0.2, test_fraction=0.2)
    assert sum(len(getattr(splits, s)) for s in ("train", "val", "test")) == 10
    assert splits.train.images.shape[1] == 1


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda root: (root / "cat" / "zero.png").write_bytes(b""), "zero.png' cannot be used: the file is empty"),
        (lambda root: (root / "cat" / "text.jpg").write_text("hello"), "text.jpg' cannot be used: not an image"),
        (lambda root: truncated_png(root / "cat" / "cut.png"), "cut.png' cannot be used: cannot be decoded"),
    ],
)
def test_a_bad_file_is_an_error_naming_it_or_is_skipped_and_listed(tmp_path, compose_cfg, make_bad, message):
    root = make_folder(tmp_path / "pets")
    make_bad(root)
    with pytest.raises(ImgrecError, match=message + r".*dataset.on_bad_image=skip"):
        image_folder(str(root), image_size=8)
    cfg = compose_cfg("dataset=image_folder", f"dataset.root={root}", "dataset.image_size=8",
                      "dataset.on_bad_image=skip", "trainer.max_epochs=1", "test=false")
    train(cfg)
    skipped = (tmp_path / "run" / "skipped_images.txt").read_text().splitlines()
    assert len(skipped) == 1 and message.split("'")[0] in skipped[0]


def test_folder_problems_are_named(tmp_path):
    with pytest.raises(ImgrecError, match="dataset.root '.*nowhere' does not exist"):
        image_folder(str(tmp_path / "nowhere"))
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "x.png", 1)
    with pytest.raises(ImgrecError, match="has no class folders; expected <root>/<class>/<image>"):
        image_folder(str(tmp_path / "flat"))
    root = make_folder(tmp_path / "pets")
    (root / "empty_class").mkdir()
    with pytest.raises(ImgrecError, match="class folder '.*empty_class' has no image files"):
        image_folder(str(root))
    (root / "empty_class").rmdir()
    with pytest.raises(ImgrecError, match=r"dataset.num_classes=2 but .* has 3 class folders \['cat', 'dog', 'fox'\]"):
        image_folder(str(root), num_classes=2)
    with pytest.raises(ImgrecError, match="dataset.in_memory='maybe' must be auto, true or false"):
        image_folder(str(root), in_memory="maybe")
    with pytest.raises(ImgrecError, match="dataset.on_bad_image='ignore' must be 'error' or 'skip'"):
        image_folder(str(root), on_bad_image="ignore")


def test_a_class_whose_every_image_is_unreadable_is_an_error(tmp_path):
    root = make_folder(tmp_path / "pets", classes=("cat", "dog"))
    for path in (root / "dog").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ImgrecError, match=r"class\(es\) \['dog'\] have no readable images"):
        image_folder(str(root), image_size=8, on_bad_image="skip")


def write_csv(path: Path, rows, header="path,label,split"):
    path.write_text("\n".join([header, *(",".join(map(str, row)) for row in rows)]) + "\n")
    return path


def test_csv_with_a_split_column(tmp_path):
    make_folder(tmp_path / "img", per_class=4, classes=("ok", "defect"))
    rows = [(f"img/{name}/{i}.png", name, "train" if i < 2 else ("val" if i == 2 else "test"))
            for name in ("ok", "defect") for i in range(4)]
    splits = csv_table(str(write_csv(tmp_path / "labels.csv", rows)), split_column="split", image_size=8)
    assert splits.class_names == ["defect", "ok"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [4, 2, 2]
    assert splits.class_counts("test") == [1, 1]


def test_csv_bad_rows_are_named_with_their_row_number(tmp_path):
    make_folder(tmp_path / "img", per_class=2, classes=("ok", "defect"))
    good = [("img/ok/0.png", "ok"), ("img/defect/0.png", "defect")]
    csv_path = write_csv(tmp_path / "a.csv", [*good, ("img/ok/1.png", "scratch")], header="path,label")
    with pytest.raises(ImgrecError, match=r"a.csv row 4: label 'scratch' is not one of dataset.classes"):
        csv_table(str(csv_path), classes=["ok", "defect"])
    csv_path = write_csv(tmp_path / "b.csv", [*good, ("img/ok/9.png", "ok")], header="path,label")
    with pytest.raises(ImgrecError, match=r"b.csv row 4: image file '.*img/ok/9.png' does not exist"):
        csv_table(str(csv_path))
    csv_path = write_csv(tmp_path / "c.csv", [("img/ok/0.png", 0), ("img/ok/1.png", 7)], header="path,label")
    with pytest.raises(ImgrecError, match=r"c.csv row 3: label '7' is outside \[0, 2\)"):
        csv_table(str(csv_path), num_classes=2)
    with pytest.raises(ImgrecError, match=r"has no column\(s\) \['file'\]; its columns are \['path', 'label'\]"):
        csv_table(str(csv_path), path_column="file")


def test_idx_reader_handles_gzip_and_rejects_truncation(tmp_path):
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(range(12))))
    assert read_idx(tmp_path / "x-idx3-ubyte.gz").tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    (tmp_path / "short").write_bytes(header + bytes(5))
    with pytest.raises(ImgrecError, match="truncated or padded: header says 12 bytes of data, file has 5"):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("name", ["mnist", "kmnist"])
def test_missing_mnist_files_say_which_files_where_and_how_to_get_them(tmp_path, name):
    with pytest.raises(ImgrecError, match=rf"dataset {name}: train-images-idx3-ubyte\[.gz\] is not in .*"
                                          r"dataset.download=true \(needs internet\).*copy them into"):
        mnist_family(name, root=str(tmp_path))


@pytest.mark.parametrize("name, files", [("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat")])
def test_missing_torchvision_files_say_what_is_expected(tmp_path, name, files):
    with pytest.raises(ImgrecError, match=rf"dataset {name}: its files are missing .*Expected .*{files}.*download=true"):
        torchvision_dataset(name, root=str(tmp_path))


needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist (.ci/run installs it)"
)


@needs_fashion_mnist
def test_fashion_mnist_from_the_debian_package():
    raw_labels = read_idx(DEBIAN_FASHION_MNIST / "train-labels-idx1-ubyte.gz")
    assert np.bincount(raw_labels).tolist() == [6000] * 10
    assert raw_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published first labels
    splits = mnist_family("fashion_mnist", val_fraction=0.1)
    assert splits.train.images.shape == (54000, 1, 28, 28) and len(splits.test) == 10000
    assert splits.class_counts("train") == [5400] * 10 and splits.class_counts("val") == [600] * 10
    assert splits.class_names[9] == "Ankle boot"
    test_labels = read_idx(DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert torch.equal(splits.test.labels, torch.from_numpy(test_labels.astype(np.int64)))


@pytest.mark.parametrize("workers", [0, 2])
def test_files_read_each_epoch_give_the_same_batches_as_the_in_memory_copy(tmp_path, workers):
    from imgrec.data.splits import FileSplit
    from imgrec.data.loaders import make_loader

    root = tmp_path / "pets"
    for label, name in enumerate(("cat", "dog")):
        for i in range(9):
            noise = np.random.default_rng(10 * label + i).integers(0, 256, (14, 11, 3), dtype=np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(noise).save(root / name / f"{i}.png")
    in_memory = image_folder(str(root), image_size=8, val_fraction=0.2, test_fraction=0.2, in_memory=True)
    from_disk = image_folder(str(root), image_size=8, val_fraction=0.2, test_fraction=0.2, in_memory=False)
    assert isinstance(from_disk.train, FileSplit) and len(from_disk.train) == len(in_memory.train)
    assert torch.equal(from_disk.train.labels, in_memory.train.labels)
    assert from_disk.mean == pytest.approx(in_memory.mean, abs=1e-9)  # stats from per-file sums
    assert from_disk.std == pytest.approx(in_memory.std, abs=1e-9)
    loaders = [make_loader(s.train, 4, s.mean, s.std, torch.device("cpu"), shuffle=True, seed=1, num_workers=workers)
               for s in (in_memory, from_disk)]
    for epoch in range(2):
        for loader in loaders:
            loader.set_epoch(epoch)
        for (x_mem, y_mem), (x_disk, y_disk) in zip(*loaders):
            assert torch.equal(x_mem, x_disk) and torch.equal(y_mem, y_disk)


def test_a_folder_read_from_disk_trains_and_skips_bad_files_before_training(tmp_path, compose_cfg):
    root = make_folder(tmp_path / "pets")
    (root / "dog" / "empty.png").write_bytes(b"")
    overrides = ["dataset=image_folder", f"dataset.root={root}", "dataset.image_size=8", "dataset.in_memory=false"]
    with pytest.raises(ImgrecError, match="empty.png' cannot be used: the file is empty"):
        train(compose_cfg(*overrides, "trainer.max_epochs=1"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    result = train(compose_cfg(*overrides, "dataset.on_bad_image=skip", "trainer.max_epochs=2", "trainer.num_workers=1",
                               "augment=basic"))
    assert result["test"]["num_samples"] == 5  # 30 readable images, test_fraction 0.15 -> 5 (stratified)
    assert (tmp_path / "run" / "skipped_images.txt").read_text().count("empty.png") == 1


def test_csv_rows_that_used_to_crash_are_named(tmp_path):
    make_folder(tmp_path / "img", per_class=2, classes=("ok", "defect"))
    short = tmp_path / "short.csv"
    short.write_text("path,label\nimg/ok/0.png,ok\nimg/ok/1.png\n")
    with pytest.raises(ImgrecError, match=r"short.csv row 3 has fewer fields than the header: no label value"):
        csv_table(str(short))
    empty_label = write_csv(tmp_path / "e.csv", [("img/ok/0.png", "ok"), ("img/ok/1.png", "")], header="path,label")
    with pytest.raises(ImgrecError, match=r"e.csv row 3: the label is empty"):
        csv_table(str(empty_label))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nimg/ok/0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ImgrecError, match=r"latin.csv' is not UTF-8 text \(an undecodable byte at offset \d+\); save it "
                                          r"as UTF-8") as error:
        csv_table(str(latin))
    assert "\\x" not in str(error.value)  # the file's bytes are not pasted into the message


def test_a_dangling_link_in_a_class_folder_is_reported_or_skipped_and_listed(tmp_path, compose_cfg):
    root = make_folder(tmp_path / "pets", per_class=6, classes=("cat", "dog"))
    (root / "dog" / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(ImgrecError, match=r"image '.*dog/gone.png' cannot be used: the file does not exist"):
        image_folder(str(root), image_size=8)
    from imgrec.evaluation.reports import record_dataset

    splits = image_folder(str(root), image_size=8, on_bad_image="skip")
    record_dataset(splits, tmp_path / "run", logging.getLogger("test"))
    assert "dog/gone.png\tthe file does not exist" in (tmp_path / "run" / "skipped_images.txt").read_text()


def test_channels_auto_reads_colour_folders_with_three_channels(tmp_path):
    root = tmp_path / "colour"
    for label, name in enumerate(("red", "blue")):
        for i in range(5):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.zeros((10, 10, 3), np.uint8)
            pixels[..., label * 2] = 200  # pure red or pure blue
            Image.fromarray(pixels).save(path)
    splits = image_folder(str(root), image_size=8)
    assert splits.channels == 3 and splits.train.images.shape[1] == 3
    assert image_folder(str(root), image_size=8, channels=1).channels == 1  # a setting wins


def test_in_memory_splits_keep_their_file_paths_and_the_test_split_counts_as_given(tmp_path):
    root = tmp_path / "layout"
    make_folder(root / "train", per_class=6, classes=("a", "b"))
    make_folder(root / "test", per_class=2, classes=("a", "b"))
    splits = image_folder(str(root), image_size=8, in_memory=True)
    assert splits.test_given and sorted(Path(p).relative_to(root).as_posix() for p in splits.test.paths) == [
        "test/a/0.png", "test/a/1.png", "test/b/0.png", "test/b/1.png"]
    carved = image_folder(str(root / "train"), image_size=8)
    assert not carved.test_given
    everything = carved.everything()
    assert len(everything) == 12 and len(everything.paths) == 12 and len(set(everything.paths)) == 12
