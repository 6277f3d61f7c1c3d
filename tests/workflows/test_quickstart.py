"""The main job end to end, on a small budget: stdlib → data → pair → export → eval → infill."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EVAL_DATA = Path(os.environ.get("DCODER_EVAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


@pytest.mark.slow
@pytest.mark.skipif(not (EVAL_DATA / "mbpp.jsonl").exists(), reason="needs the offline benchmark copies")
def test_quickstart_runs_end_to_end_and_a_rerun_skips_finished_stages(tmp_path):
    cmd = [sys.executable, "-m", "dcoder", "quickstart", "--out", str(tmp_path / "qs"),
           "--unique-tokens", "20000", "--epochs", "1"]
    env = {**os.environ, "DCODER_EVAL_DATA": str(EVAL_DATA), "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert first.returncode == 0, first.stderr[-2000:]
    for obj in ("ar", "dlm"):
        assert (tmp_path / "qs" / "models" / obj / "model.safetensors").exists()
    assert (tmp_path / "qs" / "pair" / "report.md").exists()
    assert "middle:" in first.stdout and "dcoder serve" in first.stdout

    metrics = {obj: (tmp_path / "qs" / "pair" / obj / "metrics.jsonl").read_text() for obj in ("ar", "dlm")}
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "data dir complete, skipping" in again.stdout
    for obj in ("ar", "dlm"):  # the finished runs are not trained again
        assert (tmp_path / "qs" / "pair" / obj / "metrics.jsonl").read_text() == metrics[obj]
