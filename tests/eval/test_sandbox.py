"""The sandbox contains hostile programs and the evaluation carries on, host unaffected.

Limits are tight (1 s CPU, 256 MiB address space, 16 processes) so that a containment failure
cannot take the machine down with it.
"""

import os
import time

import pytest

from eval.sandbox import ExecResult, Limits, _pool, isolation, run_many, run_many_jobs, run_program

TIGHT = Limits(wall_s=3.0, cpu_s=1, memory_bytes=256 << 20, file_bytes=1 << 20, nproc=16)


@pytest.mark.parametrize("fresh", [False, True], ids=["forkserver", "fresh"])
def test_outcomes_are_classified(fresh):
    ok, fail, err, slow = [run_program(p, limits=TIGHT, fresh=fresh) for p in
                           ["print('hi')", "assert 1 + 1 == 3, 'math'", "undefined_name()", "import time; time.sleep(60)"]]
    assert (ok.status, ok.message, ok.stdout) == ("passed", "", "hi\n")
    assert (fail.status, fail.message) == ("failed", "AssertionError: math")
    assert err.status == "error" and err.message.startswith("NameError")
    assert slow.status == "timeout" and "wall clock" in slow.message


@pytest.mark.parametrize("fresh", [False, True], ids=["forkserver", "fresh"])
def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock(fresh):
    r = run_program("while True: pass", limits=Limits(wall_s=20, cpu_s=1, nproc=16), fresh=fresh)
    assert r.status == "timeout" and r.duration_s < 10


def test_files_go_in_and_come_back():
    r = run_program("import sys; open('out.txt', 'w').write(open('in.txt').read() + sys.argv[1])",
                    files={"in.txt": b"ab"}, argv=["c"], collect=["out.txt", "missing"], limits=TIGHT)
    assert r.status == "passed" and r.files == {"out.txt": b"abc"}


HOSTILE = {
    "infinite_loop": "while True: pass",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))",
    "big_file": "open('big', 'wb').write(b'x' * (8 << 20))",
    "socket": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)\nprint('CONNECTED')",
    "env_secret": "import os\nassert 'DCODER_TEST_SECRET' not in os.environ, 'leaked'\nprint(sorted(os.environ))",
}


@pytest.mark.parametrize("fresh", [False, True], ids=["forkserver", "fresh"])
def test_hostile_suite_is_contained_and_evaluation_carries_on(fresh, tmp_path, monkeypatch):
    monkeypatch.setenv("DCODER_TEST_SECRET", "hunter2")
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    victim = host_dir / "keep.txt"
    victim.write_text("precious")
    os.chmod(host_dir, 0o755)
    programs = dict(HOSTILE)
    programs["write_outside"] = f"open({str(host_dir / 'evil.txt')!r}, 'w').write('x')"
    programs["delete_outside"] = f"import os\nos.remove({str(victim)!r})"
    programs["signal_parent"] = f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)"
    programs["signal_ppid"] = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nassert False, 'alive'"
    programs["daemon"] = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)"
    programs["honest"] = "assert sum(range(10)) == 45"
    names = list(programs)
    t0 = time.monotonic()
    jobs = [{"program": programs[n], "limits": TIGHT, "fresh": fresh} for n in names]
    results = dict(zip(names, run_many_jobs(jobs, workers=2), strict=True))
    assert time.monotonic() - t0 < 60
    layers = isolation().layers
    assert all(isinstance(r, ExecResult) for r in results.values())
    assert results["honest"].status == "passed"  # evaluation carries on next to the hostile ones
    assert results["infinite_loop"].status == "timeout"
    assert results["fork_bomb"].status in ("timeout", "error")
    assert results["memory_bomb"].status == "error" and "MemoryError" in results["memory_bomb"].message
    assert results["big_file"].status == "error" and "File too large" in results["big_file"].message
    assert results["env_secret"].status == "passed" and "DCODER_TEST_SECRET" not in results["env_secret"].stdout
    if "netns" in layers:
        assert results["socket"].status == "error" and "CONNECTED" not in results["socket"].stdout
    if "pidns" in layers:  # the host's pids do not exist in the sandbox, its parent is PID 0
        assert results["signal_parent"].status == "error"
        assert results["signal_ppid"].status == "failed"
    if "uid" in layers:
        assert results["write_outside"].status == "error" and "Permission" in results["write_outside"].message
        assert results["delete_outside"].status == "error"
        assert not (host_dir / "evil.txt").exists()
    assert victim.read_text() == "precious"  # the host is unaffected
    _pool.close_all()  # the idle fork servers run as the sandbox user too
    if "uid" in layers:  # nothing of the sandbox user survives its programs (the kernel reaps a
        deadline = time.monotonic() + 10  # dying PID namespace asynchronously: allow it a moment)
        while _processes_of(65534) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_of(65534) == []


def _processes_of(uid: int) -> list[str]:
    from pathlib import Path

    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and d.stat().st_uid == uid:
                out.append(d.name)
        except OSError:
            pass
    return out


@pytest.mark.parametrize("bad", ["def f(:\n", "raise SystemExit(3)", "import os; os.abort()"])
def test_broken_programs_are_errors_not_exceptions(bad):
    r = run_program(bad, limits=TIGHT)
    assert r.status == "error" and r.message


def test_fork_server_is_reused_and_programs_see_a_clean_interpreter():
    a, b = run_many(["import sys; sys.modules['json'].LEAK = 1; open('x', 'w')",
                     "import json, os; assert not hasattr(json, 'LEAK') and not os.path.exists('x')"],
                    limits=TIGHT, workers=1)
    assert (a.status, b.status) == ("passed", "passed") and not _pool.broken
    # a program is its own __main__ module, as under `python main.py`
    c = run_program("import pickle, sys\nclass A:\n    pass\nassert type(pickle.loads(pickle.dumps(A()))) is A\n"
                    "assert sys.argv == ['main.py', 'x'] and __name__ == '__main__'", argv=["x"], limits=TIGHT)
    assert c.status == "passed", c.message
