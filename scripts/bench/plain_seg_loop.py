"""A hand-written PyTorch loop doing the work of `imgrec-train task=segmentation` (the segmentation_epoch
task of scripts/bench.py): the same shapes tensors, U-Net (same seed), batch size, Adam, warm-up +
cosine schedule, cross-entropy + Dice loss, per-epoch validation scored from a pixel confusion matrix,
best-by-val-Dice test scoring; no checkpoints, logs or reports. Prints one JSON line.

    .venv/bin/python scripts/bench/plain_seg_loop.py --size 320 --image-size 96 --epochs 4
"""

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402

from imgrec.data.segmentation import shapes  # noqa: E402
from imgrec.models.unet import UNet  # noqa: E402
from imgrec.tasks.segmentation_losses import SegmentationLoss  # noqa: E402
from imgrec.training.schedulers import warmup_cosine  # noqa: E402


def batches(images, masks, batch_size, scale, shift, order=None):
    for start in range(0, len(masks), batch_size):
        index = slice(start, start + batch_size) if order is None else order[start:start + batch_size]
        yield torch.addcmul(shift, images[index].float(), scale), masks[index]


def mean_dice(model, images, masks, scale, shift, classes: int) -> float:
    model.eval()
    matrix = torch.zeros(classes, classes, dtype=torch.int64)
    with torch.inference_mode():
        for x, y in batches(images, masks, 64, scale, shift):
            predicted = model(x).argmax(1)
            matrix += torch.bincount(y.long().flatten() * classes + predicted.flatten(),
                                     minlength=classes * classes).reshape(classes, classes)
    tp = matrix.diag().double()
    dice = 2 * tp / (matrix.sum(0) + matrix.sum(1)).double()
    return dice[1:].nanmean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    splits = shapes(size=args.size, image_size=args.image_size)
    classes = len(splits.class_names)
    mean, std = torch.tensor(splits.mean).view(1, -1, 1, 1), torch.tensor(splits.std).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    model = UNet(splits.channels, classes, base_width=args.base_width)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = -(-len(splits.train) // args.batch_size)
    scheduler = warmup_cosine(optimizer, steps, args.epochs, warmup_epochs=1)
    loss_fn = SegmentationLoss("ce_dice")
    best, best_state, epoch_seconds = -1.0, None, []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))
        for x, y in batches(splits.train.images, splits.train.labels, args.batch_size, scale, shift, order):
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        dice = mean_dice(model, splits.val.images, splits.val.labels, scale, shift, classes)
        if dice > best:
            best, best_state = dice, {k: v.clone() for k, v in model.state_dict().items()}
        epoch_seconds.append(time.perf_counter() - started)
    model.load_state_dict(best_state)
    test = mean_dice(model, splits.test.images, splits.test.labels, scale, shift, classes)
    print(json.dumps({"test_acc": test, "best_val_dice": best, "epoch_seconds": epoch_seconds,
                      "total_seconds": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
