"""`make bench`: imgrec against a hand-written loop and Lightning on the same work, side by side.

Each task runs its contenders in turn (A B C A B C ...), `--repeats` times each, every run a fresh
process; it reports medians, per-pair ratios of medians, and each process's peak resident memory.
Results are appended to BENCHMARKS.md with the date, CPU, core count and torch version.

    python scripts/bench.py              # the full suite (about 30 minutes on 2 cores)
    python scripts/bench.py --tasks gallery_speed   # one task
    python scripts/bench.py --quick      # every task at toy size (about a minute); not appended
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYTHON, IMGREC_TRAIN = sys.executable, str(BIN / "imgrec-train")
BENCH = ROOT / "scripts" / "bench"
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .* ([0-9.]+)s$")
TEST_ACC = re.compile(r"^\s+accuracy\s+([0-9.]+)\s+\d+$", re.MULTILINE)


def run(command: list[str], cwd: Path) -> dict:
    """Run one contender process; wall time, peak RSS (MiB) and its stdout."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONPATH": str(BENCH)})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "output": output}


def imgrec_result(result: dict, run_dir: Path) -> dict:
    log = (run_dir / "train.log").read_text()
    epochs = [float(m.group(2)) for m in map(EPOCH_LINE.search, log.splitlines()) if m]
    accuracy = TEST_ACC.findall(log)
    return {**result, "epoch_s": epochs, "test_acc": float(accuracy[-1]) if accuracy else None}


def loop_result(result: dict) -> dict:
    line = [line for line in result["output"].splitlines() if line.startswith("{")][-1]
    data = json.loads(line)
    return {**result, "epoch_s": data["epoch_seconds"], "test_acc": data["test_acc"]}


def has_lightning() -> bool:
    return subprocess.run([PYTHON, "-c", "import lightning"], capture_output=True).returncode == 0


def contenders_for(task: str, quick: bool, work: Path, seed: int) -> dict:
    """name -> a function running one repeat of `task` and returning its result."""
    epochs = 2 if quick else (20 if task == "digits" else 3)
    limit = (3 if quick else 100) if task == "fashion_mnist_epoch" else None
    dataset = "digits" if task == "digits" else "fashion_mnist"
    common = ["--dataset", dataset, "--seed", str(seed), "--epochs", str(epochs)]
    common += ["--limit-batches", str(limit)] if limit else []
    overrides = [f"dataset={dataset}", f"seed={seed}", f"trainer.max_epochs={epochs}", "trainer.progress=false",
                 "callbacks.early_stopping.patience=1000"]  # every contender runs every epoch
    overrides += [f"trainer.limit_batches={limit}"] if limit else []

    def imgrec():
        run_dir = Path(tempfile.mkdtemp(dir=work))
        return imgrec_result(run([IMGREC_TRAIN, *overrides, f"hydra.run.dir={run_dir}"], work), run_dir)

    contenders = {
        "imgrec": imgrec,
        "plain loop": lambda: loop_result(run([PYTHON, str(BENCH / "plain_loop.py"), *common], work)),
    }
    if has_lightning():
        contenders["Lightning"] = lambda: loop_result(run([PYTHON, str(BENCH / "lightning_loop.py"), *common], work))
    return contenders


def segmentation_contenders(quick: bool, work: Path, seed: int) -> dict:
    """A U-Net on the built-in shapes (task=segmentation) against scripts/bench/plain_seg_loop.py: the same
    tensors, model, optimizer, schedule and loss; steady epochs compared, and peak memory."""
    size, image_size, epochs = (48, 32, 2) if quick else (320, 96, 4)
    common = ["--size", str(size), "--image-size", str(image_size), "--epochs", str(epochs), "--seed", str(seed)]
    overrides = ["task=segmentation", "dataset=shapes", f"dataset.size={size}", f"dataset.image_size={image_size}",
                 "model=unet", "model.base_width=16", "optimizer.lr=1e-3", "trainer.batch_size=16",
                 f"trainer.max_epochs={epochs}", f"seed={seed}", "trainer.progress=false",
                 "callbacks.early_stopping.patience=1000"]

    def imgrec():
        run_dir = Path(tempfile.mkdtemp(dir=work))
        return imgrec_result(run([IMGREC_TRAIN, *overrides, f"hydra.run.dir={run_dir}"], work), run_dir)

    return {"imgrec": imgrec,
            "plain loop": lambda: loop_result(run([PYTHON, str(BENCH / "plain_seg_loop.py"), *common], work))}


