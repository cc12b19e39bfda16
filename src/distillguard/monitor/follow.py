"""``monitor follow``: the live loop that reads new ledger records, re-scores, applies tiers and keeps its
position (the accumulator, saved after every iteration, so a restarted follower goes on where it stopped)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import UserError
from distillguard.monitor.accumulator import FeatureAccumulator, SketchKeyMismatch, StateRevisionMismatch
from distillguard.monitor.decisions import DecisionLog, Policy, apply_decisions
from distillguard.monitor.report import plan_decisions, report_json
from distillguard.monitor.scan import (
    Analyzer,
    Reference,
    ScanOptions,
    accumulate,
    analyse,
    is_database_url,
    ledger_batches,
    source_name,
    store_created,
)

# --------------------------------------------------------------------------------------------------
# Persistence of the follow state


def save_accumulator(acc: FeatureAccumulator, path: Path, chains: dict[str, int] | None = None) -> None:
    """Save the accumulator (and a shared ledger's chain positions, in the same file: one atomic write)."""
    st = acc.state()
    arrays = dict(st["arrays"])
    meta = dict(st["meta"], chains=chains) if chains is not None else st["meta"]
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_follow_state(
    path: Path, sketch_key: bytes | None = None
) -> tuple[FeatureAccumulator, dict[str, int]]:
    """The saved accumulator and the chain positions saved with it (empty for an embedded ledger).
    ``sketch_key``: the key its bounded sets were ranked under (:class:`SketchKeyMismatch` if not)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: np.array(z[k]) for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a monitor follow state ({exc}); delete it to start over") from None
    chains = {str(k): int(v) for k, v in (meta.pop("chains", None) or {}).items()}
    try:
        return FeatureAccumulator.from_state({"arrays": arrays, "meta": meta}, sketch_key), chains
    except KeyError as exc:
        raise UserError(
            f"{path} was written by another version of the monitor (no {exc.args[0]}); delete it to "
            "re-read the ledger from the start"
        ) from None


@dataclass
class Follower:
    """``monitor follow``: read new ledger records, re-score, apply tiers, remember the position.

    The position (last ``seq``) and the accumulator are saved after every iteration under the decisions
    log's directory, so a restarted follower continues where it stopped instead of re-reading the ledger.
    """

    ledger_path: Path | str
    store: Any
    log: DecisionLog
    policy: Policy
    reference: Reference | None = None
    options: ScanOptions = field(default_factory=ScanOptions)
    clock: Callable[[], float] = time.time
    on_report: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self.state_file = self.log.root / "follow.npz"
        self.notice: str | None = None  # why a saved state was not continued, for the operator
        self.analyzer = Analyzer(self.options)
        states, extra = self.log.load_state()
        self.acc = FeatureAccumulator(
            sample_size=self.options.sample_size, sketch_key=self.options.sketch_key
        )
        # a shared ledger: the position in each replica's chain (the accumulator's seq numbers the reads)
        self.chains: dict[str, int] | None = {} if is_database_url(self.ledger_path) else None
        if self.state_file.is_file() and extra.get("ledger") == source_name(self.ledger_path):
            try:
                self.acc, chains = load_follow_state(self.state_file, self.options.sketch_key)
                self.chains = chains if self.chains is not None else None
            except SketchKeyMismatch as exc:  # another key, or an older version's: read the ledger again
                why = (
                    "by another version of the monitor (its counts were made otherwise)"
                    if isinstance(exc, StateRevisionMismatch)
                    else "under another monitor sketch key (or before keys were recorded)"
                )
                self.notice = (
                    f"note: {self.state_file} was saved {why}; reading the ledger again from the start"
                )

    @property
    def position(self) -> int:
        return self.acc.last_seq

    def step(self) -> dict[str, Any] | None:
        """One iteration; returns the report when there was anything new to score."""
        before = self.acc.rows
        batches = ledger_batches(self.ledger_path, since_seq=self.acc.last_seq, chains=self.chains)
        accumulate(batches, self.acc)
        if self.acc.rows == before:
            return None
        try:
            analysis = analyse(
                self.acc, self.reference, analyzer=self.analyzer, created=store_created(self.store)
            )
        except UserError:  # too few accounts yet to calibrate on the population: read more first
            return None
        store_tiers = {a["name"]: a["tier"] for a in self.store.list_accounts()}
        states, extra = self.log.load_state()
        decisions, states, tiers = plan_decisions(analysis, self.policy, store_tiers, states, self.clock())
        apply_decisions(self.store, self.log, decisions)
        extra.update(ledger=source_name(self.ledger_path), position=self.acc.last_seq)
        save_accumulator(self.acc, self.state_file, self.chains)
        self.log.save_state(states, extra)
        report = report_json(
            analysis, tiers, store_tiers=store_tiers, decisions=decisions, applied=True, policy=self.policy
        )
        if self.on_report is not None:
            self.on_report(report)
        return report

    def run(self, interval: float = 10.0, iterations: int | None = None) -> None:
        """Loop until SIGINT/SIGTERM (or ``iterations`` steps)."""
        stop = {"now": False}

        def handler(signum: int, frame: Any) -> None:
            stop["now"] = True

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in old:
                signal.signal(s, handler)
        except ValueError:  # not the main thread: rely on ``iterations``
            old = {}
        try:
            done = 0
            while not stop["now"]:
                self.step()
                done += 1
                if iterations is not None and done >= iterations:
                    break
                deadline = time.monotonic() + interval
                while not stop["now"] and time.monotonic() < deadline:
                    time.sleep(min(0.2, interval))
        finally:
            for s, h in old.items():
                signal.signal(s, h)
