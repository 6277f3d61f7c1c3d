"""Run untrusted Python programs: one process per program, in its own temp dir.

Layers, strongest available first (`isolation()` says which applied on this machine):
- `netns`: a new network namespace (no interfaces but a down loopback: sockets fail).
- `pidns`: a new PID namespace; programs cannot see or signal host processes (the evaluator
  included), and whatever they fork is killed after them.
- `uid`: when the evaluator runs as root, programs run as `nobody` (65534), so they cannot
  write or delete files outside their temp dir and world-writable places such as /tmp.
- always: rlimits (CPU seconds, address space, file size, process count, no core files), a
  wall-clock timeout that SIGKILLs everything the program started, stdin on /dev/null, a
  scrubbed environment (no secrets: only PATH, LANG, HOME/TMPDIR = the temp dir), `python -I`.

Two ways to start a program, same layers: by default a fork server (eval/zygote.py) per worker
sits inside the namespaces as their PID 1 and forks a child per program (a few ms); `fresh=True`
starts `unshare … prlimit … python -I main.py` per program (tens of ms, the fallback when the
fork server cannot run). Both are started from command lines, never a `preexec_fn`, so many
threads can launch programs at once.

Not handled: a new mount namespace (as `nobody` a program can still read world-readable files
and write to /tmp; concurrent programs share the `nobody` uid); without root, no uid drop (the
program runs as the caller, so only rlimits, the namespaces and the temp dir protect the
caller's files); no seccomp filter. Run evaluation of untrusted models in a container as well.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "error"]
NOBODY = 65534
_MESSAGE_CHARS = 400  # how much of stderr's tail is kept as the message


@dataclass
class Limits:
    wall_s: float = 10.0  # wall-clock timeout for the whole program
    cpu_s: int = 10  # RLIMIT_CPU (SIGXCPU, then SIGKILL)
    memory_bytes: int = 4 << 30  # RLIMIT_AS (virtual memory, as EvalPlus uses)
    file_bytes: int = 64 << 20  # RLIMIT_FSIZE: largest file the program may write
    nproc: int = 64  # RLIMIT_NPROC: processes of the sandbox user (shared by concurrent programs)


@dataclass
class ExecResult:
    status: Status
    message: str  # "" when passed; the last exception line, "timed out after Ns", "killed by SIGKILL" ...
    returncode: int | None
    duration_s: float
    stdout: str = ""  # tail only
    files: dict[str, bytes] = field(default_factory=dict)  # requested output files from the temp dir


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (no usable interpreter): a setup problem, not a program's fault."""

    user_error = True


@dataclass(frozen=True)
class Isolation:
    prefix: tuple[str, ...]  # command prefix before `prlimit`
    python: str  # interpreter the sandbox user can execute
    layers: tuple[str, ...]  # names of the layers that applied
    nproc_base: int  # processes the sandbox uid already has (RLIMIT_NPROC counts them all)

    def describe(self) -> str:
        return "+".join(self.layers) or "rlimits-only"


def _count_processes(uid: int) -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _probe(cmd: list[str]) -> bool:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == b"ok"


@functools.cache
def isolation(python: str | None = None) -> Isolation:
    """Find the strongest isolation this machine allows (probed once per interpreter)."""
    import sys

    unshare, prlimit = shutil.which("unshare"), shutil.which("prlimit")
    if prlimit is None:
        raise SandboxError("the sandbox needs `prlimit` (util-linux) on PATH")
    root = os.geteuid() == 0
    candidates: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    if unshare:
        ns = [unshare, "--net", "--pid", "--fork", "--kill-child"]
        if root:
            drop = ["--setuid", str(NOBODY), "--setgid", str(NOBODY)]
            candidates.append((tuple(ns + drop + ["--"]), ("netns", "pidns", "uid")))
        candidates.append((tuple(ns[:1] + ["--map-root-user"] + ns[1:] + ["--"]) if not root
                           else tuple(ns + ["--"]), ("netns", "pidns")))
    candidates.append(((), ()))
    pythons = [python] if python else [sys.executable, shutil.which("python3", path="/usr/bin:/bin") or ""]
    for prefix, layers in candidates:
        for py in filter(None, pythons):
            if _probe([*prefix, prlimit, "--core=0", "--", py, "-I", "-c", "print('ok')"]):
                uid = NOBODY if "uid" in layers else os.geteuid()
                return Isolation(prefix, py, layers, _count_processes(uid))
    raise SandboxError(f"no interpreter runs in the sandbox (tried {', '.join(filter(None, pythons))})")


