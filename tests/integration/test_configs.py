"""Every file in every config group composes and builds: adding a config adds a test."""

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from imgrec.training.callbacks import Callback
from imgrec.commands.train_checks import instantiate_callbacks
from imgrec.tasks.classification import ClassificationTask
from imgrec.config import CONFIG_DIR, build
from imgrec.data.building import build_dataset
from imgrec.training.schedulers import step_scheduler
from imgrec.data.mnist import DEBIAN_FASHION_MNIST
from imgrec.data.detection import DetectionSplits
from imgrec.data.splits import Splits
from imgrec.errors import ImgrecError
from imgrec.commands.train import train
from tests.conftest import config_names

DETECTORS = {path.stem for path in (CONFIG_DIR / "model").glob("*.yaml")
             if "imgrec.models.detectors." in path.read_text()}


NEEDS_DOWNLOADED_FILES = {"mnist", "kmnist", "cifar10", "cifar100", "svhn"}


def dataset_overrides(name: str, tmp_path) -> list[str]:
    """Point file-based datasets at fixtures this test makes (or at an empty folder, to see the error)."""
    from tests.integration.test_datasets import make_folder, write_csv

    if name == "image_folder":
        return [f"dataset.root={make_folder(tmp_path / 'images', per_class=6)}", "dataset.image_size=8"]
    if name == "csv":
        make_folder(tmp_path / "img", per_class=6, classes=("ok", "defect"))
        rows = [(f"img/{c}/{i}.png", c) for c in ("ok", "defect") for i in range(6)]
        return [f"dataset.file={write_csv(tmp_path / 'labels.csv', rows, header='path,label')}", "dataset.image_size=8"]
    if name in NEEDS_DOWNLOADED_FILES:
        return [f"dataset.root={tmp_path / 'empty'}"]
    if name == "seg_folder":
        from tests.integration.test_segmentation import folder

        return [f"dataset.root={folder(tmp_path / 'scans', 8)}", "dataset.image_size=8"]
    if name == "faces":
        from tests.integration.test_faces import make_people

        return [f"dataset.root={make_people(tmp_path / 'faces')}", "dataset.image_size=24", "dataset.detect=none"]
    if name in ("voc", "coco", "yolo"):
        from tests.integration.test_detection import annotated_folder

        names = ["dataset.class_names=[cat,dog]"] if name == "yolo" else []
        return [f"dataset.root={annotated_folder(tmp_path / name, name)}", *names]
    if name == "fashion_mnist" and not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist (.ci/run installs it)")
    return []


