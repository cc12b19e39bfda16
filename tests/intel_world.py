"""Two small providers for the intel tests: ledgers with a benign reference, a Sybil campaign whose operator
returns to the second provider with fresh accounts and the same templates."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

TRUST_KEY = "00112233445566778899aabbccddeeff"
SYSTEM = "You are an expert Python assistant. Give complete, correct answers."
WRAPPERS = (
    "{q}\n\nProvide a detailed and accurate answer.",
    "Question: {q}\nAnswer in full, with an example if relevant.",
    "### Instruction\n{q}\n### Response",
)
# Small references cannot support claims at 1e-3 (see test_monitor_e2e): these deployments state theirs.
POLICY = {"monitor_throttle_p": 0.03, "monitor_restrict_p": 0.02, "monitor_suspend_p": 1e-5}
BENIGN = {
    "casual_chat": ((20, 6, {}),),
    "coding_assistant": ((3, 100, {}),),
    "support_bot": ((3, 50, {}),),
    "batch_summariser": ((2, 80, {}),),
    "eval_harness": ((3, 40, {}),),
    "researcher": ((10, 15, {}),),
}
SECRETS = ("ops-team@copycat.example", "sk-copycat-4f9a2b7c1d8e")


def toml_value(v: Any) -> str:
    return json.dumps(v)


def provider(root: Path, name: str) -> tuple[dict[str, Any], Path]:
    """A provider's config (dict and TOML file) with its own state under ``root/name``."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = {
        "secret": "s" * 32,
        "accounts_path": str(d / "accounts.db"),
        "ledger_path": str(d / "ledger.db"),
        "monitor_dir": str(d / "monitor"),
        "monitor_reference": str(d / "reference.npz"),
        "intel_dir": str(d / "intel"),
        "intel_trust_key": TRUST_KEY,
        "intel_signing_key": str(d / "signing_key.pem"),
        "intel_provider_name": name,
        **POLICY,
    }
    path = d / "config.toml"
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items()))
    return cfg, path


def population(seed: int, pools, *, campaign: int = 0, queries: int = 80, leak: bool = False):
    from distillguard.monitor.scenario import Scale, build_scenario

    personas = dict(BENIGN)
    if campaign:
        opts = {"ip_mode": "slash24", "system": SYSTEM, "wrappers": list(WRAPPERS), "campaign": "copycat"}
        personas["sybil"] = ((campaign, queries, opts),)
    scen = build_scenario(Scale(f"intel-test-{seed}", 1.0, personas), seed=seed, pools=pools)
    if leak:  # the operator signs every prompt with an e-mail address and pastes an API key
        events = []
        for ev in scen.events:
            if ev.persona == "sybil":
                msgs = [dict(m) for m in ev.messages]
                msgs[-1]["content"] += f"\nContact {SECRETS[0]}, key {SECRETS[1]}."
                ev = replace(ev, messages=msgs)
            events.append(ev)
        scen = replace(scen, events=events)
    return scen


def move_to(scen, net: str, share: float = 0.5, seed: int = 0):
    """A ``share`` of the campaign's accounts send from ``net`` (the network seen at the other provider)."""
    from distillguard.monitor.simworld import random_ip

    rng = random.Random(seed)
    sybils = sorted(a.name for a in scen.accounts if a.persona == "sybil")
    moved = {a: random_ip(rng, net) for a in sybils[: round(len(sybils) * share)]}
    return replace(
        scen, events=[replace(e, client_ip=moved.get(e.account, e.client_ip)) for e in scen.events]
    )


def build(cfg: dict[str, Any], scen, reference_seed: int, pools) -> None:
    """Synthesize the provider's ledger (accounts in its store) and fit its benign reference."""
    from distillguard.gateway.accounts import account_store_from_config
    from distillguard.monitor.scan import ScanOptions, accumulate, build_reference, ledger_batches
    from distillguard.monitor.synth import synthesize_ledger

    opts = ScanOptions(mmd_null=100)  # a coarser MMD null than the default 1000: a test's reference
    ref_path = Path(cfg["ledger_path"]).with_name("reference.db")
    synthesize_ledger(ref_path, scenario=population(reference_seed, pools))
    build_reference(accumulate(ledger_batches(ref_path)), opts).save(Path(cfg["monitor_reference"]))
    store = account_store_from_config(cfg)
    synthesize_ledger(Path(cfg["ledger_path"]), scenario=scen, accounts=store, secret=cfg["secret"].encode())
    store.close()
