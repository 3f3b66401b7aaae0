"""task=segmentation: datasets and mask mappings, bad input named, joint augmentation, metrics against
scikit-learn, tiled inference, export, resume, and the commands on a segmentation checkpoint."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix

from imgrec.commands.train import train
from imgrec.data.segmentation import seg_folder, shapes
from imgrec.data.splits import IGNORE
from imgrec.errors import ImgrecError
from tests.conftest import tool_cfg

SMOKE = ["experiment=seg_smoke", "trainer.progress=false", "~logger"]


def write_pair(root: Path, name: str, size=(20, 16), value=200, mask_mode="L", mask_values=(0, 255), image_mode="L"):
    """An image with a bright square and its mask (the square's pixels `mask_values[1]`, the rest the first)."""
    image = np.full((size[1], size[0]), 40, np.uint8)
    mask = np.full((size[1], size[0]), mask_values[0], np.uint8)
    image[4:10, 5:12], mask[4:10, 5:12] = value, mask_values[1]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert(image_mode).save(root / "images" / f"{name}.png")
    Image.fromarray(mask, mode=mask_mode if mask_mode != "JPEG" else "L").save(
        root / "masks" / (f"{name}.jpg" if mask_mode == "JPEG" else f"{name}.png"))
    return mask


def folder(root: Path, count=10, **options) -> Path:
    for index in range(count):
        write_pair(root, f"case_{index:02d}", **options)
    return root


# ---- datasets -------------------------------------------------------------------------------------


def test_a_folder_of_binary_masks_reads_0_255_as_background_and_foreground(tmp_path):
    splits = seg_folder(str(folder(tmp_path / "data")), image_size=16, val_fraction=0.2, test_fraction=0.2)
    assert splits.class_names == ["background", "foreground"] and splits.channels == 1
    assert [len(splits.train), len(splits.val), len(splits.test)] == [6, 2, 2]
    mask = splits.train.labels[0]
    assert mask.shape == (16, 16) and set(mask.unique().tolist()) == {0, 1}
    # the square (42 of 320 px before resizing) is the foreground, in the same place in image and mask
    image = splits.train.images[0, 0]
    assert image[mask == 1].float().mean() > 150 and image[mask == 0].float().mean() < 60
    assert splits.train.paths[0].endswith(".png")


def test_train_val_test_folders_and_a_csv_are_read_as_given(tmp_path):
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        folder(tmp_path / "layout" / split, count)
    splits = seg_folder(str(tmp_path / "layout"), image_size=None)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [4, 2, 3] and splits.test_given
    assert splits.train.images.shape[-2:] == (16, 20)  # image_size null keeps the size
    rows = [("images/case_00.png", "masks/case_00.png", "train"), ("images/case_01.png", "masks/case_01.png", "train"),
            ("images/case_02.png", "masks/case_02.png", "val"), ("images/case_03.png", "masks/case_03.png", "test")]
    folder(tmp_path / "flat", 4)
    table = tmp_path / "flat" / "pairs.csv"
    table.write_text("image,mask,split\n" + "\n".join(",".join(row) for row in rows) + "\n")
    from_csv = seg_folder(file=str(table), split_column="split", image_size=16)
    assert [len(from_csv.train), len(from_csv.val), len(from_csv.test)] == [2, 1, 1]


def test_mask_values_thresholds_palettes_and_ignore(tmp_path):
    # values mapped explicitly, with a border value ignored
    root = folder(tmp_path / "mapped", 6, mask_values=(10, 20))
    splits = seg_folder(str(root), mask_values={10: 0, 20: 1}, image_size=None)
    assert set(splits.train.labels.unique().tolist()) == {0, 1}
    with pytest.raises(ImgrecError, match=r"mask .*case_00.png: it holds value\(s\) \[20\] that dataset.mask_values "
                                          r"does not map \(it maps \[10\]\)"):
        seg_folder(str(root), mask_values={10: 0}, image_size=None)
    ignored = seg_folder(str(root), mask_values={10: 0}, ignore_index=20, image_size=None)
    assert set(ignored.train.labels.unique().tolist()) == {0, IGNORE}
    # JPEG masks: compression leaves grey levels; two-class ones are cut at 128 unless told otherwise
    jpeg = tmp_path / "jpeg"
    written = [write_pair(jpeg, f"case_{index:02d}", mask_mode="JPEG") for index in range(6)]
    raw = np.asarray(Image.open(jpeg / "masks" / "case_00.jpg"))
    assert len(np.unique(raw)) > 2  # the grey levels are really there
    splits = seg_folder(str(jpeg), image_size=None, val_fraction=0.2, test_fraction=0.2)
    assert torch.equal(splits.everything().labels, torch.from_numpy(np.stack(written) == 255).to(torch.uint8))
    assert set(seg_folder(str(jpeg), threshold=30, image_size=None).train.labels.unique().tolist()) == {0, 1}
    grey = folder(tmp_path / "grey", 6, mask_values=(0, 255))
    for path in (grey / "masks").iterdir():  # a PNG with stray grey levels is not guessed at
        mask = np.asarray(Image.open(path)).copy()
        mask[0, :6] = [3, 7, 90, 130, 170, 250]
        Image.fromarray(mask).save(path)
    with pytest.raises(ImgrecError, match=r"distinct values .* set dataset.threshold=128"):
        seg_folder(str(grey), image_size=None)
    # colour-coded masks with a palette
    colour = tmp_path / "colour"
    for index in range(6):
        write_pair(colour, f"c{index}")
        mask = np.zeros((16, 20, 3), np.uint8)
        mask[4:10, 5:12] = (128, 0, 0)
        Image.fromarray(mask).save(colour / "masks" / f"c{index}.png")
    with pytest.raises(ImgrecError, match=r"it is a colour mask: give dataset.palette"):
        seg_folder(str(colour), image_size=None)
    splits = seg_folder(str(colour), palette="voc", class_names=["background", "aeroplane"], image_size=None)
    assert set(splits.train.labels.unique().tolist()) == {0, 1}


def test_a_region_of_interest_is_ignored_outside(tmp_path):
    root = folder(tmp_path / "retina", 6)
    (root / "fov").mkdir()
    for index in range(6):
        roi = np.zeros((16, 20), np.uint8)
        roi[:, :10] = 255
        Image.fromarray(roi).save(root / "fov" / f"case_{index:02d}.png")
    splits = seg_folder(str(root), roi="fov", image_size=None)
    assert (splits.train.labels[:, :, 10:] == IGNORE).all() and (splits.train.labels[:, :, :10] != IGNORE).all()


@pytest.mark.parametrize("damage, message", [
    ("lonely image", r"1 image\(s\) have no mask in .*masks' .* e.g. .*case_99.png"),
    ("lonely mask", r"1 mask\(s\) have no image in .*images', e.g. .*extra.png"),
    ("size", r"image '.*case_00.png' cannot be used: its mask .*case_00.png is 30x30 px but the image is 20x16 px"),
    ("empty", r"'.*images' holds no image files"),
    ("classes", r"mask .*case_00.png: it holds 1 distinct values \(\[3\]\) for 2 classes; map them with dataset.mask_values"),
])
def test_bad_segmentation_input_is_named_with_its_file(tmp_path, damage, message):
    root = folder(tmp_path / "data", 6)
    if damage == "lonely image":
        Image.new("L", (20, 16)).save(root / "images" / "case_99.png")
    elif damage == "lonely mask":
        Image.new("L", (20, 16)).save(root / "masks" / "extra.png")
    elif damage == "size":
        Image.new("L", (30, 30)).save(root / "masks" / "case_00.png")
    elif damage == "empty":
        for path in (root / "images").iterdir():
            path.unlink()
    else:
        Image.fromarray(np.full((16, 20), 3, np.uint8)).save(root / "masks" / "case_00.png")
    with pytest.raises(ImgrecError, match=message):
        seg_folder(str(root), image_size=None)


def test_a_class_no_training_mask_holds_is_warned_about(tmp_path, caplog):
    seg_folder(str(folder(tmp_path / "d", 6)), class_names=["background", "lesion", "scar"], mask_values={0: 0, 255: 1},
               image_size=None)
    assert "class(es) ['scar'] appear in no training mask" in caplog.text


def test_shapes_are_the_same_for_the_same_seed_and_hold_every_class():
    first, second = shapes(size=30, image_size=32), shapes(size=30, image_size=32)
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.train.labels, second.train.labels)
    assert set(first.train.labels.unique().tolist()) == {0, 1, 2, 3}
    assert not torch.equal(first.train.images, shapes(size=30, image_size=32, seed=1).train.images)


