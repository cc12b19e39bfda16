"""Provider A exports its campaign as a signed STIX bundle; provider B imports it and its monitor scan
catches the returning operator's fresh accounts, naming the indicator, its source and its confidence.

Also: the bundle validates with the OASIS validator (strict), nothing private leaves, tampered, untrusted
and TLP:RED bundles are refused with one line, and imported evidence alone never suspends an account."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_run import run_cli
from distillguard.monitor.features import ip_prefix
from distillguard.monitor.simworld import Pools
from intel_world import SECRETS, build, move_to, population, provider


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from distillguard.audit.bundle import generate_signing_key

    root = tmp_path_factory.mktemp("intel")
    pools = Pools.builtin()
    a_cfg, a_toml = provider(root, "Northwind")
    b_cfg, b_toml = provider(root, "Contoso")
    generate_signing_key(Path(a_cfg["intel_signing_key"]))
    scen_a = population(21, pools, campaign=6, leak=True)
    build(a_cfg, scen_a, 11, pools)
    net = next(ip_prefix(a.ips[0]) for a in scen_a.accounts if a.persona == "sybil")
    scen_b = move_to(population(22, pools, campaign=6, queries=40), net)
    build(b_cfg, scen_b, 12, pools)
    return {"root": root, "a": a_cfg, "a_toml": a_toml, "b": b_cfg, "b_toml": b_toml, "scen_a": scen_a,
            "scen_b": scen_b}  # fmt: skip


@pytest.fixture(scope="module")
def exported(world):
    """A's bundle, written through the CLI (module-scoped: one export for all tests)."""
    pytest.MonkeyPatch().setenv("DISTILLGUARD_HOME", str(world["root"] / "home-a"))
    out = world["root"] / "northwind.json"
    from distillguard.cli import main

    try:
        main(
            [
                "intel",
                "export",
                "--out",
                str(out),
                "--tlp",
                "amber",
                "--config",
                str(world["a_toml"]),
                "--json",
            ]
        )
    except SystemExit as exc:
        assert not exc.code
    return out


def _objects(path: Path) -> list[dict]:
    return json.loads(path.read_text())["objects"]


def test_bundle_validates_and_carries_campaign_atlas_tlp_and_signature(exported):
    from stix2validator import ValidationOptions, validate_file

    # strict: every SHOULD is an error, except 302 (a URL reference without a hash): ATLAS pages change
    result = validate_file(str(exported), ValidationOptions(strict=True, disabled=["302"]))
    assert result.is_valid, [str(e) for r in result.object_results for e in r.errors]
    objs = _objects(exported)
    types = {o["type"] for o in objs}
    assert {"identity", "campaign", "indicator", "attack-pattern", "course-of-action", "relationship",
            "sighting", "report", "extension-definition"} <= types  # fmt: skip
    atlas = {r["external_id"] for o in objs for r in o.get("external_references", [])}
    assert {
        "AML.T0024",
        "AML.T0024.002",
        "AML.T0040",
        "AML.T0005",
        "AML.M0004",
        "AML.M0019",
        "AML.M0024",
    } <= atlas
    amber = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
    marked = [
        o for o in objs if o["type"] not in ("extension-definition",) and o.get("name") != "distillguard"
    ]
    assert all(o.get("object_marking_refs") == [amber] for o in marked)
    camp = [o for o in objs if o["type"] == "campaign"]
    assert camp and all(o["confidence"] > 0 for o in camp)
    sightings = [o for o in objs if o["type"] == "sighting"]
    assert sightings and all(o["count"] >= 1 and o["first_seen"] <= o["last_seen"] for o in sightings)
    templates = [o for o in objs if o["type"] == "indicator" and "x-llm-prompt" in o["pattern"]]
    assert templates, "the campaign's templates are shared"
    assert Path(str(exported) + ".sig").is_file()


