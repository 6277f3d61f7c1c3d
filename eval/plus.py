"""HumanEval+ / MBPP+ as EvalPlus scores them: the canonical solution's outputs on base_input +
plus_input are the oracle; a candidate passes when its outputs match on every input (atol where
the data gives one) within max(1 s, 4 x the canonical time) per input.

Ground truth runs in the sandbox too and is cached under the cache dir, keyed by the data file's
sha256 and the sandbox interpreter, as EvalPlus caches it.

Known differences from EvalPlus 0.3.1: HumanEval/32 uses the fixed oracle `abs(poly(xs, out)) <=
atol` (0.3.1's `_poly(*out, inp)` rejects every answer, hence its 0.994 ceiling for canonical
solutions; ours reach 1.0). Not handled: EvalPlus's `contract` input validation (it only
matters when generating new inputs).
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

from eval.data import cache_dir
from eval.sandbox import ExecResult, Limits, isolation, run_program

HARNESS = (Path(__file__).parent / "plus_harness.py").read_text()
MIN_TIME_LIMIT = 1.0  # EvalPlus --min-time-limit default
TIME_LIMIT_FACTOR = 4.0  # EvalPlus --gt-time-limit-factor default


class GroundTruthError(RuntimeError):
    pass


def _payload(record: dict, dataset: str, code: str, **extra) -> dict:
    return {"code": code, "entry_point": record["entry_point"], "dataset": dataset,
            "task_id": record["task_id"], "base_input": list(record["base_input"]),
            # list(): one MBPP+ v0.2.0 record (Mbpp/793) stores its empty plus_input as {}
            "plus_input": list(record["plus_input"]), **extra}


def groundtruth_job(record: dict, dataset: str) -> dict:
    """Arguments for `run_program` that compute the canonical outputs and their timings."""
    code = record["prompt"] + record["canonical_solution"]
    n = len(record["base_input"]) + len(list(record["plus_input"]))
    return dict(program=HARNESS, argv=["groundtruth"], collect=["result.pkl"],
                files={"payload.pkl": pickle.dumps(_payload(record, dataset, code))},
                limits=Limits(wall_s=60 + 0.5 * n, cpu_s=int(60 + 0.5 * n), file_bytes=1 << 30))


def parse_groundtruth(record: dict, result: ExecResult) -> dict:
    if result.status != "passed" or "result.pkl" not in result.files:
        raise GroundTruthError(f"{record['task_id']}: canonical solution failed ({result.status}: {result.message})")
    # Trusted: written by the dataset's canonical solution, never by a candidate.
    return pickle.loads(result.files["result.pkl"])


def check_job(record: dict, dataset: str, solution: str, truth: dict, fast_check: bool = True) -> dict:
    """Arguments for `run_program` that test `solution` (the full program text) on all inputs."""
    limits = [max(MIN_TIME_LIMIT, TIME_LIMIT_FACTOR * t) for t in truth["times"]]
    payload = _payload(record, dataset, solution, expected=truth["outputs"], time_limits=limits,
                       atol=record.get("atol") or 0, fast_check=fast_check)
    wall = sum(limits) + 5
    return dict(program=HARNESS, argv=["check"], collect=["result.json"],
                files={"payload.pkl": pickle.dumps(payload)},
                limits=Limits(wall_s=wall, cpu_s=int(wall) + 1))


def parse_check(result: ExecResult) -> tuple[str, str, dict]:
    """(status, message, details) of a check run; details has `base` and `plus` booleans."""
    try:
        info = json.loads(result.files["result.json"])
        base, plus, message = bool(info["base"]), bool(info["plus"]), str(info.get("message", ""))
    except (KeyError, ValueError, TypeError):  # no (valid) report: the process died or hung
        return (result.status if result.status != "passed" else "error",
                result.message or "no result from the test harness", {"base": False, "plus": False})
    status = "passed" if plus else ("timeout" if message.startswith("timed out") else "failed")
    return status, message, {"base": base, "plus": plus}


def load_groundtruth(records: list[dict], dataset: str, data_file: Path, workers: int | None = None) -> dict:
    """task_id → {outputs, times}, computed once per data file and interpreter, then cached."""
    from eval.sandbox import run_many_jobs

    key = hashlib.sha256(Path(data_file).read_bytes() + isolation().python.encode()).hexdigest()[:16]
    path = cache_dir() / f"groundtruth-{dataset}-{key}.pkl"
    cached: dict = {}
    if path.exists():
        try:
            cached = pickle.loads(path.read_bytes())
        except (pickle.UnpicklingError, EOFError):
            cached = {}
    missing = [r for r in records if r["task_id"] not in cached]
    if missing:
        results = run_many_jobs([groundtruth_job(r, dataset) for r in missing], workers=workers)
        for r, res in zip(missing, results, strict=True):
            cached[r["task_id"]] = parse_groundtruth(r, res)
        from data_prep.format import atomic_write_bytes

        atomic_write_bytes(path, pickle.dumps(cached))
    return {r["task_id"]: cached[r["task_id"]] for r in records}


__all__ = ["check_job", "groundtruth_job", "load_groundtruth", "parse_check", "run_program"]
