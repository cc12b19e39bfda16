"""Publish and pull through a real TAXII 2.1 server (medallion, memory backend): credentials from the
environment, incremental pulls with ``added_after``, a signed report completed from an earlier pull."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_run import run_cli
from taxii_server import COLLECTION, PASSWORD, USER, taxii_server


def _bundle(tmp: Path, name: str, provider: str, key: Path, tlp: str = "green") -> Path:
    """A signed bundle of one synthetic campaign (no ledger needed)."""
    from distillguard.intel.census import NetworkFact, Template
    from distillguard.intel.fingerprint import Keyring
    from distillguard.intel.jobs import sign_and_wrap
    from distillguard.intel.stix import CampaignFacts, build_bundle

    k = Keyring(b"0123456789abcdef0123")
    templates = [
        Template(k.fingerprint(f"sys:system prompt of {name}"), "sys", 300, 6, 1.7e9, 1.7e9 + 3600,
                 k.sketch(f"system prompt of {name} with enough words")),
        Template(k.fingerprint(f"suf3:frame of {name}"), "suf", 120, 5, 1.7e9, 1.7e9 + 3600),
    ]  # fmt: skip
    facts = CampaignFacts(
        key=name * 4,
        accounts=6,
        queries=300,
        first_ts=1.7e9,
        last_ts=1.7e9 + 3600,
        p_value=1e-8,
        templates=templates,
        networks=[NetworkFact("198.51.100.0/24", ("198.51.100.7",), 300, 6)],
        timing={"queries": 300.0, "gaps": 294.0, "gap_log10_s_p10": 1.2, "gap_log10_s_p50": 1.6,
                "gap_log10_s_p90": 1.9, "active_hours_share": 0.5, "accounts": 6.0,
                "queries_per_account_median": 50.0},
    )  # fmt: skip
    objects, ident = build_bundle([facts], provider=provider, tlp=tlp)
    bundle, sig = sign_and_wrap(objects, ident, tlp, key)
    out = tmp / f"{name}.json"
    out.write_text(json.dumps(bundle))
    (tmp / f"{name}.json.sig").write_text(json.dumps(sig))
    assert np.isfinite(facts.p_value)
    return out


def test_publish_then_incremental_pulls(tmp_path, capsys, monkeypatch):
    from distillguard.audit.bundle import fingerprint, generate_signing_key

    key_path = tmp_path / "northwind.pem"
    signer = fingerprint(generate_signing_key(key_path))
    first = _bundle(tmp_path, "alpha", "Northwind", key_path)
    second = _bundle(tmp_path, "beta", "Northwind", key_path)
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILLGUARD_INTEL_TAXII_USER", USER)
    monkeypatch.setenv("DISTILLGUARD_INTEL_TAXII_PASSWORD", PASSWORD)
    monkeypatch.setenv("DISTILLGUARD_INTEL_TRUSTED_KEYS", signer)
    monkeypatch.setenv("DISTILLGUARD_INTEL_TRUST_KEY", "0123456789abcdef0123")
    with taxii_server(tmp_path / "taxii") as url:
        server = ["--taxii", url, "--collection", COLLECTION]
        code, out, err = run_cli(["intel", "publish", *server, "--bundle", str(first), "--json"], capsys)
        assert code == 0, err
        pub = json.loads(out)
        assert pub["status"] == "complete" and pub["success"] == pub["total"] > 20

        # provider B (its own state dir) pulls everything there is
        monkeypatch.setenv("DISTILLGUARD_INTEL_DIR", str(tmp_path / "contoso-intel"))
        code, out, err = run_cli(["intel", "pull", *server, "--json"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["added_after"] is None and doc["imported"] == 1 and doc["campaigns"] == 1
        assert doc["problems"] == [] and doc["position"]
        assert len(list((tmp_path / "contoso-intel" / "imported").glob("*.json"))) == 1

        # nothing new: the next pull asks only for what was added after the saved position
        code, out, err = run_cli(["intel", "pull", *server, "--json"], capsys)
        assert code == 0, err
        again = json.loads(out)
        assert again["added_after"] == doc["position"] and again["objects"] == 0 and again["imported"] == 0

        # a second campaign: only its new objects come; the shared ATLAS objects are fetched by id
        code, out, err = run_cli(["intel", "publish", *server, "--bundle", str(second), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["failure"] > 0  # the ATLAS objects were already there
        code, out, err = run_cli(["intel", "pull", *server, "--json"], capsys)
        assert code == 0, err
        third = json.loads(out)
        assert third["imported"] == 1 and third["problems"] == []
        assert third["reports"] == 1 and third["objects"] > 1
        code, out, err = run_cli(["intel", "list", "--json"], capsys)
        assert code == 0, err
        assert sorted(c["source"] for c in json.loads(out)) == ["Northwind", "Northwind"]

        # wrong credentials and a bad URL: one line, non-zero
        monkeypatch.setenv("DISTILLGUARD_INTEL_TAXII_PASSWORD", "wrong")
        code, _, err = run_cli(["intel", "pull", *server], capsys)
        assert code != 0 and err.startswith("error:") and err.count("\n") == 1
        code, _, err = run_cli(["intel", "pull", "--taxii", "ftp://x", "--collection", COLLECTION], capsys)
        assert code != 0 and "http(s)" in err


def test_red_intel_is_not_published(tmp_path, capsys, monkeypatch):
    from distillguard.audit.bundle import generate_signing_key

    key_path = tmp_path / "k.pem"
    generate_signing_key(key_path)
    red = _bundle(tmp_path, "gamma", "Northwind", key_path, tlp="red")
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(
        ["intel", "publish", "--taxii", "http://127.0.0.1:9/x/", "--collection", "c", "--bundle", str(red)],
        capsys,
    )
    assert code != 0 and "TLP:RED" in err


@pytest.mark.parametrize("since", ["7d", "2024-06-03T00:00Z"])
def test_since_parses(since):
    from distillguard.intel.jobs import parse_since

    assert parse_since(since, now=1.8e9) < 1.8e9
