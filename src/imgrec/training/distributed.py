"""torchrun / DDP: the process group, who writes files (rank 0), and the collectives the loop needs.

`torchrun --nproc_per_node=N -m imgrec.commands.train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
everything here is a no-op and imgrec runs as one process.
"""

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from imgrec.errors import ImgrecError
from imgrec.tasks.base import Gather

log = logging.getLogger("imgrec")


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Launched by torchrun, so in a process group (even of one process)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def setup(device_setting: str) -> tuple[DistEnv, str]:
    """Join the process group when launched by torchrun: NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK),
    gloo on CPU. Returns the environment and the device this process uses."""
    if not launched_by_torchrun():
        return DistEnv(), device_setting
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ImgrecError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                              "use --nproc_per_node at most the GPU count, or trainer.device=cpu")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    return DistEnv(rank, world_size, local_rank, backend), device


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def quiet_other_ranks(env: DistEnv, run_dir: str) -> str:
    """Ranks other than 0 log warnings only and write no files; they adopt rank 0's run dir, and remove
    the one Hydra made for them when it differs (started in another second). Returns the run dir."""
    if not env.enabled:
        return run_dir
    shared = [run_dir]
    dist.broadcast_object_list(shared, src=0)
    if env.is_main:
        return run_dir
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    logging.getLogger("imgrec").setLevel(logging.WARNING)
    own = Path(run_dir)
    if own.resolve() != Path(shared[0]).resolve() and own.is_dir():
        leftovers = {p.name for p in own.iterdir()} - {".hydra"}
        if all(name.endswith(".log") for name in leftovers):  # only what Hydra wrote: never a user's files
            shutil.rmtree(own, ignore_errors=True)
    return shared[0]


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sums over processes (in place on a copy), e.g. the epoch's training loss sums."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    summed = []
    for value in values:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        summed.append(value)
    return summed


def agreed_signal(signum: int | None, device: torch.device) -> int | None:
    """The stop signal any process received (the largest number if several), on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return signum
    tensor = torch.tensor([signum or 0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item()) or None


def from_main(value):
    """Rank 0's value of a small Python object, on every process (early stopping's decision)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class SplitGather(Gather):
    """Every process's share of a split put back together: `order` holds the split indices this process
    served, in the order it served them (the loader's), so the result is what one process would compute,
    with no sample twice."""

    def __init__(self, order: torch.Tensor):
        self.order = order

    def in_order(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not (dist.is_available() and dist.is_initialized()):
            return tensors
        served = self.order[: len(tensors[0])].cpu()  # a batch limit serves fewer than the whole share
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, ([t.cpu() for t in tensors], served))
        position = torch.cat([part[1] for part in parts]).argsort()
        return tuple(torch.cat([part[0][i] for part in parts])[position] for i in range(len(tensors)))

    def sum(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(all_sum(*tensors))

    def objects_in_order(self, items: list) -> list:
        if not (dist.is_available() and dist.is_initialized()):
            return items
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (items, self.order[: len(items)].cpu().tolist()))
        placed = sorted((position, item) for part_items, positions in parts
                        for position, item in zip(positions, part_items))  # positions are unique: items never compared
        return [item for _, item in placed]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_model(model: torch.nn.Module, device: torch.device, sync_batchnorm: bool = False):
    """(model, DDP wrapper): the model (with SyncBatchNorm layers when asked) and the DistributedDataParallel
    that trains it. SyncBatchNorm keeps the same Parameter objects, so the optimizer still holds them."""
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm and device.type != "cuda":
        raise ImgrecError("trainer.sync_batchnorm=true needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                          "kernel); use it with GPUs, or leave it false on CPU processes")
    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return model, DistributedDataParallel(model, device_ids=ids)
