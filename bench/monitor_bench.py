"""Monitor benchmark: detection quality on a simulated population, and batch-feature cost at ledger scale.

1. Quality: a labelled synthetic ledger (``monitor.synth.synthesize_ledger``, scale ``medium`` by default:
   ~315 benign accounts with every hard negative, single attackers of each kind, two Sybil campaigns) is
   scored against a benign reference fitted on *other* benign ledgers (other seeds: the deployment's
   "known-good period"). Reported: benign FPR actually observed, per-persona TPR, campaign detection,
   queries-to-detection, AUC; ROC plot in ``bench/results/monitor_roc.png``.
2. Scale: a synthetic Parquet ledger (``monitor.synth.synthesize_parquet``, the seed case's population) is
   streamed through the batch feature accumulator by record batches; reported rows/s, wall time and peak
   resident memory, plus the time to score every account.

Results: ``bench/results/monitor.json`` (a scale other than ``medium`` is stored as ``quality_<scale>``).
``--quick`` runs scale ``small`` and 2M Parquet rows; ``--scale large --no-qtd`` is the FPR run (3,150
benign accounts: zero flagged bounds the FPR below 0.1% at 95% confidence).

Beyond one machine: ``monitor scan --engine ray`` runs the feature pass as Ray tasks over slices of the
export whose accumulators merge into the single pass's state (``monitor/engine.py``, ``monitor/merge.py``;
``bench/engine_bench.py`` compares the engines).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _synth(args: tuple) -> str:
    from distillguard.monitor.personas import BENIGN
    from distillguard.monitor.synth import synthesize_ledger

    path, scale, seed, benign_only = args
    synthesize_ledger(Path(path), scale=scale, seed=seed, personas=BENIGN if benign_only else None)
    return path


def quality(scale: str, work: Path, seeds: tuple[int, ...] = (1, 2, 3), qtd: bool = True) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.evaluate import evaluate, queries_to_detection
    from distillguard.monitor.scan import ScanOptions, accumulate, analyse, build_reference, ledger_batches
    from distillguard.monitor.synth import read_labels

    opts = ScanOptions()
    t0 = time.time()
    jobs = [(str(work / "eval" / "ledger.db"), scale, seeds[0], False)]
    jobs += [(str(work / f"ref{seed}" / "ledger.db"), scale, seed, True) for seed in seeds[1:]]
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:  # pure Python: one per core
        paths = list(pool.map(_synth, jobs))
    ledger = Path(paths[0])
    ref_acc = None
    for path in paths[1:]:
        ref_acc = accumulate(ledger_batches(Path(path)), ref_acc, sample_size=opts.sample_size)
    labels = read_labels(work / "eval" / "labels.json")
    t_synth = time.time() - t0
    t0 = time.time()
    reference = build_reference(ref_acc, opts)
    t_ref = time.time() - t0
    t0 = time.time()
    acc = accumulate(ledger_batches(ledger), sample_size=opts.sample_size)
    analysis = analyse(acc, reference, options=opts)
    t_scan = time.time() - t0
    policy = Policy()
    t0 = time.time()
    qtd_doc = None
    if qtd:
        qtd_doc = queries_to_detection(
            ledger_batches(ledger), labels, reference, policy, options=opts, step_rows=200
        )
    t_qtd = time.time() - t0
    doc = evaluate(analysis, labels, policy, qtd=qtd_doc, out_dir=work / "out")
    png = RESULTS / ("monitor_roc.png" if scale == "medium" else f"monitor_roc_{scale}.png")
    png.write_bytes((work / "out" / "roc.png").read_bytes())
    doc["roc_png"] = str(png.relative_to(HERE.parent))
    doc["setup"] = {
        "scale": scale,
        "eval_seed": seeds[0],
        "reference_seeds": list(seeds[1:]),
        "reference_accounts": reference.meta["accounts"],
        "ledger_rows": acc.rows,
        "seconds": {"synthesize": t_synth, "reference": t_ref, "scan": t_scan, "queries_to_detection": t_qtd},
    }
    return doc


def _features_child(path: str, score: bool = True) -> None:
    """Run in a fresh process: stream the Parquet ledger through the accumulator, score every account
    (population calibration: a 50M-row export has no separate benign period) and, where the export has
    ``labels.json``, evaluate the verdicts against the ground truth."""
    from distillguard.config import num_threads
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.evaluate import evaluate
    from distillguard.monitor.scan import ScanOptions, accumulate, analyse, parquet_batches, parquet_created
    from distillguard.monitor.synth import read_labels

    t0 = time.time()
    acc = accumulate(parquet_batches(Path(path)), sample_size=64)
    t_acc = time.time() - t0
    rss_features = _rss_mb()
    print(f"features: {acc.rows} rows in {t_acc:.0f} s", file=sys.stderr, flush=True)
    doc = {
        "rows": acc.rows,
        "accounts": len(acc.accounts),
        "workers": num_threads(),
        "feature_seconds": t_acc,
        "rows_per_second": acc.rows / t_acc,
        "peak_rss_mb_features": rss_features,
    }
    if not score:
        print(json.dumps({**doc, "scored": False}, default=float))
        return
    t0 = time.time()
    opts = ScanOptions(sample_size=64, mmd_null=300)
    analysis = analyse(acc, None, options=opts, created=parquet_created(Path(path)))
    doc.update(score_seconds=time.time() - t0, clusters=len(analysis.clusters), peak_rss_mb=_rss_mb())
    labels_path = Path(path) / "labels.json"
    if labels_path.is_file():
        ev = evaluate(analysis, read_labels(labels_path), Policy())
        doc["quality_population_calibrated"] = {
            k: ev[k] for k in ("accounts", "auc", "operating_points", "personas", "campaigns") if k in ev
        }
    print(json.dumps(doc, default=float))


def scale_run(rows: int, work: Path, parquet: Path | None = None, score: bool = True) -> dict:
    import subprocess

    from distillguard.monitor.synth import synthesize_parquet

    t_synth = None
    if parquet is None:
        parquet = work / "parquet"
        t0 = time.time()
        synthesize_parquet(parquet, rows=rows, seed=0)
        t_synth = time.time() - t0
    size = sum(p.stat().st_size for p in Path(parquet).glob("*.parquet"))
    # a fresh process, so its peak resident memory is the feature pass's own, not the generator's
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import monitor_bench as m; "
        f"m._features_child({str(parquet)!r}, score={score!r})"
    )
    res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True)
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    doc.update(parquet_bytes=size, synthesize_seconds=t_synth, sample_size=64, cpus=os.cpu_count())
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="scale small and 2M Parquet rows")
    ap.add_argument("--scale", default=None, help="simulation scale for quality (default medium)")
    ap.add_argument("--rows", type=int, default=None, help="Parquet rows for the scale run (default 50M)")
    ap.add_argument(
        "--parquet",
        type=Path,
        default=None,
        help="score this existing export (synthesize_parquet output) instead of synthesising one",
    )
    ap.add_argument("--no-qtd", action="store_true", help="skip the queries-to-detection replay")
    ap.add_argument("--no-score", action="store_true", help="scale run: the feature pass only")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args(argv)
    scale = args.scale or ("small" if args.quick else "medium")
    rows = args.rows or (2_000_000 if args.quick else 50_000_000)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "monitor.json"
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="dg-monitor-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_quality:
            key = "quality" if scale == "medium" else f"quality_{scale}"
            result[key] = quality(scale, work, qtd=not args.no_qtd)
            q = result[key]
            op = next(iter(q["operating_points"].values()))  # the lowest rung of the ladder: "flagged"
            print(f"quality ({scale}): AUC {q['auc']:.4f}, benign FPR {op['benign_fpr_observed']:.3%}, "
                  f"attacker TPR {op['attacker_tpr']:.1%}", flush=True)  # fmt: skip
        if not args.skip_scale:
            doc = scale_run(rows, work, args.parquet, score=not args.no_score)
            # the seed case's 50M rows is "scale"; smaller runs are kept beside it
            key = "scale" if doc["rows"] >= 50_000_000 else f"scale_{round(doc['rows'] / 1e6)}m"
            result[key] = doc
            s = result[key]
            rate, rss = s["rows_per_second"], s.get("peak_rss_mb", s["peak_rss_mb_features"])
            print(f"scale: {s['rows']} rows in {s['feature_seconds']:.0f} s ({rate:.0f} rows/s), "
                  f"peak RSS {rss:.0f} MB", flush=True)  # fmt: skip
    result["python"] = sys.version.split()[0]
    # merge into the file as it is now (another run may have written other keys meanwhile)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(result)
    path.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
