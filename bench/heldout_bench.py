"""The monitor on held-out traffic: populations from ``distillguard heldout`` (written apart from the
monitor), sent through a real gateway (stub backend, official ``openai`` client, client addresses through the
trusted ``X-Forwarded-For``), exported, put on the simulated clock and scanned five ways:

- **cold start, shipped reference** (what a scan does before ``monitor calibrate``): the default reference
  that ships with the package (fitted on the monitor's own simulator, never on held-out traffic);
- **cold start, --population**: no reference, the monitor calibrates on the scanned population;
- **own benign period**: a reference fitted on the benign accounts of a separate held-out run (another seed),
  as ``monitor calibrate`` on a known-good period would: its default (a period this size keeps the shipped
  reference's null, its accounts are neighbours), with the period's own null (``--null period``: the
  simulated kinds are neighbours), and alone (``--base none``).

Each run reports per-account TPR/FPR at every rung with exact Clopper-Pearson bounds, campaigns detected,
whether any evaluation harness or support bot was flagged, and queries to detection per campaign.

    python bench/heldout_bench.py                 # small + medium + month, seeds 1-3 (the reported figures)
    python bench/heldout_bench.py --quick         # small, seed 1
    python bench/heldout_bench.py --seeds 0 --out dev   # the development seed
    python bench/heldout_bench.py --generator simulator # the same on the monitor's own simulator (medium)
    python bench/heldout_bench.py --generator heldout2 --sizes small,medium  # the second generator

Seed 0 is the development seed (looked at while the detector was changed); the reported seeds are not. For
``--generator heldout2`` seeds 0 and 4 are the development seeds (its first look, before any change, is
``heldout2_first_look.json``).
Results: ``bench/results/heldout.json`` and ``heldout.png`` (``--generator simulator``: ``monitor_tuned.*``,
the traffic the monitor was tuned on, for the side-by-side table; its sizes are the simulator's scales).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ADMIN = "heldout-bench-admin-token"
SECRET = "heldout-bench-secret-0123456789"
HARD_NEGATIVES = ("eval_harness", "support_bot")
REFERENCE_SEED = 1000  # the benign period: a run of its own, only its benign accounts are used
# the monitor's sketch key (an installation secret; fixed here so that the figures repeat)
BENCH_SKETCH_KEY = b"heldout-bench-sketch-key-0123456"


def produce(size: str, seed: int, work: Path, generator: str = "heldout") -> Path:
    """Send the held-out population through a stub gateway once; return the retimed export directory."""
    from distillguard.gateway.serve import GatewayServer
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.heldout.drive import generate
    from distillguard.heldout.retime import retime

    run = work / (f"{size}-{seed}" if generator == "heldout" else f"{generator}-{size}-{seed}")
    sim = run / "sim"
    if (sim / "ledger.parquet").is_file():
        return run
    state = Path(tempfile.mkdtemp(prefix="heldout-gw-", dir=work))
    settings = GatewaySettings.from_mapping({
        "port": 0, "backend": "stub", "secret": SECRET, "admin_token": ADMIN,
        "accounts_path": str(state / "accounts.db"), "ledger_path": str(state / "ledger.db"),
        "trusted_proxies": ["127.0.0.1/32"], "log_level": "warning", "watermark_key": "heldout-bench",
    })  # fmt: skip
    server = GatewayServer(settings)
    url = server.start()
    try:
        t0 = time.time()
        summary = generate(url, ADMIN, run, size, seed, duration=0.0, concurrency=8, generator=generator)
        print(f"  {size}-{seed}: {summary['requests']} requests in {time.time() - t0:.0f} s", flush=True)
        from distillguard.gateway.app import gateway_of

        export = gateway_of(server.app).ledger.export_parquet(run / "export")
    finally:
        server.stop()
    retime(export, run / "schedule.jsonl", sim / "ledger.parquet", population=run / "population.json")
    return run


def produce_simulated(scale: str, seed: int, work: Path, benign_only: bool = False) -> Path:
    """The monitor's own simulator (the traffic its rules were tuned on) as the same kind of run: the
    scenario's events written as the gateway's ledger records on the simulated clock
    (``monitor.synth.synthesize_ledger``, accounts and keys registered in a real account store at their
    simulated sign-up times), exported to Parquet with the sign-up log beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillguard.gateway.accounts import SQLiteAccountStore
    from distillguard.gateway.ledger import Ledger
    from distillguard.monitor.personas import BENIGN
    from distillguard.monitor.scan import store_created
    from distillguard.monitor.synth import synthesize_ledger

    run = work / f"simulator-{scale}-{seed}"
    sim = run / "sim"
    if (sim / "ledger.parquet").is_file():
        return run
    run.mkdir(parents=True, exist_ok=True)
    store = SQLiteAccountStore(run / "accounts.db", SECRET.encode())
    personas = BENIGN if benign_only else None
    db = synthesize_ledger(run / "ledger.db", scale=scale, seed=seed, personas=personas, accounts=store,
                           labels=run / "labels.json")  # fmt: skip
    ledger = Ledger(db)
    try:
        ledger.export_parquet(sim)
    finally:
        ledger.close()
    created = store_created(store)
    pq.write_table(
        pa.table({"account": list(created), "key_created": list(created.values())}), sim / "accounts.parquet"
    )
    return run


