import gzip
import json

import pytest

from data_prep.decontam import BenchmarkDataError, ContaminationIndex, load_pieces


@pytest.fixture(scope="module")
def index_and_data():
    from prep_testutil import EVAL_DATA

    with gzip.open(EVAL_DATA / "HumanEval.jsonl.gz", "rt") as f:
        humaneval = [json.loads(line) for line in f]
    mbpp = [json.loads(line) for line in (EVAL_DATA / "mbpp.jsonl").read_text().splitlines()]
    return ContaminationIndex.build(load_pieces(EVAL_DATA)), humaneval, mbpp


def test_file_with_a_humaneval_prompt_is_contaminated(index_and_data):
    index, humaneval, _ = index_and_data
    doc = "import os\n\n" + humaneval[10]["prompt"] + "    pass\n\n\ndef other():\n    return 1\n"
    assert index.is_contaminated(doc)


def test_file_with_an_mbpp_solution_is_contaminated(index_and_data):
    index, _, mbpp = index_and_data
    doc = "# utilities\nimport sys\n\n" + mbpp[600]["code"] + "\n\nif __name__ == '__main__':\n    print(1)\n"
    assert index.is_contaminated(doc)


def test_reindented_canonical_solution_is_still_caught(index_and_data):
    index, humaneval, _ = index_and_data
    p = humaneval[3]
    full = p["prompt"] + p["canonical_solution"]
    reformatted = "\n".join("  " + line.replace("    ", "  ") for line in full.splitlines())
    assert index.is_contaminated("class Wrapper:\n" + reformatted)


def test_ordinary_code_is_not_contaminated(index_and_data):
    index, _, _ = index_and_data
    import inspect
    import json as json_module

    assert not index.is_contaminated(inspect.getsource(json_module))
    assert not index.is_contaminated("for i in range(len(arr)):\n    total += arr[i]\nreturn total\n")


def test_missing_benchmark_dir_is_a_user_error(tmp_path):
    with pytest.raises(BenchmarkDataError, match="does not exist"):
        load_pieces(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="lacks"):
        load_pieces(tmp_path / "empty")
