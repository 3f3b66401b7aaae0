"""How long the data path takes next to the model: Fashion-MNIST, default small CNN, this machine.

For each augmentation pipeline: seconds for a pass over N batches of the loader alone (slicing,
augmenting, normalising) and for N training steps of the default model on the same batches.
Medians of --repeats runs, alternating loader-only and training passes.

    .venv/bin/python scripts/bench/data_speed.py --batches 200 --repeats 3
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from imgrec.data.augment import build_augment
from imgrec.data.loaders import InMemoryLoader
from imgrec.data.mnist import mnist_family
from imgrec.models.small_cnn import SmallCNN


def pipeline(name: str):
    from hydra import compose, initialize_config_dir

    from imgrec.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return build_augment(compose("train", overrides=[f"augment={name}"]).augment)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--augments", default="none,basic,classic,photometric")
    args = parser.parse_args()
    splits = mnist_family("fashion_mnist")
    model = SmallCNN(in_channels=1, num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_pass(loader):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def data_pass(loader):
        for x, y in loader:
            pass

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64, {args.batches} batches")
    print("augment      loader-only s   training s   data share of a step   training / loader")
    for name in args.augments.split(","):
        augment = pipeline(name)
        loader = InMemoryLoader(splits.train, 64, splits.mean, splits.std, torch.device("cpu"),
                                shuffle=True, limit_batches=args.batches, augment=augment)
        data_times, train_times = [], []
        for _ in range(args.repeats):
            data_times.append(timed(lambda: data_pass(loader)))
            train_times.append(timed(lambda: train_pass(loader)))
        data, training = statistics.median(data_times), statistics.median(train_times)
        print(f"{name:<12} {data:>13.3f} {training:>12.3f} {data / training:>21.1%} {training / data:>18.1f}x")


if __name__ == "__main__":
    main()