@pytest.mark.parametrize("name", config_names("dataset"))
def test_every_dataset_config_builds_splits(compose_cfg, name, tmp_path):
    cfg = compose_cfg(f"dataset={name}", *dataset_overrides(name, tmp_path))
    task = cfg.dataset.get("task", "classification")
    if name in NEEDS_DOWNLOADED_FILES:  # nothing can be downloaded here: the error must say how to get them
        with pytest.raises(ImgrecError, match=r"dataset.download=true \(needs internet\)"):
            build_dataset(cfg.dataset, task)
        return
    splits = build_dataset(cfg.dataset, task)
    if task == "detection":  # boxed images of any size, served as RGB
        assert isinstance(splits, DetectionSplits) and splits.class_names and splits.channels == 3
        assert min(len(splits.train), len(splits.val), len(splits.test)) > 0 and sum(splits.class_counts()) > 0
        with pytest.raises(ImgrecError, match=r"serves the detection task but task=other"):
            build_dataset(cfg.dataset, "other")
        return
    assert isinstance(splits, Splits)
    if cfg.dataset.num_classes is not None:
        assert len(splits.class_names) == cfg.dataset.num_classes
    # channels=auto reads the fixtures' grey pixels (saved as RGB) with one channel
    channels = 1 if cfg.dataset.channels == "auto" else cfg.dataset.channels
    assert splits.train.images.shape[1:] == (channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert len(splits.mean) == len(splits.std) == channels
    assert min(len(splits.train), len(splits.val), len(splits.test)) > 0
    if task == "segmentation":  # a mask of class ids per image
        assert splits.train.labels.shape == (len(splits.train), cfg.dataset.image_size, cfg.dataset.image_size)
        assert int(splits.train.labels.max()) < len(splits.class_names)
    with pytest.raises(ImgrecError, match=rf"serves the {task} task but task=other"):
        build_dataset(cfg.dataset, "other")


SEGMENTATION_MODELS = {"unet", "fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                       "lraspp_mobilenet_v3_large", "smp_unet"}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", config_names("model"))
def test_every_model_config_builds_and_classifies(compose_cfg, name, channels):
    if name == "timm":
        pytest.importorskip("timm", reason="the timm extra is not installed")
    if name == "smp_unet":
        pytest.importorskip("segmentation_models_pytorch", reason="the seg extra is not installed")
    if name in DETECTORS:  # RGB only; each detector trains and detects in tests/unit/test_detectors.py
        if channels == 1:
            pytest.skip("detectors take RGB")
        cfg = compose_cfg("task=detection", f"model={name}", "model.min_size=64", "model.max_size=64")
        with torch.no_grad():
            found = instantiate(cfg.model, num_classes=4).eval()(torch.rand(2, 3, 48, 64))
        assert len(found) == 2 and set(found[0]) == {"boxes", "labels", "scores"}
        return
    # 32 px: the smallest size every backbone's five 2x downsamplings leave at least 1 px of
    cfg = compose_cfg(f"model={name}", "dataset=fake", f"dataset.channels={channels}", "dataset.image_size=32")
    model = instantiate(cfg.model).eval()
    x = torch.randn(2, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    with torch.no_grad():
        expected = (2, cfg.dataset.num_classes, 32, 32) if name in SEGMENTATION_MODELS else (2, cfg.dataset.num_classes)
        assert model(x).shape == expected


@pytest.mark.parametrize("optimizer", config_names("optimizer"))
@pytest.mark.parametrize("scheduler", config_names("scheduler"))
def test_every_optimizer_and_scheduler_config_takes_a_step(compose_cfg, optimizer, scheduler):
    from imgrec.training.optim import build_optimizer

    cfg = compose_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}")
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(cfg.optimizer, model)
    sched = build(cfg.scheduler)(opt, steps_per_epoch=5, max_epochs=2)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    step_scheduler(sched, {"val/acc": 0.5, "val/loss": 1.0})
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert 0 < opt.param_groups[0]["lr"] <= cfg.optimizer.lr * 1.0001


@pytest.mark.parametrize("name", config_names("callbacks"))
def test_every_callbacks_config_builds_callbacks(compose_cfg, name):
    callbacks = instantiate_callbacks(compose_cfg(f"callbacks={name}"), ClassificationTask().metric_names())
    assert callbacks and all(isinstance(c, Callback) for c in callbacks.values())


# what each logger leaves under the tests' log dir (tmp_path): a new logger config names its files here
LOGGER_FILES = {"tensorboard": ["run/tensorboard/*/events.out.tfevents.*"], "csv": ["run/metrics.csv"],
                "mlflow": ["mlflow.db"]}
LOGGER_FILES["many"] = [*LOGGER_FILES["tensorboard"], *LOGGER_FILES["csv"], *LOGGER_FILES["mlflow"]]


@pytest.mark.parametrize("name", config_names("logger"))
def test_every_logger_config_builds_and_writes(compose_cfg, name, tmp_path):
    cfg = compose_cfg(f"logger={name}")
    if "mlflow_logger" in str(cfg.logger):
        pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    logger = build(cfg.logger)  # as imgrec-train builds it: every target checked against the registry
    logger.start({"optimizer.lr": 0.1})
    logger.log_metrics({"val/acc": 0.5}, step=1)
    logger.close()
    for pattern in LOGGER_FILES[name]:
        assert any(tmp_path.glob(pattern)), pattern


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", config_names("augment"))
def test_every_augment_config_builds_and_keeps_shape_and_range(compose_cfg, name, channels):
    from imgrec.data.augment import build_augment

    cfg = compose_cfg(f"augment={name}", "dataset=fake")
    augment = build_augment(cfg.augment)
    if name == "none":
        assert augment is None
        return
    size = cfg.dataset.image_size
    images = torch.randint(0, 256, (6, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    out = augment(images)
    assert out.shape == images.shape
    assert out.dtype in (torch.uint8, torch.float32) and out.min() >= 0 and out.max() <= 255
    torch.manual_seed(1)
    assert torch.equal(augment(images), out)  # the same seed gives the same augmented batch
    masks = torch.randint(0, 3, (6, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    moved_images, moved_masks = augment.joint(images, masks)  # every pipeline takes segmentation masks too
    assert moved_images.shape == images.shape and moved_masks.shape == masks.shape and moved_masks.dtype == torch.uint8


@pytest.mark.parametrize("name", config_names("box_augment"))
def test_every_box_augment_config_builds_and_keeps_boxes_inside_their_image(compose_cfg, name):
    from omegaconf import OmegaConf

    from imgrec.data.box_augment import build_box_augment

    cfg = compose_cfg("task=detection", f"box_augment={name}")
    augment = build_box_augment(OmegaConf.to_container(cfg.box_augment, resolve=True))
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    image[:, 10:40, 20:50] = 200
    for seed in range(10):
        out, boxes, labels = augment(image, torch.tensor([[20.0, 10.0, 50.0, 40.0]]), torch.tensor([1]),
                                     torch.Generator().manual_seed(seed))
        assert out.dtype == torch.uint8 and out.shape[0] == 3 and len(boxes) == len(labels) <= 1
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= out.shape[2]).all() and (boxes[:, 3] <= out.shape[1]).all()


def experiment_extras(name: str, cfg, tmp_path) -> list[str]:
    """What an experiment needs from its user: the linear probe a local weights file, a recipe for your own
    images and masks a small folder in the layout its config names (both made here)."""
    if name == "transfer_linear_probe":
        import torchvision

        weights = tmp_path / "resnet18.pth"
        torch.save(torchvision.models.resnet18().state_dict(), weights)
        return [f"model.weights={weights}", "dataset.image_size=32", "trainer.batch_size=16"]
    if cfg.dataset._target_.endswith(".seg_folder"):  # 12 grey 256 px images, 0/255 masks (ISBI's values too)
        from PIL import Image

        rng = np.random.default_rng(0)
        root = tmp_path / "masks_data"
        for folder in (cfg.dataset.images, cfg.dataset.masks):
            (root / folder).mkdir(parents=True)
        for index in range(12):
            label = np.where(rng.random((256, 256)) < 0.2, 0, 255).astype(np.uint8)
            Image.fromarray(label // 2 + 60).save(root / cfg.dataset.images / f"{index}.png")
            Image.fromarray(label).save(root / cfg.dataset.masks / f"{index}.png")
        return [f"dataset.root={root}", "model.depth=2", "model.base_width=4"]
    if cfg.dataset.get("train_per_class"):  # a small-data recipe: the fake set's classes hold fewer images
        return ["dataset.train_per_class=5"]
    return []


@pytest.mark.parametrize("name", config_names("experiment"))
def test_every_experiment_runs_one_limited_epoch_on_fake_data(compose_cfg, name, tmp_path):
    # group choices on the command line beat an experiment's own `override /dataset`: classification
    # experiments run on fake data, segmentation ones on the built-in shapes, and a recipe for your own
    # files on a small folder in its layout
    text = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text()
    as_shipped = compose_cfg(f"experiment={name}")
    segmentation = as_shipped.task._target_.endswith(".SegmentationTask")
    embedding = as_shipped.task._target_.endswith(".EmbeddingTask")
    detection = as_shipped.task._target_.endswith(".DetectionTask")
    if as_shipped.dataset._target_.endswith(".seg_folder"):
        data = []
    elif embedding:  # faces in person folders, made here
        from tests.integration.test_faces import make_people

        data = [f"dataset.root={make_people(tmp_path / 'faces')}", "dataset.detect=none", "dataset.image_size=24"]
    elif detection and as_shipped.dataset._target_.endswith(".detection_folder"):  # a recipe for annotated files
        from tests.integration.test_detection import annotated_folder

        root = annotated_folder(tmp_path / "annotated", as_shipped.dataset.format, count=12)
        data = [f"dataset.root={root}", "dataset.images=null", "dataset.annotations=null", "model.min_size=64",
                "model.max_size=64"]
    elif detection:  # the built-in shapes, small
        data = ["dataset=det_shapes", "dataset.size=24", "model.min_size=64", "model.max_size=64"]
    elif segmentation:
        data = ["dataset=shapes", "dataset.size=20", "dataset.image_size=32", "dataset.patch_size=null",
                "model.depth=2", "model.base_width=4"]
    elif as_shipped.dataset._target_.endswith(".image_folder") and as_shipped.dataset.mean is None:  # your own folders
        from tests.integration.test_datasets import make_folder

        data = [f"dataset.root={make_folder(tmp_path / 'images', per_class=6)}", "dataset.image_size=32"]
    else:
        data = ["dataset=fake"]
    cfg = compose_cfg(f"experiment={name}", *data, "trainer.max_epochs=1", "trainer.limit_batches=1",
                      *experiment_extras(name, as_shipped, tmp_path))
    header = text.splitlines()[1]
    assert header.startswith("# ") and len(header) > 20, "each experiment file starts by saying what it does"
    result = train(cfg)
    monitored = "val/dice" if segmentation else "val/roc_auc" if embedding else "val/map50" if detection else "val/acc"
    assert set(result["metrics"]) >= {"train/loss", monitored} and result["epochs"] == 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    if name == "transfer_linear_probe":
        assert result["best_metrics"]["val/acc"] == result["best_score"]


def test_the_linear_probe_without_weights_says_how_to_give_them(compose_cfg):
    cfg = compose_cfg("experiment=transfer_linear_probe", "dataset=fake", "trainer.max_epochs=1")
    with pytest.raises(ImgrecError, match="needs pretrained weights: set model.weights to a local file"):
        train(cfg)
