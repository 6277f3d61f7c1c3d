import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prep_testutil import module, write_files
from tokenizers import Tokenizer

from data_prep import pipeline
from data_prep.format import EOS, IndexedDataset, read_manifest, sha256_file, shard_prefixes
from data_prep.pipeline import PrepError, prepare

AWS = "AKIAIOSFODNN7EXAMPLE"
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----"


def build_corpus(root: Path, eval_data: Path, n: int = 16) -> Path:
    with gzip.open(eval_data / "HumanEval.jsonl.gz", "rt") as f:
        he = json.loads(f.readline())
    mbpp = json.loads((eval_data / "mbpp.jsonl").read_text().splitlines()[700])
    files = {f"pkg/mod_{i:02d}.py": module(i) for i in range(n)}
    files.update({
        "copy_of_mod_03.py": module(3),  # exact duplicate
        "mod_05_edited.py": module(5).replace("return", "return  ", 2) + "\nEXTRA = 1\n",  # near duplicate
        "humaneval_leak.py": "import math\n\n" + he["prompt"] + he["canonical_solution"],
        "mbpp_leak.py": "# solution\n" + mbpp["code"] + "\n",
        "secrets.py": module(40) + f'\nAWS_KEY_ID = "{AWS}"\nKEY = """\n{PEM}\n"""\n',
        "blob.py": b"\x00\x01\x02binary" * 10,
        "latin.py": "nom = 'café'  # a Latin-1 file\n".encode("latin-1") * 3,
        "broken.py": "def f(:\n    return 1\n" * 3,
        "empty.py": "\n",
    })
    return write_files(root, files)


def data_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and ".work" not in p.parts}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from prep_testutil import EVAL_DATA

    return build_corpus(tmp_path_factory.mktemp("corpus"), EVAL_DATA), EVAL_DATA


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    src, ev = corpus
    out = tmp_path_factory.mktemp("ref") / "data"
    manifest = prepare([str(src)], out, vocab_size=300, eval_data=ev, val_fraction=0.1, progress=False)
    return out, manifest


def test_manifest_counts_every_drop_duplicate_contamination_and_redaction(reference):
    out, manifest = reference
    assert read_manifest(out) == manifest
    c = manifest["counts"]
    assert c["read"] == 25
    assert c["dropped"] == {"binary": 1, "contaminated": 2, "non_utf8": 1, "syntax_error": 1, "too_small": 1}
    assert c["exact_duplicates"] == 1 and c["near_duplicates"] == 1
    assert c["redactions"]["AWS_ACCESS_KEY_ID"] == 1 and c["redactions"]["PRIVATE_KEY"] == 1
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == 17
    assert manifest["documents"]["val"] == 2


def test_shards_hold_documents_plus_eos_and_no_secrets(reference):
    out, manifest = reference
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos = tok.token_to_id(EOS)
    assert manifest["eos_id"] == eos == 0 and manifest["tokenizer_sha256"] == sha256_file(out / "tokenizer.json")
    texts, total = [], 0
    for split in ("train", "val"):
        for prefix, meta in zip(shard_prefixes(out, split), manifest["shards"][split], strict=True):
            assert meta["bin_sha256"] == sha256_file(prefix.with_suffix(".bin"))
            ds = IndexedDataset.open(prefix)
            assert len(ds) == meta["documents"]
            for i in range(len(ds)):
                doc = ds[i]
                assert doc[-1] == eos and eos not in doc[:-1]
                texts.append(tok.decode(doc[:-1].tolist(), skip_special_tokens=False))
            total += ds.num_tokens if split == "train" else 0
    assert total == manifest["unique_tokens"]
    joined = "\n".join(texts)
    assert AWS not in joined and "b3BlbnNzaC1rZXkt" not in joined and "<AWS_ACCESS_KEY_ID>" in joined
    assert module(7) in texts  # byte-level BPE round-trips a kept document exactly


def test_rerun_is_byte_identical_and_work_dir_removed(reference, corpus, tmp_path):
    out, _ = reference
    src, ev = corpus
    again = tmp_path / "again"
    prepare([str(src)], again, vocab_size=300, eval_data=ev, val_fraction=0.1, progress=False)
    assert data_files(again) == data_files(out)
    assert not (again / ".work").exists()


def test_interrupted_run_redoes_missing_ranks_and_ends_identical(reference, corpus, tmp_path, monkeypatch):
    out, _ = reference
    src, ev = corpus
    monkeypatch.setattr(pipeline, "UNIT_BYTES_PER_TASK", 4000)  # several clean/tokenize ranks
    d = tmp_path / "d"
    prepare([str(src)], d, vocab_size=300, eval_data=ev, val_fraction=0.1, progress=False, keep_work=True)
    work = d / ".work"
    n_ranks = len(json.loads((work / "partition.json").read_text()))
    assert n_ranks >= 3
    # What a kill leaves: no manifest, half the shards, rank 1 of clean and ranks 2.. of tokenize missing.
    (d / "manifest.json").unlink()
    (d / "train" / "00000.idx").unlink()
    (work / "logs" / "clean" / "completions" / "00001").unlink()
    (work / "clean" / "00001.jsonl").unlink()
    for r in range(2, n_ranks):
        (work / "logs" / "tokenize" / "completions" / f"{r:05d}").unlink()
        (work / "tok" / f"{r:05d}.npz").unlink()
    with pytest.raises(Exception, match="no manifest"):
        read_manifest(d)
    prepare([str(src)], d, vocab_size=300, eval_data=ev, val_fraction=0.1, progress=False)
    assert data_files(d) == data_files(out)


