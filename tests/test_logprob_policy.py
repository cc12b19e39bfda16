"""The logprob policy: what reported logprobs reveal, per tier, through the official ``openai`` client.

The attack these defences answer is ``distillguard distill extract-logits`` (tests/test_distill_extract.py
shows it recovering the tiny teacher's hidden size exactly when logprobs are reported after the bias).
"""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace

import openai
import pytest

from distillguard.cli import main
from distillguard.errors import UserError
from distillguard.gateway.logprob_policy import REFUSED, LogprobPolicy
from distillguard.gateway.tiers import TierSettings, get_tier
from distillguard.lm.io import load_tokenizer
from gateway_server import start


def _sampling(logprobs=None, bias=()):
    return SimpleNamespace(logprobs=logprobs, asks_logprobs=logprobs is not None, logit_bias=bias)


def test_policy_caps_rounds_and_refuses():
    p = LogprobPolicy(max_top=5, decimals=2)
    assert p.refusal(_sampling(5), SimpleNamespace(top_logprobs=5)) is None
    r = p.refusal(_sampling(6), SimpleNamespace(top_logprobs=6))
    assert r.status == 400 and r.param == "top_logprobs" and "at most 5" in r.message
    assert p.report(-1.23456) == -1.23 and LogprobPolicy().report(-1.23456) == -1.23456
    assert REFUSED.refusal(_sampling(None, ((3, 5.0),)), None).status == 403
    assert REFUSED.refusal(_sampling(None), SimpleNamespace(top_logprobs=None)) is None
    for bad in (dict(max_top=21), dict(decimals=9), dict(daily_tokens=0)):
        with pytest.raises(UserError):
            LogprobPolicy(**bad)
    ts = TierSettings(logprobs=p)
    assert get_tier("normal").logprob_policy(ts) is p and get_tier("throttled").logprob_policy(ts) is p
    assert get_tier("restricted").logprob_policy(ts) is REFUSED
    assert get_tier("normal").describe(ts)["logprobs"]["reported"] == "before logit_bias"


@pytest.fixture(scope="module")
def gws(tiny_world, tmp_path_factory):
    """The defaults (reported before the bias), and a policy with a cap, rounding and a small budget."""
    plain = start(model=tiny_world.teacher, model_name="aster", watermark=False,
                  state_dir=tmp_path_factory.mktemp("gw-default"))  # fmt: skip
    strict = start(model=tiny_world.teacher, model_name="aster", watermark=False, max_top_logprobs=5,
                   logprob_decimals=2, logprob_daily_tokens=60,
                   state_dir=tmp_path_factory.mktemp("gw-strict"))  # fmt: skip
    yield SimpleNamespace(plain=plain, strict=strict)
    plain.stop()
    strict.stop()


def _client(gw) -> openai.OpenAI:
    key = gw.create_key("acct-" + uuid.uuid4().hex[:8])
    return openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)


def _first(client, **kw):
    r = client.chat.completions.create(
        model="aster", messages=[{"role": "user", "content": "What does os.path.join do?"}], max_tokens=1,
        temperature=0, logprobs=True, **kw,
    )  # fmt: skip
    return r.choices[0].logprobs.content[0]


def test_logit_bias_neither_surfaces_tokens_nor_shifts_reported_logprobs(gws, tiny_world):
    tok = load_tokenizer(tiny_world.tokenizer)[0]
    c = _client(gws.plain)
    natural = _first(c, top_logprobs=5)
    shown = {e.token for e in natural.top_logprobs}
    forced = next(i for i in range(50, 1000) if tok.decode([i]) not in shown and tok.decode([i]).strip())
    biased = _first(c, top_logprobs=5, logit_bias={str(forced): 100})
    # the bias still decides what is generated ...
    assert biased.token == tok.decode([forced])
    # ... but the alternatives and their values are those of the unbiased distribution
    assert [(e.token, round(e.logprob, 5)) for e in biased.top_logprobs] == [
        (e.token, round(e.logprob, 5)) for e in natural.top_logprobs
    ]
    assert biased.logprob < natural.top_logprobs[-1].logprob  # its own unbiased (low) logprob, not ~0


