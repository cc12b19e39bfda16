"""How the monitor's scoring, linking and decisions scale with the number of accounts (not run by tests).

For each population size a synthetic Parquet export in the seed case's proportions is written
(``monitor.synth.synthesize_parquet``: 63% benign accounts of every persona, 37% one Sybil campaign, a few
single attackers; ``--rows-per-account`` rows per account on average), its features are accumulated and each
account's state computed, and then, timed apart, what the issue asks to scale: population calibration
(the nearest-profile search, its null), the judgement of every account and cluster, account linking, and
the tier decisions. Reported per size: seconds per stage, peak resident memory after each stage and, with
``--profile``, where the scoring's time goes (cumulative seconds of the detectors' functions).

Run the same script against another checkout's sources to compare (``PYTHONPATH=OLD/src``; the label says
which). Results are merged into ``bench/results/monitor_scale.json`` under ``runs[label][accounts]``.

    .venv/bin/python bench/monitor_scale_bench.py --accounts 2000 8000 16000 --label after
    PYTHONPATH=../old/src .venv/bin/python bench/monitor_scale_bench.py --accounts 2000 8000 --label before

The 50M-row export itself (65k accounts, 24k Sybils) is scored end to end by
``distillguard simulate --synthetic --rows 50000000 --out DIR`` then
``/usr/bin/time -v distillguard monitor scan --parquet DIR --json > DIR/report.json`` (or
``bench/monitor_bench.py --skip-quality``); ``--accounts 65000 --rows-per-account 760`` here is a
population of the same size.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "monitor_scale.json"
PROFILED = (
    "fit",
    "assess",
    "link_accounts",
    "_knn",
    "_knn_brute",
    "orthant_kth",
    "euclid_nn",
    "judge",
    "entity",
    "_clusters",
    "plan_decisions",
    "_pairs",
    "minhash",
    "_strong_groups",
    "_mixture_sf",
    "excluded_rows",
    "accounts",
)


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _profile_summary(prof: cProfile.Profile) -> dict[str, float]:
    st = pstats.Stats(prof)
    out: dict[str, float] = {}
    for (file, _, name), (_, _, _, cum, _) in st.stats.items():  # type: ignore[attr-defined]
        if "distillguard/monitor" in file and name in PROFILED:
            key = f"{Path(file).stem}.{name}"
            out[key] = round(out.get(key, 0.0) + cum, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def one(accounts: int, rows_per_account: int, work: Path, seed: int, profile: bool) -> dict:
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.scan import (
        Analyzer,
        ScanOptions,
        _clusters,
        accumulate,
        analyse,
        parquet_batches,
        parquet_created,
    )
    from distillguard.monitor.synth import synthesize_parquet

    try:
        from distillguard.monitor.report import plan_decisions
    except ImportError:  # an older checkout (PYTHONPATH=OLD/src), where scan held it
        from distillguard.monitor.scan import plan_decisions  # type: ignore[no-redef]

    sybils = round(accounts * 24_000 / 65_594)
    benign = accounts - sybils
    per_sybil = 200
    rows = accounts * rows_per_account
    t = {}
    t0 = time.perf_counter()
    out = work / f"n{accounts}"
    synthesize_parquet(
        out, rows=rows, accounts=benign, campaign_accounts=sybils, queries_per_sybil=per_sybil, seed=seed
    )
    t["synthesize"] = time.perf_counter() - t0
    opts = ScanOptions()
    t0 = time.perf_counter()
    acc = accumulate(parquet_batches(out), sample_size=opts.sample_size)
    t["feature_pass"] = time.perf_counter() - t0
    rss = {"feature_pass": _rss_mb()}
    created = parquet_created(out)
    an = Analyzer(opts)
    names = list(acc.accounts)
    t0 = time.perf_counter()
    scored = [a for a in names if acc.c["n"][acc.index[a]] >= opts.min_queries]
    mmd = an.fit_mmd(acc, scored)
    states = an.accounts(acc, names, mmd)
    t["account_states"] = time.perf_counter() - t0
    rss["account_states"] = _rss_mb()
    t0 = time.perf_counter()
    clusters = _clusters(names, states, created)
    t["linking"] = time.perf_counter() - t0
    rss["linking"] = _rss_mb()
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    if "states" in inspect.signature(analyse).parameters:
        analysis = analyse(acc, None, options=opts, analyzer=an, created=created, states=states)
        t["score_link_judge"] = time.perf_counter() - t0
    else:  # an older checkout: it computes the states again; their time is taken off
        analysis = analyse(acc, None, options=opts, analyzer=an, created=created)
        t["score_link_judge"] = time.perf_counter() - t0 - t["account_states"]
    if prof:
        prof.disable()
    rss["score_link_judge"] = _rss_mb()
    t0 = time.perf_counter()
    policy = Policy()
    decisions, _, tiers = plan_decisions(analysis, policy, {}, {}, time.time())
    t["decisions"] = time.perf_counter() - t0
    flagged = sum(1 for v in analysis.accounts.values() if v.p_value <= 1e-3)
    res = {
        "accounts": len(names),
        "scored": len(scored),
        "rows": acc.rows,
        "clusters": len(clusters),
        "largest_cluster": max((len(c.accounts) for c in clusters), default=0),
        "flagged_p_1e-3": flagged,
        "seconds": {k: round(v, 2) for k, v in t.items()},
        "scoring_total_s": round(t["score_link_judge"] + t["decisions"], 2),
        "peak_rss_mb_after": rss,
    }
    if prof:
        res["profile_cumulative_s"] = _profile_summary(prof)
    return res


def _commit(src: Path) -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True)
    except OSError:
        return None
    return out.stdout.decode().strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, nargs="+", default=[2000, 8000, 16000])
    ap.add_argument("--rows-per-account", type=int, default=150)
    ap.add_argument("--label", default="after")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile the scoring (slower)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    import distillguard

    data = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    data["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="monitor-scale-") as tmp:
        for n in args.accounts:
            res = one(n, args.rows_per_account, Path(tmp), args.seed, args.profile)
            res["source"] = str(Path(distillguard.__file__).parent)
            res["commit"] = _commit(Path(distillguard.__file__).parent)
            print(json.dumps({"label": args.label, **res}), flush=True)
            if args.out.is_file():  # another run may have written meanwhile: merge, do not overwrite
                data = {**json.loads(args.out.read_text()), "machine": data["machine"]}
            data.setdefault("runs", {}).setdefault(args.label, {})[str(n)] = res
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
