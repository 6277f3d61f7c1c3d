"""Corpus sources → a sorted list of read units, and reading a unit back into documents.

A source spec is one of:
  stdlib                 the running interpreter's standard library (`test`/`tests`/`idle_test`
                         packages and site-packages excluded unless include_tests)
  PATH (directory)       files under it with a selected extension; a directory with `.git` at
                         its root is read as a git repository (files tracked at HEAD)
  PATH.jsonl[.gz]        one document per line, text in a column (content/text/code by default)
  PATH.parquet           the same, a Parquet file
  PATH (file)            a single source file with a selected extension
  hf:NAME[:SPLIT]        a Hugging Face dataset through `datasets` (networked machines, or a
                         local dataset directory), split `train` by default

One JSONL/Parquet file is one read unit, so one task, held in memory by that task: split big dumps
into several files to parallelise them.

Not handled: HF dataset configs or `data_dir` (export such a dataset to Parquet/JSONL and pass
the files), per-row extension filtering of tabular sources (every row is a document), and
encodings other than UTF-8.

Units are plain dicts (JSON-able) so the executor can hand them to any worker. Directory walks
never follow symlinked directories (so symlink loops cannot recurse) and skip hidden entries and
`__pycache__`; symlinked files are read, and a broken or looping one is a counted skip.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

TEXT_COLUMNS = ("content", "text", "code")
_TEST_DIRS = {"test", "tests", "idle_test"}
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
HF_ROWS_PER_UNIT = 5000


class SourceError(ValueError):
    """A source that does not exist or cannot be read as a corpus."""

    user_error = True


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _walk(root: Path, extensions: tuple[str, ...], exclude_dirs: set[str]) -> Iterator[Path]:
    def onerror(e: OSError) -> None:
        raise SourceError(f"cannot read directory {e.filename}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in exclude_dirs)
        for f in sorted(filenames):
            if not f.startswith(".") and f.endswith(extensions):
                yield Path(dirpath) / f


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # broken or looping symlink: the reader counts it as unreadable
        return 0


def _file_units(root: Path, files: Iterator[Path], source: int) -> list[dict]:
    return [
        {"kind": "file", "source": source, "path": str(p), "name": str(p.relative_to(root)), "size": _size(p)}
        for p in files
    ]


def _git_units(repo: Path, extensions: tuple[str, ...], source: int) -> list[dict]:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-tree", "-r", "-z", "-l", "HEAD"],
            check=True, capture_output=True,
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        err = getattr(e, "stderr", b"") or b""
        raise SourceError(f"{repo}: cannot list git HEAD ({err.decode(errors='replace').strip() or e})") from None
    units = []
    for entry in out.split(b"\0"):
        if not entry:
            continue
        meta, name = entry.split(b"\t", 1)
        mode, typ, sha, size = meta.split()
        path = name.decode("utf-8", "surrogateescape")
        if typ != b"blob" or mode == b"120000" or not path.endswith(extensions):
            continue
        units.append({"kind": "git", "source": source, "repo": str(repo), "sha": sha.decode(), "name": path,
                      "size": int(size)})
    return sorted(units, key=lambda u: u["name"])


def enumerate_units(
    sources: list[str], extensions: tuple[str, ...] = (".py",), *, include_tests: bool = False,
    text_column: str | None = None,
) -> list[dict]:
    """All read units of `sources`, in a deterministic order (source order, then name)."""
    if not sources:
        raise SourceError("no --source given")
    extensions = tuple(extensions)
    units: list[dict] = []
    for i, spec in enumerate(sources):
        if spec == "stdlib":
            root = stdlib_dir()
            exclude = _SKIP_DIRS | (set() if include_tests else _TEST_DIRS)
            units += _file_units(root, _walk(root, extensions, exclude), i)
        elif spec.startswith("hf:"):
            units += _hf_units(spec, i, text_column)
        else:
            p = Path(spec).expanduser().absolute()
            if not p.exists():
                raise SourceError(f"source {spec} does not exist")
            if p.is_dir():
                if (p / ".git").exists():
                    units += _git_units(p, extensions, i)
                else:
                    units += _file_units(p, _walk(p, extensions, _SKIP_DIRS), i)
            elif p.name.endswith((".jsonl", ".jsonl.gz", ".json")):
                units.append({"kind": "jsonl", "source": i, "path": str(p), "name": p.name, "size": _size(p),
                              "column": text_column})
            elif p.name.endswith(".parquet"):
                units.append({"kind": "parquet", "source": i, "path": str(p), "name": p.name, "size": _size(p),
                              "column": text_column})
            elif p.name.endswith(extensions):
                units += _file_units(p.parent, iter([p]), i)
            else:
                raise SourceError(f"source {spec}: not a directory, .jsonl, .parquet or a {'/'.join(extensions)} file")
    return units


def _hf_load(name: str, split: str):
    try:
        import datasets

        return datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, bad split: one line for the user
        raise SourceError(f"cannot load Hugging Face dataset {name!r} split {split!r}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _hf_units(spec: str, source: int, text_column: str | None) -> list[dict]:
    body = spec[3:]
    name, _, split = body.rpartition(":") if body.count(":") >= 1 and not os.path.isdir(body) else (body, "", "")
    if not name:
        name, split = body, ""
    split = split or "train"
    ds = _hf_load(name, split)
    column = _pick_column(ds.column_names, text_column, spec)
    n = len(ds)
    return [
        {"kind": "hf", "source": source, "dataset": name, "split": split, "column": column,
         "start": s, "stop": min(n, s + HF_ROWS_PER_UNIT), "name": f"{name}:{split}", "size": 0}
        for s in range(0, n, HF_ROWS_PER_UNIT)
    ]


def _pick_column(columns: list[str], wanted: str | None, where: str) -> str:
    if wanted:
        if wanted not in columns:
            raise SourceError(f"{where}: no column {wanted!r} (has {', '.join(columns)})")
        return wanted
    for c in TEXT_COLUMNS:
        if c in columns:
            return c
    raise SourceError(f"{where}: no text column among {', '.join(columns)}; pass --text-column")


class UnitReader:
    """Reads units into (row, name, bytes | str | None, skip_reason | None) tuples.

    Files larger than `max_bytes` are not read (`too_large`); unreadable files are a counted
    `unreadable` skip. Keeps one `git cat-file --batch` process per repository open.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._git: dict[str, subprocess.Popen] = {}

    def close(self) -> None:
        for proc in self._git.values():
            proc.stdin.close()
            proc.wait()
        self._git.clear()

    def read(self, unit: dict) -> Iterator[tuple[int, str, bytes | str | None, str | None]]:
        kind = unit["kind"]
        if kind == "file":
            yield self._read_file(unit)
        elif kind == "git":
            yield self._read_blob(unit)
        elif kind == "jsonl":
            yield from self._read_jsonl(unit)
        elif kind == "parquet":
            yield from self._read_parquet(unit)
        elif kind == "hf":
            ds = _hf_load(unit["dataset"], unit["split"]).select(range(unit["start"], unit["stop"]))
            for j, text in enumerate(ds[unit["column"]]):
                yield unit["start"] + j, f"{unit['name']}#{unit['start'] + j}", text, None
        else:
            raise ValueError(f"unknown unit kind {kind}")

    def _read_file(self, unit: dict):
        path = Path(unit["path"])
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                return 0, unit["name"], None, "too_large"
            return 0, unit["name"], path.read_bytes(), None
        except OSError:
            return 0, unit["name"], None, "unreadable"

    def _read_blob(self, unit: dict):
        if unit["size"] > self.max_bytes:
            return 0, unit["name"], None, "too_large"
        proc = self._git.get(unit["repo"])
        if proc is None:
            proc = subprocess.Popen(["git", "-C", unit["repo"], "cat-file", "--batch"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._git[unit["repo"]] = proc
        proc.stdin.write(unit["sha"].encode() + b"\n")
        proc.stdin.flush()
        header = proc.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            return 0, unit["name"], None, "unreadable"
        data = proc.stdout.read(int(header[2]))
        proc.stdout.read(1)  # trailing newline
        return 0, unit["name"], data, None

    def _read_jsonl(self, unit: dict):
        opener = gzip.open if unit["path"].endswith(".gz") else open
        try:
            with opener(unit["path"], "rt", encoding="utf-8") as f:
                for j, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        yield j, f"{unit['name']}#{j}", None, "bad_json"
                        continue
                    if not isinstance(row, dict):
                        yield j, f"{unit['name']}#{j}", None, "bad_json"
                        continue
                    col = unit["column"] or next((c for c in TEXT_COLUMNS if c in row), None)
                    yield from self._one_row(unit, j, row.get(col) if col else None)
        except (OSError, UnicodeDecodeError, EOFError) as e:
            raise SourceError(f"{unit['path']}: cannot read ({type(e).__name__}: {e})") from None

    def _one_row(self, unit: dict, j: int, text) -> Iterator[tuple[int, str, str | None, str | None]]:
        name = f"{unit['name']}#{j}"
        if not isinstance(text, str):
            yield j, name, None, "not_text"
        elif len(text) > self.max_bytes:
            yield j, name, None, "too_large"
        else:
            yield j, name, text, None

    def _read_parquet(self, unit: dict):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(unit["path"])
            column = _pick_column(pf.schema_arrow.names, unit["column"], unit["path"])
            j = 0
            for batch in pf.iter_batches(columns=[column], batch_size=1024):
                for text in batch.column(0).to_pylist():
                    yield from self._one_row(unit, j, text)
                    j += 1
        except OSError as e:
            raise SourceError(f"{unit['path']}: cannot read Parquet ({e})") from None


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