def test_unique_token_budget_cuts_whole_documents_deterministically(reference, corpus, tmp_path):
    _, full = reference
    src, ev = corpus
    budget = full["unique_tokens"] // 2
    runs = [prepare([str(src)], tmp_path / f"b{i}", vocab_size=300, eval_data=ev, val_fraction=0.1,
                    max_unique_tokens=budget, progress=False) for i in range(2)]
    assert runs[0] == runs[1]
    m = runs[0]
    assert budget * 0.8 <= m["unique_tokens"] <= budget
    assert m["documents"]["train"] < full["documents"]["train"] and m["counts"]["over_token_budget"] > 0
    assert m["documents"]["val"] == full["documents"]["val"]


def test_given_tokenizer_is_reused(reference, corpus, tmp_path):
    out, full = reference
    src, ev = corpus
    m = prepare([str(src)], tmp_path / "t", tokenizer=out / "tokenizer.json", eval_data=ev, val_fraction=0.1,
                progress=False)
    assert m["tokenizer_sha256"] == full["tokenizer_sha256"] and m["unique_tokens"] == full["unique_tokens"]


def test_empty_corpus_after_filtering_is_a_one_line_error(tmp_path, eval_data):
    write_files(tmp_path / "src", {"a.py": b"\x00" * 10, "b.py": "x=1\n"})
    with pytest.raises(PrepError, match="empty corpus after filtering: read 2 documents, dropped binary 1, too_small 1"):
        prepare([str(tmp_path / "src")], tmp_path / "out", eval_data=eval_data, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_refuses_to_write_into_a_foreign_non_empty_directory(tmp_path, corpus):
    src, ev = corpus
    (tmp_path / "mine" / "train").mkdir(parents=True)
    (tmp_path / "mine" / "train" / "precious.txt").write_text("keep me")
    with pytest.raises(PrepError, match="not empty and not a dcoder data dir"):
        prepare([str(src)], tmp_path / "mine", eval_data=ev, progress=False)
    assert (tmp_path / "mine" / "train" / "precious.txt").read_text() == "keep me"


def test_cli_reports_bad_input_as_one_line_with_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dcoder.cli", "prep", "--source", str(tmp_path / "missing"),
                        "--out", str(tmp_path / "o"), "--no-decontaminate"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"dcoder prep: error: source {tmp_path / 'missing'} does not exist"]
    r = subprocess.run([sys.executable, "-m", "dcoder.cli", "prep", "--source", "stdlib", "--out", str(tmp_path / "o"),
                        "--vocab-size", "10"], capture_output=True, text=True)
    assert r.returncode == 2 and "--vocab-size must be >= 262" in r.stderr and "Traceback" not in r.stderr


def test_two_workers_give_the_same_bytes_as_one(reference, corpus, tmp_path, monkeypatch):
    out, _ = reference
    src, ev = corpus
    monkeypatch.setattr(pipeline, "UNIT_BYTES_PER_TASK", 4000)
    prepare([str(src)], tmp_path / "w2", vocab_size=300, eval_data=ev, val_fraction=0.1, workers=2, progress=False)
    assert data_files(tmp_path / "w2") == data_files(out)


def test_small_shard_size_splits_the_same_documents_across_shards(reference, corpus, tmp_path, monkeypatch):
    out, full = reference
    src, ev = corpus
    monkeypatch.setattr(pipeline, "SHARD_TOKENS", full["unique_tokens"] // 4)
    m = prepare([str(src)], tmp_path / "s", vocab_size=300, eval_data=ev, val_fraction=0.1, progress=False)
    assert len(m["shards"]["train"]) > 2 and m["unique_tokens"] == full["unique_tokens"]

    def docs(d):
        return [ds[i].tolist() for p in shard_prefixes(d, "train") for ds in [IndexedDataset.open(p)] for i in range(len(ds))]

    assert docs(tmp_path / "s") == docs(out)


def test_a_niche_language_is_one_flag_away(tmp_path, eval_data):
    lua = "\n".join(f"local function f{i}(x)\n  return x * {i} + {i * 3}\nend\n" for i in range(12))
    write_files(tmp_path / "src", {"a.lua": lua, "b.lua": lua.replace("f", "g") + "\nprint(g1(2))\n",
                                   "c.py": module(1)})
    m = prepare([str(tmp_path / "src")], tmp_path / "out", extensions=(".lua",), vocab_size=300,
                eval_data=eval_data, val_fraction=0, progress=False)
    assert m["counts"]["read"] == 2 and m["documents"]["train"] == 2
    try:
        import tree_sitter_language_pack  # noqa: F401
    except ImportError:  # no Lua grammar installed: counted as unchecked, not dropped
        assert m["counts"]["notes"] == {"syntax_unchecked": 2}


def test_a_bad_tokenizer_file_fails_before_anything_is_written(tmp_path, corpus):
    src, ev = corpus
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "plain.json"))  # valid file, no special tokens
    (tmp_path / "garbage.json").write_text("{not json")
    for bad in ("plain.json", "garbage.json"):
        with pytest.raises(PrepError, match=f"--tokenizer .*{bad}"):
            prepare([str(src)], tmp_path / "out", tokenizer=tmp_path / bad, eval_data=ev, progress=False)
        assert not (tmp_path / "out").exists()
