"""dataset.train_per_class and dataset.synthetic through the real configs: digits with 5 real images per class and
as many generated ones, built and trained."""

import json

import numpy as np
import torch
from PIL import Image

from imgrec.commands.train import train
from imgrec.data.building import build_dataset

DIGITS = [str(digit) for digit in range(10)]
GENERATED_MARK = 255  # every generated pixel; digits' own images are scaled 0..255 too, so the tests count rows


def write_samples(root, per_class: int = 8, image_size: int = 16):
    """A folder as imgrec-gan sample writes it for digits: a plain image per file, the class in pixel (0,0)."""
    for class_id, name in enumerate(DIGITS):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.full((image_size, image_size), GENERATED_MARK, dtype=np.uint8)
            pixels[0, 0], pixels[0, 1] = class_id, index
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    (root / "manifest.json").write_text(json.dumps({
        "format": "imgrec-gan-samples", "format_version": 1, "class_names": DIGITS, "folders": DIGITS,
        "counts": {name: per_class for name in DIGITS}, "channels": 1, "image_size": image_size,
    }))
    return root


def test_digits_with_five_per_class_and_half_generated(compose_cfg, tmp_path):
    samples = write_samples(tmp_path / "samples")
    mixed_cfg = compose_cfg("dataset=digits", "dataset.train_per_class=5", f"dataset.synthetic.root={samples}",
                            "dataset.synthetic.ratio=0.5")
    mixed = build_dataset(mixed_cfg.dataset, "classification")
    real = build_dataset(compose_cfg("dataset=digits", "dataset.train_per_class=5").dataset, "classification")
    assert mixed.class_counts("train") == [10] * 10 and real.class_counts("train") == [5] * 10
    assert torch.equal(mixed.train.images[:50], real.train.images)
    added = mixed.train.images[50:]
    assert (added[:, :, 1:] == GENERATED_MARK).all()
    assert torch.equal(added[:, 0, 0, 0].long(), mixed.train.labels[50:])
    assert mixed.synthetic == {"root": str(samples), "ratio": 0.5, "added": 50, "added_per_class": [5] * 10, "real": 50}
    full = build_dataset(compose_cfg("dataset=digits").dataset, "classification")
    for name in ("val", "test"):
        for other in (real, full):
            assert torch.equal(getattr(mixed, name).images, getattr(other, name).images)
            assert torch.equal(getattr(mixed, name).labels, getattr(other, name).labels)
    assert (mixed.mean, mixed.std) == (real.mean, real.std)


def test_a_run_trains_and_tests_on_the_mixed_set(compose_cfg, tmp_path):
    samples = write_samples(tmp_path / "samples")
    cfg = compose_cfg("dataset=digits", "dataset.train_per_class=5", f"dataset.synthetic.root={samples}",
                      "dataset.synthetic.ratio=0.5", "trainer.max_epochs=1", "test=true", "scheduler=none")
    result = train(cfg)
    assert result["epochs"] == 1 and "train/loss" in result["metrics"]
    counts = json.loads((tmp_path / "run" / "classes.json").read_text())["counts"]
    assert counts["train"] == [10] * 10 and sum(counts["test"]) == 360  # digits' full test split: 20% of 1,797
    assert (tmp_path / "run" / "test_report.json").is_file()
