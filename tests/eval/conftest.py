import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
DATA_DIR = Path(os.environ.get("DCODER_EVAL_DATA") or SHARED)


@pytest.fixture
def data_dir() -> str:
    if not (DATA_DIR / "HumanEval.jsonl.gz").exists():
        pytest.skip(f"evaluation data not found at {DATA_DIR}")
    return str(DATA_DIR)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Ground-truth caches go to a per-session dir, never the user's ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
