"""Runs inside the sandbox (stdlib only, any Python >= 3.8): EvalPlus-style differential testing.

    python plus_harness.py groundtruth   # payload.pkl → result.pkl  {outputs, times}
    python plus_harness.py check         # payload.pkl → result.json {base, plus, message}

payload.pkl (written by eval/plus.py): code, entry_point, dataset ("humaneval" | "mbpp"),
task_id, base_input, plus_input (raw JSON inputs; MBPP+ ones are rebuilt into tuples/sets here
as EvalPlus does), and for `check` also expected outputs, per-input time limits, atol,
fast_check. The comparison follows EvalPlus 0.3.1 (`evalplus/eval/__init__.py`), special oracles
included. `check` writes JSON only: the evaluator never unpickles what a candidate could forge.
"""

import contextlib
import copy
import json
import math
import os
import pickle
import signal
import sys
import time

# Task lists and oracles as EvalPlus defines them (evalplus/eval/_special_oracle.py).
OUTPUT_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
OUTPUT_SET_EQ = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                 "larg_nnum", "intersection_array", "find_dissimilar", "Diff"}


def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _surface_area(base_edge, height):
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def _digit_distance(a, b):
    sa, sb = str(a), str(b)
    n = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(n), sb.zfill(n)))  # noqa: B905 (py3.8)


def _deep_tuple(x):
    return tuple(_deep_tuple(i) for i in x) if isinstance(x, list) else x


def mbpp_deserialize(task_id, inputs):
    """MBPP+ stores tuples, sets and complex numbers as JSON lists/strings: rebuild them."""
    n = int(str(task_id).split("/")[-1])
    if n in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616,
             630, 726, 740, 744, 809):
        return [[tuple(x) for x in inp] for inp in inputs]
    if n in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(x) for x in arg] for arg in inp] for inp in inputs]
    if n in (75, 413, 444, 753):
        return [[[tuple(x) for x in inp[0]], inp[1]] for inp in inputs]
    if n in (106, 750):
        return [[inp[0], tuple(inp[1])] for inp in inputs]
    if n == 115:
        return [[[set(i) if isinstance(i, list) and len(i) else {} for i in inp[0]]] for inp in inputs]
    if n == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if n in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0]), inp[1]] for inp in inputs]
    if n in (259, 401, 445):
        return [[tuple(tuple(x) for x in arg) for arg in inp] for inp in inputs]
    if n == 278:
        return [[tuple(tuple(i) if isinstance(i, list) else i for i in inp[0])] for inp in inputs]
    if n == 307:
        return [[tuple(inp[0]), inp[1], inp[2]] for inp in inputs]
    if n == 722:
        return [[{k: tuple(v) for k, v in inp[0].items()}, *inp[1:]] for inp in inputs]
    if n == 252:
        return [[complex(inp[0])] for inp in inputs]
    if n in (580, 615, 791):
        return [_deep_tuple(inp) for inp in inputs]
    return inputs


def is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def allclose(a, b, atol, rtol=1e-07):
    """numpy.allclose for numbers and (nested) sequences of equal shape; no numpy in the sandbox."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return all(allclose(x, y, atol, rtol) for x, y in zip(a, b))  # noqa: B905 (py3.8)
    a, b = complex(a), complex(b)
    if a == b:
        return True
    return abs(a - b) <= atol + rtol * abs(b)


def matches(dataset, entry_point, inp, out, exp, atol):
    """(passed, atol for the next input): EvalPlus keeps a promoted atol for later inputs."""
    exact = out == exp
    if dataset == "mbpp":
        if entry_point == "are_equivalent":
            exact = True
        elif entry_point == "sum_div":
            exact = exact or out == 0
        elif entry_point == "surface_Area":
            exact = exact or abs(out - _surface_area(*inp)) <= atol
        elif entry_point == "digit_distance_nums":
            exact = exact or out == _digit_distance(*inp)
        elif entry_point in OUTPUT_SET_EQ:
            exact = set(out) == set(exp)
        elif entry_point in OUTPUT_NOT_NONE:
            exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if dataset == "humaneval" and entry_point == "find_zero":
        # EvalPlus 0.3.1 had _poly(*out, inp) here, which rejects every answer; this is its fix.
        return abs(_poly(*inp, out)) <= atol, atol
    if atol == 0 and is_floats(exp):
        atol = 1e-6
    if not exact and atol != 0:
        if type(out) is not type(exp):
            return False, atol
        return allclose(out, exp, atol), atol
    return bool(exact), atol


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout()


@contextlib.contextmanager
def time_limit(seconds):
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def load(p):
    inputs = p["base_input"] + p["plus_input"]
    if p["dataset"] == "mbpp":
        inputs = mbpp_deserialize(p["task_id"], inputs)
    namespace = {"__name__": "__candidate__"}
    exec(compile(p["code"], "solution.py", "exec"), namespace)
    return namespace[p["entry_point"]], inputs


def groundtruth(p):
    fn, inputs = load(p)
    outputs, times = [], []
    for inp in inputs:
        t0 = time.perf_counter()
        out = fn(*copy.deepcopy(inp))
        times.append(time.perf_counter() - t0)
        outputs.append(out is not None if p["entry_point"] in OUTPUT_NOT_NONE else out)
    with open("result.pkl", "wb") as f:
        pickle.dump({"outputs": outputs, "times": times}, f)


def check(p):
    n_base = len(p["base_input"])
    ok = [False] * (n_base + len(p["plus_input"]))
    message = ""
    try:
        fn, inputs = load(p)
        atol = p["atol"]
        for i, inp in enumerate(inputs):
            try:
                with time_limit(p["time_limits"][i]):
                    out = fn(*inp)
                ok[i], atol = matches(p["dataset"], p["entry_point"], inp, out, p["expected"][i], atol)
                if not ok[i] and not message:
                    message = f"wrong output on {'base' if i < n_base else 'plus'} input {i}"
            except _Timeout:
                message = message or f"timed out on input {i} (limit {p['time_limits'][i]:.2f}s)"
            except BaseException as e:  # noqa: BLE001 - any exception is a failed test
                message = message or f"{type(e).__name__}: {e}"[:300] + f" on input {i}"
            if not ok[i] and p["fast_check"]:
                break
    except BaseException as e:  # noqa: BLE001 - the solution does not even load
        message = f"{type(e).__name__}: {e}"[:300]
    result = {"base": all(ok[:n_base]), "plus": all(ok[n_base:]) and all(ok[:n_base]), "message": message}
    with open("result.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    with open("payload.pkl", "rb") as f:
        payload = pickle.load(f)
    os.remove("payload.pkl")  # the expected outputs are not left lying around for the candidate
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        {"groundtruth": groundtruth, "check": check}[sys.argv[1]](payload)