def test_no_prompt_account_email_or_api_key_leaves(world, exported):
    from distillguard.gateway.accounts import account_store_from_config

    text = (exported.read_text() + Path(str(exported) + ".sig").read_text()).lower()
    scen = world["scen_a"]
    private = set(SECRETS)
    private |= {a.name for a in scen.accounts} | {a.org for a in scen.accounts if a.org}
    store = account_store_from_config(world["a"])
    private |= {k["key_id"] for k in store.list_keys()}
    store.close()
    for s in private:
        assert s.lower() not in text, s
    # no prompt, system prompt or any 4-word run of one
    words = re.compile(r"[a-z0-9_']+")
    windows = set()
    for ev in scen.events:
        for m in ev.messages or [{"content": ev.prompt or ""}]:
            toks = words.findall(m["content"].lower())
            windows |= {" ".join(toks[i : i + 4]) for i in range(max(0, len(toks) - 3))}
    flat = " ".join(words.findall(text))
    leaked = [w for w in windows if len(w) > 12 and w in flat]
    assert leaked == []


def test_tampered_untrusted_and_red_bundles_are_refused(world, exported, capsys, tmp_path, monkeypatch):
    from distillguard.audit.bundle import public_path

    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    cfg = ["--config", str(world["b_toml"])]
    monkeypatch.setenv("DISTILLGUARD_INTEL_DIR", str(tmp_path / "intel"))
    code, _, err = run_cli(["intel", "import", str(exported), *cfg], capsys)
    assert code != 0 and err.count("\n") == 1 and "not trusted" in err
    doc = json.loads(exported.read_text())
    for o in doc["objects"]:
        if o["type"] == "campaign":
            o["confidence"] = 100 if o["confidence"] != 100 else 99
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    pub = str(public_path(Path(world["a"]["intel_signing_key"])))
    code, _, err = run_cli(["intel", "import", str(bad), "--public-key", pub, *cfg], capsys)
    assert code != 0 and err.count("\n") == 1 and "altered" in err
    code, _, err = run_cli(["intel", "import", str(tmp_path / "missing.json"), *cfg], capsys)
    assert code != 0 and err.startswith("error:")
    monkeypatch.setenv("DISTILLGUARD_INTEL_ACCEPT_TLP", "clear,green")
    code, _, err = run_cli(["intel", "import", str(exported), "--public-key", pub, *cfg], capsys)
    assert code != 0 and "TLP:AMBER" in err
    assert not list((tmp_path / "intel").glob("imported/*.json"))


def test_provider_b_catches_the_returning_operator_and_never_suspends_on_intel_alone(
    world, exported, capsys, monkeypatch
):
    from distillguard.audit.bundle import public_path

    monkeypatch.setenv("DISTILLGUARD_HOME", str(world["root"] / "home-b"))
    cfg = ["--config", str(world["b_toml"])]
    labels = world["scen_b"].labels()
    code, out, err = run_cli(["monitor", "scan", "--json", *cfg], capsys)
    assert code == 0, err
    before = {a["account"]: a for a in json.loads(out)["accounts"]}
    pub = str(public_path(Path(world["a"]["intel_signing_key"])))
    code, out, err = run_cli(["intel", "import", str(exported), "--public-key", pub, "--json", *cfg], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["sources"] == ["Northwind"] and doc["campaigns"] >= 1
    assert list(Path(world["b"]["intel_dir"]).glob("imported/*.json"))
    code, out, err = run_cli(["monitor", "scan", "--json", *cfg], capsys)
    assert code == 0, err
    after = {a["account"]: a for a in json.loads(out)["accounts"]}
    campaign = [a for a, x in labels.items() if x["kind"] == "attacker"]
    benign = [a for a, x in labels.items() if x["kind"] == "benign"]
    intel = {
        a for a, v in after.items() if any(r.startswith("intel: matches indicator") for r in v["reasons"])
    }
    assert set(campaign) <= intel, "every returning account matches the shared indicator"
    assert not intel & set(benign)
    reason = next(r for r in after[campaign[0]]["reasons"] if r.startswith("intel:"))
    assert "indicator--" in reason and "shared by Northwind" in reason and "confidence" in reason
    for a in campaign:
        assert after[a]["p_value"] <= before[a]["p_value"]
        assert after[a]["tier"] != "normal"
    for a, v in after.items():  # imported evidence alone never suspends
        if v["tier"] == "suspended":
            assert before[a]["tier"] == "suspended"
    for a in benign:
        assert after[a]["tier"] == before[a]["tier"]
