#!/bin/bash
# The CUDA checks in one go (CI has no GPU): the GPU tests, a torchrun run over NCCL, and the GPU
# throughput table. Run from the repository root on a machine with a GPU:  bash scripts/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:-gpu_check}
mkdir -p "$out"
python=${PYTHON:-python}
$python -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -15
# DDP over NCCL: one process per GPU (a single GPU still exercises the process group and the gather)
$python -m torch.distributed.run --standalone --nproc_per_node="${NPROC:-$($python -c 'import torch; print(torch.cuda.device_count())')}" \
  -m imgrec.commands.train dataset=fake dataset.size=2000 trainer.device=cuda trainer.max_epochs=2 trainer.progress=false \
  trainer.precision=bf16-mixed trainer.channels_last=true trainer.sync_batchnorm=true "hydra.run.dir=$out/ddp_nccl" 2>&1 | tail -6
grep -q "processes (nccl)" "$out/ddp_nccl/train.log" && echo "NCCL run: ok" || echo "NCCL run: FAILED"
PYTHONUNBUFFERED=1 $python scripts/bench/gpu_speed.py --epochs 4 --out "$out/gpu_speed.md" 2>&1 | grep "^|" | tail -25
