"""CIFAR-10, CIFAR-100 and SVHN through torchvision's readers, held in memory as uint8 tensors."""

from pathlib import Path

import numpy as np

from imgrec.data.splits import Splits, official_splits
from imgrec.downloads import download_lock, fetch_with_md5
from imgrec.errors import ImgrecError

# name -> (torchvision class, files torchvision expects under root)
DATASETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"),
    "cifar100": ("CIFAR100", "cifar-100-python/{train, test, meta}"),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat"),
}


def download_files(name: str, root: Path) -> None:
    """The files torchvision's downloader would fetch, at its URLs with its MD5 checksums, unless they are here."""
    import torchvision.datasets
    from torchvision.datasets.utils import check_integrity, extract_archive

    class_name, expected = DATASETS[name]
    dataset_class = getattr(torchvision.datasets, class_name)
    subject = f"dataset {name}"
    fix = (f"Copy {expected} into {root} (fetched where there is internet, e.g. with dataset.download=true there), "
           "or set dataset.root to a folder that has them")
    if name == "svhn":  # two .mat files, read as they are (the 1.3 GB `extra` split is not used)
        downloads = [dataset_class.split_list[split] for split in ("train", "test")]
        needed = [(filename, md5) for _, filename, md5 in downloads]
    else:  # one archive, unpacked into base_folder
        downloads = [(dataset_class.url, dataset_class.filename, dataset_class.tgz_md5)]
        needed = [(f"{dataset_class.base_folder}/{filename}", md5) for filename, md5 in
                  [*dataset_class.train_list, *dataset_class.test_list,
                   (dataset_class.meta["filename"], dataset_class.meta["md5"])]]

    def present() -> bool:
        return all(check_integrity(str(root / filename), md5) for filename, md5 in needed)

    if present():  # nothing to write, so a read-only root is fine
        return
    with download_lock(root, subject):
        if present():  # another process fetched them while this one waited
            return
        for url, filename, md5 in downloads:
            fetch_with_md5([url], root / filename, md5, subject, fix)
            if name != "svhn":  # an interrupted unpacking fails present() next time, and unpacks again
                extract_archive(str(root / filename), str(root))


def _read(name: str, root: Path, train: bool):
    import torchvision.datasets

    class_name, expected = DATASETS[name]
    dataset_class = getattr(torchvision.datasets, class_name)
    try:
        if name == "svhn":
            dataset = dataset_class(root=str(root), split="train" if train else "test")
            return dataset.data, np.asarray(dataset.labels), [str(d) for d in range(10)]
        dataset = dataset_class(root=str(root), train=train)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        raise ImgrecError(
            f"dataset {name}: its files are missing or corrupt under {root} ({error}). Expected {expected} there. "
            f"Get them with dataset.download=true (needs internet), or copy them into {root} "
            "(set dataset.root to use another folder)"
        ) from error
    images = np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    return images, np.asarray(dataset.targets), list(dataset.classes)


def torchvision_dataset(
    name: str,
    root: str | None = None,
    data_dir: str = "data",
    download: bool = False,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
) -> Splits:
    """The official train/test split; validation is carved out of train, stratified by class."""
    if name not in DATASETS:
        raise ImgrecError(f"dataset.name={name!r} is not one of {', '.join(DATASETS)}")
    if test_fraction is not None:
        raise ImgrecError(f"{name} has an official test split; leave dataset.test_fraction=null")
    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels} must be 1 or 3")
    root_path = Path(root).expanduser() if root else Path(data_dir) / name
    if download:
        download_files(name, root_path)
    train_images, train_labels, class_names = _read(name, root_path, True)
    test_images, test_labels, _ = _read(name, root_path, False)
    if num_classes is not None and num_classes != len(class_names):
        raise ImgrecError(f"dataset.num_classes={num_classes} but {name} has {len(class_names)} classes")
    return official_splits((train_images, train_labels), (test_images, test_labels), class_names, image_size,
                           channels, val_fraction, split_seed, normalize, mean, std)