def startup_contenders(work: Path) -> dict:
    return {
        "imgrec-train --cfg job": lambda: run([IMGREC_TRAIN, "--cfg", "job"], work),
        "import torch, torchvision": lambda: run([PYTHON, "-c", "import torch, torchvision"], work),
    }


def time_to_accuracy_contenders(quick: bool, work: Path, seed: int) -> dict:
    """The recipe of configs/experiment/fashion_mnist_cnn.yaml, whole process (start to test report)."""
    def imgrec():
        run_dir = Path(tempfile.mkdtemp(dir=work))
        extra = ["trainer.max_epochs=1", "trainer.limit_batches=3"] if quick else []
        command = [IMGREC_TRAIN, "experiment=fashion_mnist_cnn", f"seed={seed}", *extra, f"hydra.run.dir={run_dir}"]
        return imgrec_result(run(command, work), run_dir)

    return {"imgrec (experiment=fashion_mnist_cnn)": imgrec}


# The shipped recipes against the ones they replaced (issue #22), whole process, seed by seed, contenders
# alternating. "before" spells the replaced recipe out as overrides of today's configs; the first contender
# is the baseline of the ratios.
# experiment=fashion_mnist_cnn as it was before issue #22
FASHION_BEFORE = ["trainer.max_epochs=8"]
RECIPES = {
    "digits (the default run)": {
        "seeds": 5,
        "contenders": {
            # small_cnn had two convolutions per stage and the trainer 20 epochs; a tie kept the earliest epoch
            "before": ["model.convs_per_stage=2", "trainer.max_epochs=20", "callbacks.model_checkpoint.tie_break=null"],
            "before, ties to the lower val/loss": ["model.convs_per_stage=2", "trainer.max_epochs=20"],
            "new (the default now)": [],
        },
        "target": "new mean >= before mean, in <= 0.6x its wall time",
    },
    "experiment=fashion_mnist_cnn": {
        "seeds": 3,
        "contenders": {
            "before": ["experiment=fashion_mnist_cnn", *FASHION_BEFORE],
            "new": ["experiment=fashion_mnist_cnn"],
        },
        "target": "new mean >= 0.930, in <= 0.75x the before wall time",
    },
}


def recipe_contenders(recipe: dict, quick: bool, work: Path, seed: int) -> dict:
    extra = ["trainer.max_epochs=1", "trainer.limit_batches=3"] if quick else []

    def contender(overrides):
        def imgrec():
            run_dir = Path(tempfile.mkdtemp(dir=work))
            command = [IMGREC_TRAIN, *overrides, f"seed={seed}", "trainer.progress=false", *extra,
                       f"hydra.run.dir={run_dir}"]
            return imgrec_result(run(command, work), run_dir)
        return imgrec

    return {name: contender(overrides) for name, overrides in recipe["contenders"].items()}


def recipes(quick: bool, work: Path) -> dict:
    results = {}
    for name, recipe in RECIPES.items():
        print(f"  {name}", flush=True)
        runs: dict[str, list] = {contender: [] for contender in recipe["contenders"]}
        for seed in range(1 if quick else recipe["seeds"]):
            for contender, seed_runs in measure(recipe_contenders(recipe, quick, work, seed), 1).items():
                runs[contender].extend({**r, "seed": seed} for r in seed_runs)
        results[name] = runs
    return results


def recipes_table(results: dict) -> str:
    lines = []
    for name, runs in results.items():
        recipe = RECIPES[name]
        seeds = len(next(iter(runs.values())))
        lines += [f"### recipes: {name}, process start to test report, seeds 0-{seeds - 1}", "",
                  "| contender | overrides | wall s (median) | test acc by seed | mean | worst | epochs run |",
                  "|---|---|---|---|---|---|---|"]
        summary = {}
        for contender, contender_runs in runs.items():
            accuracies = [r["test_acc"] for r in contender_runs]
            wall = statistics.median(r["wall_s"] for r in contender_runs)
            epochs = [len(r["epoch_s"]) for r in contender_runs]
            summary[contender] = (wall, statistics.mean(accuracies))
            overrides = " ".join(recipe["contenders"][contender]) or "(none)"
            lines.append(f"| {contender} | `{overrides}` | {wall:.1f} | {', '.join(f'{a:.4f}' for a in accuracies)} | "
                         f"{statistics.mean(accuracies):.4f} | {min(accuracies):.4f} | {', '.join(map(str, epochs))} |")
        (base_name, (base_wall, base_mean)), *others = summary.items()
        lines.append("")
        for other, (wall, mean) in others:
            lines.append(f"- {other} / {base_name}: wall time **{wall / base_wall:.3f}**; mean test accuracy "
                         f"{mean:.4f} vs {base_mean:.4f}")
        lines += [f"- target: {recipe['target']}", ""]
    return "\n".join(lines)


