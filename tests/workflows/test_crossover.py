"""The crossover report's judgement on pair-run metrics whose outcome is known by construction."""

import json
import math

import pytest

from dcoder.crossover import CrossoverError, write_report


def _write_pair(root, ar_acc, dlm_acc, unique=1000, n=400):
    for obj, accs in (("ar", ar_acc), ("dlm", dlm_acc)):
        d = root / obj
        d.mkdir(parents=True)
        lines = []
        for e, acc in enumerate(accs, start=1):
            lines.append({"step": e * 10, "epoch": e, "tokens": e * unique, "unique_tokens": unique, "loss": 1.0})
            lines.append({"type": "val", "epoch": e, "tokens": e * unique, "val_loss": 3.0 / e})
            se = math.sqrt(acc * (1 - acc) / n)
            lines.append({"type": "eval", "epoch": e, "tokens": e * unique, "proxy/next_line_acc": acc,
                          "proxy/next_line_acc_stderr": se})
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def test_report_finds_the_epoch_after_which_the_dlm_stays_significantly_ahead(tmp_path):
    run = _write_pair(tmp_path / "pair", [0.40, 0.42, 0.42, 0.41, 0.40], [0.30, 0.41, 0.50, 0.55, 0.60])
    report = write_report([run]).read_text()
    assert "Crossover at epoch 3" in report
    assert (run / "proxy_next_line_acc_vs_epoch.png").stat().st_size > 0
    assert (run / "val_loss_vs_tokens.png").stat().st_size > 0


def test_a_lead_inside_the_confidence_interval_is_not_a_crossover(tmp_path):
    run = _write_pair(tmp_path / "pair", [0.40, 0.40, 0.40], [0.39, 0.41, 0.42], n=100)
    assert "No crossover occurred" in write_report([run]).read_text()


def test_multiplier_interpolates_the_ar_curve_across_budgets(tmp_path):
    small = _write_pair(tmp_path / "u1k", [0.30, 0.32], [0.35, 0.40], unique=1000)
    _write_pair(tmp_path / "u4k", [0.36, 0.44], [0.50, 0.52], unique=4000)
    report = write_report([small, tmp_path / "u4k"]).read_text()
    # AR best goes 0.32 → 0.44 from 1k to 4k; DLM best at 1k is 0.40 → 2/3 of the way in log space.
    assert f"≈ {4 ** (2 / 3):.2f}×" in report


def test_not_a_pair_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(CrossoverError, match="not a pair run dir"):
        write_report([tmp_path])
