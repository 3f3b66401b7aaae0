#!/bin/bash
# Multi-node DDP on SLURM: one torchrun per node (srun), each starting one process per GPU.
# sbatch scripts/slurm_ddp.sh dataset=image_folder dataset.root=/shared/images model=resnet50
#SBATCH --job-name=imgrec
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120            # 2 minutes' warning: imgrec saves last.pt and exits 138

set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# outputs/ must be on a file system every node sees: rank 0 writes, every rank reads best.pt for the test
srun torchrun \
  --nnodes="$SLURM_NNODES" --nproc_per_node="$SLURM_GPUS_PER_NODE" \
  --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:29500" \
  -m imgrec.commands.train "hydra.run.dir=outputs/train/runs/slurm-$SLURM_JOB_ID" "$@"
