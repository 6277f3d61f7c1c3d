"""Canonical solutions through the whole pipeline: fast on subsets, full runs marked slow."""

import pytest

from eval.data import EvalDataError
from eval.runner import score_samples, summarize
from eval.tasks import UnknownTaskError, get_task, parse_tasks


def _canonical(task):
    return [{"task_id": p.task_id, "completion": p.reference} for p in task.problems]


def _score_canonical(name, data_dir, limit=None, **opts):
    task = get_task(name, data_dir, limit, **opts)
    rows = score_samples(task, _canonical(task), workers=2)
    return summarize(name, rows), rows


@pytest.mark.parametrize("name,limit", [("humaneval", 12), ("mbpp", 12), ("infill-single", 6),
                                        ("infill-multi", 6), ("infill-span", 6), ("infill-span-light", 6),
                                        ("humaneval-plus", 6), ("mbpp-plus", 6)])
def test_canonical_solutions_pass_on_a_subset(name, limit, data_dir):
    summary, rows = _score_canonical(name, data_dir, limit, mini=True) if name == "humaneval-plus" \
        else _score_canonical(name, data_dir, limit)
    assert summary["problems"] == limit and summary["pass@1"] == 1.0, [r for r in rows if not r["passed"]][:2]


def test_wrong_completions_fail_with_a_message(data_dir):
    task = get_task("humaneval-plus", data_dir, 3, mini=True)
    rows = score_samples(task, [{"task_id": p.task_id, "completion": "    return None\n"} for p in task.problems]
                         + [{"task_id": "HumanEval/0", "completion": "    while True: pass\n"}], workers=2)
    assert [r["status"] for r in rows[:3]] == ["failed"] * 3 and all(r["message"] for r in rows)
    assert rows[3]["status"] == "timeout"
    s = summarize("humaneval-plus", rows)
    assert s["pass@1"] == 0.0 and s["samples"] == 4 and s["problems"] == 3


def test_mbpp_prompts_are_the_zero_shot_docstring_or_three_shot(data_dir):
    zero = get_task("mbpp", data_dir, 1).problems[0]
    assert zero.task_id == "Mbpp/11" and zero.prompt.startswith('"""\n') and "assert " in zero.prompt
    few = get_task("mbpp", data_dir, 1, shots=3)
    assert few.problems[0].prompt.count("[BEGIN]") == 4 and few.stop[0] == "[DONE]"
    assert len(get_task("mbpp", data_dir).problems) == 500


def test_data_location_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(EvalDataError, match="does not exist"):
        get_task("mbpp", str(tmp_path))
    monkeypatch.setenv("DCODER_EVAL_DATA", str(tmp_path))
    (tmp_path / "mbpp.jsonl").write_text("not json\n")
    with pytest.raises(EvalDataError, match="not JSON"):
        get_task("mbpp")
    with pytest.raises(UnknownTaskError):
        parse_tasks("humaneval,nope")


@pytest.mark.slow
@pytest.mark.parametrize("name,allowed_failures", [
    ("humaneval", set()),
    # SOURCES.md counts 499/500: Mbpp/367 fails there because its test_setup_code (which builds
    # trees from the solution's Node class) was not run after the code; we run code, setup, tests.
    ("mbpp", set()),
    ("infill-single", set()), ("infill-multi", set()), ("infill-span", set()),
    # EvalPlus 0.3.1's find_zero oracle called _poly(*out, inp), which fails every solution of
    # HumanEval/32 (its 0.994 ceiling); we use the fixed oracle abs(_poly(*inp, out)) <= atol.
    ("humaneval-plus", set()),
    # EvalPlus 0.3.1 ceiling 0.997: Mbpp/255 times out on plus input 89 (a large output) when the
    # machine is busy; on a quiet one it passes, so it is allowed, not required, to fail.
    ("mbpp-plus", {"Mbpp/255"}),
])
def test_full_canonical_runs_reach_the_ceilings(name, allowed_failures, data_dir):
    task = get_task(name, data_dir)
    rows = score_samples(task, _canonical(task), workers=2)
    failed = {r["task_id"] for r in rows if not r["passed"]}
    # Timing-based limits (the Plus tasks) can trip on a loaded machine: re-run those one at a time.
    retry = [r for r in rows if r["status"] == "timeout" and r["task_id"] not in allowed_failures]
    if retry:
        again = score_samples(task, [{"task_id": r["task_id"], "completion": r["completion"]} for r in retry],
                              workers=1)
        failed -= {r["task_id"] for r in again if r["passed"]}
    assert failed <= allowed_failures, failed - allowed_failures  # at or above the SOURCES.md ceilings


def test_offline_without_data_is_a_one_line_error(tmp_path, monkeypatch):
    from eval import data

    monkeypatch.delenv("DCODER_EVAL_DATA", raising=False)
    monkeypatch.setitem(data.URLS, "mbpp-plus", "http://127.0.0.1:9/MbppPlus.jsonl.gz")  # nothing listens
    with pytest.raises(EvalDataError, match="no local copy of mbpp-plus.*--data-dir"):
        get_task("mbpp-plus")


def test_mbpp_samples_may_use_integer_task_ids(data_dir):
    task = get_task("mbpp", data_dir, 2)
    rows = score_samples(task, [{"task_id": 11, "completion": task.problems[0].reference},
                                {"task_id": "Mbpp/12", "completion": "def f(): pass"}], workers=2)
    assert [(r["task_id"], r["passed"]) for r in rows] == [("Mbpp/11", True), ("Mbpp/12", False)]
