"""A hand-written PyTorch loop doing the work of the default `imgrec-train`, for side-by-side timing.

Same data tensors, model class and initialisation (same seed), batch size, optimizer, schedule and
per-epoch validation; no checkpoints, logging or reports. Prints test accuracy and the time split.

    .venv/bin/python scripts/bench/plain_loop.py --seed 0 --epochs 20
"""

import argparse
import time

START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imgrec.data.datasets import digits  # noqa: E402
from imgrec.models.small_cnn import SmallCNN  # noqa: E402
from imgrec.schedulers import warmup_cosine  # noqa: E402


def batches(images, labels, batch_size, mean, std, order=None):
    scale, shift = 1.0 / (255.0 * std), -mean / std
    for start in range(0, len(labels), batch_size):
        index = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
        yield images[index].float() * scale + shift, labels[index]


def accuracy(model, images, labels, mean, std):
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(x).argmax(1) for x, _ in batches(images, labels, 512, mean, std)])
    return (predicted == labels).float().mean().item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    splits = digits()
    mean, std = torch.tensor(splits.mean).view(1, -1, 1, 1), torch.tensor(splits.std).view(1, -1, 1, 1)
    model = SmallCNN(in_channels=1, num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(splits.train) // args.batch_size)
    scheduler = warmup_cosine(optimizer, steps_per_epoch, args.epochs, warmup_epochs=1)
    train_start = time.perf_counter()
    best, best_state = -1.0, None
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))
        for x, y in batches(splits.train.images, splits.train.labels, args.batch_size, mean, std, order):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_acc = accuracy(model, splits.val.images, splits.val.labels, mean, std)
        if val_acc > best:
            best, best_state = val_acc, {k: v.clone() for k, v in model.state_dict().items()}
    train_seconds = time.perf_counter() - train_start
    model.load_state_dict(best_state)
    test_acc = accuracy(model, splits.test.images, splits.test.labels, mean, std)
    print(f"test_acc={test_acc:.4f} best_val_acc={best:.4f} train_s={train_seconds:.1f} "
          f"per_epoch_s={train_seconds / args.epochs:.3f} total_s={time.perf_counter() - START:.1f}")


if __name__ == "__main__":
    main()
