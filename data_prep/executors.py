"""Building datatrove executors for the per-document stages, and waiting on them with progress.

`--executor local` (default) runs ranks in a local process pool (`--workers`); `slurm` and `ray`
build datatrove's SlurmPipelineExecutor / RayPipelineExecutor with `--executor-opt key=value`
options passed straight through (values parsed as JSON when they parse, e.g. `cpus_per_task=4`;
Slurm needs `time=` and `partition=`). The work dir must then be on a filesystem shared with
the nodes. Slurm jobs run asynchronously, so `run_stage` waits on the completion markers.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.utils.logging import logger


class ExecutorError(ValueError):
    user_error = True


class _QuietLocalExecutor(LocalPipelineExecutor):
    """Local executor whose tasks log INFO to their log file only (errors still reach stderr):
    `dcoder prep` prints its own progress lines instead of datatrove's per-task banners."""

    def _launch_run_for_rank(self, rank: int, ranks_q, completed=None, completed_lock=None):
        # no "n/N tasks completed" INFO line per task: run_stage prints progress instead
        return super()._launch_run_for_rank(rank, ranks_q)

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        # datatrove sends INFO to stderr only for local_rank 0; the rank is used for nothing else.
        return super()._run_for_rank(rank, local_rank + 1, node_rank)


def parse_executor_opts(opts: list[str] | None) -> dict:
    out = {}
    for item in opts or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExecutorError(f"--executor-opt {item!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_executor(kind: str, pipeline: list, *, tasks: int, workers: int, logging_dir: str, opts: dict | None = None):
    opts = dict(opts or {})
    if kind == "local":
        return _QuietLocalExecutor(pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=logging_dir, **opts)
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        missing = [k for k in ("time", "partition") if k not in opts]
        if missing:
            raise ExecutorError(f"--executor slurm needs --executor-opt {'= '.join(missing)}= (e.g. time=02:00:00)")
        return SlurmPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, **opts)
    if kind == "ray":
        try:
            from datatrove.executor.ray import RayPipelineExecutor
        except ImportError as e:
            raise ExecutorError(f"--executor ray needs ray installed ({e})") from None
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir, **opts)
    raise ExecutorError(f"unknown executor {kind!r} (local, slurm or ray)")


def _fmt_rate(docs: int, nbytes: int, elapsed: float) -> str:
    e = max(elapsed, 1e-9)
    return f"{docs:,} docs  {docs / e:,.0f} docs/s  {nbytes / e / 1e6:.2f} MB/s"


def _slurm_job_alive(executor) -> bool:
    """False once a submitted Slurm job has left the queue (finished or failed); True otherwise,
    including for executors that are not Slurm's and when `squeue` cannot be asked."""
    job_id = getattr(executor, "job_id", None)
    if not job_id:
        return True
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True
    # squeue exits non-zero for an unknown (long gone) job id; an empty listing means it left the queue
    return out.returncode == 0 and bool(out.stdout.strip())


def run_stage(name: str, executor, progress_dir: Path, *, show: bool = True) -> float:
    """Run `executor` to completion, printing docs/s and MB/s from the ranks' progress files.
    Returns the wall time in seconds."""
    t0 = time.monotonic()
    done = threading.Event()
    tty = sys.stderr.isatty()

    def totals() -> tuple[int, int]:
        docs = nbytes = 0
        for p in progress_dir.glob(f"{name}_*.json"):
            try:
                d = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            docs, nbytes = docs + d["docs"], nbytes + d["bytes"]
        return docs, nbytes

    def monitor() -> None:
        interval = 2.0 if tty else 10.0
        while not done.wait(interval):
            line = f"  [{name}] {_fmt_rate(*totals(), time.monotonic() - t0)}"
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    thread = threading.Thread(target=monitor, daemon=True)
    if show:
        thread.start()
    logger.disable("datatrove")  # datatrove's own INFO lines in this process; task logs go to files
    try:
        executor.run()
        while getattr(executor, "get_incomplete_ranks", None) and executor.get_incomplete_ranks(skip_completed=True):
            if type(executor) is _QuietLocalExecutor:
                raise RuntimeError(f"stage {name}: some ranks did not complete (see {executor.logging_dir.path}/logs)")
            if not _slurm_job_alive(executor):
                raise ExecutorError(f"stage {name}: Slurm job {executor.job_id} ended with ranks incomplete "
                                    f"(see {executor.logging_dir.path}/logs); rerun to redo only those ranks")
            time.sleep(10)  # Slurm/Ray: jobs run elsewhere; wait for their completion markers
    finally:
        logger.enable("datatrove")
        done.set()
    elapsed = time.monotonic() - t0
    if show:
        thread.join()
        line = f"  [{name}] {_fmt_rate(*totals(), elapsed)}  ({elapsed:.1f}s)"
        print(("\r" + line) if tty else line, file=sys.stderr, flush=True)
    return elapsed
