#!/bin/bash
# Data prep on Slurm through datatrove's Slurm executor (`dcoder prep --executor slurm`).
# `dcoder prep` is the driver: it submits datatrove's array jobs (one task per shard of each
# per-document stage), waits on their completion markers, then runs the global stages (dedup
# clusters, tokenizer, packing) itself. Run it where `sbatch` works, either in the foreground of a
# login-node tmux session or as a small driver job of its own:
#   PREP_PARTITION=cpu deploy/slurm/prep.sh --source /shared/corpus/py --out /shared/data/py --seq-len 2048
#   PREP_PARTITION=cpu sbatch deploy/slurm/prep.sh --source /shared/corpus/py --out /shared/data/py
# A rerun resubmits only unfinished tasks. DATA_DIR must be on a filesystem the nodes share.
# Environment: PREP_PARTITION (required), PREP_TIME per task (default 02:00:00), PREP_CPUS per
# task (1), PREP_MEM_PER_CPU_GB (2), PREP_WORKERS (tasks running at once, default 64; the number
# of tasks follows the input size), PREP_QOS (datatrove asks for qos "normal" unless set; an empty
# value asks for none), DCODER_VENV (venv the compute nodes activate; default: the one running `dcoder`).
# Other datatrove options: pass `--executor-opt key=value` yourself (see data_prep/executors.py).
#SBATCH --job-name=dcoder-prep-driver
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: PREP_PARTITION=P $0 --source SRC [--source SRC ...] --out DATA_DIR [dcoder prep options]" >&2
  exit 2
fi
if [ -z "${PREP_PARTITION:-}" ]; then
  echo "$0: set PREP_PARTITION to the Slurm partition datatrove's jobs should run in" >&2
  exit 2
fi
if ! command -v sbatch > /dev/null; then
  echo "$0: sbatch not found: run this where Slurm commands work" >&2
  exit 2
fi

dcoder_bin="${DCODER:-dcoder}"
if ! command -v "$dcoder_bin" > /dev/null; then
  echo "$0: $dcoder_bin not found: activate dcoder's venv or set DCODER=/path/to/venv/bin/dcoder" >&2
  exit 2
fi
venv="${DCODER_VENV:-$(dirname "$(dirname "$(command -v "$dcoder_bin")")")}"
opts=(
  --executor-opt "partition=$PREP_PARTITION"
  --executor-opt "time=${PREP_TIME:-02:00:00}"
  --executor-opt "cpus_per_task=${PREP_CPUS:-1}"
  --executor-opt "mem_per_cpu_gb=${PREP_MEM_PER_CPU_GB:-2}"
  --executor-opt "venv_path=$venv/bin/activate"
  --executor-opt "job_name=dcoder-prep"
)
if [ -n "${PREP_QOS+set}" ]; then
  opts+=(--executor-opt "qos=$PREP_QOS")
fi

exec "$dcoder_bin" prep --executor slurm --workers "${PREP_WORKERS:-64}" "${opts[@]}" "$@"
