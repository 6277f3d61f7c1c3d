"""Fork server that runs inside the sandbox (stdlib only, Python >= 3.9, Linux >= 5.3).

Started once per worker by eval/sandbox.py inside the namespaces and as the sandbox user, it
never runs untrusted code itself: for each request it forks a child that enters the program's
temp dir, takes the rlimits and executes `main.py` as `__main__`. Forking a warm interpreter costs
about a millisecond where starting a new one costs tens, which is most of the sandbox's time.

Protocol, one JSON object per line: stdin {dir, argv, wall_s, cpu_s, as, fsize, nproc} →
stdout {rc, timed_out, duration}. rc follows subprocess: negative for a signal.

As PID 1 of its namespace it kills every other process in it after each program (fork bombs,
daemons left behind), and signals from its children cannot kill it. PR_SET_DUMPABLE=0 keeps
programs of the same uid from ptracing it or reading its /proc fds.
"""

import contextlib
import ctypes
import gc
import json
import os
import resource
import select
import signal
import sys
import time
import traceback
import types

PR_SET_DUMPABLE = 4


def child(req):
    """Never returns: the forked copy of the server must not fall back into its loop."""
    try:
        setup(req)
    except BaseException:  # noqa: BLE001
        os._exit(125)
    run()


def setup(req):
    os.setsid()
    os.chdir(req["dir"])
    os.environ["HOME"] = os.environ["TMPDIR"] = req["dir"]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    os.dup2(os.open(".stdout", flags, 0o600), 1)
    os.dup2(os.open(".stderr", flags, 0o600), 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.closerange(3, 1 << 16)
    # CPU: SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later.
    resource.setrlimit(resource.RLIMIT_CPU, (req["cpu_s"], req["cpu_s"] + 1))
    for res, value in ((resource.RLIMIT_AS, req["as"]), (resource.RLIMIT_FSIZE, req["fsize"]),
                       (resource.RLIMIT_NPROC, req["nproc"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    sys.argv = ["main.py", *req["argv"]]
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def run():
    code = 0
    try:
        # As `python main.py` would: a fresh __main__ module (pickle and friends look it up).
        main = types.ModuleType("__main__")
        main.__file__ = os.path.abspath("main.py")
        sys.modules["__main__"] = main
        with open("main.py", "rb") as f:
            program = compile(f.read(), "main.py", "exec")
        exec(program, main.__dict__)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - report like the interpreter would
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def clean_up(pid):
    """Kill what the program left behind, then reap every child."""
    with contextlib.suppress(OSError):  # ESRCH: nothing left to kill
        if os.getpid() == 1:
            os.kill(-1, signal.SIGKILL)  # in a PID namespace: all its processes except init (us)
        else:
            os.killpg(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


# Imported once here so that each forked program finds them loaded (HumanEval prompts import
# typing, MBPP solutions re/math/collections, the Plus harness pickle/json): semantics unchanged.
WARM = ("bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools", "hashlib",
        "heapq", "itertools", "json", "math", "operator", "pickle", "random", "re", "statistics",
        "string", "typing")


def serve():
    for name in WARM:
        with contextlib.suppress(ImportError):
            __import__(name)
    # Objects that exist now are never collected: a forked child then does not touch (and so
    # copy) their pages when its garbage collector runs.
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        out.flush()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            child(req)
        pidfd = os.pidfd_open(pid)
        ready, _, _ = select.select([pidfd], [], [], req["wall_s"])
        timed_out = not ready
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        duration = time.monotonic() - t0
        os.close(pidfd)
        clean_up(pid)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
                              "duration": duration}) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