def step_overhead(quick: bool, work: Path) -> dict:
    """scripts/bench/step_overhead.py on both datasets: one process, contenders alternating."""
    results = {}
    for dataset in ("digits", "fashion_mnist"):
        size = ["--batches", "3", "--rounds", "2"] if quick else ["--batches", "20", "--rounds", "9"]
        output = run([PYTHON, str(BENCH / "step_overhead.py"), "--dataset", dataset, *size], work)["output"]
        results[dataset] = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
        print(f"  {dataset}: {results[dataset]['overhead_us']}", flush=True)
    return results


def step_overhead_table(results: dict) -> str:
    lines = ["### step_overhead: per training step, one process, batch 64, medians of alternating rounds", "",
             "| dataset | plain step us | imgrec step us | imgrec overhead us | ratio | guard off: overhead us |",
             "|---|---|---|---|---|---|"]
    for dataset, r in results.items():
        us, over = r["per_step_us"], r["overhead_us"]
        lines.append(f"| {dataset} | {us['plain']:.0f} | {us['imgrec']:.0f} | {over['imgrec']:+.0f} | "
                     f"{r['ratio']['imgrec']:.3f} | {over['imgrec_guard_off']:+.0f} |")
    return "\n".join(lines) + "\n"


def gallery_speed(quick: bool, work: Path) -> dict:
    """scripts/bench/gallery_speed.py: Gallery.identify with index=matrix against index=faiss, and the gallery
    size past which FAISS answers faster; its own Markdown table comes back under "markdown"."""
    size = (["--embeddings", "5000", "--sizes", "1000,5000", "--queries", "100", "--single", "50", "--calls", "3",
             "--one-by-one", "100"] if quick else [])
    output = run([PYTHON, str(BENCH / "gallery_speed.py"), *size], work)["output"]
    result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    result["markdown"] = output[output.index("### gallery_speed"):]
    print(f"  faiss (inverted lists) answers one query faster from {result['approximate_search_faster_from']} "
          "embeddings", flush=True)
    return result


def attack_speed(quick: bool, work: Path) -> dict:
    """scripts/bench/attack_speed.py: PGD-10 and APGD-CE-100 images per second, imgrec's attacks against
    torchattacks' on the same model and batch, in turns."""
    results = {}
    for attack in ("pgd", "apgd"):
        size = ["--batch", "32", "--repeats", "1"] if quick else ["--batch", "256" if attack == "pgd" else "64"]
        output = run([PYTHON, str(BENCH / "attack_speed.py"), "--attack", attack, *size], work)["output"]
        results[attack] = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
        rates = results[attack]["images_per_second"]
        print(f"  {attack}: imgrec {rates['imgrec']:.1f} img/s, torchattacks {rates['torchattacks']:.1f} img/s",
              flush=True)
    return results


def attack_speed_table(results: dict) -> str:
    lines = ["### attack_speed: images per second on 1x28x28 images, SmallCNN, L-inf eps 0.1, median of the turns",
             "", "| attack | batch | imgrec img/s | torchattacks img/s | imgrec / torchattacks |",
             "|---|---|---|---|---|"]
    for attack, name in (("pgd", "PGD-10"), ("apgd", "APGD-CE-100")):
        r = results[attack]
        lines.append(f"| {name} | {r['batch']} | {r['images_per_second']['imgrec']:.1f} | "
                     f"{r['images_per_second']['torchattacks']:.1f} | {r['ratio_imgrec_over_torchattacks']:.3f} |")
    return "\n".join(lines) + "\n"


def measure(contenders: dict, repeats: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for repeat in range(repeats):  # A B C A B C: drift in the machine's speed hits every contender alike
        for name, contender in contenders.items():
            result = contender()
            result.pop("output", None)
            results[name].append(result)
            print(f"  {name} #{repeat + 1}: {result['wall_s']:.2f} s, {result['peak_rss_mib']:.0f} MiB", flush=True)
    return results


def summarize(results: dict[str, list[dict]], key: str) -> dict:
    medians = {}
    for name, runs in results.items():
        values = [r[key] for r in runs if r.get(key) is not None]
        medians[name] = statistics.median(values) if values else None
    return medians


def steady_epoch(result: dict) -> float | None:
    epochs = result.get("epoch_s") or []
    return statistics.median(epochs[1:]) if len(epochs) > 1 else (epochs[0] if epochs else None)


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}