def test_cap_rounding_and_budget_of_a_strict_policy(gws):
    c = _client(gws.strict)
    with pytest.raises(openai.BadRequestError) as exc:
        _first(c, top_logprobs=6)
    assert exc.value.body["param"] == "top_logprobs" and "at most 5" in exc.value.body["message"]
    e = _first(c, top_logprobs=5)
    assert all(round(v, 2) == v for v in [e.logprob, *(t.logprob for t in e.top_logprobs)])
    # the budget counts the tokens of requests with logprobs (60 a day): a few pass, then 429
    passed = 1
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(20):
            _first(c, top_logprobs=1)
            passed += 1
    assert 1 < passed < 20 and "logprobs:" in exc.value.body["message"]
    # requests without logprobs are not counted against it
    r = c.chat.completions.create(model="aster", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert r.choices[0].message.content is not None


def test_extraction_fails_against_the_default_policy(gws, tiny_world, capsys):
    """The top-k attack that recovers the exact width when logprobs follow the bias gets no logit matrix
    when they are reported before it (a one-line error, non-zero exit)."""
    key = gws.plain.create_key("attacker-" + uuid.uuid4().hex[:6], rpm=1_000_000)
    with pytest.raises(SystemExit) as exc:
        main(["distill", "extract-logits", "--teacher", gws.plain.base_url + "/v1", "--api-key", key,
              "--tokenizer", str(tiny_world.tokenizer), "--prompts", str(tiny_world.prompts),
              "--prompts-used", "12", "--tokens", "40", "--json"])  # fmt: skip
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too few usable logprobs" in err[0]


def test_the_sampled_attack_reads_one_logit_per_request(gws, tiny_world, capsys):
    """The adaptive attack against the fix: each request forces one token and reads its unbiased logprob.
    Small here (the hidden size needs more rows than the tiny model's 96); it shows the cost model: one
    request per matrix entry."""
    key = gws.plain.create_key("attacker-" + uuid.uuid4().hex[:6], rpm=1_000_000)
    main(["distill", "extract-logits", "--teacher", gws.plain.base_url + "/v1", "--api-key", key,
          "--tokenizer", str(tiny_world.tokenizer), "--prompts", str(tiny_world.prompts), "--mode", "sampled",
          "--prompts-used", "6", "--tokens", "12", "--concurrency", "8", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["queries"] == 6 * 12 and report["failed"] == 0
    # a token whose generated piece does not map back to one id is dropped as a column, never guessed
    assert report["prompts"] == 6 and report["tokens"] >= 10


def test_rounding_to_the_default_decimals_hides_the_hidden_size_from_the_sampled_reading(tiny_world):
    """The sampled attack reads each logprob before the bias, exactly as the policy reports it: here the
    tiny teacher's real logprobs for 130 prompts x 115 tokens, exact (the width shows) and rounded by the
    default policy (it does not). bench/logprob_bench.py runs the attack itself through the gateway."""
    import numpy as np
    import torch

    from distillguard.distill.extract import hidden_size, singular_spectrum
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.lm.io import load_model_and_tokenizer
    from distillguard.text.prompts import load_pool

    model, tok = load_model_and_tokenizer(tiny_world.teacher)
    pool = load_pool(tiny_world.prompts)[:130]
    tokens = np.random.default_rng(0).choice(np.arange(10, len(tok)), 115, replace=False)
    rows = []
    with torch.inference_mode():
        for prompt in pool:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            rows.append(torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1))
    exact = torch.stack(rows).numpy()[:, tokens].astype(np.float64)
    policy = GatewaySettings().logprob_policy()
    assert policy.decimals == 2 and not policy.after_bias
    reported = np.vectorize(policy.report)(exact)
    true = model.config.hidden_size
    assert hidden_size(singular_spectrum(exact - exact[:, :1]))[0] == true
    assert hidden_size(singular_spectrum(reported - reported[:, :1]))[0] != true


def test_reported_logprobs_do_not_move_with_temperature_top_p_or_penalties(gws):
    """A low temperature would scale the rounding step down (0.01 -> 100x finer logits) and shrink the
    watermark's bias in the reported values; penalties would dither them. None of them moves what is shown."""
    c = _client(gws.plain)  # the defaults: before the bias, 2 decimals

    def shown(**kw):
        r = c.chat.completions.create(
            model="aster", messages=[{"role": "user", "content": "What does os.path.join do?"}], max_tokens=3,
            logprobs=True, top_logprobs=5, seed=3, **kw,
        )  # fmt: skip
        return [{e.token: e.logprob for e in t.top_logprobs} for t in r.choices[0].logprobs.content[:1]]

    base = shown(temperature=0)
    assert base and all(len(d) == 5 for d in base)
    for kw in (dict(temperature=0.01), dict(temperature=1.7), dict(temperature=0.01, top_p=0.05),
               dict(temperature=0, presence_penalty=2.0, frequency_penalty=-1.5)):  # fmt: skip
        assert shown(**kw) == base, kw
