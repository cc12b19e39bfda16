"""Logit extraction (red team): the spectrum math on known matrices, then the attack on a real gateway."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distillguard.cli import main
from distillguard.distill import extract as ex
from distillguard.errors import UserError


def test_query_plan_puts_the_reference_in_every_group():
    plan = ex.query_plan(list(range(10)), 3, 4)
    assert all(g[0] == 3 and len(g) <= 4 for g in plan)
    assert sorted(t for g in plan for t in g[1:]) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    with pytest.raises(UserError):
        ex.query_plan([1, 2], 1, 1)
    assert ex.relative_logits({1: -2.0, 2: -3.5, 3: -1.0}, 1) == {2: -1.5, 3: 1.0}
    assert ex.relative_logits({2: -3.5}, 1) == {}
    # a token the request did not bias (room left in top_logprobs by a short group) is not read
    assert ex.relative_logits({1: -2.0, 2: -3.5, 3: -101.0}, 1, [1, 2]) == {2: -1.5}


@pytest.mark.parametrize("hidden", [8, 24, 61])
def test_hidden_size_and_projection_are_recovered_from_relative_logits(hidden):
    rng = np.random.default_rng(hidden)
    w = rng.normal(size=(300, hidden))  # projection rows of 300 tokens
    g = rng.normal(size=(hidden + 40, hidden))  # final states of the prompts
    ref = 0
    m = g @ (w - w[ref]).T + rng.normal(scale=1e-6, size=(hidden + 40, 300))  # float noise of an API
    spec = ex.singular_spectrum(m)
    h, ratio = ex.hidden_size(spec)
    assert h == hidden and ratio > 1e3
    assert ex.subspace_error(m, w - w[ref], h) < 1e-4
    assert ex.subspace_error(m, rng.normal(size=(300, hidden)), h) > 0.5  # a wrong projection is told apart


def _undefended_gateway(tiny_world, tmp_path):
    """The tiny teacher, no watermark, exact logprobs after logit_bias: what the attack reads best."""
    import gateway_server

    return gateway_server.start(
        model=str(tiny_world.teacher),
        state_dir=tmp_path / "gw",
        watermark=False,
        logprobs_after_bias=True,
        logprob_decimals=None,
    )


def test_the_attack_recovers_the_teachers_hidden_size_through_our_gateway(tiny_world, tmp_path, capsys):
    """Undefended setting (no watermark, exact logprobs after logit_bias): the exact width and projection."""

    with _undefended_gateway(tiny_world, tmp_path) as gw:
        key = gw.create_key("attacker", rpm=1_000_000)
        main(["distill", "extract-logits", "--teacher", gw.base_url + "/v1", "--api-key", key,
              "--tokenizer", str(tiny_world.tokenizer), "--prompts", str(tiny_world.prompts),
              "--prompts-used", "110", "--tokens", "115", "--local-model", str(tiny_world.teacher),
              "--concurrency", "16", "--json"])  # fmt: skip
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["true_hidden_size"] == 96 and report["hidden_size"] == 96 and report["exact"]
    assert report["subspace_error"] < 1e-2 and report["drop_ratio"] > 100
    assert report["queries"] == 110 * 6 and report["failed"] == 0  # 114 tokens, 19 per request
    assert report["prompt_tokens"] > 0 and report["completion_tokens"] == report["queries"]


def test_rows_read_through_the_gateway_are_the_exact_relative_logits(tiny_world, tmp_path):
    """A short last group (1 token + the reference, top 20) lets the model's own top tokens surface unbiased
    in top_logprobs; biased earlier in the row, their entries must keep the biased reading (was: overwritten
    by the unbiased one, 100 off, which hid the default teacher's hidden size)."""
    import asyncio

    import torch

    from distillguard.gateway.local import LocalBackend
    from distillguard.text.prompts import load_pool

    local = LocalBackend(tiny_world.teacher, watermarked=False)
    table, clash = ex._token_map(local.tokenizer)
    readable = [t for b, t in table.items() if t not in clash and table.get(local.piece(t).encode()) == t]
    prompts = load_pool(tiny_world.prompts)[:3]
    with torch.inference_mode():
        logits = np.stack([
            local.model(input_ids=torch.tensor([local.chat_prompt([{"role": "user", "content": p}]).ids]))
            .logits[0, -1].double().numpy()
            for p in prompts
        ])  # fmt: skip
    by_rank = sorted(readable, key=lambda t: -logits[0, t])
    reference, tokens = by_rank[100], [by_rank[100], *by_rank[:19], by_rank[200]]  # groups of 20, then 2
    with _undefended_gateway(tiny_world, tmp_path) as gw:
        key = gw.create_key("attacker", rpm=1_000_000)
        rows, stats = asyncio.run(
            ex._run(gw.base_url + "/v1", key, None, prompts, tokens, reference, 20, table, None, 4)
        )
    assert stats["queries"] == 3 * 2 and stats["missing"] == 0
    exact = logits[:, tokens] - logits[:, [reference]]
    assert np.abs(rows - exact).max() < 1e-3


def test_bad_targets_are_one_line_errors(tiny_world, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["distill", "extract-logits", "--teacher", str(tiny_world.teacher),
              "--tokenizer", str(tiny_world.tokenizer), "--prompts", str(tiny_world.prompts)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "http(s) URL" in err[0]
