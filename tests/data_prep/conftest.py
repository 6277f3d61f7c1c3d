import os
from pathlib import Path

import pytest

EVAL_DATA = Path(os.environ.get("DCODER_EVAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture
def eval_data() -> Path:
    if not (EVAL_DATA / "mbpp.jsonl").exists():
        pytest.skip(f"benchmark files not found at {EVAL_DATA} (set DCODER_EVAL_DATA)")
    return EVAL_DATA


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
