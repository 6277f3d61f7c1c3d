import json

import numpy as np
import pytest
from evalutil import make_data_dir, make_model_dir, stdlib_texts

from dcoder.cli import main
from eval.memorization import TrainingIndex, benchmark_solutions, ngram_hashes, reproduced_solutions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


def test_ngram_hashes_follow_horners_rule():
    t = np.array([5, 1, 7, 3, 9], dtype=np.uint16)
    B = 1_000_003
    v = [int(x) for x in t]
    ref = [(v[i] * B**2 + v[i + 1] * B + v[i + 2]) % 2**64 for i in range(3)]
    assert ngram_hashes(t, 3).tolist() == [int(x) for x in ref]
    assert len(ngram_hashes(t, 6)) == 0


def test_training_windows_are_found_and_others_not(data):
    path, tok = data
    index = TrainingIndex(str(path), n=50)
    train_doc = stdlib_texts()[12]  # files from 10 on are the train split
    ids = tok.encode(train_doc).ids
    assert index.matched_windows(ids[100:160]) == 11
    assert index.matched_windows(np.random.default_rng(0).integers(6, 512, 200).tolist()) == 0
    # abc.py (validation) opens with the same licence header as other stdlib files: really found
    assert index.matched_windows(tok.encode(stdlib_texts()[0]).ids[:80]) > 0
    assert index.matched_windows(ids[100:130]) == 0  # shorter than the window


def test_benchmark_solutions_are_spotted_whatever_the_indentation(data_dir):
    sols = benchmark_solutions(data_dir)
    he0 = sols["HumanEval/0"]
    text = "# my code\n" + "\n".join("  " + line for line in he0) + "\nprint('done')\n"
    assert "HumanEval/0" in reproduced_solutions(text, sols)
    assert reproduced_solutions("def f():\n    return 1\n", sols) == []


def test_memorization_cli_on_a_tiny_model(data, data_dir, tmp_path, capsys):
    path, tok = data
    model = make_model_dir(tmp_path / "m", tok, "ar")
    samples = tmp_path / "s.jsonl"
    from eval.tasks import get_task

    p = get_task("humaneval", data_dir, 1).problems[0]
    samples.write_text(json.dumps({"task_id": p.task_id, "completion": p.reference}) + "\n")
    out = tmp_path / "audit.json"
    assert main(["eval-memorization", "--model", str(model), "--data-dir", str(path), "--prompts", "4",
                 "--prompt-tokens", "16", "--max-tokens", "12", "--min-tokens", "8", "--eval-data-dir", data_dir,
                 "--samples", str(samples), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == 4 and 0 <= result["memorized_share"] <= 1
    assert {"source": "given", "task_id": "HumanEval/0"} in result["benchmark_hits"]
