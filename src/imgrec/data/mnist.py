"""The MNIST family (MNIST, Fashion-MNIST, KMNIST) read straight from the original IDX files."""

import gzip
from pathlib import Path

import numpy as np

from imgrec.data.splits import Splits, official_splits
from imgrec.downloads import download_lock, fetch_with_md5
from imgrec.errors import ImgrecError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EXPECTED = ", ".join(f"{stem}[.gz]" for pair in FILES.values() for stem in pair)
# name -> (torchvision class name, also the folder it downloads into; class names)
FAMILY = {
    "mnist": ("MNIST", [str(d) for d in range(10)]),
    "fashion_mnist": (
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
    "kmnist": ("KMNIST", ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes as an array of its declared shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ImgrecError(f"'{path}' is not an IDX file of unsigned bytes (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise ImgrecError(f"'{path}' is truncated or padded: header says {expected} bytes of data, file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find(stem: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _default_root(name: str, data_dir: str) -> Path:
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    return Path(data_dir) / name


def download_files(name: str, root: Path) -> None:
    """The gzipped IDX files torchvision's downloader would fetch into root/<TorchvisionName>/raw/, from its mirrors
    with its MD5 checksums, unless they are here; kept gzipped, which read_idx reads."""
    import torchvision.datasets

    torchvision_name, _ = FAMILY[name]
    dataset_class = getattr(torchvision.datasets, torchvision_name)
    raw_folder = root / torchvision_name / "raw"
    fix = (f"Copy the IDX files {EXPECTED} into {root} (fetched where there is internet, e.g. with "
           "dataset.download=true there), or set dataset.root to a folder that has them")
    missing = [(filename, md5) for filename, md5 in dataset_class.resources
               if _find(filename.removesuffix(".gz"), [root, raw_folder]) is None]
    if not missing:  # nothing to write, so a read-only root (Debian's Fashion-MNIST) is fine
        return
    with download_lock(root, f"dataset {name}"):
        for filename, md5 in missing:  # a file another process fetched while this one waited passes its MD5: kept
            fetch_with_md5([mirror + filename for mirror in dataset_class.mirrors], raw_folder / filename, md5,
                           f"dataset {name}", fix)


def load_idx_split(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    torchvision_name, _ = FAMILY[name]
    folders = [root, root / torchvision_name / "raw"]
    found = [_find(stem, folders) for stem in FILES[split]]
    if None in found:
        debian = " or `apt-get install dataset-fashion-mnist` (Debian)" if name == "fashion_mnist" else ""
        raise ImgrecError(
            f"dataset {name}: {FILES[split][found.index(None)]}[.gz] is not in {root} or {folders[1]}. Expected the "
            f"original IDX files {EXPECTED} there. Get them with dataset.download=true (needs internet){debian}, "
            f"or copy them into {root} (set dataset.root to use another folder)"
        )
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ImgrecError(f"dataset {name}: {found[0]} holds {images.shape} but {found[1]} holds {labels.shape} labels")
    return images, labels.astype(np.int64)


def mnist_family(
    name: str,
    root: str | None = None,
    data_dir: str = "data",
    download: bool = False,
    image_size: int = 28,
    channels: int = 1,
    num_classes: int = 10,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    split_seed: int = 0,
    normalize: str = "standardize",
    mean=None,
    std=None,
) -> Splits:
    """The official train/test files; validation is carved out of train, stratified by class."""
    if name not in FAMILY:
        raise ImgrecError(f"dataset.name={name!r} is not one of {', '.join(FAMILY)}")
    if num_classes != 10:
        raise ImgrecError(f"dataset.num_classes={num_classes} but {name} has 10 classes; set dataset.num_classes=10")
    if test_fraction is not None:
        raise ImgrecError(f"{name} has an official test split; leave dataset.test_fraction=null")
    if channels not in (1, 3):
        raise ImgrecError(f"dataset.channels={channels} must be 1 or 3")
    root_path = Path(root).expanduser() if root else _default_root(name, data_dir)
    if download:
        download_files(name, root_path)
    train_images, train_labels = load_idx_split(name, root_path, "train")
    test_images, test_labels = load_idx_split(name, root_path, "test")
    return official_splits((train_images[:, None], train_labels), (test_images[:, None], test_labels), FAMILY[name][1],
                           image_size, channels, val_fraction, split_seed, normalize, mean, std)
