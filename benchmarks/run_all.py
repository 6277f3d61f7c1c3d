"""`make bench`: run the self-contained benchmark harnesses one after another.

Each harness prints its own side-by-side table; benchmarks/RESULTS.md records them with the
machine and caveats. The engine and serving harnesses also take trained model dirs (the
quickstart leaves runs/quickstart/models/{ar,dlm}); where those exist they are used, else the
serving harness runs on random weights (labelled as such) and the engine harness is skipped.
The CPU crossover experiment (benchmarks/crossover_cpu.py, about an hour) is not run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MODELS = ROOT / "runs" / "quickstart" / "models"
DATA = ROOT / "runs" / "quickstart" / "data"


def main() -> int:
    eval_data = os.environ.get("DCODER_EVAL_DATA") or str(ROOT.parent / "shared" / "data")
    runs = [
        [PY, "benchmarks/bench_prep.py", "--eval-data", eval_data],
        [PY, "benchmarks/bench_sandbox.py", "--data-dir", eval_data, "--workers", "2"],
        [PY, "benchmarks/bench_train.py", "--steps", "8"],
    ]
    if (MODELS / "dlm" / "config.json").exists():
        runs.append([PY, "benchmarks/bench_engine.py", "--dlm", str(MODELS / "dlm"), "--ar", str(MODELS / "ar"),
                     "--task", "heldout", "--data-dir", str(DATA), "--n", "60"])
        runs.append([PY, "benchmarks/bench_serve.py", "--model", str(MODELS / "dlm"), "--threads", "1", "--duration", "60"])
    else:
        print("no runs/quickstart/models: engine benchmark skipped, serving benchmark on random weights", flush=True)
        runs.append([PY, "benchmarks/bench_serve.py", "--random", "--threads", "1", "--duration", "60"])
    failed = 0
    for cmd in runs:
        print("\n$ " + " ".join(cmd[1:]), flush=True)
        failed += subprocess.call(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
