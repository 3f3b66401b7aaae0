"""imgrec-predict on files a user would have, and imgrec-export round trips."""

import csv
import json

import pytest
import torch
from PIL import Image

from imgrec.config import build
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError
from imgrec.commands.export import export_checkpoint
from imgrec.evaluation.inference import load_trained
from imgrec.commands.predict import predict_images
from tests.conftest import tool_cfg


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, digits_checkpoint):
    """Ten test digits as PNG files, a broken PNG and a text file, with the model's own probabilities."""
    from omegaconf import OmegaConf

    from imgrec.data.batching import Preprocess

    folder = tmp_path_factory.mktemp("new_images")
    trained = load_trained(str(digits_checkpoint), torch.device("cpu"))
    test = build_dataset(OmegaConf.create(trained.state["config"]["dataset"]), "classification").test
    images = test.images[:10]
    for index, image in enumerate(images):
        Image.fromarray(image[0].numpy()).save(folder / f"digit_{index:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    with torch.no_grad():
        expected = trained.model(Preprocess(trained.mean, trained.std, torch.device("cpu"))(images)).softmax(dim=1)
    return folder, expected, trained.class_names


def test_predict_a_folder_with_a_broken_file(digits_checkpoint, digit_files, tmp_path):
    folder, expected, names = digit_files
    result = predict_images(tool_cfg("predict", tmp_path / "run", f"ckpt_path={digits_checkpoint}",
                                     f"inputs={folder}", "top_k=3"))
    with open(tmp_path / "run" / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"].rsplit("/", 1)[-1] for row in rows] == [f"digit_{i:02d}.png" for i in range(10)]
    for row, probabilities in zip(rows, expected):
        top = probabilities.topk(3)
        assert [row[f"class_{k}"] for k in (1, 2, 3)] == [names[i] for i in top.indices]
        assert [float(row[f"prob_{k}"]) for k in (1, 2, 3)] == pytest.approx(top.values.tolist(), rel=1e-4)
    with open(tmp_path / "run" / "skipped.csv") as file:
        skipped = list(csv.DictReader(file))
    assert [s["path"].rsplit("/", 1)[-1] for s in skipped] == ["broken.png"] and skipped[0]["reason"]
    assert len(result["predictions"]) == 10  # notes.txt is not an image file and is not read


def test_predict_json_with_tta_and_a_glob(digits_checkpoint, digit_files, tmp_path):
    folder, _, _ = digit_files
    predict_images(tool_cfg("predict", tmp_path / "run", f"ckpt_path={digits_checkpoint}",
                            f"inputs={folder}/digit_0*.png", "format=json", "tta=true", "top_k=2"))
    saved = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert len(saved["predictions"]) == 10 and saved["skipped"] == []
    for entry in saved["predictions"]:
        probabilities = [p["probability"] for p in entry["predictions"]]
        assert len(probabilities) == 2 and probabilities[0] >= probabilities[1] and sum(probabilities) <= 1 + 1e-6


def test_predict_fails_only_when_nothing_is_readable(digits_checkpoint, digit_files, tmp_path):
    folder, _, _ = digit_files
    with pytest.raises(ImgrecError, match="none of the 1 input file.s. could be read as an image; first: .*broken.png"):
        predict_images(tool_cfg("predict", tmp_path / "run", f"ckpt_path={digits_checkpoint}",
                                f"inputs={folder / 'broken.png'}"))
    with pytest.raises(ImgrecError, match="inputs=/no/such/place: no such file or folder"):
        predict_images(tool_cfg("predict", tmp_path / "run", f"ckpt_path={digits_checkpoint}", "inputs=/no/such/place"))


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_each_export_round_trips_within_tolerance(digits_checkpoint, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    metadata = export_checkpoint(tool_cfg("export", tmp_path / "run", f"ckpt_path={digits_checkpoint}",
                                          f"format={fmt}"))
    assert metadata["max_abs_difference"] < 1e-4
    saved = json.loads((tmp_path / "run" / "model.json").read_text())
    assert saved["class_names"] == [str(i) for i in range(10)] and saved["input_shape"] == [1, 16, 16]
    assert (tmp_path / "run" / saved["file"]).stat().st_size > 10_000
    if fmt == "onnx":  # the batch dimension is dynamic
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "run" / saved["file"]))
        trained = load_trained(str(digits_checkpoint), torch.device("cpu"))
        for batch in (1, 7):
            x = torch.randn(batch, 1, 16, 16)
            with torch.no_grad():
                expected = trained.model(x)
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
            assert (got - expected).abs().max() < 1e-4


def test_export_refuses_an_unknown_format(digits_checkpoint, tmp_path):
    with pytest.raises(ImgrecError, match="format='pickle' must be one of safetensors, torchscript, onnx"):
        export_checkpoint(tool_cfg("export", tmp_path / "run", f"ckpt_path={digits_checkpoint}", "format=pickle"))


def test_model_json_rebuilds_the_network_of_a_folder_trained_model(tmp_path):
    """An image_folder run leaves num_classes null in its config; model.json must still say the real sizes."""
    from imgrec.config import stored_component
    from imgrec.commands.train import train
    from tests.integration.test_datasets import make_folder

    root = make_folder(tmp_path / "pets", per_class=8)
    train(tool_cfg("train", tmp_path / "run", "dataset=image_folder", f"dataset.root={root}", "dataset.image_size=16",
                   "trainer.max_epochs=1", "trainer.progress=false", "~logger"))
    export_checkpoint(tool_cfg("export", tmp_path / "export", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.pt'}"))
    saved = json.loads((tmp_path / "export" / "model.json").read_text())
    assert saved["model_config"]["num_classes"] == 3 and saved["model_config"]["in_channels"] == 1
    from safetensors.torch import load_file

    model = build(stored_component(saved["model_config"], "model", "model.json"))
    model.load_state_dict(load_file(str(tmp_path / "export" / saved["file"])))  # strict: every tensor fits


def test_shortcuts_pick_the_newest_runs_checkpoint(digits_checkpoint, tmp_path):
    import shutil
    import time

    from imgrec.checkpoint import resolve_ckpt_path

    for name in ("older", "newer"):
        (tmp_path / "train" / "runs" / name / "checkpoints").mkdir(parents=True)
        for kind in ("last", "best"):
            shutil.copy(digits_checkpoint, tmp_path / "train" / "runs" / name / "checkpoints" / f"{kind}.pt")
        time.sleep(0.02)
    assert resolve_ckpt_path("last", tmp_path / "train").endswith("newer/checkpoints/last.pt")
    assert resolve_ckpt_path("best", tmp_path / "train").endswith("newer/checkpoints/best.pt")
    assert resolve_ckpt_path("x/y.pt", tmp_path / "train") == "x/y.pt"
    cfg = tool_cfg("predict", tmp_path / "p", "ckpt_path=best", f"inputs={digits_checkpoint.parent}")
    cfg.paths.log_dir = str(tmp_path)
    with pytest.raises(ImgrecError, match="has no image files"):  # got as far as the inputs: the shortcut resolved
        predict_images(cfg)
    assert cfg.ckpt_path.endswith("newer/checkpoints/best.pt")
    with pytest.raises(ImgrecError, match=r"ckpt_path=last: no run under .*empty has a checkpoints/last.pt"):
        resolve_ckpt_path("last", tmp_path / "empty")