# ---- augmentation keeps image and mask aligned --------------------------------------------------------


@pytest.mark.parametrize("transform", [
    {"_target_": "imgrec.data.augment.RandomHorizontalFlip", "p": 1.0},
    {"_target_": "imgrec.data.augment.RandomVerticalFlip", "p": 1.0},
    {"_target_": "imgrec.data.augment.RandomRotate90", "p": 1.0},
    {"_target_": "imgrec.data.augment.RandomAffine", "degrees": 30, "translate": 0.1, "zoom": 0.2, "p": 1.0},
    {"_target_": "imgrec.data.augment.RandomCrop", "padding": 4},
    {"_target_": "albumentations.HorizontalFlip", "p": 1.0},
])
def test_a_geometric_transform_moves_the_mask_with_the_image(transform):
    """An image whose bright pixels are exactly its foreground: after the transform they still must be."""
    from omegaconf import OmegaConf

    from imgrec.data.augment import build_augment

    backend = "albumentations" if transform["_target_"].startswith("albumentations") else "batch"
    augment = build_augment(OmegaConf.create({"backend": backend, "transforms": [transform]}))
    torch.manual_seed(0)
    masks = torch.zeros(6, 32, 32, dtype=torch.uint8)
    masks[:, 3:12, 5:20] = 1
    images = (masks * 200 + 20).unsqueeze(1).to(torch.uint8)
    moved_images, moved_masks = augment.joint(images, masks)
    assert moved_masks.shape == masks.shape and moved_masks.dtype == masks.dtype
    assert not torch.equal(moved_masks, masks)  # it did move them
    inside = moved_masks == 1
    bright = moved_images[:, 0] > 110
    covered = moved_masks != IGNORE
    # nearest-neighbour masks against bilinear images: they agree but for a one-pixel rim at edges
    assert ((inside != bright) & covered).float().mean() < 0.03


