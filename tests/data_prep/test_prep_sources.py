import json
import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prep_testutil import module, write_files

from data_prep.sources import SourceError, UnitReader, enumerate_units


def _read_all(units, max_bytes=1_000_000):
    r = UnitReader(max_bytes)
    try:
        return [(name, raw, skip) for u in units for _, name, raw, skip in r.read(u)]
    finally:
        r.close()


def test_directory_walk_selects_extensions_skips_hidden_and_survives_symlink_loops(tmp_path):
    write_files(tmp_path, {"a.py": module(1), "pkg/b.py": module(2), "notes.txt": "x", ".hidden/c.py": module(3),
                           "pkg/__pycache__/b.cpython-311.py": "junk"})
    os.symlink(tmp_path, tmp_path / "pkg" / "loop")  # directory loop: never followed
    os.symlink(tmp_path / "missing.py", tmp_path / "broken.py")  # dangling file link
    os.symlink("self.py", tmp_path / "self.py")  # a link to itself
    units = enumerate_units([str(tmp_path)])
    assert [u["name"] for u in units] == ["a.py", "broken.py", "self.py", "pkg/b.py"]  # walk order
    read = _read_all(units)
    assert [s for _, _, s in read] == [None, "unreadable", "unreadable", None]


def test_huge_files_are_skipped_unread(tmp_path):
    write_files(tmp_path, {"big.py": "x = 1\n" * 1000})
    assert _read_all(enumerate_units([str(tmp_path)]), max_bytes=100)[0][2] == "too_large"


def test_git_source_reads_files_tracked_at_head_only(tmp_path):
    write_files(tmp_path, {"tracked.py": module(1), "sub/also.py": module(2)})
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    write_files(tmp_path, {"untracked.py": module(3), "tracked.py": "# edited after commit\n"})
    units = enumerate_units([str(tmp_path)])
    assert [u["kind"] for u in units] == ["git", "git"]
    read = _read_all(units)
    assert [n for n, _, _ in read] == ["sub/also.py", "tracked.py"]
    assert read[1][1] == module(1).encode()  # HEAD's content, not the working tree's


def test_jsonl_and_parquet_rows_with_text_column(tmp_path):
    rows = [{"content": module(i)} for i in range(3)] + [{"content": 5}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    pq.write_table(pa.table({"code": [module(7), module(8)]}), tmp_path / "d.parquet")
    read = _read_all(enumerate_units([str(tmp_path / "d.jsonl"), str(tmp_path / "d.parquet")]))
    assert [s for _, _, s in read] == [None, None, None, "not_text", "bad_json", None, None]
    assert read[5][1] == module(7)
    with pytest.raises(SourceError, match="no column 'body'"):
        _read_all(enumerate_units([str(tmp_path / "d.parquet")], text_column="body"))


def test_hf_source_from_a_local_dataset_dir(tmp_path):
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"text": [module(i) for i in range(4)]}), tmp_path / "ds" / "train.parquet")
    units = enumerate_units([f"hf:{tmp_path / 'ds'}"])
    assert len(_read_all(units)) == 4


def test_missing_and_unsupported_sources_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        enumerate_units([str(tmp_path / "nope")])
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(SourceError, match="not a directory"):
        enumerate_units([str(tmp_path / "x.bin")])


def test_stdlib_excludes_tests_unless_asked():
    names = [u["name"] for u in enumerate_units(["stdlib"])]
    assert "json/__init__.py" in names
    assert not any(n.startswith(("test/", "site-packages/")) or "/tests/" in n for n in names)
