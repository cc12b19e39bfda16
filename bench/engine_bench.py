"""The monitor's feature pass on each engine, and a whole scan at the seed case's scale (not run by tests).

1. Engine comparison (default): the same Parquet export (``monitor.synth.synthesize_parquet``, 5M rows by
   default, the seed case's proportions) read by the ``local`` engine (derivation on threads, one fold)
   and by the ``ray`` engine on a local Ray instance with ``--workers`` CPUs (claims, slice folds, tree
   merge), each in a fresh process so that peak memory is its own. Reported: seconds, rows/s, the ratio,
   the driver's peak resident memory, and whether the two states are identical. ``--spark`` adds the
   same job scheduled by PySpark (:func:`spark_child`), the alternative engine, measured rather than argued.
2. ``--scan``: ``distillguard monitor scan`` as a user runs it (``jobs.scan``: feature pass, scoring
   against the shipped reference, linking, decisions; dry run) on the export, timed per stage, with peak
   resident memory, and the verdicts counted against the export's labels.

    .venv/bin/python bench/engine_bench.py --rows 5000000                       # engine comparison
    .venv/bin/python bench/engine_bench.py --parquet DIR --scan --label scan_50m   # the 50M export

Results are merged into ``bench/results/engine.json`` under ``--label``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "engine.json"


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def feature_child(path: str, engine: str, workers: int, state_out: str) -> None:
    """In a fresh process: one engine's feature pass; prints its timings, saves its state for the check."""
    from distillguard.monitor.engine import open_engine
    from distillguard.monitor.follow import save_accumulator

    eng = open_engine(engine, workers=workers)
    t0 = time.time()
    acc = eng.accumulate(Path(path), sample_size=64)
    seconds = time.time() - t0
    save_accumulator(acc, Path(state_out))
    doc = {"engine": engine, "workers": workers, "rows": acc.rows, "accounts": len(acc.accounts)}
    doc.update(seconds=round(seconds, 1), rows_per_second=round(acc.rows / seconds), peak_rss_mb=_rss_mb())
    print(json.dumps(doc))