def test_show_augment_draws_each_mask_where_its_augmented_image_moved():
    """Column 0 is the original with its mask tinted over it; a certain horizontal flip moves the tint
    to the other side in the augmented column."""
    from omegaconf import OmegaConf

    from imgrec.commands.show_augment import augment_grid
    from imgrec.data.augment import build_augment

    augment = build_augment(OmegaConf.create(
        {"backend": "batch", "transforms": [{"_target_": "imgrec.data.augment.RandomHorizontalFlip", "p": 1.0}]}))
    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[:, :, :4] = 1
    images = torch.full((2, 1, 16, 16), 100, dtype=torch.uint8)
    grid = augment_grid(images, augment, repeats=1, masks=masks)
    assert grid.shape == (4, 3, 16, 16) and grid.dtype == torch.uint8
    tinted = (grid != 100).any(dim=1)  # grey pixels under a class colour change
    assert tinted[0, :, :4].all() and not tinted[0, :, 4:].any()
    assert tinted[1, :, -4:].all() and not tinted[1, :, :-4].any()


# ---- metrics -----------------------------------------------------------------------------------------


def test_epoch_and_report_scores_equal_scikit_learns_confusion_matrix_on_the_same_pixels():
    from imgrec.tasks.base import Gather
    from imgrec.tasks.segmentation import SegmentationTask

    task = SegmentationTask()
    task.bind(["background", "a", "b"], None)
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (5, 12, 12), generator=generator).to(torch.uint8)
    masks[0, :2] = IGNORE
    logits = torch.randn(5, 3, 12, 12, generator=generator)
    evaluator = task.evaluator()
    evaluator.update(logits[:3], masks[:3])  # two batches: accumulated, not averaged per batch
    evaluator.update(logits[3:], masks[3:])
    evaluation = evaluator.finish(Gather())
    valid = masks != IGNORE
    truth, predicted = masks[valid].numpy(), logits.argmax(1)[valid].numpy()
    expected = confusion_matrix(truth, predicted, labels=[0, 1, 2])
    assert (evaluation.matrix == expected).all()
    tp = np.diag(expected)
    iou = tp / (expected.sum(0) + expected.sum(1) - tp)
    dice = 2 * tp / (expected.sum(0) + expected.sum(1))
    scores = evaluation.scores("val")
    assert scores["val/pixel_acc"] == pytest.approx((truth == predicted).mean())
    assert scores["val/miou"] == pytest.approx(iou.mean()) and scores["val/dice"] == pytest.approx(dice[1:].mean())
    report = task.test_report(evaluation, None).summary
    assert report["per_class"]["a"]["iou"] == pytest.approx(iou[1]) and report["mean_iou"] == pytest.approx(iou.mean())


