"""dataset.download=true and model.weights=<torchvision weights name> (imgrec.downloads): files served from
127.0.0.1 arrive, are checked and are used; a corrupt one is reported as such and deleted; with the network
unreachable (every connection refused at once, so the tests are fast and need no internet) the error is one line
that names the URL and says where to put the files by hand; IMGREC_OFFLINE=1 forbids downloads outright."""

import errno
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

from imgrec.data.mnist import mnist_family
from imgrec.data.torchvision_sets import torchvision_dataset
from imgrec.errors import ImgrecError
from imgrec.models.backbones import torchvision_model

LOCK = ".imgrec-download.lock"


@pytest.fixture
def unreachable_network(monkeypatch):
    """Every connection fails as it does on a machine without a network (through a proxy too)."""

    def refuse(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("IMGREC_OFFLINE")  # tests/conftest.py forbids downloads everywhere else


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1 for the test; `requests` lists the paths asked for."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.delenv("IMGREC_OFFLINE")
    for name in ("no_proxy", "NO_PROXY"):  # a proxy set for the real internet must not catch 127.0.0.1
        monkeypatch.setenv(name, "127.0.0.1")
    yield SimpleNamespace(folder=folder, url=f"http://127.0.0.1:{server.server_port}", requests=requests)
    server.shutdown()
    server.server_close()


def files_left(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != LOCK)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def serve_mnist(served, monkeypatch, per_class: int = 4) -> None:
    """Tiny MNIST IDX files on the local server, with their MD5s as torchvision's MNIST resources."""
    rng = np.random.default_rng(0)
    labels = {"train": np.repeat(np.arange(10), per_class), "t10k": np.arange(10)}
    resources = []
    for prefix, split_labels in labels.items():
        for kind, array in (("images-idx3", rng.integers(0, 256, (len(split_labels), 28, 28))),
                            ("labels-idx1", split_labels)):
            filename = f"{prefix}-{kind}-ubyte.gz"
            (served.folder / filename).write_bytes(idx_gz(array))
            resources.append((filename, md5(served.folder / filename)))
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"{served.url}/"])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)


def serve_cifar10(served, monkeypatch) -> list[str]:
    """A tiny cifar-10-python.tar.gz (one image per class in each batch) on the local server, with its MD5s (the
    archive's and each unpacked file's) as torchvision's CIFAR10 attributes; returns the class names."""
    rng = np.random.default_rng(0)
    class_names = [f"class{i}" for i in range(10)]
    unpacked = served.folder / "unpacked" / "cifar-10-batches-py"
    unpacked.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10, 3 * 32 * 32), dtype=np.uint8), "labels": list(range(10))}
        (unpacked / name).write_bytes(pickle.dumps(batch))
    (unpacked / "batches.meta").write_bytes(pickle.dumps({"label_names": class_names}))
    archive = served.folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(unpacked, arcname=unpacked.name)
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "url", f"{served.url}/{archive.name}")
    monkeypatch.setattr(cifar, "tgz_md5", md5(archive))
    monkeypatch.setattr(cifar, "train_list", [[f"data_batch_{i}", md5(unpacked / f"data_batch_{i}")]
                                              for i in range(1, 6)])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5(unpacked / "test_batch")]])
    monkeypatch.setattr(cifar, "meta", {"filename": "batches.meta", "key": "label_names",
                                        "md5": md5(unpacked / "batches.meta")})
    return class_names


def test_cifar10_downloads_unpacks_and_loads_then_is_not_fetched_again(served, monkeypatch, tmp_path):
    class_names = serve_cifar10(served, monkeypatch)
    root = tmp_path / "cifar10"
    splits = torchvision_dataset("cifar10", root=str(root), download=True, val_fraction=0.2)
    assert splits.class_names == class_names
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 10)
    assert "/cifar-10-python.tar.gz" in served.requests
    assert (root / "cifar-10-batches-py" / "test_batch").is_file() and not list(root.glob("*.part"))
    asked = len(served.requests)
    torchvision_dataset("cifar10", root=str(root), download=True, val_fraction=0.2)
    assert len(served.requests) == asked  # the files are whole: nothing is fetched