def _scrubbed_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home,
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _message_from_stderr(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:_MESSAGE_CHARS] if lines else ""


def run_program(
    program: str,
    *,
    limits: Limits | None = None,
    files: dict[str, bytes] | None = None,
    argv: Iterable[str] = (),
    collect: Iterable[str] = (),
    python: str | None = None,
    fresh: bool = False,
) -> ExecResult:
    """Run `program` (Python source) in a fresh temp dir; never raises for the program's faults.

    By default the program is forked from a warm fork server inside the sandbox (eval/zygote.py);
    `fresh=True` (or a fork server that cannot start) starts a new interpreter per program.

    `files` are written into the temp dir first; `collect` names files read back afterwards
    (each at most `limits.file_bytes`). Outcome: passed (exit 0), failed (an AssertionError),
    timeout (wall clock or CPU limit), error (any other exception, a crash or a kill).
    """
    limits = limits or Limits()
    iso = isolation(python)
    tmp = Path(tempfile.mkdtemp(prefix="dcoder-sbx-"))
    try:
        (tmp / "main.py").write_text(program)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        out_path, err_path = tmp / ".stdout", tmp / ".stderr"
        out_path.touch()
        err_path.touch()
        if "uid" in iso.layers:
            for p in [tmp, *tmp.iterdir()]:
                os.chown(p, NOBODY, NOBODY)
        nproc = limits.nproc + (iso.nproc_base if "uid" not in iso.layers else 0)
        t0 = time.monotonic()
        reply = None if fresh else _forkserver_run(iso, {
            "dir": str(tmp), "argv": list(argv), "wall_s": limits.wall_s, "cpu_s": limits.cpu_s,
            "as": limits.memory_bytes, "fsize": limits.file_bytes, "nproc": nproc + _pool.size})
        if reply is not None:
            returncode, timed_out = reply["rc"], reply["timed_out"]
        else:
            returncode, timed_out = _fresh_run(iso, tmp, limits, nproc, argv)
        duration = time.monotonic() - t0
        stderr = _tail(err_path, 4096)
        stdout = _tail(out_path, 4096)
        status, message = _classify(returncode, timed_out, stderr, limits, duration)
        collected = {}
        for name in collect:
            p = tmp / name
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= limits.file_bytes:
                collected[name] = p.read_bytes()
        return ExecResult(status, message, returncode, duration, stdout, collected)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh_run(iso: Isolation, tmp: Path, limits: Limits, nproc: int, argv: Iterable[str]) -> tuple[int, bool]:
    """A new interpreter under prlimit: (returncode, timed_out)."""
    cmd = [*iso.prefix, shutil.which("prlimit") or "prlimit",
           f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}", f"--as={limits.memory_bytes}", f"--fsize={limits.file_bytes}",
           f"--nproc={nproc}", "--core=0", "--", iso.python, "-I", "main.py", *argv]
    with open(tmp / ".stdout", "wb") as out, open(tmp / ".stderr", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=tmp, env=_scrubbed_env(str(tmp)), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
    return proc.returncode, timed_out


class _ForkServer:
    """One eval/zygote.py process in the sandbox; serves one program at a time."""

    SOURCE = (Path(__file__).parent / "zygote.py").read_text()

    def __init__(self, iso: Isolation):
        self.proc = subprocess.Popen([*iso.prefix, iso.python, "-I", "-c", self.SOURCE], cwd="/",
                                     env=_scrubbed_env("/"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def request(self, req: dict) -> dict | None:
        """The zygote's reply, or None if it died or hung (the caller then discards it)."""
        import json
        import select

        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            # The zygote enforces wall_s itself; this guard only catches a broken zygote.
            ready, _, _ = select.select([self.proc.stdout], [], [], req["wall_s"] + 30)
            line = self.proc.stdout.readline() if ready else b""
            return json.loads(line) if line else None
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        _kill_group(self.proc)
        with contextlib.suppress(OSError):
            self.proc.stdout.close()


class _Pool:
    """Idle fork servers, one per concurrently running program; `broken` after a failed start."""

    def __init__(self):
        self.idle: list[_ForkServer] = []
        self.size = 0
        self.broken = False
        self.ever_ok = False
        self.lock = threading.Lock()

    def acquire(self, iso: Isolation) -> _ForkServer:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            self.size += 1
        return _ForkServer(iso)

    def release(self, server: _ForkServer, ok: bool) -> None:
        if ok:
            with self.lock:
                self.idle.append(server)
            return
        server.close()
        with self.lock:
            self.size -= 1

    def close_all(self) -> None:
        with self.lock:
            idle, self.idle, self.size = self.idle, [], 0
        for server in idle:
            server.close()


_pool = _Pool()
atexit.register(_pool.close_all)


def _forkserver_run(iso: Isolation, req: dict) -> dict | None:
    """The fork server's reply, or None: the caller then runs the program in a fresh interpreter."""
    if _pool.broken:
        return None
    server = _pool.acquire(iso)
    reply = server.request(req)
    _pool.release(server, ok=reply is not None)
    if reply is not None:
        _pool.ever_ok = True
    elif not _pool.ever_ok:
        # Never worked (e.g. an interpreter without os.pidfd_open): fresh interpreters from now on.
        _pool.broken = True
    return reply


def _kill_group(proc: subprocess.Popen) -> None:
    # The program may have forked; its session/process group is proc.pid (start_new_session).
    # With the PID namespace, killing `unshare` also kills everything inside.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _classify(rc: int, timed_out: bool, stderr: str, limits: Limits, duration_s: float) -> tuple[Status, str]:
    last = _message_from_stderr(stderr)
    if timed_out:
        return "timeout", f"timed out after {limits.wall_s:g}s wall clock"
    if rc == 0:
        return "passed", ""
    # `unshare --fork` cannot always re-raise its child's fatal signal; it then exits 1 with its
    # own message. A child killed that way after using up its CPU seconds hit RLIMIT_CPU.
    killed_in_ns = last.startswith("unshare:") and "Traceback" not in stderr
    if rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU) or (killed_in_ns and duration_s >= 0.9 * limits.cpu_s):
        return "timeout", f"CPU limit of {limits.cpu_s}s exceeded"
    if killed_in_ns:
        return "error", "killed by a signal"
    if rc < 0 or rc > 128:
        sig = -rc if rc < 0 else rc - 128
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return "error", f"killed by {name}" + (f" ({last})" if last else "")
    if last.startswith("AssertionError"):
        return "failed", last
    return "error", last or f"exit code {rc}"


def run_many_jobs(
    jobs: list[dict],
    *,
    workers: int | None = None,
    on_done: Callable[[int, ExecResult], None] | None = None,
    python: str | None = None,
) -> list[ExecResult]:
    """Run `run_program(**job)` for every job, `workers` at a time; results in input order."""
    workers = workers or os.cpu_count() or 1
    isolation(python)  # probe once before the threads start
    results: list[ExecResult | None] = [None] * len(jobs)

    def one(i: int) -> None:
        results[i] = run_program(**jobs[i], python=python)
        if on_done:
            on_done(i, results[i])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for f in [pool.submit(one, i) for i in range(len(jobs))]:
            f.result()
    return results  # type: ignore[return-value]


def run_many(programs: list[str], *, limits: Limits | None = None, workers: int | None = None,
             python: str | None = None) -> list[ExecResult]:
    """Run plain programs concurrently with the same limits; results in input order."""
    return run_many_jobs([{"program": p, "limits": limits} for p in programs], workers=workers, python=python)
