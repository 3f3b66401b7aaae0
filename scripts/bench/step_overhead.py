"""imgrec's per-step cost over a hand-written step, in microseconds, measured in one process (issue #7).

Both train their own copy of the same SmallCNN on the same in-memory batches (imgrec's loader), with
Adam and the warm-up cosine schedule. One round = one pass over `--batches` batches by each contender,
in alternating order; the report gives the median per-step time of each and their difference. The
trainer is also measured with the non-finite guard off (`trainer.max_bad_steps=null`) to show what
the guard costs. Prints one JSON line.

The contenders share one process, so each one's freed blocks are handed back to the kernel and faulted
in again by the next (glibc's default thresholds), which alone made whichever ran second 5-15% slower.
The script raises glibc's mmap/trim thresholds first (mallopt) so every contender reuses its memory and
the difference left is the code's. Whole-process runs (`make bench`) keep the default allocator.

    .venv/bin/python scripts/bench/step_overhead.py --dataset digits --rounds 7
"""

import argparse
import ctypes
import json
import statistics
import time

import torch
import torch.nn.functional as F

from imgrec.data.loaders import make_loader
from imgrec.models.small_cnn import SmallCNN
from imgrec.training.schedulers import warmup_cosine
from imgrec.tasks.classification import ClassificationTask
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer


def load(dataset: str):
    if dataset == "digits":
        from imgrec.data.datasets import digits

        return digits()
    from imgrec.data.mnist import mnist_family

    return mnist_family("fashion_mnist")


def model_and_optimizer(splits, seed: int, lr: float):
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=splits.channels, num_classes=len(splits.class_names), convs_per_stage=1)  # model=small_cnn
    return model, torch.optim.Adam(model.parameters(), lr=lr)


def plain_pass(model, optimizer, scheduler, loader) -> float:
    model.train()
    started = time.perf_counter()
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - started


def trainer_pass(trainer, loader) -> float:
    # Trainer.train_epoch: the step plus the on-device running loss/accuracy sums and the epoch's metrics
    started = time.perf_counter()
    trainer.train_epoch(loader)
    return time.perf_counter() - started


def steady_allocator() -> None:
    """glibc: keep freed blocks up to 1 GiB in the process (M_MMAP_THRESHOLD -3, M_TRIM_THRESHOLD -1)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)
    libc.mallopt(-1, 1 << 30)


def main():
    steady_allocator()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=["digits", "fashion_mnist"], default="digits")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    splits = load(args.dataset)
    loader = make_loader(splits.train, args.batch_size, splits.mean, splits.std, torch.device("cpu"), shuffle=True,
                         limit_batches=args.batches)
    loader.set_epoch(0)
    contenders = {}
    model, optimizer = model_and_optimizer(splits, 0, 3e-3)
    scheduler = warmup_cosine(optimizer, args.batches, args.rounds + 1)
    contenders["plain"] = lambda: plain_pass(model, optimizer, scheduler, loader)
    for name, max_bad_steps in (("imgrec", 3), ("imgrec_guard_off", None)):
        net, opt = model_and_optimizer(splits, 0, 3e-3)
        task = ClassificationTask()
        task.bind(splits.class_names, None)
        trainer = Trainer(net, opt, warmup_cosine, task, TrainerSettings(
            device="cpu", max_epochs=args.rounds + 1, progress=False, max_bad_steps=max_bad_steps))
        trainer.scheduler = warmup_cosine(opt, args.batches, args.rounds + 1)
        trainer.schedule_per_step = True
        contenders[name] = (lambda t: lambda: trainer_pass(t, loader))(trainer)
    for run in contenders.values():  # warm-up: first-call costs (allocator, dynamo import in optimizer.step)
        run()
    seconds = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # rotate the order each round
            seconds[name].append(contenders[name]())
    per_step_us = {name: statistics.median(values) / args.batches * 1e6 for name, values in seconds.items()}
    print(json.dumps({
        "dataset": args.dataset, "batch_size": args.batch_size, "batches": args.batches, "rounds": args.rounds,
        "per_step_us": per_step_us,
        "overhead_us": {name: per_step_us[name] - per_step_us["plain"] for name in names if name != "plain"},
        "ratio": {name: per_step_us[name] / per_step_us["plain"] for name in names if name != "plain"},
    }))


if __name__ == "__main__":
    main()
