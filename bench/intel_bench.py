"""Two-provider intel benchmark: does provider A's shared intel let provider B catch the same actor earlier?

Setup (per seed; every ledger is synthetic, ``monitor.synth.synthesize_ledger``):

1. Provider A ("Northwind") runs a benign reference period and a period with a Sybil distillation campaign
   (12 fresh accounts x 250 queries, one rented /24, one system prompt, three prompt wrappers, fixed
   sampling parameters). A's monitor (benign reference, default policy) flags it; ``intel export`` writes the
   signed STIX bundle, which is published to and pulled from a TAXII collection in ``tests`` (here the
   bundle is imported directly: the transport does not change what B matches).
2. Provider B ("Contoso") has its own benign reference period (two versions: without and with its
   template-using harnesses, i.e. new or established customers) and then a period in which the *same actor*
   returns with 12 fresh accounts: same system prompt, wrappers and tooling, a new coverage traversal of the
   questions, half of the accounts from A's /24 and half from a new one. B's benign traffic includes
   evaluation harnesses that wrap their questions in the campaign's *public* prompt wrappers (one wrapper,
   or two) with their own system prompt: the hard negative for template matching.
3. B's ledger is replayed in ledger order; at grid points of the campaign's cumulative queries B's monitor
   scores every account with and without A's imported intel (same reference, same policy), for intel
   weights 1e3-1e6 (the default policy is 1e5).

Reported per seed and pooled: **queries to detection** (the campaign's cumulative queries at B when the
first campaign account reaches the flag tier ``throttled``, p <= 1e-3), per-account queries at flag, and
**benign FPR** at the end of the period with and without intel (Clopper-Pearson 95% upper bound: with ~120
benign accounts per seed, zero flagged bounds the FPR only below ~2.4%, pooled over 3 seeds ~0.8%; the
public-template harnesses are counted separately). The ratio is without / with; "not detected" is
reported as such, not as a number.

Results: ``bench/results/intel.json`` and ``bench/results/intel_qtd.png``. ``--quick``: one seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).parent
RESULTS = HERE / "results"
TRUST_KEY = "5f1d3c0a9b8e7d6c5b4a39281706f5e4"  # the trust group's shared secret (benchmark only)
CAMPAIGN_ACCOUNTS = 12
CAMPAIGN_QUERIES = 250
WEIGHTS = (1e3, 1e4, 1e5, 1e6)  # intel_weight sensitivity
DEFAULT_WEIGHT = 1e5  # the default policy (config intel_weight)
DEFAULT = f"with@{DEFAULT_WEIGHT:.0e}"
VARIANTS = ("reference_without_template_users", "reference_with_template_users")
GRID = (1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000)


def benign_personas(n: int = 1) -> dict:
    return {
        "casual_chat": ((60 * n, 6, {}),),
        "coding_assistant": ((8 * n, 240, {}),),
        "support_bot": ((8 * n, 120, {}),),
        "batch_summariser": ((4 * n, 300, {}),),
        "eval_harness": ((10 * n, 60, {}),),
        "researcher": ((40 * n, 20, {}),),
    }


def actor():
    from distillguard.monitor.personas import SYBIL_SYSTEMS, SYBIL_WRAPPERS

    return SYBIL_SYSTEMS[0], [SYBIL_WRAPPERS[1], SYBIL_WRAPPERS[2], SYBIL_WRAPPERS[3]]


def scenario(seed: int, *, campaign: bool, pools, public_templates: bool = False, attacker_net=None):
    from distillguard.monitor.scenario import Scale, build_scenario
    from distillguard.monitor.simworld import random_ip

    personas = benign_personas()
    if campaign:
        system, wrappers = actor()
        personas["sybil"] = (
            (
                CAMPAIGN_ACCOUNTS,
                CAMPAIGN_QUERIES,
                {"ip_mode": "slash24", "system": system, "wrappers": wrappers, "campaign": "returning-actor"},
            ),
        )
    scen = build_scenario(Scale(f"intel-{seed}", 2.0, personas), seed=seed, pools=pools)
    rng = random.Random(f"{seed}:intel-bench")
    _, wrappers = actor()
    harness = sorted(a.name for a in scen.accounts if a.persona == "eval_harness")
    # half the harnesses wrap every question in one public wrapper, a quarter alternate two, the rest none
    public = {}
    if public_templates:
        for i, a in enumerate(harness[: len(harness) * 3 // 4]):
            public[a] = (
                [wrappers[i % 3]] if i < len(harness) // 2 else [wrappers[i % 3], wrappers[(i + 1) % 3]]
            )
    moved = set()
    if attacker_net is not None:
        sybils = sorted(a.name for a in scen.accounts if a.persona == "sybil")
        moved = set(sybils[::2])  # half the returning accounts come from A's network again
    new_ips = {a: random_ip(rng, attacker_net) for a in moved}
    events = []
    for ev in scen.events:
        if ev.account in public and ev.messages:
            w = rng.choice(public[ev.account])
            msgs = [dict(m) for m in ev.messages]
            msgs[-1]["content"] = w.format(q=msgs[-1]["content"])
            ev = replace(ev, messages=msgs)
        if ev.account in new_ips:
            ev = replace(ev, client_ip=new_ips[ev.account])
        events.append(ev)
    scen = replace(scen, events=events)
    return scen, sorted(public)


def provider_dirs(root: Path, name: str) -> dict:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    return {
        "ledger_path": str(d / "ledger.db"),
        "accounts_path": str(d / "accounts.db"),
        "monitor_dir": str(d / "monitor"),
        "monitor_reference": str(d / "reference.npz"),
        "intel_dir": str(d / "intel"),
        "intel_trust_key": TRUST_KEY,
        "intel_signing_key": str(d / "signing_key.pem"),
        "intel_provider_name": name,
    }


def reference(cfg: dict, seed: int, pools, opts, public_templates: bool = False):
    from distillguard.monitor.scan import accumulate, build_reference, ledger_batches
    from distillguard.monitor.synth import synthesize_ledger

    path = Path(cfg["ledger_path"]).with_name(f"reference{'-templates' if public_templates else ''}.db")
    scen, _ = scenario(seed, campaign=False, pools=pools, public_templates=public_templates)
    synthesize_ledger(path, scenario=scen)
    ref = build_reference(accumulate(ledger_batches(path), sample_size=opts.sample_size), opts)
    ref.save(Path(cfg["monitor_reference"]))
    return ref


def run_seed(seed: int, root: Path) -> dict:
    import numpy as np
    import pyarrow as pa

    from distillguard.audit.bundle import generate_signing_key, public_path
    from distillguard.gateway.accounts import account_store_from_config
    from distillguard.intel.fingerprint import Keyring
    from distillguard.intel.jobs import export_bundle, import_bundle
    from distillguard.intel.match import IntelMatcher
    from distillguard.intel.store import IntelStore
    from distillguard.monitor.accumulator import FeatureAccumulator
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.evaluate import rate_bounds
    from distillguard.monitor.features import derive, ip_prefix
    from distillguard.monitor.scan import Analyzer, ScanOptions, analyse, ledger_batches, store_created
    from distillguard.monitor.simworld import Pools
    from distillguard.monitor.synth import synthesize_ledger

    pools = Pools.builtin()
    opts = ScanOptions()
    policy = Policy()
    thr = policy.threshold(policy.flag_tier)
    t0 = time.time()
    # ---- provider A: reference, campaign period, export
    a = provider_dirs(root, "Northwind")
    generate_signing_key(Path(a["intel_signing_key"]))
    reference(a, 1000 + seed, pools, opts)
    scen_a, _ = scenario(2000 + seed, campaign=True, pools=pools)
    store_a = account_store_from_config(a)
    synthesize_ledger(Path(a["ledger_path"]), scenario=scen_a, accounts=store_a)
    store_a.close() if hasattr(store_a, "close") else None
    bundle = root / "northwind.json"
    exported = export_bundle(a, bundle, tlp="amber")
    a_net = next(ip_prefix(x.ips[0]) for x in scen_a.accounts if x.persona == "sybil")
    t_a = time.time() - t0
    # ---- provider B: two references, import, the actor returns
    t0 = time.time()
    b = provider_dirs(root, "Contoso")
    refs = {
        # the template-using harnesses are new customers: B's known-good period did not contain them
        "reference_without_template_users": reference(b, 3000 + seed, pools, opts),
        # they are established customers: B's known-good period holds them too (a harder case for B alone)
        "reference_with_template_users": reference(b, 3000 + seed, pools, opts, public_templates=True),
    }
    imported = import_bundle(b, bundle, public_keys=[public_path(Path(a["intel_signing_key"]))])
    scen_b, public = scenario(
        4000 + seed, campaign=True, pools=pools, public_templates=True, attacker_net=a_net
    )
    store_b = account_store_from_config(b)
    synthesize_ledger(Path(b["ledger_path"]), scenario=scen_b, accounts=store_b)
    created = store_created(store_b)
    labels = scen_b.labels()
    campaign = {n for n, lab in labels.items() if lab["kind"] == "attacker"}
    benign = {n for n, lab in labels.items() if lab["kind"] == "benign"}
    plain = sorted(benign - set(public))
    matcher = IntelMatcher(IntelStore.open(b).campaigns(), Keyring(bytes.fromhex(TRUST_KEY)))
    an = Analyzer(opts)
    acc = FeatureAccumulator(sample_size=opts.sample_size)
    conds = ["without"] + [f"with@{w:.0e}" for w in WEIGHTS]
    curve: dict[str, list] = {v: [] for v in refs}
    done = {v: dict.fromkeys(conds) for v in refs}
    first_flag = {v: {c: {} for c in conds} for v in refs}
    gi = 0

    def analyses(ref) -> dict:
        base = analyse(acc, ref, analyzer=an, created=created)
        out = {"without": base}
        for w in WEIGHTS:
            matcher.weight = w
            out[f"with@{w:.0e}"] = matcher.apply(base, policy)
        matcher.weight = DEFAULT_WEIGHT
        return out

    def pending() -> bool:
        return any(x is None for d in done.values() for x in d.values())

    def score(total: int) -> None:
        for v, ref in refs.items():
            point = {"campaign_queries": total}
            for cond, res in analyses(ref).items():
                hit = [x for x in campaign if x in res.accounts and res.accounts[x].p_value <= thr]
                point[cond] = len(hit)
                for x in hit:
                    first_flag[v][cond].setdefault(x, int(acc.c["n"][acc.index[x]]))
                if hit and done[v][cond] is None:
                    done[v][cond] = total
            curve[v].append(point)

    seen = 0  # campaign queries read so far
    for batch in ledger_batches(Path(b["ledger_path"])):
        t = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        hits = np.cumsum(np.isin(np.array(t.column("account").to_pylist(), dtype=object), list(campaign)))
        start = 0
        while start < t.num_rows:
            # the row at which the campaign's cumulative count reaches the next grid point (or the end)
            end = t.num_rows
            if gi < len(GRID) and pending():
                idx = np.nonzero(seen + hits >= GRID[gi])[0]
                idx = idx[idx >= start]
                end = int(idx[0]) + 1 if len(idx) else t.num_rows
            part = t.slice(start, end - start)
            acc.update(derive(part))
            matcher.update(part)
            start = end
            total = seen + int(hits[end - 1])
            if gi < len(GRID) and total >= GRID[gi]:
                while gi < len(GRID) and total >= GRID[gi]:
                    gi += 1
                if pending():
                    score(total)
        seen += int(hits[-1]) if len(hits) else 0
    total = int(sum(acc.c["n"][acc.index[x]] for x in campaign if x in acc.index))

    def fpr(res, who) -> dict:
        who = [x for x in who if x in res.accounts]
        k = sum(res.accounts[x].p_value <= thr for x in who)
        return {"flagged": int(k), "accounts": len(who), "upper95": rate_bounds(k, len(who))[1]}

    def tiers(res, who) -> dict:
        out: dict[str, int] = {}
        for x in who:
            if x in res.accounts:
                tier = policy.target(res.accounts[x].p_value)
                out[tier] = out.get(tier, 0) + 1
        return out

    variants = {}
    for v, ref in refs.items():
        final = analyses(ref)
        base, weighted = final["without"], final[DEFAULT]
        evidence = matcher.evidence(base.accounts)
        variants[v] = {
            "queries_to_detection": {
                "without_intel": done[v]["without"],
                "with_intel": done[v][DEFAULT],
                "ratio": _ratio(done[v]["without"], done[v][DEFAULT]),
                "account_queries_at_flag_median": {
                    c: (float(np.median(list(f.values()))) if f else None) for c, f in first_flag[v].items()
                },
            },
            "weight_sensitivity": {
                c: {
                    "queries_to_detection": done[v][c],
                    "ratio": _ratio(done[v]["without"], done[v][c]),
                    "benign_flagged": fpr(final[c], plain)["flagged"],
                    "public_template_flagged": fpr(final[c], public)["flagged"],
                    "campaign_flagged": fpr(final[c], campaign)["flagged"],
                    "campaign_suspended": tiers(final[c], campaign).get("suspended", 0),
                }
                for c in conds
            },
            "end_of_period": {
                "campaign_flagged": {
                    "without": fpr(base, campaign)["flagged"],
                    "with": fpr(weighted, campaign)["flagged"],
                    "accounts": len(campaign),
                },
                "campaign_tiers_with_intel": tiers(weighted, campaign),
                "benign_fpr": {"without": fpr(base, plain), "with": fpr(weighted, plain)},
                "public_template_fpr": {"without": fpr(base, public), "with": fpr(weighted, public)},
                "benign_accounts_matching_intel": sum(1 for x in benign if x in evidence),
                "benign_matches": [
                    {
                        "public_template_user": x in public,
                        "coverage": round(evidence[x][0].coverage, 3),
                        "parts": {k: round(q, 3) for k, q in evidence[x][0].parts.items()},
                        "p_without": base.accounts[x].p_value,
                        "p_with": weighted.accounts[x].p_value,
                    }
                    for x in sorted(benign)
                    if x in evidence
                ],
            },
            "curve": curve[v],
        }
    return {
        "seed": seed,
        "provider_a": {
            "export": {k: exported[k] for k in ("campaigns", "templates", "networks", "objects", "tlp")},
            "seconds": t_a,
        },
        "provider_b": {
            "imported_campaigns": imported["campaigns"],
            "imported_confidence": [c.confidence for c in matcher.campaigns],
            "ledger_rows": acc.rows,
            "campaign_queries": total,
            "benign_accounts": len(benign),
            "public_template_accounts": len(public),
            "seconds": time.time() - t0,
        },
        "variants": variants,
    }


def _ratio(without: int | None, with_: int | None) -> float | None:
    return without / with_ if without and with_ else None


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, v in zip(axes, VARIANTS, strict=True):
        for r in results:
            pts = r["variants"][v]["curve"]
            xs = [p["campaign_queries"] for p in pts]
            for cond, style in (("without", "--"), (DEFAULT, "-")):
                ax.step(xs, [p[cond] for p in pts], style, where="post", alpha=0.8,
                        label=f"seed {r['seed']} {cond.split('@')[0]} intel")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("campaign queries at provider B (cumulative)")
        ax.set_title(v.replace("_", " "), fontsize=9)
    axes[0].set_ylabel(f"campaign accounts flagged (of {CAMPAIGN_ACCOUNTS})")
    axes[0].legend(fontsize=7)
    fig.suptitle("Returning actor at provider B, with and without provider A's intel (weight 1e5)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(runs: list[dict], variant: str) -> dict:
    import numpy as np

    from distillguard.monitor.evaluate import rate_bounds

    qs = [r["variants"][variant]["queries_to_detection"] for r in runs]
    pooled = {}
    for cond in ("without", "with"):
        for group in ("benign_fpr", "public_template_fpr"):
            k = sum(r["variants"][variant]["end_of_period"][group][cond]["flagged"] for r in runs)
            m = sum(r["variants"][variant]["end_of_period"][group][cond]["accounts"] for r in runs)
            pooled[f"{group}_{cond}"] = {"flagged": k, "accounts": m, "upper95": rate_bounds(k, m)[1]}
    campaign_max = max(r["provider_b"]["campaign_queries"] for r in runs)
    ratios = []
    for q in qs:  # not detected without intel: the ratio is at least (all campaign queries) / with
        if q["without_intel"] is None and q["with_intel"]:
            ratios.append(f">{campaign_max / q['with_intel']:.0f} (not detected without intel)")
        else:
            ratios.append(q["ratio"])
    numeric = [x if isinstance(x, float) else None for x in ratios]
    met = all(
        (x is not None and x >= 10) or (q["without_intel"] is None and q["with_intel"])
        for x, q in zip(numeric, qs, strict=True)
    )
    return {
        "queries_to_detection_without": [q["without_intel"] for q in qs],
        "queries_to_detection_with": [q["with_intel"] for q in qs],
        "ratio_per_seed": ratios,
        "ratio_median_of_detected": float(np.median([x for x in numeric if x])) if any(numeric) else None,
        "pooled_fpr": pooled,
        "goal_met": bool(
            met and pooled["benign_fpr_with"]["flagged"] == pooled["benign_fpr_without"]["flagged"]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    args = ap.parse_args(argv)
    n = args.seeds or (1 if args.quick else 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(n):
        with tempfile.TemporaryDirectory(prefix="dg-intel-bench-") as tmp:
            r = run_seed(seed, Path(tmp))
        runs.append(r)
        for v in VARIANTS:
            q = r["variants"][v]["queries_to_detection"]
            e = r["variants"][v]["end_of_period"]
            print(
                f"seed {seed} {v}: queries to detection without intel {q['without_intel']}, with "
                f"{q['with_intel']} (ratio {q['ratio']}); benign flagged without "
                f"{e['benign_fpr']['without']['flagged']}, with {e['benign_fpr']['with']['flagged']} of "
                f"{e['benign_fpr']['with']['accounts']}; public-template harnesses flagged without "
                f"{e['public_template_fpr']['without']['flagged']}, with "
                f"{e['public_template_fpr']['with']['flagged']}",
                flush=True,
            )
    summary = {
        "seeds": n,
        "goal": ">= 10x fewer campaign queries to detection at B with the benign FPR unchanged",
        "weight": DEFAULT_WEIGHT,
        **{v: summarise(runs, v) for v in VARIANTS},
        "null_and_caveats": (
            "Synthetic traffic from the project's personas; one actor whose templates and tooling are "
            "unchanged at B (an actor that rewrites its system prompt, wrappers and sampling parameters "
            "defeats template matching and leaves only the network element). Detection = first campaign "
            "account at p <= 1e-3 (throttled) against B's benign reference, scored at grid points of the "
            "campaign's cumulative queries; FPR = benign accounts at p <= 1e-3 at the end of the period, "
            "one-sided Clopper-Pearson 95% bounds pooled across seeds (public-template harnesses counted "
            "separately). Public-template users share the campaign's wrappers but not its system prompt or "
            "sampling parameters. Small samples: 3 seeds, ~120 benign accounts each."
        ),
    }
    png = RESULTS / "intel_qtd.png"
    plot(runs, png)
    doc = {
        "summary": summary,
        "runs": runs,
        "plot": str(png.relative_to(HERE.parent)),
        "python": sys.version.split()[0],
    }
    (RESULTS / "intel.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    for v in VARIANTS:
        sv = summary[v]
        print(f"{v}: ratio per seed {sv['ratio_per_seed']}; goal met: {sv['goal_met']}")
    print(f"wrote {RESULTS / 'intel.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
