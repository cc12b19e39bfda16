"""Tiers are objects: a new one is one class and one registration, and every part of the system uses it.

The toy ``probation`` tier below exists only in this file. It sits between ``normal`` and ``throttled``,
halves the requests per minute (the factor is a setting: ``probation_rpm_factor``) and refuses ``n > 1``.
Registering it is the only change: the account store accepts it, the real gateway enforces it over HTTP,
and the monitor's ladder, decisions and evaluation include it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from distillguard.errors import UserError
from distillguard.gateway import accounts as accounts_module
from distillguard.gateway.accounts import AuthError, Limits, SQLiteAccountStore
from distillguard.gateway.limits import scale_limits
from distillguard.gateway.quotas import effective_limits
from distillguard.gateway.tiers import (
    REGISTRY,
    Refusal,
    Tier,
    TierSettings,
    get_tier,
    register_tier,
    tier_names,
    unregister_tier,
)
from distillguard.monitor.decisions import AccountState, Policy, decide
from distillguard.monitor.evaluate import evaluate
from gateway_server import ADMIN_TOKEN, start

BUILTIN = ("normal", "throttled", "restricted", "suspended")


class Probation(Tier):
    """Half the requests per minute (``probation_rpm_factor``), one choice per request."""

    def limits(self, limits: Limits, settings: TierSettings, *, scope: str) -> Limits:
        return scale_limits(limits, {"rpm": float(settings.get("probation_rpm_factor", 0.5))})

    def refuse_request(self, sampling, request) -> Refusal | None:
        if sampling.n > 1:
            return Refusal(
                403, "not_allowed_for_tier", "n > 1 is not available to this account's tier.", param="n"
            )
        return None


PROBATION = Probation("probation", 50, "Half the RPM and no n > 1: a first warning.", monitor_p=5e-3)


@pytest.fixture
def probation():
    register_tier(PROBATION)
    try:
        yield PROBATION
    finally:
        if "probation" in REGISTRY:
            unregister_tier("probation")


# --------------------------------------------------------------------------------------------------
# The registry


def test_builtin_ladder_and_loud_lookup() -> None:
    assert tier_names() == BUILTIN == accounts_module.TIERS
    assert [t.rank for t in REGISTRY] == sorted(t.rank for t in REGISTRY)
    with pytest.raises(UserError) as e:
        get_tier("gold")
    assert str(e.value) == "unknown tier 'gold'; choose one of normal, throttled, restricted, suspended"
    assert "\n" not in str(e.value)


def test_registration_is_checked(probation) -> None:
    assert tier_names() == ("normal", "probation", *BUILTIN[1:])
    assert tier_names() == accounts_module.TIERS  # the old constant follows the registry
    bad = [
        Probation("probation", 60, "again", monitor_p=1e-2),  # name taken
        Probation("other", 100, "rank of throttled", monitor_p=1e-3),
        Probation("below", -1, "below the base", monitor_p=0.5),
        Probation("loose", 150, "needs less evidence than throttled", monitor_p=1e-2),
        Probation("nop", 400, "no monitor threshold"),
        Probation("Bad Name", 400, "spaces", monitor_p=1e-7),
    ]
    for tier in bad:
        with pytest.raises(UserError) as e:
            register_tier(tier)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot be removed"):
        unregister_tier("normal")
    assert tier_names() == ("normal", "probation", *BUILTIN[1:])


# --------------------------------------------------------------------------------------------------
# The account store and the quotas


def test_account_store_accepts_a_registered_tier_and_fails_closed_without_it(tmp_path: Path, probation):
    store = SQLiteAccountStore(tmp_path / "accounts.db", b"0123456789abcdef0123")
    key, _ = store.create_key("pat")
    with pytest.raises(UserError, match="choose one of normal, probation, throttled"):
        store.set_tier("pat", "gold")
    store.set_tier("pat", "probation", reason="first warning", actor="monitor")
    assert store.authenticate(key).tier == "probation"
    assert store.get_account("pat")["tier_history"][-1]["reason"] == "first warning"
    unregister_tier("probation")  # a process that lacks the tier serves the account nothing
    with pytest.raises(AuthError) as e:
        store.authenticate(key)
    assert (e.value.status, e.value.code) == (403, "unknown_tier") and e.value.who[3] == "probation"
    store.close()


def test_effective_limits_follow_the_tier_object(probation) -> None:
    lim = Limits(rpm=9, tpm=100, daily_tokens=None, max_concurrent=3)
    assert effective_limits(lim, "probation") == Limits(rpm=4, tpm=100, daily_tokens=None, max_concurrent=3)
    settings = TierSettings(extra={"probation_rpm_factor": 0.25})
    assert PROBATION.limits(lim, settings, scope="key").rpm == 2
    with pytest.raises(UserError, match="unknown tier"):
        effective_limits(lim, "gold")


# --------------------------------------------------------------------------------------------------
# The gateway


def test_gateway_enforces_a_registered_tier(tmp_path: Path, probation) -> None:
    with start(state_dir=tmp_path, backend="stub", probation_rpm_factor=0.5) as g:
        client = g.openai(g.create_key("pat", rpm=4))
        assert len(client.completions.create(model="stub", prompt="a", max_tokens=1, n=2).choices) == 2
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        r = httpx.put(f"{g.base_url}/admin/accounts/pat/tier", json={"tier": "probation"}, headers=admin)
        assert r.status_code == 200 and r.json()["tier"] == "probation"
        with pytest.raises(openai.PermissionDeniedError) as e:
            client.completions.create(model="stub", prompt="a", max_tokens=1, n=2)
        assert e.value.body["code"] == "not_allowed_for_tier" and e.value.body["param"] == "n"
        client.completions.create(model="stub", prompt="a", max_tokens=1)  # 2 of the key's 4 // 2 rpm
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(model="stub", prompt="a", max_tokens=1)
        assert "2 requests per minute" in e.value.body["message"]
        g.accounts.set_tier("pat", "normal")
        client.completions.create(model="stub", prompt="a", max_tokens=1, n=2)
        r = httpx.put(f"{g.base_url}/admin/accounts/pat/tier", json={"tier": "gold"}, headers=admin)
        assert r.status_code == 400 and "normal, probation, throttled" in r.json()["error"]["message"]
        ledger = g.ledger()
        try:
            refused = [x for x in ledger.iter_records() if x["error_code"] == "not_allowed_for_tier"]
        finally:
            ledger.close()
        assert [x["tier"] for x in refused] == ["probation"]


# --------------------------------------------------------------------------------------------------
# The monitor


def test_monitor_ladder_decisions_and_evaluation_include_it(probation) -> None:
    pol = Policy(cooldown_s=0.0)
    assert pol.tiers == ("normal", "probation", "throttled", "restricted", "suspended")
    assert pol.up == (5e-3, 1e-3, 1e-4, 1e-6) and pol.flag_tier == "probation"
    assert Policy.from_config({"monitor_probation_p": 0.05}).threshold("probation") == 0.05
    with pytest.raises(UserError, match="1 > probation >= throttled >= restricted >= suspended > 0"):
        Policy(up=(1e-3, 1e-4, 1e-6))
    assert [pol.target(p) for p in (0.5, 4e-3, 5e-4, 5e-5, 1e-7)] == list(pol.tiers)

    dec, st = decide("x", 4e-3, "normal", None, pol, 100.0)
    assert (dec.kind, dec.tier) == ("escalate", "probation")
    st = AccountState(tier="throttled")
    moves = []
    for now in (1.0, 2.0):  # relaxing walks down one rung at a time, through probation
        dec, st = decide("x", 0.9, st.tier, st, pol, now)
        moves.append(dec.tier)
    assert moves == ["probation", "normal"]

    p = {"b0": 0.5, "b1": 0.2, "b2": 4e-3, "a0": 4e-3, "a1": 5e-4, "a2": 1e-7}
    analysis = SimpleNamespace(
        accounts={a: SimpleNamespace(p_value=v) for a, v in p.items()}, calibration={}, clusters=[]
    )
    labels = {a: {"kind": "attacker" if a[0] == "a" else "benign", "persona": a[0]} for a in p}
    doc = evaluate(analysis, labels, pol)
    assert list(doc["operating_points"]) == ["probation", "throttled", "restricted", "suspended"]
    assert doc["operating_points"]["probation"]["benign_flagged"] == 1
    assert doc["personas"]["a"] == {
        "kind": "attacker",
        "accounts": 3,
        "tpr": 1.0,
        "throttled_or_above": 2 / 3,
        "restricted_or_above": 1 / 3,
        "suspended": 1 / 3,
    }
    assert doc["confusion"]["benign"] == {"normal": 2, "probation": 1}
    assert doc["tpr_at_observed_fpr"]["fpr"] == pytest.approx(1 / 3)
