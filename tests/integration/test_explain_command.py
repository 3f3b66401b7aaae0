"""imgrec-explain on files a user would have, and imgrec-eval's Grad-CAM beside its most confident errors."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from imgrec.errors import ImgrecError
from tests.conftest import tool_cfg

METHODS = ("gradcam", "gradcam_pp", "integrated_gradients")


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory, digits_checkpoint):
    """Five test digits as PNG files (one grey saved as RGB), a broken PNG, and the model's probabilities."""
    from omegaconf import OmegaConf

    from imgrec.data.building import build_dataset
    from imgrec.data.batching import Preprocess
    from imgrec.evaluation.inference import load_trained

    folder = tmp_path_factory.mktemp("digits_to_explain")
    trained = load_trained(str(digits_checkpoint), torch.device("cpu"))
    images = build_dataset(OmegaConf.create(trained.state["config"]["dataset"]), "classification").test.images[:5]
    for index, image in enumerate(images):
        picture = Image.fromarray(image[0].numpy())
        (picture.convert("RGB") if index == 4 else picture).save(folder / f"digit_{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with torch.no_grad():
        probabilities = trained.model(Preprocess(trained.mean, trained.std, torch.device("cpu"))(images)).softmax(1)
    return folder, probabilities


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    """best.pt of a one-epoch U-Net on the built-in shapes (classes background, disc, square, triangle)."""
    from imgrec.commands.train import train

    root = tmp_path_factory.mktemp("shapes")
    train(tool_cfg("train", root / "run", "experiment=seg_smoke", "trainer.max_epochs=1", "trainer.progress=false",
                   "~logger", "test=false"))
    return root / "run" / "checkpoints" / "best.pt"


def explain(run_dir, *overrides):
    from imgrec.commands.explain import explain_images

    return explain_images(tool_cfg("explain", run_dir, "device=cpu", *overrides))


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def has_colour(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return bool((np.abs(pixels[..., 0] - pixels[..., 2]) > 40).any())


def test_each_image_method_and_class_gets_a_picture_and_a_row(digits_checkpoint, digit_images, tmp_path):
    folder, probabilities = digit_images
    predicted = probabilities.argmax(dim=1).tolist()
    result = explain(tmp_path / "run", f"ckpt_path={digits_checkpoint}", f"inputs={folder}", "target=3",
                     "methods=[gradcam,gradcam_pp,integrated_gradients]", "ig_steps=8", "shown_images=3")
    assert result["layer"] == "features.10"
    assert [path for path, _ in result["skipped"]] == [str(folder / "broken.png")]
    rows = read_rows(tmp_path / "run" / "explanations.csv")
    expected = [(f"digit_{i}.png", method, target) for i in range(5) for method in METHODS
                for target in dict.fromkeys([predicted[i], 3])]
    assert [(row["path"].rsplit("/", 1)[-1], row["method"], int(row["target_index"])) for row in rows] == expected
    for row in rows:
        index = int(row["path"][-5])
        assert row["target_class"] == row["target_index"]  # the digits' classes are named 0-9
        assert float(row["probability"]) == pytest.approx(float(probabilities[index, int(row["target_index"])]),
                                                          abs=1e-5)
        assert row["predicted_class"] == str(predicted[index])
        assert row["layer"] == ("" if row["method"] == "integrated_gradients" else "features.10")
        masses = [row[f"mass_{q}"] for q in ("top_left", "top_right", "bottom_left", "bottom_right")]
        # empty only where a map holds no positive attribution (a Grad-CAM of an unlikely class can be all zero)
        assert masses == [""] * 4 or sum(map(float, masses)) == pytest.approx(1.0, abs=1e-4)
        assert 0 <= int(row["peak_row"]) < 16 and 0 <= int(row["peak_col"]) < 16
        assert row["picture"] == f"digit_{index}_{row['method']}.png"
    # image | the predicted class's map | class 3's map, each 16 px digit drawn at 64 px
    one = Image.open(tmp_path / "run" / "digit_0_gradcam.png")
    assert has_colour(tmp_path / "run" / "digit_0_gradcam.png") and one.width >= 3 * 64
    grid = Image.open(tmp_path / "run" / "explanations.png")
    assert grid.width > 2 * one.width and has_colour(tmp_path / "run" / "explanations.png")
    single = explain(tmp_path / "single", f"ckpt_path={digits_checkpoint}", f"inputs={folder / 'digit_0.png'}",
                     "methods=[gradcam]", "shown_images=1")
    assert len(single["rows"]) == 1 and single["rows"][0]["target_index"] == predicted[0]
    assert Image.open(tmp_path / "single" / "explanations.png").height < grid.height
    assert Image.open(tmp_path / "single" / "digit_0_gradcam.png").width < 3 * 64  # image | predicted class


def test_a_segmentation_class_is_explained_by_name(shapes_checkpoint, tmp_path):
    from imgrec.data.segmentation import shapes

    folder = tmp_path / "scans"
    folder.mkdir()
    splits = shapes(size=12, image_size=32, seed=1)
    for index, image in enumerate(splits.train.images[:2]):
        Image.fromarray(image[0].numpy()).save(folder / f"scan_{index}.png")
    result = explain(tmp_path / "run", f"ckpt_path={shapes_checkpoint}", f"inputs={folder}", "target=disc",
                     "methods=[gradcam,integrated_gradients]", "ig_steps=4")
    assert result["layer"] == "downs.1"  # the bottom of seg_smoke's two-stage U-Net
    rows = read_rows(tmp_path / "run" / "explanations.csv")
    assert {row["target_class"] for row in rows} >= {"disc"}
    assert all(row["predicted_class"] in ("background", "disc", "square", "triangle") for row in rows)
    assert all(0 <= float(row["probability"]) <= 1 for row in rows)
    assert (tmp_path / "run" / "scan_1_integrated_gradients.png").is_file()


def test_an_unknown_layer_exits_2_naming_the_valid_ones(digits_checkpoint, digit_images, tmp_path, caplog):
    from imgrec.commands.entry import run_command
    from imgrec.commands.explain import explain_images

    cfg = tool_cfg("explain", tmp_path / "run", "device=cpu", f"ckpt_path={digits_checkpoint}",
                   f"inputs={digit_images[0] / 'digit_0.png'}", "layer=layer4")
    with pytest.raises(SystemExit) as stopped:
        run_command(explain_images, cfg, record_command=False)
    assert stopped.value.code == 2
    assert "error: layer=layer4: SmallCNN has no module named 'layer4'; choose one of: features.0, " in caplog.text
    assert "features.10, features.11, features, classifier.0 (or layer=auto)" in caplog.text


def test_a_colour_image_for_a_grey_model_is_refused_naming_the_file(digits_checkpoint, tmp_path):
    colour = np.zeros((16, 16, 4), np.uint8)
    colour[..., 0], colour[..., 3] = 255, 255  # red, opaque: RGBA
    Image.fromarray(colour, mode="RGBA").save(tmp_path / "red.png")
    with pytest.raises(ImgrecError, match=r"red.png is a colour image and the checkpoint takes 1-channel \(grey\) "
                                          r"images; convert it to grey first"):
        explain(tmp_path / "run", f"ckpt_path={digits_checkpoint}", f"inputs={tmp_path / 'red.png'}")


def test_an_embedding_checkpoint_is_refused(embedding_run, digit_images, tmp_path):
    with pytest.raises(ImgrecError, match=r"was trained for the embedding task, which gives no class score to "
                                          r"explain; imgrec-explain takes classification and segmentation"):
        explain(tmp_path / "run", f"ckpt_path={embedding_run[1] / 'checkpoints' / 'best.pt'}",
                f"inputs={digit_images[0]}")


@pytest.mark.parametrize("override, message", [
    ("methods=[lime]", r"methods=\['lime'\] must be a non-empty list of gradcam, gradcam_pp, integrated_gradients"),
    ("methods=[]", r"methods=\[\] must be a non-empty list"),
    ("methods=gradcam", r"methods='gradcam' must be a list in brackets, e.g. methods=\[gradcam,integrated_gradients\]"),
    ("alpha=1.5", r"alpha=1.5 must be a number in \[0, 1\]"),
    ("ig_steps=1", r"ig_steps=1 must be a whole number >= 2"),
    ("ig_baseline=white", r"ig_baseline='white' must be one of black, mean"),
    ("shown_images=-1", r"shown_images=-1 must be a whole number >= 0"),
])
def test_bad_settings_are_named_before_the_checkpoint_is_read(tmp_path, override, message):
    with pytest.raises(ImgrecError, match=message):
        explain(tmp_path / "run", "ckpt_path=/nonexistent.pt", "inputs=/nonexistent", override)


def test_an_unknown_target_class_lists_the_classes(digits_checkpoint, digit_images, tmp_path):
    with pytest.raises(ImgrecError, match=r"target='cat' is neither a class of this checkpoint nor an index 0-9; "
                                          r"use target=predicted or one of: 0, 1, 2"):
        explain(tmp_path / "run", f"ckpt_path={digits_checkpoint}", f"inputs={digit_images[0]}", "target=cat")


def test_eval_draws_grad_cam_beside_each_confident_error(digits_checkpoint, shapes_checkpoint, tmp_path):
    from imgrec.commands.eval import evaluate_checkpoint

    def errors_grid(name, *overrides):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / name, f"ckpt_path={digits_checkpoint}", "device=cpu",
                                     "errors_shown=4", *overrides))
        return tmp_path / name / "confident_errors.png"

    plain, explained = errors_grid("plain"), errors_grid("gradcam", "gradcam_errors=true")
    assert not has_colour(plain) and has_colour(explained)  # grey digits, then the maps' colours beside them
    assert Image.open(explained).width > 1.8 * Image.open(plain).width
    assert Image.open(explained).height == Image.open(plain).height  # the same rows, each image and its map
    with pytest.raises(ImgrecError, match=r"gradcam_errors=true draws Grad-CAM beside a classifier's most confident "
                                          r"errors; this checkpoint is for the segmentation task"):
        evaluate_checkpoint(tool_cfg("eval", tmp_path / "seg", f"ckpt_path={shapes_checkpoint}", "device=cpu",
                                     "gradcam_errors=true"))
