import json

from dcoder.cli import main
from eval.report import compare_pair, markdown_table
from eval.tasks import get_task


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_eval_scores_a_samples_file(tmp_path, data_dir, capsys):
    task = get_task("humaneval", data_dir, 3)
    rows = [{"task_id": p.task_id, "completion": p.reference} for p in task.problems]
    rows += [{"task_id": p.task_id, "completion": "    pass\n"} for p in task.problems]
    _write(tmp_path / "s.jsonl", rows)
    out = tmp_path / "out"
    rc = main(["eval", "--samples", str(tmp_path / "s.jsonl"), "--tasks", "humaneval", "--limit", "3",
               "--data-dir", data_dir, "--out", str(out), "--k", "1,2"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())["humaneval"]
    assert summary["pass@1"] == 0.5 and summary["pass@2"] == 1.0 and summary["outcomes"]["passed"] == 3
    lines = (out / "samples_humaneval.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[3])["sample"] == 1
    assert "| humaneval | 3 | 6 | 0.5000 | 1.0000 |" in (out / "results.md").read_text()
    assert "humaneval" in capsys.readouterr().out


def test_eval_user_mistakes_are_one_line_exit_2(tmp_path, data_dir, capsys):
    _write(tmp_path / "s.jsonl", [{"task_id": "HumanEval/999", "completion": "x"}])
    assert main(["eval", "--samples", str(tmp_path / "s.jsonl"), "--tasks", "humaneval", "--data-dir", data_dir]) == 2
    assert main(["eval", "--samples", str(tmp_path / "s.jsonl"), "--tasks", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "HumanEval/999" in err[0] and "bogus" in err[1]


def test_pair_comparison_puts_ar_and_dlm_side_by_side(tmp_path):
    for side, acc in (("ar", 0.25), ("dlm", 0.5)):
        (tmp_path / side / "eval").mkdir(parents=True)
        (tmp_path / side / "eval" / "epoch_001.json").write_text(json.dumps({"epoch": 1, "proxy/next_line_acc": acc}))
    text = compare_pair(tmp_path)
    assert "| epoch 1 | proxy/next_line_acc | 0.2500 | 0.5000 | +0.2500 |" in text
    assert main(["eval-compare", str(tmp_path)]) == 0 and (tmp_path / "comparison.md").exists()
    assert "pass@1" in markdown_table({"t": {"problems": 1, "samples": 1, "pass@1": 1.0}})


def test_pair_comparison_includes_proxy_results(tmp_path):
    for side, acc in (("ar", 0.40), ("dlm", 0.45)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "proxy.json").write_text(json.dumps({"proxy/next_line_acc": acc, "proxy/next_line_n": 500}))
    text = compare_pair(tmp_path)
    assert "| final | proxy/next_line_acc | 0.4000 | 0.4500 | +0.0500 |" in text
