"""scripts/bench.py --quick: every task at toy size produces a well-formed report (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_quick_bench_writes_a_report_with_every_task_and_contender(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path / "report.md"),
         "--json", str(tmp_path / "report.json")], capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["tasks"]) == {"digits", "fashion_mnist_epoch", "step_overhead", "startup", "recipes",
                                  "segmentation_epoch", "gallery_speed", "attack_speed"}
    recipes = data["tasks"]["recipes"]
    assert set(recipes["digits (the default run)"]) == {"before", "before, ties to the lower val/loss",
                                                        "new (the default now)"}
    assert set(recipes["experiment=fashion_mnist_cnn"]) == {"before", "new"}
    for contenders in recipes.values():
        for runs in contenders.values():
            assert len(runs) == 1 and runs[0]["seed"] == 0 and runs[0]["wall_s"] > 0 and runs[0]["test_acc"] > 0
    for dataset in ("digits", "fashion_mnist"):
        steps = data["tasks"]["step_overhead"][dataset]
        assert set(steps["per_step_us"]) == {"plain", "imgrec", "imgrec_guard_off"}
        assert all(value > 0 for value in steps["per_step_us"].values())
        assert steps["overhead_us"]["imgrec"] == pytest.approx(steps["per_step_us"]["imgrec"] - steps["per_step_us"]["plain"])
    assert {"imgrec", "plain loop"} <= set(data["tasks"]["digits"]) and {"imgrec", "plain loop"} <= set(data["tasks"]["segmentation_epoch"])
    gallery = data["tasks"]["gallery_speed"]
    assert gallery["setup"]["embeddings"] == 5000
    assert [row["embeddings"] for row in gallery["crossover"]] == [1000, 5000]
    for index in ("matrix", "faiss"):
        figures = gallery["indexes"][index]
        assert figures["search_single_ms"] > 0 and figures["identify_batch_s"] > 0 and figures["peak_rss_mib"] > 10
    assert 0.9 <= gallery["top1_agreement"] <= 1 and gallery["top1_right"]["matrix"] > 0.9
    for attack in ("pgd", "apgd"):
        speed = data["tasks"]["attack_speed"][attack]
        assert speed["attack"] == attack and speed["batch"] == 32
        assert speed["ratio_imgrec_over_torchattacks"] == pytest.approx(
            speed["images_per_second"]["imgrec"] / speed["images_per_second"]["torchattacks"])
    for task, contenders in data["tasks"].items():
        if task in ("step_overhead", "gallery_speed", "attack_speed", "recipes"):
            continue  # their own figures, checked above
        for name, runs in contenders.items():
            assert runs and all(r["wall_s"] > 0 and r["peak_rss_mib"] > 10 for r in runs), (task, name)
    digits = data["tasks"]["digits"]
    assert len(digits["imgrec"][0]["epoch_s"]) == 2 and digits["imgrec"][0]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert len(digits["plain loop"][0]["epoch_s"]) == 2
    report = (tmp_path / "report.md").read_text()
    for heading in ("### digits", "### fashion_mnist_epoch", "### step_overhead", "### startup",
                    "### recipes: digits (the default run)", "### recipes: experiment=fashion_mnist_cnn",
                    "### segmentation_epoch", "### gallery_speed", "### attack_speed"):
        assert heading in report
    assert "- imgrec / plain loop: wall s " in report
    assert "BENCHMARKS" not in result.stdout  # quick mode appends nothing
