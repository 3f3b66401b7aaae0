"""imgrec-robustness on a digits checkpoint: accuracy under attack and corruption, written as files."""

import csv
import json

import pytest

from imgrec.errors import ImgrecError
from tests.conftest import tool_cfg


def report(tmp_path, name, *overrides):
    from imgrec.commands.robustness import robustness_report

    return robustness_report(tool_cfg("robustness", tmp_path / name, "device=cpu", *overrides))


def test_attacks_and_corruptions_lower_accuracy_and_are_written(digits_checkpoint, tmp_path):
    summary = report(tmp_path, "run", f"ckpt_path={digits_checkpoint}", "max_images=128", "eps=[0.05,0.15]",
                     "attacks=[fgsm,pgd,apgd]", "pgd.steps=5", "apgd.steps=10",
                     "corruptions=[contrast,gaussian_noise]", "severities=[1,5]")
    clean = summary["clean_accuracy"]
    assert summary["images"] == 128 and clean > 0.8
    by = {(row["attack"], row["eps"]): row["accuracy"] for row in summary["attacks"]}
    assert by[("fgsm", 0.15)] < by[("fgsm", 0.05)] <= clean
    assert by[("pgd", 0.15)] <= by[("fgsm", 0.15)]  # five steps find at least what one step finds
    for eps in (0.05, 0.15):  # APGD-CE, with its own step size, finds at least what PGD finds (1 image's slack)
        assert by[("apgd", eps)] <= by[("pgd", eps)] + 1 / 128
    contrast = summary["corruptions"]["contrast"]
    assert contrast[5] < contrast[1] <= clean + 1 / 128
    assert summary["mean_corruption_accuracy"] == pytest.approx(
        (contrast[1] + contrast[5] + sum(summary["corruptions"]["gaussian_noise"].values())) / 4)
    written = json.loads((tmp_path / "run" / "robustness.json").read_text())
    assert written["clean_accuracy"] == clean and written["attacks"] == summary["attacks"]
    assert [(row["attack"], row["norm"], row["eps"]) for row in written["attacks"]] == [
        (name, "linf", eps) for name in ("fgsm", "pgd", "apgd") for eps in (0.05, 0.15)]
    assert written["apgd"] == {"steps": 10, "restarts": 1, "norm": "linf"} and written["pgd"]["steps"] == 5
    with open(tmp_path / "run" / "attacks.csv") as handle:
        table = {(r["attack"], r["norm"], float(r["eps"])): float(r["accuracy"]) for r in csv.DictReader(handle)}
    assert table == {(name, "linf", eps): pytest.approx(value) for (name, eps), value in by.items()}
    with open(tmp_path / "run" / "corruptions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["corruption"], r["severity"]) for r in rows} == {(c, s) for c in ("contrast", "gaussian_noise")
                                                                 for s in ("1", "5")}
    for picture in ("accuracy_vs_eps.png", "accuracy_vs_severity.png", "adversarial_examples.png"):
        assert (tmp_path / "run" / picture).stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = (tmp_path / "run" / "tensorboard" / "robustness").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    curve = [(e.step, e.value) for e in accumulator.Scalars("robustness/pgd_linf")]
    assert curve == [(0, pytest.approx(clean)), (50, pytest.approx(by[("pgd", 0.05)])),
                     (150, pytest.approx(by[("pgd", 0.15)]))]
    assert [e.value for e in accumulator.Scalars("robustness/apgd_linf")] == pytest.approx(
        [clean, by[("apgd", 0.05)], by[("apgd", 0.15)]])
    assert "adversarial_examples" in accumulator.Tags()["images"]


def test_the_same_seed_gives_the_same_report(digits_checkpoint, tmp_path):
    settings = (f"ckpt_path={digits_checkpoint}", "max_images=64", "eps=[0.1]", "attacks=[pgd]", "pgd.steps=3",
                "corruptions=[shot_noise]", "severities=[3]")
    first, second = report(tmp_path, "a", *settings), report(tmp_path, "b", *settings)
    assert first["attacks"] == second["attacks"] and first["corruptions"] == second["corruptions"]


def test_apgd_attacks_in_pgd_norm(digits_checkpoint, tmp_path):
    summary = report(tmp_path, "l2", f"ckpt_path={digits_checkpoint}", "max_images=64", "attacks=[apgd]",
                     "pgd.norm=l2", "eps=[0.5,3.0]", "apgd.steps=5", "corruptions=[]", "shown_images=0")
    rows = summary["attacks"]
    assert [(row["attack"], row["norm"], row["eps"]) for row in rows] == [("apgd", "l2", 0.5), ("apgd", "l2", 3.0)]
    assert rows[1]["accuracy"] < rows[0]["accuracy"] <= summary["clean_accuracy"]


@pytest.mark.parametrize("overrides, message", [
    (["attacks=[cw]"], r"attacks=\['cw'\] has \['cw'\]; choose among fgsm, pgd, apgd"),
    (["apgd.steps=0"], r"apgd.steps=0 must be a whole number >= 1"),
    (["apgd.restarts=1.5"], r"apgd.restarts=1.5 must be a whole number >= 1"),
    (["attacks=[fgsm,apgd]", "pgd.norm=l2", "eps=[2.0]"], r"eps \(fgsm is L-inf\)=2.0 must be in \[0, 1\]"),
    (["eps=[2.0]"], r"^eps=2.0 must be in \[0, 1\]"),
    (["pgd.steps=0"], r"^pgd.steps=0 must be a whole number >= 1"),
    (["attacks=pgd"], r"^attacks='pgd' must be a list in brackets, e.g. attacks=\[pgd\]"),
    (["eps=0.1"], r"^eps=0.1 must be a list in brackets, e.g. eps=\[0.05,0.1\]"),
    (["eps=[]"], r"^eps=\[\] leaves attacks=\['fgsm', 'pgd'\] nothing to do"),
    (["severities=[]", "corruptions=[contrast]"], r"^severities=\[\] leaves the corruptions nothing to do"),
    (["severities=5"], r"^severities=5 must be a list in brackets"),
    (["corruptions=contrast"], r"^corruptions='contrast' must be a list in brackets"),
    (["corruptions=[fog]"], r"corruptions has \['fog'\]; choose all"),
    (["severities=[0]"], r"severities=\[0\] must each be 1, 2, 3, 4 or 5"),
    (["max_images=0"], r"max_images=0 must be a whole number >= 1"),
    (["shown_images=-1"], r"shown_images=-1 must be a whole number >= 0"),
])
def test_bad_settings_are_named_before_the_checkpoint_is_read(tmp_path, overrides, message):
    with pytest.raises(ImgrecError, match=message):
        report(tmp_path, "bad", "ckpt_path=/nonexistent.pt", *overrides)


def test_an_embedding_checkpoint_is_refused(embedding_run, tmp_path):
    with pytest.raises(ImgrecError, match=r"was trained for the embedding task; imgrec-robustness scores classifiers"):
        report(tmp_path, "emb", f"ckpt_path={embedding_run[1] / 'checkpoints' / 'best.pt'}")
