"""Sampling defences (countermeasures/): the math of anti-distillation sampling against autograd, the
identities at strength 0, determinism under a seed, and the restricted tier applying ADS through the gateway
with the official ``openai`` client while the normal tier is untouched."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import openai
import pytest
import torch

from distillguard.countermeasures.ads import AntiDistillation, standardise, task_gradient
from distillguard.countermeasures.defences import DefenceSpec, build_defence
from distillguard.errors import UserError
from distillguard.gateway.generation import GenerationRequest
from distillguard.gateway.local import LocalBackend
from distillguard.gateway.protocol import Sampling
from distillguard.gateway.tiers import TierSettings, get_tier
from distillguard.lm.tiny import make_tiny_llama
from gateway_server import start


def _tiny(seed=0):
    return make_tiny_llama(64, hidden=32, layers=2, heads=2, intermediate=64, max_pos=64, seed=seed,
                           bos_id=1, eos_id=2, pad_id=0).eval()  # fmt: skip


EXAMPLES = [([1, 5, 9, 12], [20, 21, 22, 2]), ([1, 7, 3], [30, 31, 2]), ([1, 40, 41, 42, 43], [8, 2])]


def test_ads_delta_is_the_directional_derivative_of_every_logprob():
    """Delta(v) = <g/|g|, grad log p(v|x)>: the finite difference matches autograd for every token."""
    model = _tiny()
    ads = AntiDistillation(DefenceSpec("ads", 1.0), proxy=model, examples=EXAMPLES, epsilon=1e-3)
    grads = task_gradient(model, EXAMPLES)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    ids = torch.tensor([[1, 5, 9, 11, 4]])
    attn = torch.ones_like(ids)
    pos = torch.arange(5)[None]
    session = ads.start(ids, attn, pos)
    base, moved = (torch.log_softmax(o.logits[:, -1].float(), -1) for o in session._outs)
    finite = ((moved - base) / ads.epsilon)[0]
    exact = []
    for v in (0, 3, 17, 40, 63):
        model.zero_grad()
        lp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[v]
        gv = torch.autograd.grad(lp, list(model.parameters()), allow_unused=True)
        exact.append(sum((a * b).sum() for a, b in zip(grads, gv, strict=True) if b is not None) / norm)
    got = finite[[0, 3, 17, 40, 63]]
    assert torch.allclose(got, torch.stack(exact).detach(), rtol=0.05, atol=2e-3)
    # the adjustment is lambda times the standardised row, and the row has unit spread
    d = session.delta()
    assert torch.allclose(d[0], standardise(finite[None])[0], atol=1e-4)
    assert abs(float(d.std()) - 1.0) < 1e-3
    scores = torch.randn(1, 64)
    assert torch.allclose(session.adjust(scores), scores + d)


def test_strength_zero_and_identities_leave_the_distribution_unchanged():
    model = _tiny()
    ids, attn, pos = torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None]
    assert (
        AntiDistillation(DefenceSpec("ads", 0.0), proxy=model, examples=EXAMPLES).start(ids, attn, pos)
        is None
    )
    assert build_defence(DefenceSpec()) is None
    top = build_defence(DefenceSpec("topk", 64)).start(ids, attn, pos)
    s = torch.randn(2, 64)
    assert torch.equal(top.adjust(s), s)
    kept = build_defence(DefenceSpec("topk", 5)).start(ids, attn, pos).adjust(s)
    assert (torch.isfinite(kept).sum(-1) == 5).all()
    floor = build_defence(DefenceSpec("temperature", 1.5))
    greedy = _sampling(temperature=0.0)
    assert floor.sampling(greedy).temperature == 1.5 and floor.sampling(_sampling(2.0)).temperature == 2.0
    # a tiny nucleus keeps only the top token, greedy at any temperature: the floor drops the client's top_p
    assert floor.sampling(replace(greedy, top_p=0.01)).top_p == 1.0
    assert floor.sampling(replace(_sampling(2.0), top_p=0.01)).top_p == 1.0
    assert build_defence(DefenceSpec("temperature", 0.0)).sampling(greedy) == greedy
    for bad in (("nope", 1.0), ("ads", -1.0), ("temperature", -0.5), ("temperature", 11), ("topk", 2.5)):
        with pytest.raises(UserError):
            DefenceSpec(*bad)
    with pytest.raises(UserError, match="proxy"):
        AntiDistillation(DefenceSpec("ads", 1.0), proxy=None, examples=EXAMPLES)


def _sampling(temperature=1.0, seed=7, n=1):
    return Sampling(
        n=n, max_tokens=24, default_max_tokens=None, temperature=temperature, top_p=1.0, stop=(), seed=seed,
        logprobs=None, logit_bias=(), presence_penalty=0.0, frequency_penalty=0.0, stream=False,
        include_usage=False, user=None,
    )  # fmt: skip


def _generate(backend, defence, sampling, prompts):
    async def go():
        await backend.startup()
        reqs = [backend.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
        gen = backend.start(GenerationRequest(reqs, sampling, 24, None, None, defence))
        texts = [""] * len(reqs) * sampling.n
        async for ev in gen:
            texts[ev.index] += ev.text
        await backend.aclose()
        return texts

    return asyncio.run(go())


@pytest.fixture(scope="module")
def backend(tiny_world):
    return LocalBackend(tiny_world.teacher, watermarked=False)


PROMPTS = ["What does os.path.join do?", "Explain json.dumps.", "What is itertools.chain used for?"]


def test_ads_in_the_sampler_is_seeded_and_zero_strength_is_the_plain_sampler(backend, tiny_world):
    from distillguard.gateway.settings import GatewaySettings

    opts = backend.defence_options(GatewaySettings())
    assert opts["proxy"].endswith("reference") and opts["data"].endswith("instructions.jsonl")
    zero = build_defence(DefenceSpec("ads", 0.0), opts)
    strong = build_defence(DefenceSpec("ads", 8.0), opts)
    plain = _generate(backend, None, _sampling(), PROMPTS)
    assert _generate(backend, zero, _sampling(), PROMPTS) == plain
    a = _generate(backend, strong, _sampling(), PROMPTS)
    assert a == _generate(backend, strong, _sampling(), PROMPTS)  # deterministic under the seed
    assert a != plain
    # greedy requests are steered too: the argmax of the adjusted scores
    g_plain = _generate(backend, None, _sampling(0.0), PROMPTS)
    assert _generate(backend, strong, _sampling(0.0), PROMPTS) != g_plain


def _answers_per_tier(gw, prompts, **params) -> dict[str, list[str]]:
    """Greedy answers to ``prompts`` from a fresh account on the normal and on the restricted tier."""
    answers = {}
    for tier in ("normal", "restricted"):
        account = f"{tier}-{uuid.uuid4().hex[:6]}"
        key = gw.create_key(account)
        if tier != "normal":
            gw.accounts.set_tier(account, tier, reason="test")
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)
        answers[tier] = [
            client.chat.completions.create(
                model="aster",
                messages=[{"role": "user", "content": p}],
                max_tokens=24,
                temperature=0,
                **params,
            )
            .choices[0]
            .message.content
            for p in prompts
        ]
    return answers


def test_restricted_tier_samples_with_ads_through_the_gateway(tmp_path, tiny_world):
    gw = start(model=tiny_world.teacher, model_name="aster", watermark=False, state_dir=tmp_path,
               restricted_defence="ads", restricted_defence_strength=8.0)  # fmt: skip
    try:
        answers = _answers_per_tier(gw, PROMPTS)
        plain = gw.create_key("plain-" + uuid.uuid4().hex[:6])
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=plain, max_retries=0)
        again = (
            client.chat.completions.create(
                model="aster",
                messages=[{"role": "user", "content": PROMPTS[0]}],
                max_tokens=24,
                temperature=0,
            )
            .choices[0]
            .message.content
        )
        assert again == answers["normal"][0]  # the normal tier is untouched (greedy is reproducible)
        assert answers["restricted"] != answers["normal"]
    finally:
        gw.stop()
    ts = TierSettings(restricted_defence=DefenceSpec("ads", 2.0))
    assert get_tier("restricted").describe(ts)["sampling_defence"] == {"name": "ads", "strength": 2.0}
    assert get_tier("normal").describe(ts)["sampling_defence"] == {"name": "none"}


def test_a_served_model_without_a_proxy_serves_and_says_ads_is_off(tmp_path, tiny_world, caplog):
    """Any HF directory serves: without a proxy student the restricted tier runs without ADS and the start-up
    log says so; a proxy that is given but unusable still fails at start with one line."""
    import logging
    import shutil

    alone = tmp_path / "model"
    shutil.copytree(tiny_world.teacher, alone)  # not inside a world: no reference model to default to
    with caplog.at_level(logging.WARNING, logger="distillguard.gateway"):
        gw = start(model=alone, model_name="aster", watermark=False, state_dir=tmp_path / "s")
    try:
        assert any("restricted serves without its ads defence" in r.getMessage() for r in caplog.records)
        key = gw.create_key("flagged")
        gw.accounts.set_tier("flagged", "restricted", reason="test")
        client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0)
        r = client.chat.completions.create(
            model="aster", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=4
        )
        assert r.choices[0].message.content is not None
    finally:
        gw.stop()
    with pytest.raises(UserError, match="ads_data not found"):
        start(model=alone, model_name="aster", watermark=False, state_dir=tmp_path / "s2",
              ads_proxy=str(tiny_world.reference), ads_data=str(tmp_path / "missing.jsonl"))  # fmt: skip
    gw = start(model=alone, model_name="aster", watermark=False, state_dir=tmp_path / "s3",
               restricted_defence="temperature", restricted_defence_strength=1.5)  # fmt: skip
    gw.stop()


def test_each_monitor_decision_names_the_policy_it_applies():
    from distillguard.monitor.decisions import Policy, decide

    policy = Policy.from_config({"restricted_defence": "ads", "restricted_defence_strength": 2.5})
    dec, state = decide("acct", 1e-9, "normal", None, policy, now=1000.0)
    assert dec.kind == "escalate" and dec.tier == "suspended"
    dec, _ = decide("acct", 1e-5, "normal", None, policy, now=1000.0)
    assert dec.tier == "restricted"
    assert dec.policy["sampling_defence"] == {"name": "ads", "strength": 2.5}
    assert dec.policy["logprobs"] == {"allowed": False}
    assert "sampling ads 2.5" in dec.reason_text()
    later, _ = decide("acct", 0.9, "restricted", state.__class__(tier="restricted", since=0.0), policy, 1e9)
    assert later.kind == "relax" and later.policy["sampling_defence"] == {"name": "none"}


def test_a_proxy_with_another_tokenizer_is_refused_at_build(tmp_path, backend, tiny_world):
    """Same vocabulary size, two ids swapped: the proxy would score other tokens than the ones served."""
    import json
    import shutil

    from distillguard.gateway.settings import GatewaySettings

    proxy = tmp_path / "proxy"
    shutil.copytree(tiny_world.reference, proxy)
    tok = json.loads((proxy / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (proxy / "tokenizer.json").write_text(json.dumps(tok))
    opts = {**backend.defence_options(GatewaySettings()), "proxy": str(proxy), "n_examples": 4}
    with pytest.raises(UserError, match=r"tokenizer differs.*\(2 tokens"):
        build_defence(DefenceSpec("ads", 1.0), opts)
    same = build_defence(DefenceSpec("ads", 1.0), {**opts, "proxy": str(tiny_world.reference)})
    assert same.examples == 4


def test_a_proxy_gateway_does_not_claim_what_only_local_sampling_does():
    """Proxy mode still refuses what a tier refuses, but cannot watermark, defend or round what an upstream
    samples: the policy shown says so instead of claiming it."""
    from distillguard.gateway.settings import GatewaySettings

    ts = TierSettings.from_settings(GatewaySettings(upstream_url="http://127.0.0.1:9/v1"))
    restricted = get_tier("restricted").policy(ts)
    assert restricted["sampling_defence"]["applied"] is False and restricted["watermark"] is None
    assert restricted["logprobs"] == {"allowed": False}  # a refusal the gateway itself enforces
    assert get_tier("normal").policy(ts)["logprobs"]["reported"] == "as the upstream API reports them"
    local = get_tier("restricted").policy(TierSettings.from_settings(GatewaySettings()))
    assert "applied" not in local["sampling_defence"]
    assert local["watermark"] == {"scheme": "gumbel", "context_width": 1, "hf_compat": False}
    assert get_tier("normal").policy(TierSettings.from_settings(GatewaySettings()))["watermark"] == {}
    kgw = TierSettings.from_settings(GatewaySettings(restricted_scheme="kgw", restricted_delta=8))
    assert get_tier("restricted").policy(kgw)["watermark"] == {"scheme": "kgw", "delta": 8}  # configured h
    wide = TierSettings.from_settings(GatewaySettings(restricted_scheme="kgw", restricted_context_width=2))
    assert get_tier("restricted").policy(wide)["watermark"]["context_width"] == 2
    unmarked = TierSettings.from_settings(GatewaySettings(watermark=False))
    assert get_tier("restricted").policy(unmarked)["watermark"] is None


def test_a_proxy_that_cannot_be_stepped_like_the_served_model_fails_at_start():
    class NoKeep(torch.nn.Module):  # an architecture whose forward takes no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, use_cache=False, **kw):
            if "logits_to_keep" in kw:
                raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=use_cache, **kw)  # fmt: skip

    with pytest.raises(UserError, match="cannot be stepped.*logits_to_keep"):
        AntiDistillation(DefenceSpec("ads", 1.0), proxy=NoKeep(_tiny()), examples=EXAMPLES)


RU_EXPLAIN = "\u041e\u0431\u044a\u044f\u0441\u043d\u0438"  # "explain", in Russian
# one phrasing per COT_PATTERN alternative family: (with the request, the same prompt without it)
COT_CASES = [
    ("What does os.path.join do? Think step by step.", "What does os.path.join do?"),
    ("What does os.path.join do? Think step  by\u00a0step.", "What does os.path.join do?"),  # any spacing
    ("What does zip return? Think st\u200bep by step.", "What does zip return?"),  # invisible characters
    ("What does zip return? Think step\nby step.", "What does zip return?"),  # a request over two lines
    ("What is zip?\nLet's think\r\nstep by step", "What is zip?"),
    ("## How I work\nStep by step, we migrate the database.", "## How I work\nWe migrate the database."),
    ("What does zip return? Let\u2019s think step by step.", "What does zip return?"),
    ("Let's think step by step. What does zip return?", "What does zip return?"),
    ("Explain json.dumps, step by step.", "Explain json.dumps."),
    ("Use chain-of-thought. What is itertools.chain?", "What is itertools.chain?"),
    ("What does os.path.join do? Show your work.", "What does os.path.join do?"),
    ("Walk me through your reasoning: why are dicts ordered?", "Why are dicts ordered?"),
    ("Think through this carefully before giving the final answer: what does zip return?",
     "What does zip return?"),
    ("Write out your full reasoning before the answer. What is a generator?", "What is a generator?"),
    ("Question: What does os.path.join do? Break it down into steps.\nAnswer:",
     "Question: What does os.path.join do?\nAnswer:"),
    ("Can you explain step by step how os.path.join works, with a small example?",
     "Can you explain how os.path.join works, with a small example?"),
    ("<|im_start|>system\nReason step by step in every answer.<|im_end|>\n<|im_start|>user\nWhat is zip?",
     "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nWhat is zip?"),
    ("Can you explain json.dumps with a worked example and your reasoning?",
     "Can you explain json.dumps with a worked example?"),
    ("I need a clear, complete explanation of zip, reasoning included.",
     "I need a clear, complete explanation of zip."),
    ("Teach me zip as if writing a textbook section, with careful reasoning.",
     "Teach me zip as if writing a textbook section."),
    ("Explain your reasoning: why are dicts ordered?", "Why are dicts ordered?"),
    ("What does zip do (reasoning included)?", "What does zip do?"),
    ("Share your full thought process. What is zip?", "What is zip?"),
    ("Think step by step, then put your final answer in <answer> tags.",
     "Put your final answer in <answer> tags."),
    ("Show every intermediate step of your thinking. What is zip?", "What is zip?"),
    ("What is zip? Show your thinking.", "What is zip?"),
    ("How does zip work? Reason it through carefully.", "How does zip work?"),
    # a text in another script keeps its letters: the model gets them as the client wrote them
    (f"{RU_EXPLAIN} zip. Think step by step.", f"{RU_EXPLAIN} zip."),
]  # fmt: skip


def test_cot_takes_the_reasoning_request_out_of_the_prompt_and_nothing_else():
    import pyarrow as pa
    import pyarrow.compute as pc

    from distillguard.monitor.features import COT_RE2, is_cot, normalise
    from distillguard.text import patterns

    # one pattern for the monitor and the defence, the monitor's the RE2 form of it
    assert patterns.tolerant(patterns.COT_PATTERN, patterns.RE2_SPACE) == COT_RE2
    # the monitor runs it in Arrow's RE2 kernels too: both engines agree on every case
    texts = [t for case in COT_CASES for t in case]
    arrow = pc.match_substring_regex(normalise(pa.array(texts)), COT_RE2, ignore_case=True).to_pylist()
    assert arrow == [is_cot(t) for t in texts]
    on, off = build_defence(DefenceSpec("cot", 1)), build_defence(DefenceSpec("cot", 0))
    for asked, plain in COT_CASES:
        assert is_cot(asked) and not is_cot(plain)
        assert on.prompt(asked) == plain, asked
        assert off.prompt(asked) == asked
        assert on.prompt(plain) == plain
    for untouched in (
        "What is a step function?",
        "Question: Explain json.dumps.\nAnswer:",
        # questions about reasoning, and reasoning inside text to work on, are not requests for a trace
        "What was the reasoning behind the design of zip?",
        "I don't understand your reasoning here, can you clarify?",
        "Is the reasoning included in the token count for o1?",
        "What is your thought process when choosing a data structure?",
        "Summarize: The court, with careful reasoning, rejected the appeal.",
        # an answer format beside a request stays, and so does what only sounds like one
        "Put your final answer in <answer> tags.",
        "Suggest tools to automate every step of your workflow.",
        "Reason through each option and then recommend the cheapest laptop.",
        "How do I strip the <think> tags from DeepSeek-R1 output?",
        "  x \n",
        "",
    ):
        assert on.prompt(untouched) == untouched and not is_cot(untouched)
    # a list whose line ends in "reason" or "reasoning" before "Step 2" is no request, here or in the monitor
    # (which reads whitespace of any kind as a space elsewhere); "reasoning steps" on one line is one
    steps = "Step 1: Find the reason\nStep 2: Fix it"
    assert on.prompt(steps) == steps and not is_cot(steps)
    for no in ("The reason step 2 fails is a typo.", "Step 1: Check the reasoning\nStep 2: Fix it",
               "Step 1: Check your reasoning\nStep 2: Fix it"):  # fmt: skip
        assert not is_cot(no)
    yes = ("List your reasoning steps.", "Show each reasoning step, then answer.", "Reason stepwise.",
           "Show me the reasoning steps", "Include intermediate reasoning steps",
           "Reason step-wise.")  # fmt: skip
    assert all(is_cot(t) for t in yes)
    # each request is taken out and the question kept (a word left beside it, "List your.", may stay)
    for t in yes:
        stripped = on.prompt(f"{t} What is 2+2?")
        assert not is_cot(stripped) and stripped.endswith("What is 2+2?")
    assert on.prompt("Show me the reasoning steps. What is 2+2?") == "What is 2+2?"
    assert on.key() != off.key() and on.describe() == {"name": "cot", "strength": 1}
    for bad in (0.5, 2, -1):
        with pytest.raises(UserError, match="cot defence takes 0"):
            DefenceSpec("cot", bad)


def test_cot_in_the_sampler_answers_as_if_no_reasoning_was_asked(backend):
    on, off = build_defence(DefenceSpec("cot", 1)), build_defence(DefenceSpec("cot", 0))
    asked = [p + " Think step by step." for p in PROMPTS]
    plain = _generate(backend, None, _sampling(), PROMPTS)
    as_asked = _generate(backend, None, _sampling(), asked)
    assert as_asked != plain  # the request changes what the undefended model says
    assert _generate(backend, off, _sampling(), asked) == as_asked  # strength 0: byte-identical
    assert _generate(backend, off, _sampling(), PROMPTS) == plain
    assert _generate(backend, on, _sampling(), asked) == plain
    assert _generate(backend, on, _sampling(), PROMPTS) == plain
    # a batch mixing rewritten and untouched prompts (unseeded requests share it) answers each as alone
    mixed = _generate(backend, on, _sampling(0.0, seed=None), [asked[0], PROMPTS[1], asked[2]])
    assert mixed == _generate(backend, None, _sampling(0.0, seed=None), PROMPTS)


def test_restricted_tier_with_cot_answers_without_the_reasoning_request(tmp_path, tiny_world):
    gw = start(model=tiny_world.teacher, model_name="aster", watermark=False, state_dir=tmp_path,
               restricted_defence="cot", restricted_defence_strength=1)  # fmt: skip
    question = PROMPTS[0]
    asked = question + " Let's think step by step."
    try:
        answers = _answers_per_tier(gw, (question, asked), seed=3)
        assert answers["restricted"][1] == answers["restricted"][0] == answers["normal"][0]
        assert answers["normal"][1] != answers["normal"][0]  # the normal tier reads the request as sent
        # the ledger keeps what the client sent: the monitor still sees the request for reasoning
        sent = [r["prompt"] for r in gw.ledger().iter_records() if r["account"].startswith("restricted-")]
        assert any("Let's think step by step." in p for p in sent)
    finally:
        gw.stop()
    ts = TierSettings(restricted_defence=DefenceSpec("cot", 1))
    assert get_tier("restricted").describe(ts)["sampling_defence"] == {"name": "cot", "strength": 1}
