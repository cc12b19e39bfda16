"""Closed-mode probes drawn from a real ledger export: what the suspect's accounts asked.

The export is written by the gateway's own ledger (``Ledger.export_parquet``), with several accounts,
refused requests, duplicates, multi-turn chats, completions, an empty turn and a redacted prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_run import run_cli
from distillguard.audit.probes import ledger_probes, probe_text
from distillguard.audit.report import render_html
from distillguard.errors import UserError
from distillguard.gateway.ledger import Ledger
from distillguard.gateway.request_model import render_chat

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CAMPAIGN = [f"Explain topic {i} step by step." for i in range(30)]
OTHER = [f"What is the capital of country {i}?" for i in range(5)]


def _chat(account: str, messages: list[dict], decision: str = "admitted", ts: float = 0.0) -> dict:
    return {
        "ts": ts, "account": account, "decision": decision, "endpoint": "/v1/chat/completions",
        "messages": messages, "prompt": render_chat(messages, None), "completion": "an answer",
    }  # fmt: skip


def _completion(account: str, prompt: str, decision: str = "admitted") -> dict:
    return {"ts": 0.0, "account": account, "decision": decision, "endpoint": "/v1/completions",
            "prompt": prompt, "completion": "an answer"}  # fmt: skip


def _records() -> list[dict]:
    recs: list[dict] = []
    for i, q in enumerate(CAMPAIGN):
        account = f"camp-{i % 2 + 1}"
        recs.append(_chat(account, [SYSTEM, {"role": "user", "content": q}], ts=float(i)))
        if i % 3 == 0:  # asked again, by the other campaign account: one probe
            recs.append(_chat(f"camp-{2 - i % 2}", [{"role": "user", "content": q}], ts=float(i)))
    # a multi-turn chat: only the last user turn is a probe
    recs.append(_chat("camp-1", [{"role": "user", "content": "first turn"},
                                 {"role": "assistant", "content": "ok"},
                                 {"role": "user", "content": "Summarise the thread."}]))  # fmt: skip
    recs.append(_completion("camp-2", "Continue the story: once upon a time"))
    recs.append(_chat("camp-1", [{"role": "user", "content": "   "}]))  # empty: dropped
    recs.append(_completion("camp-2", "sha256:" + "ab" * 32))  # redacted: dropped
    recs.append(_chat("camp-1", [{"role": "user", "content": "REFUSED camp prompt"}], decision="refused"))
    for q in OTHER:
        recs.append(_chat("benign", [{"role": "user", "content": q}]))
    recs.append(_chat("refused-only", [{"role": "user", "content": "REFUSED only"}], decision="refused"))
    recs.append({"ts": 0.0, "decision": "refused"})  # no account at all (refused before auth)
    return recs


CAMP_PROBES = set(CAMPAIGN) | {"Summarise the thread.", "Continue the story: once upon a time"}


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ledger")
    lg = Ledger(root / "ledger.db")
    for rec in _records():
        lg.append(rec)
    out = root / "export"
    lg.export_parquet(out)
    lg.close()
    return out


def test_selection_is_the_chosen_accounts_admitted_distinct_last_user_turns(export: Path) -> None:
    got = ledger_probes(export, ["camp-1", "camp-2"], seed=3)
    assert len(got.prompts) == len(set(got.prompts)) == got.available == len(CAMP_PROBES)
    assert set(got.prompts) == CAMP_PROBES
    # admitted requests of the two accounts: 30 + 10 repeats + multi-turn + completion + empty + redacted
    assert got.admitted == 30 + 10 + 4
    assert got.path == export / "ledger.parquet" and got.accounts == ["camp-1", "camp-2"]
    one = ledger_probes(export / "ledger.parquet", ["camp-2"], seed=3)  # the file itself works too
    assert (
        "Summarise the thread." not in one.prompts and "Continue the story: once upon a time" in one.prompts
    )
    assert set(one.prompts) < CAMP_PROBES
    everyone = ledger_probes(export, None)
    assert set(everyone.prompts) == CAMP_PROBES | set(OTHER) and everyone.accounts is None
    assert not any("REFUSED" in p for p in everyone.prompts)
    src = got.source()
    ledger = str(export / "ledger.parquet")
    assert src == {"source": "ledger", "ledger": ledger, "accounts": ["camp-1", "camp-2"],
                   "admitted_requests": 44, "available": len(CAMP_PROBES), "sampled": len(CAMP_PROBES),
                   "seed": 3}  # fmt: skip


def test_sampling_is_seeded_and_bounded_by_the_budget(export: Path) -> None:
    a = ledger_probes(export, ["camp-1", "camp-2"], limit=10, seed=7)
    b = ledger_probes(export, ["camp-2", "camp-1"], limit=10, seed=7)  # account order does not matter
    c = ledger_probes(export, ["camp-1", "camp-2"], limit=10, seed=8)
    assert a.prompts == b.prompts and len(a.prompts) == 10 and set(a.prompts) < CAMP_PROBES
    assert a.prompts != c.prompts and a.available == c.available == len(CAMP_PROBES)
    assert a.source()["sampled"] == 10
    assert len(ledger_probes(export, ["camp-1"], limit=10_000).prompts) < len(CAMP_PROBES)


def test_probe_text_reads_chats_and_completions() -> None:
    chat = json.dumps([SYSTEM, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"},
                       {"role": "user", "content": "q2"}])  # fmt: skip
    assert probe_text("ignored", chat) == "q2"
    assert probe_text("system: s\nuser: q1\nassistant: a\nuser: q2", None) == "q2"  # rendered chat
    assert probe_text("a plain completion prompt", None) == "a plain completion prompt"
    assert probe_text("system: s", json.dumps([SYSTEM])) == ""  # no user turn: nothing to ask


def test_bad_input_is_one_line(export: Path, tmp_path: Path) -> None:
    cases = [
        (tmp_path / "nowhere", None, "ledger export not found"),
        (export, ["camp-1", "nobody"], "account 'nobody' has no request in the ledger export"),
        (export, ["refused-only"], "account(s) refused-only: no admitted request"),
    ]
    not_parquet = tmp_path / "bad"
    not_parquet.mkdir()
    (not_parquet / "ledger.parquet").write_text("not parquet")
    cases.append((not_parquet, None, "cannot read ledger export"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    cases.append((other, None, "is not a ledger export (no column 'account')"))
    redacted = tmp_path / "redacted"
    lg = Ledger(tmp_path / "r.db", redact_prompts=True)
    lg.append(_chat("camp-1", [{"role": "user", "content": "secret"}]))
    lg.export_parquet(redacted)
    lg.close()
    cases.append((redacted, ["camp-1"], "no admitted request with prompt text (redacted?)"))
    for path, accounts, message in cases:
        with pytest.raises(UserError) as err:
            ledger_probes(path, accounts)
        assert message in str(err.value) and "\n" not in str(err.value), (path, str(err.value))


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    return run_cli(argv, capsys)


def test_cli_refuses_bad_ledger_input_in_one_line_before_any_work(
    export: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "bundle"
    base = ["audit", "run", "--suspect", str(model), "--reference", str(model), "--out", str(out)]
    cases = [
        (["--probes-ledger", str(tmp_path / "missing")], "ledger export not found"),
        (["--probes-ledger", str(export), "--probe-account", "nobody"], "'nobody' has no request"),
        (["--probes-ledger", str(export), "--probe-account", "refused-only"], "no admitted request"),
        (["--probe-account", "camp-1"], "--probe-account needs --probes-ledger"),
    ]
    for args, message in cases:
        code, stdout, err = _cli(capsys, *base, *args, "--json")
        assert code == 2 and stdout == "" and err.startswith("error: ") and message in err, (args, err)
        assert err.count("\n") == 1 and not out.exists()


def test_report_says_where_the_probes_came_from() -> None:
    src = {"source": "ledger", "ledger": "/x/ledger.parquet", "accounts": ["camp-1", "camp-2"],
           "admitted_requests": 44, "available": 32, "sampled": 10, "seed": 0}  # fmt: skip
    html = render_html({"verdict": "no_evidence", "tests": [], "config": {"probes": src}}, plots={})
    assert '<p id="probes">' in html and "camp-1, camp-2" in html and "10 drawn" in html and "of 32" in html
    plain = render_html(
        {"verdict": "no_evidence", "tests": [], "config": {"probes": {"source": "prompts"}}}, plots={}
    )
    assert 'id="probes"' not in plain


def test_audit_run_probes_with_the_campaigns_prompts(
    tiny_world, export: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real engine on the tiny world: every closed-mode probe is one the chosen account asked, the
    budget bounds them, and the bundle records the ledger (hashed, not copied) and the selection."""
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    out = tmp_path / "case"
    code, stdout, err = _cli(
        capsys, "audit", "run", "--suspect", str(tiny_world.teacher), "--reference", str(tiny_world.teacher),
        "--prompts", str(tiny_world.prompts), "--test", "radioactivity", "--key", "7", "--max-tokens", "8",
        "--decoys", "5", "--budget", "12", "--probes-ledger", str(export), "--probe-account", "camp-2",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    camp2 = set(ledger_probes(export, ["camp-2"]).prompts)
    lines = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]
    probes = [t["prompt"] for t in lines if t["kind"] == "radioactivity"]
    assert probes and len(probes) <= 12 and set(probes) <= camp2
    assert len(set(probes)) == len(probes)  # the budget fits in the distinct prompts: none repeated
    results = json.loads((out / "results.json").read_text())
    src = results["config"]["probes"]
    assert src["source"] == "ledger" and src["accounts"] == ["camp-2"] and src["sampled"] == 12
    assert src["available"] == len(camp2) and src["ledger"] == str(export / "ledger.parquet")
    # a ledger probe can hold our own text: the served-logprob reading is not run on them (audit/mass.py)
    served = [x for x in results["skipped"] if x["name"] == "radioactivity_closed_mass"]
    assert len(served) == 1 and "ledger" in served[0]["reason"]
    assert all(t["name"] != "radioactivity_closed_mass" for t in results["tests"])
    inputs = json.loads((out / "inputs.json").read_text())
    entry = inputs["probes-ledger"]
    assert entry["kind"] == "file" and len(entry["sha256"]) == 64 and "copy" not in entry
    assert not any(p.name.startswith("probes") for p in (out / "inputs").iterdir())  # the pool only
    assert 'id="probes"' in (out / "report.html").read_text()
