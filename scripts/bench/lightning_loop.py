"""The work of scripts/bench/plain_loop.py under lightning.Trainer, for issue #7's comparison:
same data tensors, model, initialisation, optimizer, per-step schedule, per-epoch validation and
best-by-val test scoring; Lightning's logger, checkpointing, progress bar and model summary off.
Needs the bench extra (`pip install -e ".[bench]"`). Prints one JSON line.

    .venv/bin/python scripts/bench/lightning_loop.py --dataset digits --seed 0 --epochs 20
"""

import json
import time

START = time.perf_counter()

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imgrec.training.schedulers import warmup_cosine  # noqa: E402
from plain_loop import batches, parse_args, prepare  # noqa: E402


class Batches:
    """Re-iterable batches (Lightning iterates a loader once per epoch), shuffled by (seed, epoch)."""

    def __init__(self, images, labels, batch_size, scale, shift, seed=None, limit=None):
        self.args, self.seed, self.limit, self.epoch = (images, labels, batch_size, scale, shift), seed, limit, 0
        count = -(-len(labels) // batch_size)
        self.length = min(count, limit) if limit else count

    def __len__(self):
        return self.length

    def __iter__(self):
        images, labels = self.args[0], self.args[1]
        order = None
        if self.seed is not None:
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
            self.epoch += 1
        return batches(*self.args, order=order, limit=self.limit)


class Classifier(L.LightningModule):
    def __init__(self, model, lr, steps_per_epoch, epochs):
        super().__init__()
        self.model, self.lr, self.steps_per_epoch, self.epochs = model, lr, steps_per_epoch, epochs
        self.best, self.best_state, self.correct, self.seen, self.epoch_seconds = -1.0, None, 0, 0, []

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.correct += (self.model(x).argmax(1) == y).sum().item()
        self.seen += len(y)

    def on_train_epoch_start(self):
        self.started = time.perf_counter()

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        accuracy, self.correct, self.seen = self.correct / self.seen, 0, 0
        if accuracy > self.best:
            self.best, self.best_state = accuracy, {k: v.clone() for k, v in self.model.state_dict().items()}
        self.epoch_seconds.append(time.perf_counter() - self.started)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        schedule = warmup_cosine(optimizer, self.steps_per_epoch, self.epochs, warmup_epochs=1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main():
    args = parse_args(__doc__)
    splits, scale, shift, model = prepare(args)
    train = Batches(splits.train.images, splits.train.labels, args.batch_size, scale, shift, args.seed, args.limit_batches)
    val = Batches(splits.val.images, splits.val.labels, 512, scale, shift, limit=args.limit_batches)
    module = Classifier(model, args.lr, len(train), args.epochs)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    model.load_state_dict(module.best_state)
    model.eval()
    with torch.inference_mode():
        test = Batches(splits.test.images, splits.test.labels, 512, scale, shift, limit=args.limit_batches)
        outputs = [(model(x).argmax(1), y) for x, y in test]
    test_acc = torch.cat([o[0] for o in outputs]).eq(torch.cat([o[1] for o in outputs])).float().mean().item()
    print(json.dumps({"test_acc": test_acc, "best_val_acc": module.best, "epoch_seconds": module.epoch_seconds,
                      "total_seconds": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
