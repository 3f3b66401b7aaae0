"""PGD-10 or APGD-CE-100 (L-inf) throughput: imgrec's attack against torchattacks' on the same model and batch,
in turns.

    python scripts/bench/attack_speed.py [--attack pgd|apgd] [--batch 256] [--repeats 5]

The model is imgrec's default SmallCNN on 1x28x28 images (Fashion-MNIST's shape) with its normalisation
inside; the weights do not change the work. Prints each side's median images per second and the ratio.
"""

import argparse
import json
import statistics
import time

import torch
import torchattacks

from imgrec.models.small_cnn import SmallCNN
from imgrec.robustness.apgd import apgd
from imgrec.robustness.attacks import PixelModel, pgd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", choices=("pgd", "apgd"), default="pgd",
                        help="pgd: PGD-10; apgd: APGD-CE with AutoAttack's 100 steps (ten times the work)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = PixelModel(SmallCNN(in_channels=1, num_classes=10), [0.286], [0.353]).eval()
    pixels = torch.rand(args.batch, 1, 28, 28)
    with torch.no_grad():  # the model's own guesses: APGD skips images misclassified clean, and none are here
        labels = model(pixels).argmax(1)
    eps, step = 0.1, 0.025
    contenders = {
        "imgrec": lambda: pgd(model, pixels, labels, eps, steps=10, step_size=step),
        "torchattacks": lambda: torchattacks.PGD(model, eps=eps, alpha=step, steps=10)(pixels, labels),
    } if args.attack == "pgd" else {
        "imgrec": lambda: apgd(model, pixels, labels, eps, steps=100),
        "torchattacks": lambda: torchattacks.APGD(model, eps=eps, steps=100, loss="ce")(pixels, labels),
    }
    for run in contenders.values():  # warm-up
        run()
    seconds = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    rates = {name: args.batch / statistics.median(times) for name, times in seconds.items()}
    print(json.dumps({"attack": args.attack, "images_per_second": rates,
                      "ratio_imgrec_over_torchattacks": rates["imgrec"] / rates["torchattacks"],
                      "batch": args.batch, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
