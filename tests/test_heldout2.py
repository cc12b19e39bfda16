"""The second held-out traffic generator (``distillguard.heldout2``): reproducible populations with complete
labels, plans the gateway accepts, and the small size driven through a real gateway and retimed."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cli_run import run_cli
from distillguard.gateway.protocol import sampling_of
from distillguard.gateway.request_model import DEFINITIONS, ChatCompletionRequest, CompletionRequest
from distillguard.heldout.drive import SIM_EPOCH
from distillguard.heldout.plan import DAY, labels, open_generator
from distillguard.heldout2 import GENERATOR, SIZES
from gateway_server import ADMIN_TOKEN, start

APIS = [
    f"{mod}.{fn}"
    for mod, fns in {
        "json": ("dumps", "loads", "load", "dump"),
        "os.path": ("join", "exists", "basename", "splitext", "isdir"),
        "re": ("compile", "search", "sub", "findall", "match", "split"),
        "collections": ("Counter", "defaultdict", "deque", "namedtuple", "OrderedDict"),
        "itertools": ("chain", "product", "groupby", "islice", "permutations"),
        "functools": ("lru_cache", "partial", "reduce", "wraps"),
        "shutil": ("rmtree", "copy", "move", "which"),
        "statistics": ("mean", "median", "stdev"),
        "hashlib": ("sha256", "md5"),
        "textwrap": ("dedent", "wrap", "fill"),
        "subprocess": ("run", "check_output"),
        "datetime": ("datetime", "timedelta", "date"),
    }.items()
    for fn in fns
]
HARD_NEGATIVES = {"eval_harness", "support_bot", "batch_summarizer", "classroom", "tool_agent"}
REQUIRED_ATTACKS = {"sybil_burst", "cot_harvest", "logprob_harvest", "evasive", "low_slow"}
LEAKY = re.compile(r"\b(attacker|distill\w*|sybil|campaign|persona|hydra)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def small():
    accounts = GENERATOR.build_population("small", 0)
    return accounts, GENERATOR.plan_traffic(accounts, "small", 0, APIS)


@pytest.fixture(scope="module")
def medium():
    accounts = GENERATOR.build_population("medium", 0)
    return accounts, GENERATOR.plan_traffic(accounts, "medium", 0, APIS)


def _digest(plan) -> list[tuple]:
    return [(q.t, q.account, q.ip, q.endpoint, json.dumps(q.body, sort_keys=True), q.followup) for q in plan]


def test_registered_with_the_sizes_asked_for() -> None:
    assert open_generator("heldout2") is GENERATOR
    assert set(SIZES) == {"small", "medium", "month"}
    assert (SIZES["small"]["days"], SIZES["medium"]["days"], SIZES["month"]["days"]) == (2, 5, 30)


def test_population_and_plan_are_reproducible_and_depend_on_the_seed(small) -> None:
    accounts, plan = small
    again = GENERATOR.build_population("small", 0)
    assert [a.to_dict() for a in again] == [a.to_dict() for a in accounts]
    assert _digest(GENERATOR.plan_traffic(again, "small", 0, APIS)) == _digest(plan)
    other = GENERATOR.build_population("small", 1)
    assert {a.name for a in other} != {a.name for a in accounts}
    assert _digest(GENERATOR.plan_traffic(other, "small", 1, APIS)) != _digest(plan)


@pytest.mark.parametrize("size", ["small", "medium"])
def test_labels_are_complete(size: str) -> None:
    accounts = GENERATOR.build_population(size, 3)
    names = [a.name for a in accounts]
    assert len(names) == len(set(names))
    entries = labels(accounts)
    assert set(entries) == set(names)
    for a in accounts:
        assert a.label in ("benign", "attacker")
        assert entries[a.name]["label"] == entries[a.name]["kind"] == a.label
        assert (a.campaign is not None) == (a.label == "attacker"), a.name
    benign = {a.kind for a in accounts if a.label == "benign"}
    assert benign >= HARD_NEGATIVES and len(benign - HARD_NEGATIVES) >= 3
    attacks = {a.kind for a in accounts if a.label == "attacker"}
    assert attacks >= REQUIRED_ATTACKS and len(attacks - REQUIRED_ATTACKS) >= 2
    # some benign service accounts belong to organisations, some do not
    services = [
        a for a in accounts if a.kind in ("support_bot", "batch_summarizer", "rag_app", "eval_harness")
    ]
    assert any(a.org for a in services) and (size == "small" or any(a.org is None for a in services))
    campaigns = Counter(a.campaign for a in accounts if a.campaign)
    if size == "medium":
        assert 300 <= len(accounts) <= 500 and len(campaigns) >= 8
        assert max(campaigns.values()) >= 20  # a hydra
    else:
        assert 20 <= len(accounts) <= 80 and len(campaigns) >= 5


def test_month_has_the_medium_accounts_over_30_days(medium) -> None:
    accounts, plan = medium
    month = GENERATOR.build_population("month", 0)
    key = [(a.name, a.kind, a.label, a.campaign, a.group, a.org, a.ips) for a in accounts]
    assert [(a.name, a.kind, a.label, a.campaign, a.group, a.org, a.ips) for a in month] == key
    month_plan = GENERATOR.plan_traffic(month, "month", 0, APIS)
    assert len(plan) <= 40_000 < len(month_plan) <= 150_000
    assert max(q.t for q in month_plan) > 29 * DAY and max(q.t for q in plan) < 5 * DAY
    days = Counter(int(q.t // DAY) for q in month_plan)
    assert len(days) == 30 and min(days.values()) > 0.2 * max(days.values())


def _check_plan(accounts, plan, days: int) -> None:
    by_name = {a.name: a for a in accounts}
    assert [q.t for q in plan] == sorted(q.t for q in plan)
    kinds = {a.kind for a in accounts} | {a.campaign for a in accounts if a.campaign}
    named = re.compile(r"\b(" + "|".join(re.escape(k) for k in sorted(kinds)) + r")\b")
    for q in plan:
        acct = by_name[q.account]
        assert max(0.0, acct.signup) <= q.t < days * DAY
        assert q.endpoint in ("chat", "completions")
        assert "model" not in q.body and "stream" not in q.body
        model = ChatCompletionRequest if q.endpoint == "chat" else CompletionRequest
        req = model.model_validate_json(json.dumps({**q.body, "model": "m"}))
        sampling_of(req)  # raises on what pydantic cannot express
        # the local model refuses definitions; the driver drops only ``tools`` and retries
        assert not set(q.body) & (set(DEFINITIONS) - {"tools"}), q.body
        assert q.body.get("max_tokens") is None or 1 <= q.body["max_tokens"] <= 1024
        if acct.ips and not acct.extra.get("vpn"):
            assert q.ip in acct.ips, (acct.name, acct.kind, q.ip)
        text = json.dumps(q.body)
        assert not LEAKY.search(text) and not named.search(text), text[:200]
    for a in accounts:
        assert not LEAKY.search(a.name) and not LEAKY.search(a.org or "")


def test_small_plan_is_valid_gateway_traffic(small) -> None:
    accounts, plan = small
    assert 300 <= len(plan) <= 1500
    assert {q.account for q in plan} == {a.name for a in accounts}  # nobody is silent for the whole period
    _check_plan(accounts, plan, 2)


def test_medium_plan_has_the_promised_shapes(medium) -> None:
    accounts, plan = medium
    assert {q.account for q in plan} == {a.name for a in accounts}
    _check_plan(accounts, plan[::5], 5)
    by_name = {a.name: a for a in accounts}
    per_kind: dict[str, list] = defaultdict(list)
    for q in plan:
        per_kind[by_name[q.account].kind].append(q)
    # evaluation harnesses score multiple choice with logprobs; calibration researchers too
    assert any(q.body.get("logprobs") for q in per_kind["eval_harness"])
    assert any(q.body.get("top_logprobs") for q in per_kind["logprob_researcher"])
    # agents send tool definitions and tool results
    assert all("tools" in q.body for q in per_kind["tool_agent"])
    assert any(m["role"] == "tool" for q in per_kind["tool_agent"] for m in q.body["messages"])
    # a support bot keeps one system prompt
    for a in (a for a in accounts if a.kind == "support_bot"):
        systems = {q.body["messages"][0]["content"] for q in plan if q.account == a.name}
        assert len(systems) == 1
    # a classroom: one school address, sign-ups within an hour, for at least one class inside the period
    classes = defaultdict(list)
    for a in accounts:
        if a.kind == "classroom":
            classes[a.group].append(a)
    assert len(classes) >= 2
    for members in classes.values():
        assert len({a.ips[0] for a in members}) == 1
        assert max(a.signup for a in members) - min(a.signup for a in members) < 3600
    assert any(0 <= members[0].signup < 5 * DAY for members in classes.values())
    # the hydra: a sign-up burst, no stable address, each request through a shared proxy pool
    hydra = [a for a in accounts if a.kind == "sybil_burst"]
    assert all(not a.ips for a in hydra)
    ips = Counter(q.ip for q in plan if by_name[q.account].kind == "sybil_burst")
    assert len(ips) < len(hydra) * 3
    # the slow campaign stays below a handful of requests per account and day
    slow = Counter(q.account for q in plan if by_name[q.account].kind == "low_slow")
    assert max(slow.values()) <= 15 * 5
    # attackers are a minority of accounts but a real share of the traffic
    attackers = {a.name for a in accounts if a.label == "attacker"}
    share = sum(q.account in attackers for q in plan) / len(plan)
    assert len(attackers) < len(accounts) / 2 and 0.2 < share < 0.7


def test_small_runs_through_a_gateway_and_retimes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pyarrow.parquet as pq

    gw = start(state_dir=tmp_path / "state", backend="stub", trusted_proxies=["127.0.0.1/32"])
    out = tmp_path / "run"
    try:
        code, stdout, err = run_cli(
            ["heldout", "generate", "--gateway", gw.base_url, "--admin-token", ADMIN_TOKEN, "--out", str(out),
             "--size", "small", "--seed", "0", "--duration", "0", "--generator", "heldout2", "--json"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        summary = json.loads(stdout)
        ledger = gw.ledger()
        records = list(ledger.iter_records())
        ledger.close()
        export = gw.ledger().export_parquet(tmp_path / "export")
    finally:
        gw.stop()

    population = json.loads((out / "population.json").read_text())
    accounts = {a["name"]: a for a in population["accounts"]}
    assert set(json.loads((out / "labels.json").read_text())) == set(accounts)
    schedule = [json.loads(line) for line in (out / "schedule.jsonl").read_text().splitlines()]
    assert summary["requests"] == len(schedule) and summary["generator"] == "heldout2"
    ok = sum(row["status"] == 200 for row in schedule)
    assert ok >= 0.95 * len(schedule), summary["statuses"]

    planned_ips: dict[str, set[str]] = defaultdict(set)
    for row in schedule:
        planned_ips[row["account"]].add(row["ip"])
    seen_ips: dict[str, set[str]] = defaultdict(set)
    orgs: dict[str, set] = defaultdict(set)
    for rec in records:
        if rec.get("endpoint", "").endswith("completions"):
            seen_ips[rec["account"]].add(rec["client_ip"])
            orgs[rec["account"]].add(rec.get("org"))
    assert set(seen_ips) == set(accounts)  # every labelled account is in the ledger
    for name, acct in accounts.items():
        assert seen_ips[name] == planned_ips[name], name  # from exactly the addresses it was given
        if acct["ips"] and not acct["extra"].get("vpn"):
            assert seen_ips[name] <= set(acct["ips"])
        assert orgs[name] == {acct["org"]}

    code, stdout, err = run_cli(
        ["heldout", "retime", "--parquet", str(export), "--schedule", str(out / "schedule.jsonl"), "--json"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["matched"] >= len(schedule)  # the refused first tries of the agents match too
    sim = pq.read_table(result["path"]).to_pydict()
    want = {row["request_id"]: row["ts"] for row in schedule if row["request_id"]}
    retimed = dict(zip(sim["request_id"], sim["ts"], strict=True))
    assert all(retimed[rid] == ts for rid, ts in want.items())
    assert min(sim["ts"]) >= SIM_EPOCH and max(sim["ts"]) < SIM_EPOCH + 2 * DAY
    signups = pq.read_table(Path(result["path"]).parent / "accounts.parquet").to_pydict()
    created = dict(zip(signups["account"], signups["key_created"], strict=True))
    assert all(created[n] == pytest.approx(SIM_EPOCH + a["signup"]) for n, a in accounts.items())
