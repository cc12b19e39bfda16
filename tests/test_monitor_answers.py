"""A batched completion's prompts are counted (the gateway records its prompts times ``n`` as ``choices``)
in the scan's minimum and queries to detection: 19 requests of 128 prompts no longer stay unscored (ten
requests are still needed). Every feature, rate and test stays per request (one decision of the client's
each), and ``n`` answers to one prompt are one prompt."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from distillguard.gateway.request_model import MAX_N
from distillguard.monitor.features import MAX_CHOICES, derive, records_to_table
from distillguard.monitor.scan import ScanOptions, analyse
from test_monitor_detect import T0, _population, accumulate_records, features_of, rec


def _batch(seq, ts, account, prompts, **extra):
    return {**rec(seq, ts, account, "\n".join(prompts)), "endpoint": "/v1/completions", "messages": None,
            "choices": len(prompts), **extra}  # fmt: skip


def test_prompts_are_read_from_choices_over_n_and_are_bounded():
    assert MAX_CHOICES == MAX_N  # the gateway's bound on prompts times n
    rows = [
        rec(1, T0, "a", "q1"),  # one prompt
        {**rec(2, T0 + 1, "a", "q2", params={"n": 5}), "choices": 5},  # five answers to one prompt
        _batch(3, T0 + 2, "a", ["q3", "q4", "q5"]),
        {**_batch(4, T0 + 3, "a", ["q6", "q7"], params={"n": 2}), "choices": 4},  # two prompts, n = 2
        {**rec(5, T0 + 4, "a", "q8"), "choices": 10**9},  # not ours to believe past the gateway's bound
        {**_batch(6, T0 + 5, "a", ["q9", "q10"]), "decision": "refused"},  # refused: nothing asked
        {**_batch(7, T0 + 6, "a", ["q11", "q12"]), "status": 499},  # a stream closed early still got some
        # an "n" in a string is no parameter: nine prompts, not one
        {**rec(8, T0 + 7, "a", "q13", params={"stop": ['"n":9,']}), "choices": 9},
    ]
    b = derive(records_to_table(rows))
    assert b.prompts.tolist() == [1, 1, 3, 2, MAX_CHOICES, 1, 2, 9]
    acc = accumulate_records(rows)
    assert acc.c["prompts"][0] == 1 + 1 + 3 + 2 + MAX_CHOICES + 1 + 2 + 9 and acc.c["n"][0] == 8
    # an export written by another tool may space its JSON
    table = records_to_table(rows[3:4])
    spaced = table.set_column(
        table.schema.get_field_index("params"), "params", pa.array(['{"n": 2}'], pa.large_string())
    )
    assert derive(spaced).prompts.tolist() == [2]


def test_features_count_requests_whatever_their_prompts():
    # ten batched completions of 4 prompts, each batch asking for reasoning; ten single chat prompts with
    # n = 8 answers each, which add volume to nothing: one prompt each
    ask = "Explain step by step how topic {}.{} works."
    rows = [_batch(k + 1, T0 + 30 * k, "a", [ask.format(k, j) for j in range(4)]) for k in range(10)]
    rows += [
        {**rec(11 + k, T0 + 400 + 30 * k, "a", f"What is {k}?", params={"n": 8}), "choices": 8}
        for k in range(10)
    ]
    feats, _ = features_of(accumulate_records(rows), "a")
    assert feats["log_queries"] == pytest.approx(math.log10(20))
    active_hours = 2 / 6  # two 10-minute bins: seconds 0-599 and 600-670
    assert feats["log_rate"] == pytest.approx(math.log10(20 / active_hours))
    assert feats["cot_rate"] == pytest.approx(10 / (20 + 20))  # 10 of 20 requests, whatever their size
    assert feats["novelty"] == pytest.approx(1.0, abs=0.05)  # twenty distinct texts in twenty requests


def _batched(records, *, record_choices: bool, size: int = 6):
    """``_population``'s harvester sending its 60 reasoning prompts as batched completions of ``size``."""
    out = [r for r in records if r["account"] != "harvester"]
    mine = [r for r in records if r["account"] == "harvester"]
    for k in range(0, len(mine), size):
        part = mine[k : k + size]
        row = _batch(
            0, part[0]["ts"], "harvester", [r["prompt"] for r in part], client_ip=part[0]["client_ip"]
        )
        if not record_choices:
            del row["choices"]
        out.append(row)
    out.sort(key=lambda r: r["ts"])
    return [{**r, "seq": k + 1} for k, r in enumerate(out)]


def test_a_harvester_that_batches_its_prompts_is_scored_and_flagged():
    opts = ScanOptions(sample_size=64, mmd_null=200)
    base = _population(seed=4)
    hidden = analyse(accumulate_records(_batched(base, record_choices=False)), options=opts)
    # without choices (a ledger written before the gateway recorded them) its 10 requests are 10 queries,
    # under the scan's minimum of 20: not scored
    assert hidden.accounts["harvester"].prompts == 10 and not hidden.accounts["harvester"].scored
    seen = analyse(accumulate_records(_batched(base, record_choices=True)), options=opts)
    v = seen.accounts["harvester"]
    assert (v.queries, v.prompts) == (10, 60) and v.scored and v.p_value < 1e-3
    assert any("cot_rate" in r for r in v.reasons)
    benign = np.array([x.p_value for a, x in seen.accounts.items() if a != "harvester"])
    assert benign.min() > 1e-3
    # one request is one decision however many prompts it holds: 60 prompts in 3 requests are not scored
    few = analyse(accumulate_records(_batched(base, record_choices=True, size=20)), options=opts)
    assert few.accounts["harvester"].prompts == 60 and not few.accounts["harvester"].scored
    assert "fewer than 20 prompts or 10 requests (60 prompts in 3)" in few.accounts["harvester"].reasons[0]