def spark_child(path: str, workers: int, state_out: str) -> None:
    """In a fresh process: the ray engine's job (claims, slice folds, ordered merge) with PySpark as the
    scheduler instead (``local[workers]``, RDD of slices, the same map functions, the claims broadcast,
    merged in order on the driver): what choosing Spark would cost. Needs ``pip install pyspark`` and a
    Java 17 runtime; not an engine of the package."""
    from pyspark.sql import SparkSession

    from distillguard.monitor.accumulator import COPY_BITS, MIN_COPY_CHARS
    from distillguard.monitor.engine import claim_slice, fold_slice, plan_slices
    from distillguard.monitor.follow import save_accumulator
    from distillguard.monitor.merge import CopyClaims, finish, merge_into

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers import distillguard from this environment
    t0 = time.time()
    spark = (
        SparkSession.builder.master(f"local[{workers}]")
        .config("spark.driver.memory", "6g")
        .config("spark.driver.maxResultSize", "8g")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    started = time.time() - t0
    slices = plan_slices(Path(path))
    rdd = sc.parallelize(slices, len(slices))
    claims = CopyClaims.empty()
    for part in rdd.map(lambda s: claim_slice(s, COPY_BITS, MIN_COPY_CHARS)).collect():
        claims.absorb(*part)
    table = sc.broadcast(claims)
    parts = rdd.map(lambda s: fold_slice(s, table.value, 64)).collect()
    acc = parts[0]
    for p in parts[1:]:
        merge_into(acc, p)
    acc.claims = claims
    finish(acc)
    seconds = time.time() - t0
    spark.stop()
    save_accumulator(acc, Path(state_out))
    doc = {
        "engine": "spark (bench only)",
        "workers": workers,
        "rows": acc.rows,
        "accounts": len(acc.accounts),
    }
    doc.update(
        seconds=round(seconds, 1),
        session_start_s=round(started, 1),
        rows_per_second=round(acc.rows / seconds),
    )
    doc.update(peak_rss_mb=_rss_mb())
    print(json.dumps(doc))


def _same(a: Path, b: Path) -> bool:
    import numpy as np

    from distillguard.monitor.follow import load_follow_state

    sa, sb = load_follow_state(a)[0].state(), load_follow_state(b)[0].state()
    for k, x in sa["arrays"].items():
        y = sb["arrays"][k]
        ok = (
            np.allclose(x, y, rtol=1e-12, atol=1e-9, equal_nan=True)
            if x.dtype.kind == "f"
            else np.array_equal(x, y)
        )
        if not ok:
            return False
    for k, x in sa["meta"].items():
        y = sb["meta"][k]
        if k == "prefixes":
            x, y = [Counter(p) for p in x], [Counter(p) for p in y]
        if x != y:
            return False
    return True


def compare(path: Path, workers: int, work: Path, spark: bool = False) -> dict:
    runs = {}
    for engine in ("local", "ray", *(["spark"] if spark else [])):
        state = work / f"{engine}.npz"
        child = (
            f"spark_child({str(path)!r}, {workers}, {str(state)!r})"
            if engine == "spark"
            else f"feature_child({str(path)!r}, {engine!r}, {workers}, {str(state)!r})"
        )
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import engine_bench as m; m.{child}"
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True)
        runs[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        print(engine, runs[engine], flush=True)
    doc = {
        "runs": runs,
        "ray_over_local_speed": round(runs["local"]["seconds"] / runs["ray"]["seconds"], 3),
        "identical_state": _same(work / "local.npz", work / "ray.npz"),
        "note": "ray's peak_rss_mb is the driver's only (its workers are other processes)",
    }
    if spark:
        doc["spark_over_local_speed"] = round(runs["local"]["seconds"] / runs["spark"]["seconds"], 3)
        doc["spark_over_ray_speed"] = round(runs["ray"]["seconds"] / runs["spark"]["seconds"], 3)
        doc["spark_identical_state"] = _same(work / "local.npz", work / "spark.npz")
    return doc


def scan_child(path: str, engine: str, sample_size: int) -> None:
    """In a fresh process: the whole scan as the CLI runs it, each stage timed."""
    from distillguard.monitor import jobs
    from distillguard.monitor.synth import read_labels

    stages: dict[str, float] = {}

    @contextmanager
    def progress(what: str):
        t0 = time.time()
        yield lambda n: None
        stages[what] = round(time.time() - t0, 1)
        print(f"{what}: {stages[what]} s", file=sys.stderr, flush=True)

    config = {"monitor_sample_size": sample_size, "monitor_engine": engine}
    t0 = time.time()
    report = jobs.scan(config, parquet=Path(path), progress=progress)
    total = round(time.time() - t0, 1)
    tiers = {a["account"]: a["tier"] for a in report["accounts"]}
    doc = {
        "engine": engine,
        "sample_size": sample_size,
        "accounts": len(tiers),
        "stages_seconds": stages,
        "total_seconds": total,
        "peak_rss_mb": _rss_mb(),
        "reference": {k: v for k, v in (report.get("reference") or {}).items() if k != "path"},
        "tiers": dict(Counter(tiers.values())),
    }
    labels_path = Path(path) / "labels.json"
    if labels_path.is_file():
        labels = read_labels(labels_path)
        kinds: dict[str, Counter] = {}
        for name, lab in labels.items():
            kind = lab.get("persona") or lab.get("kind")
            kinds.setdefault(f"{lab.get('kind')}/{kind}", Counter())[
                tiers.get(name, "unseen") != "normal"
            ] += 1
        doc["flagged_by_kind"] = {
            k: {"flagged": c[True], "of": c[True] + c[False]} for k, c in sorted(kinds.items())
        }
    print(json.dumps(doc, default=float))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="rows of the export to synthesise (default 5M)")
    ap.add_argument("--quick", action="store_true", help="a 1M-row export")
    ap.add_argument("--parquet", type=Path, default=None, help="use this export instead")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--spark", action="store_true", help="also run the same job on PySpark (bench only)")
    ap.add_argument("--scan", action="store_true", help="time a whole scan instead of comparing engines")
    ap.add_argument("--engine", default="local", help="--scan: the engine of the feature pass")
    ap.add_argument("--sample-size", type=int, default=64, help="--scan: monitor_sample_size")
    ap.add_argument(
        "--label", default=None, help="key in engine.json (default: compare_<rows> / scan_<rows>)"
    )
    args = ap.parse_args(argv)
    args.rows = args.rows or (1_000_000 if args.quick else 5_000_000)
    with tempfile.TemporaryDirectory(prefix="dg-engine-bench-") as tmp:
        work = Path(tmp)
        path = args.parquet
        t_synth = None
        if path is None:
            from distillguard.monitor.synth import synthesize_parquet

            path = work / "export"
            t0 = time.time()
            synthesize_parquet(path, rows=args.rows, seed=0)
            t_synth = round(time.time() - t0, 1)
        import pyarrow.parquet as pq

        from distillguard.monitor.scan import parquet_files

        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(path))
        if args.scan:
            code = (
                f"import sys; sys.path.insert(0, {str(HERE)!r}); import engine_bench as m; "
                f"m.scan_child({str(path)!r}, {args.engine!r}, {args.sample_size})"
            )
            out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True)
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            label = args.label or f"scan_{round(rows / 1e6)}m"
        else:
            doc = compare(path, args.workers, work, spark=args.spark)
            label = args.label or f"compare_{round(rows / 1e6)}m"
        doc.update(rows=rows, synthesize_seconds=t_synth, cpus=os.cpu_count())
    print(json.dumps(doc, indent=1, default=float))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged[label] = doc
    RESULTS.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print(f"wrote {RESULTS} [{label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
