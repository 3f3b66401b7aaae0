"""A hand-written PyTorch loop doing the work of `imgrec-train` with the default model, optimizer and
schedule, for side-by-side timing (issue #7). Same data tensors (imgrec's dataset functions), model
class and initialisation (same seed), batch size, optimizer, schedule, per-epoch validation and
best-by-val test scoring; no checkpoints, logs or reports. Prints one JSON line.

    .venv/bin/python scripts/bench/plain_loop.py --dataset digits --seed 0 --epochs 20
"""

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imgrec.models.small_cnn import SmallCNN  # noqa: E402
from imgrec.training.schedulers import warmup_cosine  # noqa: E402


def load(dataset: str, limit_train: int | None):
    if dataset == "digits":
        from imgrec.data.datasets import digits

        splits = digits()
    else:
        from imgrec.data.mnist import mnist_family

        splits = mnist_family("fashion_mnist")
    if limit_train:
        splits.train.images, splits.train.labels = splits.train.images[:limit_train], splits.train.labels[:limit_train]
    return splits


def batches(images, labels, batch_size, scale, shift, order=None, limit=None):
    count = -(-len(labels) // batch_size)
    for batch in range(min(count, limit) if limit else count):
        index = slice(batch * batch_size, (batch + 1) * batch_size)
        index = order[index] if order is not None else index
        yield torch.addcmul(shift, images[index].float(), scale), labels[index]


def accuracy(model, images, labels, scale, shift, limit=None):
    model.eval()
    with torch.inference_mode():
        outputs = [(model(x).argmax(1), y) for x, y in batches(images, labels, 512, scale, shift, limit=limit)]
    return torch.cat([o[0] for o in outputs]).eq(torch.cat([o[1] for o in outputs])).float().mean().item()


def parse_args(description: str):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", choices=["digits", "fashion_mnist"], default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch in every split")
    return parser.parse_args()


def prepare(args):
    """The seeded model and the data with its normalisation as one multiply-add (what imgrec does)."""
    torch.manual_seed(args.seed)
    splits = load(args.dataset, None)
    mean, std = torch.tensor(splits.mean).view(1, -1, 1, 1), torch.tensor(splits.std).view(1, -1, 1, 1)
    model = SmallCNN(in_channels=splits.channels, num_classes=len(splits.class_names), convs_per_stage=1)  # model=small_cnn
    return splits, 1.0 / (255.0 * std), -mean / std, model


def main():
    args = parse_args(__doc__)
    splits, scale, shift, model = prepare(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = -(-len(splits.train) // args.batch_size)
    steps = min(steps, args.limit_batches) if args.limit_batches else steps
    scheduler = warmup_cosine(optimizer, steps, args.epochs, warmup_epochs=1)
    best, best_state, epoch_seconds = -1.0, None, []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))
        for x, y in batches(splits.train.images, splits.train.labels, args.batch_size, scale, shift, order,
                            args.limit_batches):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_acc = accuracy(model, splits.val.images, splits.val.labels, scale, shift, args.limit_batches)
        if val_acc > best:
            best, best_state = val_acc, {k: v.clone() for k, v in model.state_dict().items()}
        epoch_seconds.append(time.perf_counter() - started)
    model.load_state_dict(best_state)
    test_acc = accuracy(model, splits.test.images, splits.test.labels, scale, shift, args.limit_batches)
    print(json.dumps({"test_acc": test_acc, "best_val_acc": best, "epoch_seconds": epoch_seconds,
                      "total_seconds": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
