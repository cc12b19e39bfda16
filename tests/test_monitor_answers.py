"""A query counts as the answers it got: a batched completion's prompts times ``n`` (the gateway records it as
``choices``), so a distiller cannot hide its volume, or stay under the scan's minimum, by batching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distillguard.gateway.request_model import MAX_N
from distillguard.monitor.features import MAX_CHOICES, derive, records_to_table
from distillguard.monitor.scan import ScanOptions, analyse
from test_monitor_detect import T0, _population, accumulate_records, features_of, rec


def test_answers_are_read_from_choices_else_from_n_and_are_bounded():
    assert MAX_CHOICES == MAX_N  # the gateway's bound on prompts times n
    rows = [
        rec(1, T0, "a", "q1"),  # one answer
        rec(2, T0 + 1, "a", "q2", params={"n": 5}),  # a ledger written before records carried choices
        {**rec(3, T0 + 2, "a", "q3\nq4\nq5"), "endpoint": "/v1/completions", "choices": 3},
        {**rec(4, T0 + 3, "a", "q6"), "choices": 10**9},  # not ours to believe past the gateway's bound
        {**rec(5, T0 + 4, "a", "q7", params={"n": 8}), "decision": "refused"},  # refused: no answers
        # an "n" inside a string value is no parameter
        rec(6, T0 + 5, "a", "q8", params={"stop": ['"n":9,']}),
    ]
    b = derive(records_to_table(rows))
    assert b.answers.tolist() == [1, 5, 3, MAX_CHOICES, 1, 1]
    acc = accumulate_records(rows)
    assert acc.c["n"][0] == 1 + 5 + 3 + MAX_CHOICES + 1 + 1 and acc.c["requests"][0] == 6
    assert acc.c["admitted"][0] == 1 + 5 + 3 + MAX_CHOICES + 1


def test_rates_count_answers_and_novelty_counts_requests():
    # ten chat requests for n = 4 reasoning traces each, every prompt new
    rows = [
        rec(k + 1, T0 + 30 * k, "a", f"Explain step by step how topic {k} works.", params={"n": 4})
        for k in range(10)
    ]
    rows += [rec(11 + k, T0 + 400 + 30 * k, "a", f"What is {k}?") for k in range(10)]
    feats, _ = features_of(accumulate_records(rows), "a")
    assert feats["log_queries"] == pytest.approx(math.log10(50))
    assert feats["cot_rate"] == pytest.approx(40 / (50 + 20))  # 40 of the 50 answers are reasoning traces
    assert feats["novelty"] == pytest.approx(1.0, abs=0.05)  # twenty distinct prompts in twenty requests


def _batched(records, *, record_choices: bool):
    """``_population``'s harvester sending its 60 reasoning prompts as 10 batched completions of 6."""
    out = [r for r in records if r["account"] != "harvester"]
    mine = [r for r in records if r["account"] == "harvester"]
    for k in range(0, len(mine), 6):
        part = mine[k : k + 6]
        row = {
            **part[0],
            "endpoint": "/v1/completions",
            "prompt": "\n".join(r["prompt"] for r in part),
            "messages": None,
            "prompt_tokens": sum(r["prompt_tokens"] for r in part),
            "completion_tokens": sum(r["completion_tokens"] for r in part),
        }
        if record_choices:
            row["choices"] = len(part)
        out.append(row)
    out.sort(key=lambda r: r["ts"])
    return [{**r, "seq": k + 1} for k, r in enumerate(out)]


def test_a_harvester_that_batches_its_prompts_is_scored_and_flagged():
    opts = ScanOptions(sample_size=64, mmd_null=200)
    base = _population(seed=4)
    hidden = analyse(accumulate_records(_batched(base, record_choices=False)), options=opts)
    # without choices (a ledger written before the gateway recorded them) its 10 requests are 10 queries,
    # under the scan's minimum of 20: not scored
    assert hidden.accounts["harvester"].queries == 10 and not hidden.accounts["harvester"].scored
    seen = analyse(accumulate_records(_batched(base, record_choices=True)), options=opts)
    v = seen.accounts["harvester"]
    assert v.queries == 60 and v.scored and v.p_value < 1e-3
    assert any("cot_rate" in r for r in v.reasons)
    benign = np.array([x.p_value for a, x in seen.accounts.items() if a != "harvester"])
    assert benign.min() > 1e-3