def test_mnist_downloads_into_torchvisions_layout_and_loads(served, monkeypatch, tmp_path):
    serve_mnist(served, monkeypatch)
    splits = mnist_family("mnist", root=str(tmp_path / "mnist"), download=True, val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert files_left(tmp_path / "mnist") == sorted(f"MNIST/raw/{name}" for name, _ in
                                                    torchvision.datasets.MNIST.resources)


def test_a_corrupt_download_is_named_and_deleted(served, monkeypatch, tmp_path):
    serve_mnist(served, monkeypatch)
    (served.folder / "train-images-idx3-ubyte.gz").write_bytes(b"not what torchvision published")
    root = tmp_path / "mnist"
    with pytest.raises(ImgrecError) as raised:
        mnist_family("mnist", root=str(root), download=True)
    message = str(raised.value)
    assert "\n" not in message
    assert re.match(rf"dataset mnist: the download of {served.url}/train-images-idx3-ubyte.gz is corrupt \(its MD5 "
                    r"checksum is not torchvision's [0-9a-f]{32}\); it was deleted\. Run again to retry\. Copy the IDX "
                    rf"files train-images-idx3-ubyte\[\.gz\], .* into {root} ", message), message
    assert files_left(root) == []  # not even the .part: the next run must not take it for the data


def test_a_server_that_refuses_is_named(served, monkeypatch, tmp_path):
    serve_mnist(served, monkeypatch)
    (served.folder / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ImgrecError, match=rf"could not download {served.url}/train-images-idx3-ubyte.gz: 127.0.0.1 "
                                          r"answered HTTP 404 File not found\. Copy"):
        mnist_family("mnist", root=str(tmp_path / "mnist"), download=True)
    assert files_left(tmp_path / "mnist") == []


@pytest.mark.parametrize("name, host, files", [
    ("cifar10", "www.cs.toronto.edu", "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"),
    ("cifar100", "www.cs.toronto.edu", "cifar-100-python/{train, test, meta}"),
    ("svhn", "ufldl.stanford.edu", "train_32x32.mat and test_32x32.mat"),
    ("mnist", "ossci-datasets.s3.amazonaws.com", "the IDX files train-images-idx3-ubyte[.gz], "),
    ("fashion_mnist", "fashion-mnist.s3-website.eu-central-1.amazonaws.com", "the IDX files train-images-idx3-ubyte"),
    ("kmnist", "codh.rois.ac.jp", "the IDX files train-images-idx3-ubyte[.gz], "),
])
def test_offline_a_dataset_download_is_one_line_naming_the_host_and_leaves_no_files(unreachable_network, tmp_path,
                                                                                      name, host, files):
    build = mnist_family if "mnist" in name else torchvision_dataset
    root = tmp_path / name
    with pytest.raises(ImgrecError) as raised:
        build(name, root=str(root), download=True)
    message = str(raised.value)
    assert "\n" not in message
    assert re.match(rf"dataset {name}: could not download https?://{re.escape(host)}/\S+: {re.escape(host)} cannot be "
                    r"reached \(\[Errno 101\] Network is unreachable\); this machine appears to be offline\. Copy "
                    rf"{re.escape(files)}.* into {root} \(fetched where there is internet", message), message
    assert files_left(root) == []


def test_imgrec_offline_forbids_downloads_without_touching_the_network(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError("IMGREC_OFFLINE=1 but a connection was made")

    monkeypatch.setattr(socket, "create_connection", fail)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert os.environ["IMGREC_OFFLINE"] == "1"  # set for every test by tests/conftest.py
    with pytest.raises(ImgrecError, match=r"^dataset svhn: needs http://ufldl.stanford.edu/housenumbers/train_32x32"
                                          r".mat, but IMGREC_OFFLINE=1 forbids downloads\. Copy train_32x32.mat"):
        torchvision_dataset("svhn", root=str(tmp_path / "svhn"), download=True)
    with pytest.raises(ImgrecError, match=r"^model.weights=ResNet18_Weights.IMAGENET1K_V1: needs https://download"
                                          r".pytorch.org/models/resnet18-f37072fd.pth, but IMGREC_OFFLINE=1 forbids"):
        torchvision_model("resnet18", 3, 10, weights="ResNet18_Weights.IMAGENET1K_V1")


def test_offline_weights_name_the_url_and_where_to_put_the_file(unreachable_network, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ImgrecError) as raised:
        torchvision_model("resnet18", 3, 10, weights="ResNet18_Weights.IMAGENET1K_V1")
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        "model.weights=ResNet18_Weights.IMAGENET1K_V1: could not download https://download.pytorch.org/models/"
        "resnet18-f37072fd.pth: download.pytorch.org cannot be reached ([Errno 101] Network is unreachable); this "
        "machine appears to be offline. Download it on a machine with internet and put it at "
        f"{tmp_path}/torch/hub/checkpoints/resnet18-f37072fd.pth, or pass its path as model.weights")
    assert files_left(tmp_path / "torch") == []


def serve_weights(served, monkeypatch, name_hash: str | None = None) -> tuple[dict, str]:
    """MobileNet_V3_Small_Weights.IMAGENET1K_V1 pointed at a random-init state dict on the local server, under
    torchvision's kind of name: <arch>-<first 8 hex digits of its SHA-256>.pth (or `name_hash`, to lie)."""
    state = torchvision.models.mobilenet_v3_small().state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    filename = f"mobilenet_v3_small-{name_hash or hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.pth"
    (served.folder / filename).write_bytes(buffer.getvalue())
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    monkeypatch.setattr(weights.value, "url", f"{served.url}/{filename}")
    return state, filename


def test_torchvision_weights_download_into_the_hub_cache_and_load(served, monkeypatch, tmp_path):
    state, filename = serve_weights(served, monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = torchvision_model("mobilenet_v3_small", 3, 10, weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    assert torch.equal(model.features[0][0].weight, state["features.0.0.weight"])
    assert files_left(tmp_path / "torch") == [f"hub/checkpoints/{filename}"]
    asked = len(served.requests)
    torchvision_model("mobilenet_v3_small", 3, 10, weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    assert len(served.requests) == asked  # read from the cache


def test_weights_whose_hash_differs_from_their_name_are_refused_and_not_kept(served, monkeypatch, tmp_path):
    serve_weights(served, monkeypatch, name_hash="00000000")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ImgrecError, match=rf"^model.weights=MobileNet_V3_Small_Weights.IMAGENET1K_V1: the download of "
                                          rf"{served.url}/mobilenet_v3_small-00000000.pth is corrupt \(its SHA-256 "
                                          r"checksum does not start with the 00000000 its name promises: .*\); nothing "
                                          r"was saved\. Run again to retry\. Download it"):
        torchvision_model("mobilenet_v3_small", 3, 10, weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1")
    assert files_left(tmp_path / "torch") == []


@pytest.mark.slow
def test_the_command_offline_exits_2_with_the_one_line_error(tmp_path):
    """imgrec-train itself, with the network unreachable through a proxy on a closed port."""
    env = {key: value for key, value in os.environ.items()
           if key.lower() not in ("imgrec_offline", "no_proxy", "http_proxy", "https_proxy")}
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    command = [str(Path(sys.executable).parent / "imgrec-train"), "dataset=cifar10", "dataset.download=true",
               f"dataset.root={tmp_path / 'cifar10'}", "~logger", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "Traceback" not in output
    one_line = (r"error: dataset cifar10: could not download https://www.cs.toronto.edu/~kriz/cifar-10-python\.tar"
                r"\.gz: www.cs.toronto.edu cannot be reached \(.*\); this machine appears to be offline\. Copy "
                r"cifar-10-batches-py/.* or set dataset.root to a folder that has them$")
    assert re.search(one_line, output, re.M), output
    assert files_left(tmp_path / "cifar10") == []