def test_dice_and_focal_losses_follow_their_formulas():
    import torch.nn.functional as F

    from imgrec.tasks.segmentation_losses import SegmentationLoss

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=generator)
    masks = torch.randint(0, 3, (2, 8, 8), generator=generator)
    p = logits.softmax(1)
    t = F.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    dice = (2 * (p * t).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1)
    assert SegmentationLoss("dice")(logits, masks).item() == pytest.approx(1 - dice.mean().item(), rel=1e-5)
    assert SegmentationLoss("ce")(logits, masks).item() == pytest.approx(F.cross_entropy(logits, masks).item())
    p_true = p.gather(1, masks[:, None])[:, 0]
    focal = (-(1 - p_true) ** 2 * p_true.log()).mean()
    assert SegmentationLoss("focal", focal_gamma=2.0)(logits, masks).item() == pytest.approx(focal.item(), rel=1e-5)
    ignored = masks.clone()
    ignored[0] = IGNORE  # the first image's pixels count nowhere
    assert SegmentationLoss("ce")(logits, ignored).item() == pytest.approx(F.cross_entropy(logits[1:], masks[1:]).item())


# ---- inference -------------------------------------------------------------------------------------


def test_tiled_inference_equals_whole_image_inference_where_both_fit():
    from imgrec.evaluation.sliding_window import tiled_logits

    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(1, 3, 1)  # sees one pixel: tiles change nothing
    images = torch.randn(2, 1, 50, 37)
    with torch.no_grad():
        whole = pointwise(images)
    assert torch.allclose(tiled_logits(pointwise, images, tile=16, overlap=0.5), whole, atol=1e-5)
    assert torch.allclose(tiled_logits(pointwise, images, tile=64), whole, atol=0)  # one tile: the whole image


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    result = train(tool_cfg("train", root / "run", *SMOKE, "trainer.max_epochs=3"))
    return root / "run", result


def test_a_segmentation_run_writes_its_report_and_checkpoints(seg_run):
    run_dir, result = seg_run
    report = json.loads((run_dir / "test_report.json").read_text())
    assert set(result["metrics"]) == {"train/loss", "train/pixel_acc", "train/lr", "val/loss", "val/pixel_acc",
                                      "val/miou", "val/dice"}
    assert report["class_names"] == ["background", "disc", "square", "triangle"]
    assert report["num_images"] == 8 and np.array(report["confusion_matrix"]).sum() == report["pixels"] == 8 * 32 * 32
    with open(run_dir / "per_image.csv") as file:
        assert len(list(csv.DictReader(file))) == 8
    from imgrec.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["config"]["task"]["_target_"] == "imgrec.tasks.segmentation.SegmentationTask"
    assert best["input_shape"] == [1, 32, 32]


def test_a_resumed_segmentation_run_ends_where_an_unbroken_one_does(tmp_path):
    from imgrec.checkpoint import load_checkpoint
    from imgrec.training.callbacks import EarlyStopping

    whole = train(tool_cfg("train", tmp_path / "whole", *SMOKE, "trainer.max_epochs=3"))
    original = EarlyStopping.on_epoch_end

    def stop_after_two(self, trainer, metrics):
        original(self, trainer, metrics)
        trainer.should_stop |= trainer.epoch >= 2

    EarlyStopping.on_epoch_end = stop_after_two
    try:
        train(tool_cfg("train", tmp_path / "first", *SMOKE, "trainer.max_epochs=3"))
    finally:
        EarlyStopping.on_epoch_end = original
    resumed = train(tool_cfg("train", tmp_path / "second", *SMOKE, "trainer.max_epochs=3",
                             f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.pt'}"))
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "second" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert resumed["metrics"] == whole["metrics"]


def test_eval_and_predict_a_segmentation_checkpoint(seg_run, tmp_path):
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.commands.predict import predict_images

    run_dir, result = seg_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={ckpt}"))
    assert report["pixel_accuracy"] == pytest.approx(result["test"]["pixel_accuracy"])
    assert (tmp_path / "eval" / "worst_and_best.png").stat().st_size > 500
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file() and (tmp_path / "eval" / "per_class.csv").is_file()
    images = tmp_path / "new"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70), dtype=np.uint8)).save(images / "scan.png")
    predicted = predict_images(tool_cfg("predict", tmp_path / "predict", f"ckpt_path={ckpt}", f"inputs={images}"))
    mask = np.asarray(Image.open(tmp_path / "predict" / "masks" / "scan.png"))
    assert mask.shape == (45, 70) and mask.max() < 4  # the image's own size, class ids
    assert Image.open(tmp_path / "predict" / "overlays" / "scan.png").size == (70, 45)
    assert len(predicted["predictions"]) == 1 and re.match(r".*scan.png", predicted["predictions"][0]["path"])


