"""The embedded default corpus: a stdlib subset in the fast suite, the whole stdlib as `slow`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.format import read_manifest
from data_prep.sources import stdlib_dir
from dcoder.cli import main


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and ".work" not in p.parts}


def test_cli_prep_on_a_stdlib_subset(tmp_path, eval_data, capsys):
    src = tmp_path / "lib"
    for name in ("json", "email/mime", "collections"):
        shutil.copytree(stdlib_dir() / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("argparse.py", "textwrap.py", "shlex.py"):
        shutil.copy(stdlib_dir() / name, src / name)
    out = tmp_path / "data"
    rc = main(["prep", "--source", str(src), "--out", str(out), "--vocab-size", "512", "--eval-data", str(eval_data)])
    assert rc == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["documents"]["train"] >= 15 and summary["unique_tokens"] > 50_000
    assert "docs/s" in cap.err and "MB/s" in cap.err and "dcoder prep summary" in cap.err
    assert "  EMAIL" in cap.err and "contaminated (benchmarks)" in cap.err  # stdlib headers carry e-mails
    assert read_manifest(out)["unique_tokens"] == summary["unique_tokens"]


def _prep_cmd(out: Path, eval_data: Path) -> list[str]:
    return [sys.executable, "-m", "dcoder.cli", "prep", "--source", "stdlib", "--out", str(out), "--workers", "2",
            "--eval-data", str(eval_data)]


@pytest.mark.slow
def test_full_stdlib_prep_rerun_and_kill_resume_are_byte_identical(tmp_path, eval_data):
    first, second = tmp_path / "a", tmp_path / "b"
    r = subprocess.run(_prep_cmd(first, eval_data), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = read_manifest(first)
    assert m["documents"]["train"] > 500 and m["unique_tokens"] > 1_000_000
    # Rerun into a second dir, killed (SIGKILL) once the clean stage has completed a few ranks.
    proc = subprocess.Popen(_prep_cmd(second, eval_data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marks = second / ".work" / "logs" / "clean" / "completions"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(list(marks.glob("*"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (second / "manifest.json").exists()
    r = subprocess.run(_prep_cmd(second, eval_data), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _files(second) == _files(first)
