"""The whole story on the tiny world: watermark, gateway, Copycat's distillation, verified ledger."""

from __future__ import annotations

import json


def test_demo_story(tiny_world, tmp_path, monkeypatch):
    from distillguard.demo import COPYCAT_ACCOUNTS, HONEST_ACCOUNTS, run_demo

    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path))
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_DELTA", "4")  # the tiny teacher is peaked: mark it harder
    res = run_demo(
        preset="tiny", n=16, world_root=tiny_world.root, temperature=1.2, copycat_queries=96, copycat_steps=60
    )
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["ledger"] == res["ledger"]

    # chapter 1: the watermark shows in Aster's answers and not in plain ones
    assert res["watermark"]["delta"] == 4.0
    agg = res["aggregate"]
    assert agg["watermarked"]["green_fraction"] > agg["plain"]["green_fraction"]
    assert agg["watermarked"]["log10_p_value"] < agg["plain"]["log10_p_value"]

    # chapter 2: every request went through the gateway and into an intact ledger
    ledger = res["ledger"]
    assert ledger["intact"] and ledger["first_bad_seq"] is None
    admitted = {k.split("/")[0]: v for k, v in ledger["by_account"].items() if k.endswith("/admitted")}
    assert set(admitted) == set(HONEST_ACCOUNTS) | {f"cc-{i:02d}" for i in range(1, COPYCAT_ACCOUNTS + 1)}
    copycat = sum(v for a, v in admitted.items() if a.startswith("cc-"))
    manifest = res["distillation"]["manifest"]
    assert manifest["answers"] == 96 and copycat >= 96 and manifest["mode"] == "blackbox"

    # chapter 3: the student exists and was evaluated next to the teacher
    models = res["distillation"]["evaluation"]["models"]
    assert set(models) == {"teacher", "copycat student"}
    assert models["copycat student"]["params"] < models["teacher"]["params"]

    # chapter 4: the audit convicts the student and clears the independent model, with verifiable bundles
    from distillguard.audit.bundle import verify_bundle

    audits = res["audit"]
    assert audits["copycat"]["verdict"] == "distilled"
    assert audits["independent"]["verdict"] != "distilled"
    for summary in audits.values():
        assert verify_bundle(summary["bundle"]).ok
        assert summary["report"].endswith(".html")

    # the monitor moved Copycat's accounts down the ladder and left the customers alone
    mon = res["monitor"]
    tiers = {row["account"]: row["tier"] for row in mon["accounts"]}
    assert all(tiers.get(f"cc-{i:02d}", "normal") != "normal" for i in range(1, COPYCAT_ACCOUNTS + 1)), tiers
    assert all(tiers.get(name, "normal") == "normal" for name in HONEST_ACCOUNTS), tiers
    assert mon["next_request_status"]["honest customer"] == 200

    # Northwind shares the campaign; at Contoso, Copycat's fresh accounts are flagged on their first requests
    intel = res["intel"]
    assert intel["export"]["campaigns"] >= 1 and intel["imported"] >= 1
    assert intel["returning"] and all(r["with"] != "normal" for r in intel["returning"].values()), intel
    assert all(r["reasons"][0].startswith("intel: matches indicator") for r in intel["returning"].values())
    assert intel["customers_moved"] == 0
