"""Training throughput on one CUDA GPU: imgrec's Trainer with each precision / layout / compile option,
against a hand-written loop (and Lightning, when installed) doing the same work on the same batches.

Data are random uint8 images held on the GPU (what imgrec's in-memory loader does), so the numbers
measure the loop and the model, not the disk. Each contender trains `--epochs` epochs; the median
epoch after the first (which pays for cuDNN autotuning and compilation) is reported as images/s.

    python scripts/bench/gpu_speed.py --out gpu_speed.md
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from imgrec.data.loaders import InMemoryLoader
from imgrec.data.splits import ImageTensors
from imgrec.models.backbones import torchvision_model
from imgrec.models.small_cnn import SmallCNN
from imgrec.training.schedulers import constant
from imgrec.tasks.classification import ClassificationTask
from imgrec.training.settings import TrainerSettings
from imgrec.training.trainer import Trainer

TASKS = {  # name: (model factory, channels, image size, images, batch size)
    "small_cnn_28px": (lambda: SmallCNN(1, 10), 1, 28, 60_000, 256),
    "resnet18_32px": (lambda: torchvision_model("resnet18", 3, 10, small_input=True), 3, 32, 20_000, 256),
}


def data(channels: int, size: int, count: int) -> ImageTensors:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
    return ImageTensors(images, torch.randint(0, 10, (count,), generator=generator))


DEVICE = torch.device("cuda")
# the fused step on both sides: what imgrec builds for Adam, AdamW and SGD on CUDA, and what lets its non-finite
# guard skip a step without a host synchronisation (training.guard.DeferredGuard)
FUSED = DEVICE.type == "cuda"


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def synced_epochs(run_epoch, epochs: int) -> list[float]:
    times = []
    for epoch in range(epochs):
        sync()
        start = time.perf_counter()
        run_epoch(epoch)
        sync()
        times.append(time.perf_counter() - start)
    return times


def imgrec_epochs(make_model, split, batch_size, epochs, **options) -> list[float]:
    torch.manual_seed(0)
    model = make_model().to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=FUSED)  # as imgrec's build_optimizer does
    task = ClassificationTask()
    task.bind([str(i) for i in range(10)], None)
    trainer = Trainer(model, optimizer, constant, task,
                      TrainerSettings(device=str(DEVICE), batch_size=batch_size, progress=False, **options))
    trainer.scheduler, trainer.schedule_per_step = constant(optimizer, 1, 1), True
    loader = trainer.make_loader(split, [0.5] * split.images.shape[1], [0.25] * split.images.shape[1], train=True)

    def run_epoch(epoch):
        trainer.epoch = epoch
        trainer.train_epoch(loader)

    return synced_epochs(run_epoch, epochs)


def plain_epochs(make_model, split, batch_size, epochs, bf16: bool) -> list[float]:
    """The loop a user would write: same loader, model and optimizer; loss summed on the device."""
    torch.manual_seed(0)
    model = make_model().to(DEVICE).to(memory_format=torch.channels_last if bf16 else torch.contiguous_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=FUSED)
    channels = split.images.shape[1]
    loader = InMemoryLoader(split, batch_size, [0.5] * channels, [0.25] * channels, DEVICE, shuffle=True)

    def run_epoch(epoch):
        loader.set_epoch(epoch)
        model.train()
        total = torch.zeros((), device=DEVICE)
        for images, labels in loader:
            if bf16:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach()

    return synced_epochs(run_epoch, epochs)


def lightning_epochs(make_model, split, batch_size, epochs, bf16: bool) -> list[float] | None:
    try:
        import lightning as L
    except ImportError:
        return None
    torch.manual_seed(0)
    channels = split.images.shape[1]
    loader = InMemoryLoader(split, batch_size, [0.5] * channels, [0.25] * channels, DEVICE, shuffle=True)
    times: list[float] = []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model()

        def training_step(self, batch, _):
            images, labels = batch
            return F.cross_entropy(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

        def on_train_epoch_start(self):
            loader.set_epoch(self.current_epoch)
            sync()
            self.started = time.perf_counter()

        def on_train_epoch_end(self):
            sync()
            times.append(time.perf_counter() - self.started)

    trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if DEVICE.type == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if bf16 else "32-true",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), train_dataloaders=loader)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default="gpu_speed.md")
    parser.add_argument("--device", default="cuda", help="cpu only to check the script itself")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each task's images (0.01: a quick check)")
    args = parser.parse_args()
    global DEVICE, FUSED
    DEVICE = torch.device(args.device)
    FUSED = DEVICE.type == "cuda"
    torch.backends.cudnn.benchmark = True
    rows, raw = [], {}
    for task, (make_model, channels, size, count, batch_size) in TASKS.items():
        count = max(batch_size, int(count * args.scale))
        split = data(channels, size, count)
        contenders = {
            "plain loop fp32": lambda: plain_epochs(make_model, split, batch_size, args.epochs, bf16=False),
            "imgrec fp32": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs),
            "plain loop bf16+CL": lambda: plain_epochs(make_model, split, batch_size, args.epochs, bf16=True),
            "imgrec bf16": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs, precision="bf16-mixed"),
            "imgrec bf16+CL": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs,
                                                    precision="bf16-mixed", channels_last=True),
            "imgrec 16-mixed+CL": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs,
                                                        precision="16-mixed", channels_last=True),
            "imgrec fp32, guard checked every step": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs,
                                                                           bad_step_check="every_step"),
            "imgrec fp32, no NaN guard": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs,
                                                               max_bad_steps=None),
            "imgrec bf16+CL, no NaN guard": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs,
                                                                  precision="bf16-mixed", channels_last=True,
                                                                  max_bad_steps=None),
            "imgrec bf16+CL+compile": lambda: imgrec_epochs(make_model, split, batch_size, args.epochs,
                                                            precision="bf16-mixed", channels_last=True, compile=True),
            "Lightning fp32": lambda: lightning_epochs(make_model, split, batch_size, args.epochs, bf16=False),
            "Lightning bf16": lambda: lightning_epochs(make_model, split, batch_size, args.epochs, bf16=True),
        }
        for name, run in contenders.items():
            if DEVICE.type == "cpu" and ("16-mixed" in name or "compile" in name):
                continue  # float16 needs CUDA; compiling takes minutes on a small CPU
            try:
                times = run()
            except Exception as error:  # one broken contender must not lose the others' numbers
                rows.append(f"| {task} | {name} | failed: {type(error).__name__}: {str(error).splitlines()[0][:120]} | | |")
                print(rows[-1], flush=True)
                continue
            if times is None:
                continue
            steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
            raw[f"{task}/{name}"] = times
            rows.append(f"| {task} | {name} | {count / steady:,.0f} | {steady * 1000:.0f} | {times[0]:.1f} |")
            print(rows[-1], flush=True)
    device_name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU"
    header = (f"GPU: {device_name}, torch {torch.__version__}, {args.epochs} epochs each, "
              "median epoch after the first\n\n| task | contender | img/s | ms/epoch | first epoch s |\n|---|---|---|---|---|")
    report = header + "\n" + "\n".join(rows) + "\n"
    with open(args.out, "w") as file:
        file.write(report)
    with open(args.out.replace(".md", ".json"), "w") as file:
        json.dump(raw, file, indent=1)
    print(report)


if __name__ == "__main__":
    main()
