"""``distillguard monitor eval``: the evaluation document on a labelled synthetic ledger, and the exact
binomial bounds every rate in it carries."""

from __future__ import annotations

import json

import pytest
from scipy.stats import binom

from cli_run import run_cli
from distillguard.monitor.evaluate import rate_bounds
from distillguard.monitor.personas import BENIGN
from distillguard.monitor.synth import synthesize_ledger


@pytest.mark.parametrize(("k", "n"), [(0, 315), (0, 3150), (3, 1000), (85, 85), (40, 41), (1, 2)])
def test_rate_bounds_are_exact_clopper_pearson(k, n):
    lo, hi = rate_bounds(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    if k < n:  # at the upper bound, seeing k or fewer is exactly 5% likely
        assert binom.cdf(k, n, hi) == pytest.approx(0.05, abs=1e-9)
    if k > 0:  # at the lower bound, seeing k or more is exactly 5% likely
        assert binom.sf(k - 1, n, lo) == pytest.approx(0.05, abs=1e-9)
    with pytest.raises(ValueError):
        rate_bounds(n + 1, n)


def test_eval_cli_reports_rates_bounds_personas_and_a_roc_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    ledger = synthesize_ledger(tmp_path / "eval" / "ledger.db", scale="small", seed=1)
    ref = synthesize_ledger(tmp_path / "ref" / "ledger.db", scale="small", seed=2, personas=BENIGN)
    labels = json.loads((tmp_path / "eval" / "labels.json").read_text())
    argv = ["monitor", "eval", "--ledger", str(ledger), "--labels", str(tmp_path / "eval" / "labels.json"),
            "--reference-ledger", str(ref), "--out", str(tmp_path / "out")]  # fmt: skip
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    n_benign = sum(v["kind"] == "benign" for v in labels.values())
    assert doc["accounts"] == {"benign": n_benign, "attacker": len(labels) - n_benign}
    assert doc["calibration"] == "reference"
    for op in doc["operating_points"].values():
        fp, tp = op["benign_flagged"], round(op["attacker_tpr"] * doc["accounts"]["attacker"])
        assert op["benign_fpr_upper95"] == pytest.approx(rate_bounds(fp, n_benign)[1])
        assert op["attacker_tpr_lower95"] == pytest.approx(rate_bounds(tp, doc["accounts"]["attacker"])[0])
    assert {p for p, v in doc["personas"].items() if v["kind"] == "attacker"} >= {"sybil", "coverage", "cot"}
    assert set(doc["queries_to_detection"]["per_persona"]) <= {v["persona"] for v in labels.values()}
    assert (tmp_path / "out" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["auc"] == doc["auc"]

    code, out, err = run_cli(argv[:-2], capsys)  # the human summary states the bound next to the rate
    assert code == 0 and "at 95%" in out and "queries to detection" in out

    code, out, err = run_cli([*argv[:4], "--labels", str(tmp_path / "missing.json")], capsys)
    assert code == 2 and "cannot read labels" in err and len(err.strip().splitlines()) == 1
