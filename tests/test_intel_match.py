"""Imported campaigns as evidence: coverage over element groups, the weight, and the never-suspend floor."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from distillguard.intel.fingerprint import Keyring
from distillguard.intel.match import IntelMatcher
from distillguard.intel.stix import ImportedCampaign
from distillguard.monitor.decisions import Policy
from distillguard.monitor.scan import AccountVerdict, Analysis

KEY = b"fedcba9876543210-group"
SYSTEM = "You are an expert Python assistant. Give complete, correct answers."
PARAMS = {"max_tokens": 512, "temperature": 0.7, "top_p": 0.95}


def _rows(account: str, n: int, *, system: str | None, wrap: str, ip: str, params: dict) -> list[dict]:
    out = []
    for i in range(n):
        user = wrap.format(q=f"How does function number {i} of module m{i % 7} handle unicode input")
        prompt = f"system: {system}\nuser: {user}" if system else user
        out.append(
            {
                "account": account,
                "prompt": prompt,
                "ts": 1.7e9 + i,
                "client_ip": ip,
                "params": json.dumps(params),
            }
        )
    return out


def _campaign(k: Keyring, confidence: int = 100) -> ImportedCampaign:
    from distillguard.intel.census import Census

    c = Census(k)
    c.update(
        pa.Table.from_pylist(
            _rows(
                "op1",
                30,
                system=SYSTEM,
                wrap="Question: {q}\nAnswer in full, with an example if relevant.",
                ip="198.51.100.4",
                params=PARAMS,
            )
            + _rows(
                "op2",
                30,
                system=SYSTEM,
                wrap="{q}\n\nProvide a detailed and accurate answer.",
                ip="198.51.100.9",
                params=PARAMS,
            )
        )
    )
    templates = c.campaign_templates(["op1", "op2"], benign=[])
    return ImportedCampaign(
        campaign_id="campaign--x",
        name="LLM distillation campaign x",
        source="Northwind",
        source_id="identity--n",
        confidence=confidence,
        indicator_id="indicator--t",
        templates={t.fingerprint: t.kind for t in templates},
        sketches={t.fingerprint: t.sketch for t in templates if t.sketch is not None},
        min_coverage=0.5,
        network_indicator_id="indicator--n",
        networks=("198.51.100.0/24",),
        tlp="amber",
    )


def _verdict(name: str, p: float) -> AccountVerdict:
    return AccountVerdict(
        name, 5, 0.0, p, p, 1 - p, None, ["fewer than 20 queries: not scored alone"], [], [], False, {}
    )


def test_coverage_groups_weight_and_floor():
    k = Keyring(KEY)
    m = IntelMatcher([_campaign(k)], k, weight=1e9)
    edited = SYSTEM.replace("correct answers", "correct, tested answers")
    m.update(
        pa.Table.from_pylist(
            # the operator returns: same system prompt, one of its frames, tooling, its network
            _rows(
                "fresh",
                3,
                system=SYSTEM,
                wrap="{q}\n\nProvide a detailed and accurate answer.",
                ip="198.51.100.77",
                params=PARAMS,
            )
            # an edited system prompt (MinHash), same tooling, a new network
            + _rows("edited", 3, system=edited, wrap="{q}", ip="203.0.113.5", params=PARAMS)
            # a harness that uses both of the campaign's public frames, with its own system prompt and tooling
            + _rows(
                "harness",
                40,
                system="Answer concisely.",
                wrap="Question: {q}\nAnswer in full, with an example if relevant.",
                ip="192.0.2.1",
                params={"max_tokens": 128, "seed": 1},
            )
            + _rows(
                "harness",
                40,
                system="Answer concisely.",
                wrap="{q}\n\nProvide a detailed and accurate answer.",
                ip="192.0.2.1",
                params={"max_tokens": 128, "seed": 1},
            )
        )
    )
    ev = m.evidence()
    assert set(ev) == {"fresh", "edited"}
    assert ev["fresh"][0].parts["system"] == 1.0 and ev["fresh"][0].parts["network"] == 1.0
    assert ev["edited"][0].parts["system"] == 1.0 and ev["edited"][0].parts["network"] == 0.0
    assert ev["fresh"][0].coverage > ev["edited"][0].coverage >= 0.5

    policy = Policy(up=(1e-3, 1e-4, 1e-6), tiers=("normal", "throttled", "restricted", "suspended"))
    analysis = Analysis(
        {
            "fresh": _verdict("fresh", 1.0),
            "edited": _verdict("edited", 1.0),
            "harness": _verdict("harness", 0.2),
            "caught": _verdict("caught", 1e-9),
        },
        [],
        "reference",
        100,
        100,
    )
    out = m.apply(analysis, policy)
    # a huge weight still stops just above the suspend threshold: intel alone never suspends
    assert policy.target(out.accounts["fresh"].p_value) == "restricted"
    assert out.accounts["fresh"].p_value > 1e-6
    assert out.accounts["fresh"].reasons[0].startswith("intel: matches indicator indicator--t")
    assert "shared by Northwind (confidence 100, TLP:AMBER)" in out.accounts["fresh"].reasons[0]
    assert out.accounts["harness"].p_value == 0.2 and out.accounts["caught"].p_value == 1e-9
    # the weight scales with the sharer's confidence: confidence 0 changes nothing
    m.campaigns = [_campaign(k, confidence=0)]
    assert m.apply(analysis, policy).accounts["fresh"].p_value == 1.0


def test_weight_below_one_is_refused():
    from distillguard.errors import UserError

    with pytest.raises(UserError):
        IntelMatcher([], Keyring(KEY), weight=0.5)


def test_intel_settings_read_the_config_once_typed_with_one_line_errors(tmp_path):
    from distillguard.errors import UserError
    from distillguard.intel.settings import ACCEPTED_TLP, IntelSettings
    from distillguard.intel.store import intel_dir, trust_key

    assert IntelSettings.from_config({}).accept_tlp == ACCEPTED_TLP and IntelSettings().tlp == "amber"
    # env spellings arrive as strings or numbers (DISTILLGUARD_INTEL_TRUSTED_KEYS="a, b")
    s = IntelSettings.from_config(
        {
            "intel_trusted_keys": "sha256:aa, sha256:bb",
            "intel_accept_tlp": "CLEAR,green",
            "intel_weight": 100,
            "intel_tlp": "GREEN",
            "intel_sample": "50",
            "intel_dir": str(tmp_path),
        }  # fmt: skip
    )
    assert s.trusted_keys == ("sha256:aa", "sha256:bb") and s.accept_tlp == ("clear", "green")
    assert (s.weight, s.tlp, s.sample, s.min_coverage) == (100.0, "green", 50, None)
    assert IntelSettings.from_config({"intel_tlp": "red"}, tlp="clear").tlp == "clear"  # a flag wins
    assert intel_dir({"intel_dir": str(tmp_path)}) == tmp_path
    assert trust_key({"intel_trust_key": "k" * 16}) == b"k" * 16
    for bad, msg in [
        ({"intel_weight": 0.5}, "^intel_weight must be >= 1"),
        ({"intel_weight": "heavy"}, "^setting intel_weight = 'heavy' is not a valid float$"),
        ({"intel_min_coverage": 2}, r"^intel_min_coverage must be in \[0, 1\], got 2.0$"),
        ({"intel_export_sample": 0}, "^intel_export_sample must be >= 1, got 0$"),
    ]:
        with pytest.raises(UserError, match=msg):
            IntelSettings.from_config(bad)
