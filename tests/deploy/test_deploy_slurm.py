"""deploy/slurm on a one-node stand-in for Slurm (tests/deploy/fake_slurm: sbatch runs jobs at
once here, srun runs its command, scontrol names 127.0.0.1): data prep goes through datatrove's
real Slurm executor and launch scripts, training through the sbatch script's real srun + torchrun
c10d rendezvous, with 2 CPU ranks on gloo. What a real cluster adds (several nodes, NCCL, a
scheduler) is not exercised."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from deploy_testutil import DEPLOY, REPO

FAKE_SLURM = Path(__file__).parent / "fake_slurm"
VENV_BIN = Path(sys.executable).parent
STDLIB_FILES = ["json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "textwrap.py",
                "shlex.py", "glob.py", "fnmatch.py", "bisect.py", "heapq.py", "colorsys.py", "copy.py"]

pytestmark = pytest.mark.slow


def _env(fake_dir: Path, **extra: str) -> dict:
    fake_dir.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PATH": f"{FAKE_SLURM}:{VENV_BIN}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(fake_dir),
            "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], env: dict, timeout: int, fake_dir: Path) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(fake_dir.glob("*.log")))
        pytest.fail(f"{cmd[0]} timed out after {timeout} s\n{e.stderr}\n{logs}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    for rel in STDLIB_FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out / rel)
    return out


@pytest.fixture(scope="module")
def slurm_data(corpus, tmp_path_factory) -> Path:
    """A data dir written by deploy/slurm/prep.sh through datatrove's Slurm executor."""
    tmp = tmp_path_factory.mktemp("slurm_prep")
    fake_dir = tmp / "slurm"
    env = _env(fake_dir, PREP_PARTITION="test", PREP_TIME="00:10:00", DCODER=str(VENV_BIN / "dcoder"))
    _run([str(DEPLOY / "slurm" / "prep.sh"), "--source", str(corpus), "--out", str(tmp / "data"),
          "--seq-len", "64", "--vocab-size", "512", "--no-decontaminate", "--quiet"], env, 300, fake_dir)
    return tmp / "data"


def test_prep_sh_runs_datatrove_slurm_jobs_and_matches_local_prep(slurm_data, corpus, tmp_path):
    fake_dir = slurm_data.parent / "slurm"
    srun_calls = (fake_dir / "srun.log").read_text().splitlines()
    assert any("launch_pickled_pipeline" in line for line in srun_calls), srun_calls
    scripts = sorted(fake_dir.glob("job_*.sbatch"))
    assert scripts and all("#SBATCH --partition=test" in s.read_text() for s in scripts)
    # The same corpus prepared locally gives the same shards.
    local = tmp_path / "local"
    _run([str(VENV_BIN / "dcoder"), "prep", "--source", str(corpus), "--out", str(local), "--seq-len", "64",
          "--vocab-size", "512", "--no-decontaminate", "--quiet"], _env(tmp_path / "unused"), 300, tmp_path)
    for split in ("train", "val"):
        slurm_shards = sorted(p.name for p in (slurm_data / split).iterdir())
        assert slurm_shards == sorted(p.name for p in (local / split).iterdir())
        for name in slurm_shards:
            assert (slurm_data / split / name).read_bytes() == (local / split / name).read_bytes(), name
    assert (slurm_data / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()


def test_train_sbatch_runs_torchrun_rendezvous_under_srun(slurm_data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake_dir = tmp_path / "slurm"
    env = _env(fake_dir, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[01]", SLURM_NNODES="1",
               SLURM_CPUS_PER_TASK="2", GPUS_PER_NODE="2", RDZV_PORT=str(port), DCODER_PYTHON=sys.executable)
    run_dir = tmp_path / "run"
    tiny = ["--set", "model.n_layers=1", "--set", "model.d_model=64", "--set", "model.n_heads=2",
            "--set", "model.n_kv_heads=2", "--set", "model.d_ff=128", "--set", "seq_len=64",
            "--set", "global_batch=4", "--set", "micro_batch=2"]
    out = _run(["bash", str(DEPLOY / "slurm" / "train.sbatch"), "train", "--data", str(slurm_data), "--preset",
                "tiny", "--objective", "dlm", "--out", str(run_dir), "--max-steps", "2", "--device", "cpu",
                *tiny], env, 300, fake_dir)
    assert f"rendezvous at 127.0.0.1:{port}" in out.stdout
    assert "world 2" in out.stdout + out.stderr  # both ranks joined the rendezvous
    (srun_call,) = (fake_dir / "srun.log").read_text().splitlines()
    assert "--nodes=1 --ntasks-per-node=1 --cpus-per-task=2" in srun_call
    assert f"--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{port}" in srun_call
    assert "--nproc-per-node 2" in srun_call and "-m dcoder.cli train" in srun_call
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_0000002"]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(s.get("step", 0) for s in steps) == 2