def test_onnx_export_of_a_segmentation_model_takes_any_height_and_width(seg_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from imgrec.commands.export import export_checkpoint
    from imgrec.evaluation.inference import load_trained

    run_dir, _ = seg_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    saved = export_checkpoint(tool_cfg("export", tmp_path / "export", f"ckpt_path={ckpt}", "format=onnx"))
    assert saved["max_abs_difference"] < 1e-4 and saved["task"] == "segmentation"
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"))
    trained = load_trained(str(ckpt), torch.device("cpu"))
    for height, width in ((32, 32), (48, 40), (50, 70), (9, 13)):  # multiples of 2^depth, and not
        x = torch.randn(2, 1, height, width)
        with torch.no_grad():
            expected = trained.model(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == expected.shape and (got - expected).abs().max() < 1e-4


def test_a_checkpoint_trained_with_mask_values_is_evaluated_on_its_own_data(tmp_path):
    """mask_values' keys are pixel values (whole numbers): a stored config may hold them."""
    from imgrec.commands.eval import evaluate_checkpoint

    root = folder(tmp_path / "data", 12, mask_values=(255, 0))  # ISBI-like: the object is 0
    train(tool_cfg("train", tmp_path / "run", "task=segmentation", "dataset=seg_folder", f"dataset.root={root}",
                   "dataset.image_size=null", "+dataset.mask_values={0: 1, 255: 0}", "model.depth=2",
                   "model.base_width=4", "trainer.max_epochs=1", "trainer.progress=false", "~logger"))
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval",
                                          f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.pt'}"))
    assert report["split"] == "test" and report["per_class"]["foreground"]["support"] == 2 * 6 * 7


def test_the_worst_and_best_strips_are_the_lowest_and_highest_dice_and_a_small_split_shows_all():
    from imgrec.tasks.segmentation import SegmentationEvaluation, SegmentationTask

    def figure(dice):
        n = len(dice)
        masks = torch.zeros(n, 8, 8, dtype=torch.uint8)
        evaluation = SegmentationEvaluation(torch.zeros(2, 2), 0.0, 1, torch.tensor(dice), masks, masks)
        images_at = lambda indices: np.stack([np.full((1, 8, 8), 10 * i, np.uint8) for i in indices])  # noqa: E731
        [spec] = SegmentationTask().comparison_figure(evaluation, images_at, "t", "title", count=2)
        return spec

    spec = figure([0.5, 0.9, 0.1, 0.7, 0.3, 0.8])
    assert spec.captions == ["worst: dice 0.100", "worst: dice 0.300", "best: dice 0.900", "best: dice 0.800"]
    assert [strip[0, 0, 0] for strip in spec.images] == [20, 40, 10, 50]  # image i is 10 * i, grey in every channel
    assert spec.images.shape[1:] == (3, 8, 4 * 8 + 3 * 2)  # image | truth | prediction | errors
    small = figure([0.6, 0.2, 0.4])
    assert small.captions == ["dice 0.200 (1 of 3, worst first)", "dice 0.400 (2 of 3, worst first)",
                              "dice 0.600 (3 of 3, worst first)"]


ISBI = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi-membrane"


@pytest.mark.skipif(not (ISBI / "image").is_dir(), reason="needs ../shared/data/isbi-membrane (not shipped with imgrec)")
def test_the_isbi_recipe_reads_the_30_slices_and_splits_them_20_5_5(compose_cfg):
    from imgrec.data.building import build_dataset

    cfg = compose_cfg("experiment=isbi_unet", f"dataset.root={ISBI}")
    splits = build_dataset(cfg.dataset, "segmentation")
    assert [len(splits.train), len(splits.val), len(splits.test)] == [20, 5, 5]
    assert sorted(int(Path(path).stem) for path in splits.test.paths) == [6, 10, 18, 19, 28]  # as BENCHMARKS.md says
    assert sorted(int(Path(path).stem) for path in splits.val.paths) == [3, 8, 12, 14, 23]
    assert tuple(splits.test.images.shape[1:]) == (1, 512, 512) and splits.class_names == ["cell", "membrane"]
    membrane_share = splits.test.labels.float().mean().item()  # label 0 (dark membrane) became class 1
    assert membrane_share == pytest.approx(0.220, abs=0.005)


# ---- found by the hostile review of #17 -------------------------------------------------------------


def test_16_bit_and_grey_palette_masks_read_the_values_they_show(tmp_path):
    # 16-bit PNG masks of class ids 0/1 are ids, not a brightness to rescale (which made them all 0)
    sixteen = folder(tmp_path / "sixteen", 6)
    for path in (sixteen / "masks").iterdir():
        ids = (np.asarray(Image.open(path)) == 255).astype(np.uint16)
        Image.fromarray(ids).save(path)  # mode I;16
    assert Image.open(sixteen / "masks" / "case_00.png").mode.startswith("I")
    expected = seg_folder(str(folder(tmp_path / "plain", 6)), image_size=None).everything().labels
    assert torch.equal(seg_folder(str(sixteen), image_size=None).everything().labels, expected)
    # a grey mask quantised to a palette (GIF-style) whose first colour is white reads by its grey levels
    quantised = folder(tmp_path / "gif", 6)
    for path in (quantised / "masks").iterdir():
        indices = np.where(np.asarray(Image.open(path)) == 255, 0, 1).astype(np.uint8)  # index 0 is white
        gif = Image.fromarray(indices, mode="P")
        gif.putpalette([255, 255, 255, 0, 0, 0])
        gif.save(path.with_suffix(".gif"))
        path.unlink()
        assert Image.open(path.with_suffix(".gif")).mode == "P"
    assert torch.equal(seg_folder(str(quantised), image_size=None).everything().labels, expected)


@pytest.mark.parametrize("settings, message", [
    ({"threshold": 128, "mask_values": {0: 1, 255: 0}}, r"dataset.mask_values and dataset.threshold are both set"),
    ({"threshold": "abc"}, r"dataset.threshold='abc' must be a number above 0"),
    ({"threshold": -5}, r"dataset.threshold=-5 must be a number above 0"),
    ({"threshold": 128, "class_names": ["a", "b", "c"]}, r"dataset.threshold=128 makes two classes but there are 3"),
    ({"mask_values": {"abc": 0}}, r"dataset.mask_values has the key 'abc'; keys are raw pixel values"),
    ({"mask_values": [0, 255]}, r"dataset.mask_values=\[0, 255\] must be a map of raw value to class id"),
    ({"ignore_index": "abc"}, r"dataset.ignore_index='abc' must be null or a whole number"),
    ({"patches_per_image": 0}, r"dataset.patches_per_image=0 must be a whole number from 1 to 10000"),
    ({"patch_size": -1}, r"dataset.patch_size=-1 must be null or a whole number from 8"),
])
def test_bad_mask_settings_are_refused_before_any_file_is_read(tmp_path, settings, message):
    with pytest.raises(ImgrecError, match=message):
        seg_folder(str(tmp_path / "nothing here"), **settings)  # the folder is never looked at


def test_duplicate_names_and_rows_are_refused_and_hidden_files_are_not_images(tmp_path):
    root = folder(tmp_path / "data", 6)
    (root / "images" / "._case_00.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert len(seg_folder(str(root), image_size=None).everything()) == 6
    Image.new("L", (20, 16)).save(root / "images" / "case_01.jpg")
    with pytest.raises(ImgrecError, match=r"'.*case_01.jpg' and '.*case_01.png' have the same name|"
                                          r"'.*case_01.png' and '.*case_01.jpg' have the same name"):
        seg_folder(str(root), image_size=None)
    (root / "images" / "case_01.jpg").unlink()
    with open(root / "pairs.csv", "w") as handle:
        handle.write("image,mask,split\nimages/case_00.png,masks/case_00.png,train\n"
                     "images/case_01.png,masks/case_01.png,train\nimages/case_00.png,masks/case_00.png,test\n")
    with pytest.raises(ImgrecError, match=r"pairs.csv rows 2 and 4 both list '.*case_00.png'"):
        seg_folder(file=str(root / "pairs.csv"), split_column="split")


def test_a_csv_alone_reads_its_paths_from_its_own_folder(tmp_path, compose_cfg):
    from imgrec.data.building import build_dataset

    root = folder(tmp_path / "data", 8)
    with open(root / "pairs.csv", "w") as handle:
        handle.write("image,mask\n" + "".join(f"images/case_{i:02d}.png,masks/case_{i:02d}.png\n" for i in range(8)))
    cfg = compose_cfg("task=segmentation", "dataset=seg_folder", f"dataset.file={root / 'pairs.csv'}")
    assert len(build_dataset(cfg.dataset, "segmentation").everything()) == 8
    with pytest.raises(ImgrecError, match=r"dataset.root is not set: point it at your images and masks"):
        build_dataset(compose_cfg("task=segmentation", "dataset=seg_folder").dataset, "segmentation")


def test_a_pipeline_that_cannot_move_masks_is_refused_for_segmentation():
    from imgrec.data.augment import build_augment

    strong = tool_cfg("train", Path("unused"), "augment=strong").augment
    assert build_augment(strong) is not None  # fine for classification
    with pytest.raises(ImgrecError, match=r"augment.transforms\[\d\] \(TrivialAugment\) moves pixels but cannot move a "
                                          r"segmentation mask"):
        build_augment(strong, masks=True)
    seg_basic = tool_cfg("train", Path("unused"), "augment=seg_basic", "augment.backend=albumentations").augment
    with pytest.raises(ImgrecError, match=r"augment.backend=albumentations but augment.transforms\[0\] is "
                                          r"imgrec.data.augment.RandomHorizontalFlip, not one of albumentations's transforms"):
        build_augment(seg_basic)


def test_a_split_without_foreground_scores_dice_1_and_reports_n_a():
    from imgrec.tasks.base import Gather
    from imgrec.tasks.segmentation import SegmentationTask

    task = SegmentationTask()
    task.bind(["background", "lesion"], None)
    evaluator = task.evaluator()
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 0] = 1.0  # background everywhere, and no lesion in the truth either
    evaluator.update(logits, torch.zeros(2, 8, 8, dtype=torch.uint8))
    evaluation = evaluator.finish(Gather())
    assert evaluation.scores("val")["val/dice"] == 1.0  # nothing to find, nothing found: as each image is scored
    report = task.test_report(evaluation, None)
    assert report.summary["per_class"]["lesion"]["dice"] is None and report.summary["mean_dice"] == 1.0
    assert "n/a" in report.text and "mean Dice (foreground) 1.0000" in report.text


def test_eval_on_a_new_folder_reads_it_at_the_size_the_model_was_trained_at(tmp_path):
    from imgrec.commands.eval import evaluate_checkpoint

    root = folder(tmp_path / "data", 12)
    train(tool_cfg("train", tmp_path / "run", "task=segmentation", "dataset=seg_folder", f"dataset.root={root}",
                   "dataset.image_size=16", "model.depth=2", "model.base_width=4", "trainer.max_epochs=1",
                   "trainer.progress=false", "~logger"))
    other = folder(tmp_path / "other", 4, size=(40, 32))
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.pt'}",
                                          "dataset=seg_folder", f"dataset.root={other}"))
    assert report["pixels"] == 4 * 16 * 16  # seg_folder's default 256 px would be 4 * 256 * 256


def test_a_run_on_a_relative_folder_is_evaluated_from_another_working_directory(tmp_path, monkeypatch):
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.evaluation.inference import load_trained

    folder(tmp_path / "project" / "scans", 12)
    monkeypatch.chdir(tmp_path / "project")
    train(tool_cfg("train", tmp_path / "run", "task=segmentation", "dataset=seg_folder", "dataset.root=scans",
                   "dataset.image_size=16", "model.depth=2", "model.base_width=4", "trainer.max_epochs=1",
                   "trainer.progress=false", "~logger"))
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    assert load_trained(str(checkpoint), torch.device("cpu")).state["config"]["dataset"]["root"] == str(
        tmp_path / "project" / "scans")
    monkeypatch.chdir(tmp_path)  # elsewhere: "scans" is not here
    report = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={checkpoint}"))
    assert report["num_images"] == 2
