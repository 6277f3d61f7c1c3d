#!/bin/bash
# Data prep on Slurm through datatrove's Slurm executor. Run this on a login node (or anywhere
# `sbatch` works): `dcoder prep --executor slurm` submits datatrove's array jobs itself, one task
# per input shard, and a dependent job for each later stage; completed tasks leave markers, so
# running the same command again resubmits only what is missing.
#   deploy/slurm/prep.sh --source /shared/corpus/python --out /shared/data/py --seq-len 2048
# Extra arguments go to `dcoder prep` unchanged (see `dcoder prep --help` for the Slurm options:
# partition, time, tasks, CPUs per task). DCODER (the dcoder command, default `dcoder`) must
# resolve to the same installation on the compute nodes (a shared venv or a container).
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 --source SRC [--source SRC ...] --out DATA_DIR [dcoder prep options]" >&2
  exit 2
fi
if ! command -v sbatch > /dev/null; then
  echo "$0: sbatch not found: run this where Slurm commands work (a login node)" >&2
  exit 2
fi

exec "${DCODER:-dcoder}" prep --executor slurm "$@"
