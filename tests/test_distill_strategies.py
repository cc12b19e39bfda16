"""Prompt strategies: determinism, identity mixing, diversity of coverage, few intents behind paraphrases."""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

import numpy as np
import pytest

from distillguard.distill.strategies import (
    IDENTITY_PROBES,
    STRATEGIES,
    PromptStrategy,
    Query,
    make_strategy,
    query_id,
    sample_queries,
    take,
)
from distillguard.errors import UserError
from distillguard.text.prompts import load_pool
from distillguard.text.vectors import embed, farthest_first, mean_pairwise_distance

POOL = [
    "What does the Python API json.dumps do?",
    "What does the Python API json.loads do?",
    "Briefly describe collections.Counter.",
    "In Python, what does itertools.chain do?",
    "Please explain functools.lru_cache to me.",
    "What is os.path.join for?",
    "Can you explain what re.sub does?",
    "What does the Python API pathlib.Path.glob do?",
    "Who made you?",
    "What is your name?",
    "Briefly describe heapq.heappush.",
    "What is textwrap.dedent for?",
]


@pytest.fixture(scope="module")
def world_rows(tiny_world) -> list[dict]:
    return [json.loads(line) for line in tiny_world.prompts.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_deterministic_per_seed_and_seed_sensitive(name: str) -> None:
    a = sample_queries(name, POOL, 40, seed=7)
    b = sample_queries(name, POOL, 40, seed=7)
    c = sample_queries(name, POOL, 40, seed=8)
    assert a == b
    assert [q.prompt for q in a] != [q.prompt for q in c]
    assert len(a) == 40
    assert all(isinstance(q, Query) and q.strategy == name for q in a)
    assert len({q.id for q in a}) == 40, "ids are unique even when prompts repeat"
    assert isinstance(make_strategy(name, POOL), PromptStrategy)


def test_query_id_is_stable_sha256_over_strategy_prompt_index() -> None:
    assert query_id("uniform", "hi", 0) == query_id("uniform", "hi", 0)
    assert len({query_id("uniform", "hi", 0), query_id("uniform", "hi", 1), query_id("cot", "hi", 0)}) == 3
    # the same id in a fresh interpreter (no per-process hash salt)
    q = sample_queries("coverage", POOL, 3, seed=1)[2]
    import subprocess

    code = (
        "from distillguard.distill.strategies import sample_queries;"
        f"print(sample_queries('coverage', {POOL!r}, 3, seed=1)[2].id)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == q.id


@pytest.mark.parametrize(("n", "share"), [(100, 0.25), (40, 0.1), (7, 0.5), (10, 0.05), (3, 0.0), (9, 1.0)])
def test_identity_share_is_exact(n: int, share: float) -> None:
    qs = sample_queries("uniform", POOL, n, seed=3, identity_share=share)
    n_id = sum(q.strategy == "identity" for q in qs)
    assert len(qs) == n
    assert n_id == int(n * share + 0.5)
    assert all(q.prompt in IDENTITY_PROBES for q in qs if q.strategy == "identity")
    assert all(q.prompt in POOL for q in qs if q.strategy != "identity")
    assert len({q.id for q in qs}) == n


def test_identity_probes_are_mixed_in_not_appended() -> None:
    qs = sample_queries("cot", POOL, 60, seed=0, identity_share=0.2)
    positions = [i for i, q in enumerate(qs) if q.strategy == "identity"]
    assert len(positions) == 12
    assert positions != list(range(48, 60)) and positions != list(range(12))
    # the main stream keeps its order whatever the share
    plain = sample_queries("cot", POOL, 48, seed=0)
    assert [q for q in qs if q.strategy == "cot"] == plain


def test_uniform_passes_cover_the_pool_before_repeating() -> None:
    qs = take(make_strategy("uniform", POOL), len(POOL), random.Random(0))
    assert sorted(q.prompt for q in qs) == sorted(POOL)
    assert [q.meta["pool_index"] for q in qs] != list(range(len(POOL)))
    with_replacement = take(make_strategy("uniform", POOL, replace=True), 200, random.Random(0))
    counts = np.bincount([q.meta["pool_index"] for q in with_replacement], minlength=len(POOL))
    assert counts.min() >= 5 and counts.max() <= 35


def test_farthest_first_picks_the_farthest_point() -> None:
    pts = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    order = farthest_first(pts, 0)
    assert order[:2] == [0, 2]
    assert sorted(order) == [0, 1, 2, 3]
    assert farthest_first(pts, 0, k=2) == [0, 2]
    vec = embed(["json dumps", "json dumps", "heapq push"])
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0)
    assert vec[0] @ vec[1] == pytest.approx(1.0) and vec[0] @ vec[2] == pytest.approx(0.0)


def test_coverage_beats_uniform_on_the_world_pool(world_rows) -> None:
    pool = [r["prompt"] for r in world_rows]
    api = {r["prompt"]: r.get("api") or r["kind"] for r in world_rows}
    n = 40
    div = {"uniform": [], "coverage": []}
    apis = {"uniform": [], "coverage": []}
    for seed in range(5):
        for name in div:
            prompts = [q.prompt for q in sample_queries(name, pool, n, seed=seed)]
            div[name].append(mean_pairwise_distance(prompts))
            apis[name].append(len({api[p] for p in prompts}))
    # every coverage sample is more diverse than the best uniform one
    assert min(div["coverage"]) > max(div["uniform"])
    assert statistics.mean(apis["coverage"]) >= statistics.mean(apis["uniform"]) + 3
    # one pass of coverage visits every pool prompt exactly once
    once = sample_queries("coverage", pool, len(pool), seed=0)
    assert sorted(q.prompt for q in once) == sorted(pool)


def test_coverage_on_a_pool_larger_than_its_candidate_set() -> None:
    rng = random.Random(0)
    topics = [f"module{t}.function{t}" for t in range(50)]
    pool = [f"What does {rng.choice(topics)} do, case {i}?" for i in range(3000)]
    start = time.perf_counter()
    qs = sample_queries("coverage", pool, 60, seed=1, max_candidates=500)
    assert time.perf_counter() - start < 5
    assert qs == sample_queries("coverage", pool, 60, seed=1, max_candidates=500)
    assert len({q.prompt for q in qs}) == 60
    topics_hit = {q.prompt.split()[2] for q in qs[:50]}
    uniform_hit = {q.prompt.split()[2] for q in sample_queries("uniform", pool, 50, seed=1)}
    assert len(topics_hit) > len(uniform_hit)


def test_queries_are_hashable_values() -> None:
    qs = sample_queries("cot", POOL, 10, seed=0)
    assert len(set(qs)) == 10
    assert qs[0].to_dict() == {"id": qs[0].id, "prompt": qs[0].prompt, "strategy": "cot", "meta": qs[0].meta}


def test_paraphrase_many_queries_few_intents(world_rows) -> None:
    pool = [r["prompt"] for r in world_rows]
    qs = sample_queries("paraphrase", pool, 100, seed=2)
    intents = {q.meta["intent"] for q in qs}
    seeds_used = {q.meta["pool_index"] for q in qs}
    assert len(intents) == 5 and len(seeds_used) == 5
    assert len({q.prompt for q in qs}) == 100, "5 seeds x 24 templates give 120 distinct surface forms"
    for q in qs:
        assert pool[q.meta["pool_index"]].rstrip("?.!").split()[-1].lower() in q.prompt.lower()
    three = sample_queries("paraphrase", pool, 50, seed=2, seeds=3)
    assert len({q.meta["intent"] for q in three}) == 3
    given = sample_queries("paraphrase", pool, 30, seeds=["What is json.dumps for?"])
    assert all("json.dumps" in q.prompt for q in given)
    # paraphrases of few intents are far less diverse than the same number of uniform prompts
    assert mean_pairwise_distance([q.prompt for q in qs]) < mean_pairwise_distance(
        [q.prompt for q in sample_queries("uniform", pool, 100, seed=2)]
    )


def test_cot_wraps_pool_prompts_in_step_by_step_elicitation() -> None:
    qs = sample_queries("cot", POOL, 24, seed=1)
    for q in qs:
        assert POOL[q.meta["pool_index"]] in q.prompt
        assert any(w in q.prompt.lower() for w in ("step", "reasoning", "chain of thought"))
    assert len({q.meta["template"] for q in qs}) >= 5


def test_identity_strategy_needs_no_pool() -> None:
    qs = sample_queries("identity", [], 45, seed=0)
    assert len(IDENTITY_PROBES) >= 20
    assert {q.prompt for q in qs[:20]} == set(IDENTITY_PROBES)
    assert sum(q.strategy == "identity" for q in sample_queries("identity", [], 10, identity_share=0.5)) == 10


def test_errors_are_user_errors() -> None:
    with pytest.raises(
        UserError, match=r"unknown strategy 'bogus'.*uniform, coverage, paraphrase, cot, identity"
    ):
        make_strategy("bogus", POOL)
    with pytest.raises(UserError, match="non-empty prompt pool"):
        sample_queries("uniform", [], 3)
    with pytest.raises(UserError, match="no option"):
        make_strategy("cot", POOL, seeds=3)
    with pytest.raises(UserError, match="identity share"):
        sample_queries("uniform", POOL, 3, identity_share=1.5)
    with pytest.raises(UserError, match="at least 1 seed"):
        make_strategy("paraphrase", POOL, seeds=0)


def test_load_pool_formats(tmp_path, tiny_world) -> None:
    world = load_pool(tiny_world.prompts)
    assert len(world) == len(tiny_world.prompts.read_text().splitlines())
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a?"}\n\n{"text": "b?"}\n{"question": "c?", "x": 1}\n')
    assert load_pool(jsonl) == ["a?", "b?", "c?"]
    txt = tmp_path / "p.txt"
    txt.write_text("first question\n\n  second question  \n")
    assert load_pool(txt) == ["first question", "second question"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"other": 1}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        load_pool(bad)
    with pytest.raises(UserError, match="not found"):
        load_pool(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no prompts"):
        load_pool(empty)