def references(ref_run: Path) -> dict:
    """The references each run is scanned against, by name (None: calibrate on the population)."""
    from distillguard.monitor.jobs import read
    from distillguard.monitor.scan import ScanOptions, build_reference, parquet_batches, parquet_created
    from distillguard.monitor.shipped import load_shipped_reference
    from distillguard.monitor.synth import read_labels

    sim = ref_run / "sim" / "ledger.parquet"
    benign = [a for a, x in read_labels(ref_run / "labels.json").items() if x.get("kind") == "benign"]
    opts = ScanOptions(sketch_key=BENCH_SKETCH_KEY)
    acc, created = read(parquet_batches(sim), opts), parquet_created(sim)
    shipped = load_shipped_reference()
    return {
        "cold start: shipped reference (default)": shipped,
        "cold start: --population": None,
        "own benign period (calibrate default: the shipped null, the period as neighbours)": build_reference(
            acc, opts, benign=benign, created=created, base=shipped
        ),
        "own benign period's own null (calibrate --null period)": build_reference(
            acc, opts, benign=benign, created=created, base=shipped, null="period"
        ),
        "own benign period alone (calibrate --base none)": build_reference(
            acc, opts, benign=benign, created=created
        ),
    }


def without_orgs(run: Path) -> Path:
    """A copy of the run's retimed export with every ``org`` removed (a perturbation: the generator gives
    its benign service fleets an organisation and its attackers none, which the monitor's organisation
    rule relies on). Returns the copy's run directory (labels and sign-ups shared)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = run.with_name(run.name + "-noorg")
    (out / "sim").mkdir(parents=True, exist_ok=True)
    t = pq.read_table(run / "sim" / "ledger.parquet")
    t = t.set_column(t.schema.get_field_index("org"), "org", pa.nulls(t.num_rows, pa.string()))
    pq.write_table(t, out / "sim" / "ledger.parquet")
    shutil.copy(run / "sim" / "accounts.parquet", out / "sim" / "accounts.parquet")
    shutil.copy(run / "labels.json", out / "labels.json")
    return out


def evaluate_run(run: Path, refs: dict, size: str, seed: int, qtd: bool) -> list[dict]:
    """Scan one run against every reference; one result row per reference."""
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.evaluate import evaluate, queries_to_detection
    from distillguard.monitor.jobs import read, score
    from distillguard.monitor.scan import ScanOptions, parquet_batches, parquet_created
    from distillguard.monitor.synth import read_labels

    sim = run / "sim" / "ledger.parquet"
    labels = read_labels(run / "labels.json")
    policy = Policy()
    opts = ScanOptions(sketch_key=BENCH_SKETCH_KEY)
    created = parquet_created(sim)
    acc = read(parquet_batches(sim), opts)
    rows = []
    for name, ref in refs.items():
        t0 = time.time()
        analysis = score(acc, ref, opts, created)
        q = None
        if qtd and ref is not None:
            q = queries_to_detection(parquet_batches(sim), labels, ref, policy, options=opts, created=created)
        doc = evaluate(analysis, labels, policy, qtd=q)
        flag = policy.flag_tier
        thr = policy.threshold(flag)
        flagged = {a for a in labels if analysis.accounts[a].p_value <= thr}
        hard = sorted(a for a in flagged if labels[a].get("persona") in HARD_NEGATIVES)
        missed = sorted(a for a, lab in labels.items() if lab["kind"] == "attacker" and a not in flagged)
        flagged_benign = sorted(a for a in flagged if labels[a]["kind"] == "benign")
        op = doc["operating_points"]
        row = {
            "size": size, "seed": seed, "reference": name, "accounts": doc["accounts"], "auc": doc["auc"],
            "operating_points": op, "campaigns": doc["campaigns"], "personas": doc["personas"],
            "hard_negatives_flagged": hard, "benign_flagged": flagged_benign, "attackers_missed": missed,
            "queries_to_detection": (q or {}).get("campaigns"), "scan_s": round(time.time() - t0, 1),
        }  # fmt: skip
        rows.append(row)
        o, n_att = op[flag], doc["accounts"]["attacker"]
        print(
            f"  {size}-{seed} {name:<40} benign {o['benign_flagged']}/{doc['accounts']['benign']} "
            f"attackers {round(o['attacker_tpr'] * n_att)}/{n_att} "
            f"campaigns {doc['campaigns']['detected']}/{doc['campaigns']['total']} hard {len(hard)} "
            f"AUC {doc['auc']:.3f}",
            flush=True,
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    """Pooled over runs, per size and reference: accounts flagged at the flag rung, with exact bounds."""
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.evaluate import rate_bounds

    flag = Policy().flag_tier
    out: dict = {}
    for r in rows:
        s = out.setdefault(f"{r['size']} / {r['reference']}", {
            "runs": 0, "benign": 0, "benign_flagged": 0, "attackers": 0, "attackers_flagged": 0,
            "campaigns": 0, "campaigns_detected": 0, "hard_negatives_flagged": 0, "qtd_max": None,
        })  # fmt: skip
        o = r["operating_points"][flag]
        s["runs"] += 1
        s["benign"] += r["accounts"]["benign"]
        s["benign_flagged"] += o["benign_flagged"]
        s["attackers"] += r["accounts"]["attacker"]
        s["attackers_flagged"] += round(o["attacker_tpr"] * r["accounts"]["attacker"])
        s["campaigns"] += r["campaigns"]["total"]
        s["campaigns_detected"] += r["campaigns"]["detected"]
        s["hard_negatives_flagged"] += len(r["hard_negatives_flagged"])
        for c in (r["queries_to_detection"] or {}).values():
            q = c["queries_to_detection"]
            if q is None:
                s["qtd_max"] = "not detected"
            elif s["qtd_max"] != "not detected":
                s["qtd_max"] = max(s["qtd_max"] or 0, q)
    for s in out.values():
        s["fpr"] = s["benign_flagged"] / max(s["benign"], 1)
        s["fpr_upper95"] = rate_bounds(s["benign_flagged"], s["benign"])[1]
        s["tpr"] = s["attackers_flagged"] / max(s["attackers"], 1)
        s["tpr_lower95"] = rate_bounds(s["attackers_flagged"], s["attackers"])[0]
    return out


def main(argv: list[str] | None = None) -> None:
    from distillguard.monitor.scenario import SCALES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default="small,medium,month")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--work", type=Path, default=None, help="Keep generated runs here (reused if present).")
    ap.add_argument("--out", default="", help="Suffix of the results file (heldout_<out>.json).")
    ap.add_argument("--no-qtd", action="store_true")
    ap.add_argument(
        "--generator", choices=("heldout", "heldout2", "simulator"), default="heldout",
        help="heldout2: the second held-out generator (results heldout2.json); simulator: the same five "
        "settings on the monitor's own simulator (results monitor_tuned.json)",
    )  # fmt: skip
    ap.add_argument(
        "--no-orgs", action="store_true", help="Perturbation: remove every account's organisation first."
    )
    args = ap.parse_args(argv)
    sizes = ["small"] if args.quick else args.sizes.split(",")
    seeds = [1] if args.quick else [int(s) for s in args.seeds.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="heldout-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    simulated = args.generator == "simulator"
    if simulated and args.sizes == ap.get_default("sizes"):
        sizes = ["small"] if args.quick else ["medium"]
    if simulated and (bad := [x for x in sizes if x not in SCALES]):
        ap.error(f"the simulator has no scale {', '.join(bad)}; its scales: {', '.join(SCALES)}")
    if simulated:
        make = produce_simulated
        make_period = functools.partial(produce_simulated, benign_only=True)
    else:
        make = make_period = functools.partial(produce, generator=args.generator)
    for size in sizes:
        refs = references(make_period(size, REFERENCE_SEED, work))
        for seed in seeds:
            run = make(size, seed, work)
            if args.no_orgs:
                run = without_orgs(run)
            rows += evaluate_run(run, refs, size, seed, qtd=not args.no_qtd)
    doc = {
        "bench": "heldout",
        "what": "the monitor on held-out traffic through a real gateway, five references",
        "rows": rows,
        "summary": summarise(rows),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    if simulated:
        doc["what"] = "the monitor on its own simulator's traffic (what it was tuned on), five references"
    stem = {"simulator": "monitor_tuned"}.get(args.generator, args.generator)
    stem += "_quick" if args.quick else ""
    stem += f"_{args.out}" if args.out else ""
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(doc, indent=1, default=_default) + "\n")
    title = {"simulator": "simulator", "heldout2": "held-out (second)"}.get(args.generator, "held-out")
    png = plot(rows, out.with_suffix(".png"), title)
    print(f"wrote {out} and {png} ({doc['wall_s']} s)")


def plot(rows: list[dict], path: Path, title: str = "held-out") -> Path:
    """Attacker accounts flagged per persona (pooled over seeds), one panel per size, a bar per reference;
    the benign accounts flagged in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distillguard.monitor.decisions import Policy

    sizes = sorted({r["size"] for r in rows}, key=["small", "medium", "month"].index)
    refs = list(dict.fromkeys(r["reference"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 5), squeeze=False)
    flag = Policy().flag_tier
    for ax, size in zip(axes[0], sizes, strict=True):
        mine = [r for r in rows if r["size"] == size]
        personas = sorted({p for r in mine for p, v in r["personas"].items() if v["kind"] == "attacker"})
        width = 0.8 / len(refs)
        for k, ref in enumerate(refs):
            rr = [r for r in mine if r["reference"] == ref]
            tpr = []
            for p in personas:
                n = sum(r["personas"][p]["accounts"] for r in rr)
                hit = sum(r["personas"][p]["accounts"] * r["personas"][p]["tpr"] for r in rr)
                tpr.append(hit / max(n, 1))
            fp = sum(r["operating_points"][flag]["benign_flagged"] for r in rr)
            nb = sum(r["accounts"]["benign"] for r in rr)
            xs = [i + k * width for i in range(len(personas))]
            ax.bar(xs, tpr, width, label=f"{ref} (benign {fp}/{nb})")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(personas))], personas, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"attacker accounts flagged (p <= {Policy().threshold(flag):g})")
        ax.set_title(f"{title} {size}, seeds {sorted({r['seed'] for r in mine})}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _default(x):
    import numpy as np

    if isinstance(x, np.integer | np.floating):
        return x.item()
    raise TypeError(type(x))


if __name__ == "__main__":
    sys.exit(main())