def table(title: str, results: dict, columns: dict) -> str:
    """Markdown: one row per contender with the median of each column, then ratios to the first row."""
    lines = [f"### {title}", "", "| contender | " + " | ".join(columns) + " | runs |",
             "|---|" + "---|" * (len(columns) + 1)]
    medians = {label: summarize({n: [{**r, "steady_epoch_s": steady_epoch(r)} for r in runs]
                                 for n, runs in results.items()}, key) for label, key in columns.items()}
    for name, runs in results.items():
        cells = [f"{medians[label][name]:.3f}" if medians[label][name] is not None else "-" for label in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    names = list(results)
    if len(names) > 1:
        lines.append("")
        for other in names[1:]:
            ratios = []
            for label in columns:
                a, b = medians[label][names[0]], medians[label][other]
                ratios.append(f"{label} {a / b:.3f}" if a and b else f"{label} -")
            lines.append(f"- {names[0]} / {other}: " + ", ".join(ratios))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes, one repeat; not appended to BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=None, help="runs per contender (default 3; 1 with --quick)")
    parser.add_argument("--tasks", default="digits,fashion_mnist_epoch,step_overhead,startup,recipes,"
                                           "segmentation_epoch,gallery_speed,attack_speed")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    parser.add_argument("--json", default=None, help="write every measurement as JSON here")
    parser.add_argument("--no-append", action="store_true", help="do not append the report to BENCHMARKS.md")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    info = machine()
    report = [f"## {info['date']}: `make bench{'-quick' if args.quick else ''}`", "",
              f"- Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, torch {info['torch']}",
              f"- {repeats} run(s) per contender, alternating; medians; each run a fresh process; peak RSS per "
              "process from wait4", ""]
    everything = {"machine": info, "quick": args.quick, "repeats": repeats, "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="imgrec-bench-") as scratch:
        work = Path(scratch)
        for task in args.tasks.split(","):
            print(f"{task}:", flush=True)
            if task == "startup":
                results = measure(startup_contenders(work), repeats)
                report.append(table("startup: compose only vs bare imports", results,
                                    {"wall s": "wall_s", "peak MiB": "peak_rss_mib"}))
            elif task == "step_overhead":
                results = step_overhead(args.quick, work)
                report.append(step_overhead_table(results))
            elif task == "recipes":
                results = recipes(args.quick, work)
                report.append(recipes_table(results))
            elif task == "gallery_speed":
                results = gallery_speed(args.quick, work)
                report.append(results["markdown"])
            elif task == "attack_speed":
                results = attack_speed(args.quick, work)
                report.append(attack_speed_table(results))
            elif task == "segmentation_epoch":
                results = measure(segmentation_contenders(args.quick, work, seed=0), repeats)
                report.append(table("segmentation_epoch: U-Net (base width 16) on shapes, 192 train images of 96 px, "
                                    "batch 16, median of epochs 2-4", results,
                                    {"wall s": "wall_s", "epoch s": "steady_epoch_s", "peak MiB": "peak_rss_mib"}))
            elif task == "fashion_mnist_to_92.5":
                results = {}
                for seed in range(1 if args.quick else 3):
                    for name, runs in measure(time_to_accuracy_contenders(args.quick, work, seed), 1).items():
                        results.setdefault(name, []).extend(runs)
                accuracies = [r["test_acc"] for runs in results.values() for r in runs]
                report.append(table("fashion_mnist_to_92.5: process start to test report, seeds 0-2", results,
                                    {"wall s": "wall_s", "test acc": "test_acc", "peak MiB": "peak_rss_mib"}))
                report.append(f"- test accuracy by seed: {', '.join(f'{a:.4f}' for a in accuracies)}; mean "
                              f"{statistics.mean(accuracies):.4f}, spread {max(accuracies) - min(accuracies):.4f}\n")
            else:
                results = measure(contenders_for(task, args.quick, work, seed=0), repeats)
                title = {"digits": "digits: the default run, whole process (20 epochs, early stopping off)",
                         "fashion_mnist_epoch": "fashion_mnist_epoch: default small CNN, 100 batches of 64 + validation (6,000 images), median of epochs 2-3"}
                report.append(table(title[task], results, {"wall s": "wall_s", "epoch s": "steady_epoch_s",
                                                           "test acc": "test_acc", "peak MiB": "peak_rss_mib"}))
            everything["tasks"][task] = results
    text = "\n".join(report)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    if not (args.quick or args.no_append):
        with open(ROOT / "BENCHMARKS.md", "a") as file:
            file.write("\n" + text)


if __name__ == "__main__":
    main()
