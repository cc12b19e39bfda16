"""The default benign reference that ships with the package: what a new deployment is scored against until
``distillguard monitor calibrate`` fits one on its own known-good traffic.

It is fitted on a large simulated population of benign kinds (:mod:`distillguard.monitor.personas`:
casual chat users, researchers who ask for step-by-step reasoning and logprobs, evaluation harnesses,
support bots, coding products, nightly batch summarisers) at a few days' volume, never on
attackers and never on the held-out traffic of :mod:`distillguard.heldout`. A campaign cannot vouch for
itself against it, which the scanned population (the alternative at a cold start) cannot promise. Its
limit: it knows only those kinds, so a benign kind of the deployment's own that asks for more than all of
them can look unusual; the scan says which reference it used and how far to trust it.

The file is versioned (:data:`VERSION`) and rebuilt from the simulator by ``make reference`` (``python -m
distillguard.monitor.shipped``) whenever the monitor's features change; a reference fitted on another
feature set is refused when loaded.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VERSION = "sim-8"
SCALE = "large"
SEEDS = (101,)
# ``volume_rows`` > 0 adds the benign accounts of a synthetic month (``synth.synthesize_parquet``:
# researchers with a thousand queries, coding products with tens of thousands). Not in the shipped file:
# it removed the seed case's researcher false positives but let a CoT harvester pass as a high-volume
# researcher and opened the intent look for toy users (README, "Scale").
VOLUME_ROWS = 0
VOLUME_SEED = 303
PATH = Path(__file__).with_name("data") / f"reference-{VERSION}.npz"


def shipped_path() -> Path:
    """Where the shipped reference lives inside the installed package."""
    return PATH


def load_shipped_reference():
    """The shipped default reference (a :class:`~distillguard.monitor.scan.Reference`)."""
    from distillguard.errors import UserError
    from distillguard.monitor.scan import Reference

    if not PATH.is_file():
        raise UserError(
            f"the shipped monitor reference {PATH.name} is missing from this installation; rebuild it with "
            "`make reference`, or fit one with `distillguard monitor calibrate`"
        )
    ref = Reference.load(PATH)
    ref.meta = {**ref.meta, "path": str(PATH)}
    return ref


def build_shipped_reference(
    out: Path = PATH,
    *,
    scale: str = SCALE,
    seeds: tuple[int, ...] = SEEDS,
    volume_rows: int = VOLUME_ROWS,
    log: Any = None,
) -> dict[str, Any]:
    """Simulate benign-only ledgers at ``scale`` (one per seed) and, with ``volume_rows``, a synthetic month
    of that many rows (only its benign accounts are fitted); fit the reference and save it at ``out``."""
    from distillguard.monitor.personas import BENIGN
    from distillguard.monitor.scan import (
        ScanOptions,
        accumulate,
        build_reference,
        ledger_batches,
        parquet_batches,
    )
    from distillguard.monitor.synth import read_labels, synthesize_ledger, synthesize_parquet

    say = log or (lambda m: None)
    opts = ScanOptions()
    t0 = time.time()
    acc = None
    with tempfile.TemporaryDirectory(prefix="dg-shipped-") as tmp:
        for seed in seeds:
            ledger = Path(tmp) / f"benign-{seed}" / "ledger.db"
            synthesize_ledger(ledger, scale=scale, seed=seed, personas=BENIGN)
            say(f"simulated benign ledger, seed {seed} ({time.time() - t0:.0f} s)")
            acc = accumulate(ledger_batches(ledger), acc, sample_size=opts.sample_size)
        benign = list(acc.accounts)
        if volume_rows:
            month = Path(tmp) / "month"
            synthesize_parquet(month, rows=volume_rows, seed=VOLUME_SEED)
            acc = accumulate(parquet_batches(month), acc, sample_size=opts.sample_size)
            labels = read_labels(month / "labels.json")
            benign += [a for a, x in labels.items() if x.get("kind") == "benign" and a in acc.index]
            say(f"synthetic month of {volume_rows} rows, benign accounts kept ({time.time() - t0:.0f} s)")
    meta = {
        "version": VERSION,
        "shipped": True,
        "source": f"simulator, scale {scale}, seeds {','.join(map(str, seeds))}, benign personas only"
        + (f"; the benign accounts of a synthetic month of {volume_rows} rows" if volume_rows else ""),
        "kinds": sorted(BENIGN),
    }
    ref = build_reference(acc, opts, benign=benign, meta=meta)
    path = ref.save(out)
    say(f"fitted on {ref.meta.get('accounts')} accounts; wrote {path} ({time.time() - t0:.0f} s)")
    return {"path": str(path), **ref.meta}


if __name__ == "__main__":  # make reference
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else PATH
    build_shipped_reference(out, log=lambda m: print(m, flush=True))
