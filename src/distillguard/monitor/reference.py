"""Benign references: what a scan compares accounts with (:class:`Reference`, saved by ``monitor
calibrate``), whose null a known-good period's reference keeps (:data:`REFERENCE_NULLS`, ``calibrate
--null``), how a period is checked against it (:func:`period_check`), and what a scan says about it
(:func:`reference_info`: the null, how far to trust it, whether tiers are capped). Fitting one on a ledger
is :func:`distillguard.monitor.scan.build_reference`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.errors import UserError
from distillguard.monitor.detectors import Calibration, MMDReference
from distillguard.monitor.features import FEATURE_NAMES, FEATURE_REVISION, REVISION_NOTES
from distillguard.monitor.judge import EntityState, Looks, judge


@dataclass
class Reference:
    """A benign baseline: the calibration of the score and the MMD reference windows."""

    calibration: Calibration
    mmd: MMDReference | None
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "calibration": np.array(json.dumps(self.calibration.to_dict())),
            "meta": np.array(json.dumps(self.meta)),
        }
        if self.mmd is not None:
            arrays["mmd_windows"] = np.stack(self.mmd.windows)
            arrays["mmd_gammas"] = self.mmd.gammas
            arrays["mmd_null"] = self.mmd.null
            arrays["mmd_window"] = np.array(self.mmd.window)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        path = Path(path).expanduser()
        try:
            with np.load(path, allow_pickle=False) as z:
                cal = Calibration.from_dict(json.loads(str(z["calibration"])))
                meta = json.loads(str(z["meta"]))
                mmd = None
                if "mmd_windows" in z:
                    from distillguard.monitor.detectors import _kernel_mean, _sq_dists

                    windows = list(z["mmd_windows"])
                    gammas = np.array(z["mmd_gammas"])
                    mmd = MMDReference(windows, gammas, np.array(z["mmd_null"]), int(z["mmd_window"]))
                    mmd._self_terms = [_kernel_mean(_sq_dists(w, w), gammas, True) for w in windows]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(
                f"{path} is not a monitor reference ({exc}); run `distillguard monitor calibrate`"
            ) from None
        if tuple(cal.features) != FEATURE_NAMES:
            missing = ", ".join(f for f in FEATURE_NAMES if f not in cal.features)
            what = f"features missing: {missing}" if missing else "a different feature set"
            raise UserError(
                f"{path} was fitted by another version of the monitor ({what}); "
                "fit it again with `distillguard monitor calibrate`"
            )
        return cls(cal, mmd, meta)


def period_null(base: Calibration | None, rows: list, k: int) -> Calibration:
    """The period's own null, the base's entities its neighbours (see :func:`build_reference`)."""
    prior = base.rows() if base is not None else []
    return Calibration.fit(prior + rows, k=k, source="reference", neighbours_only=len(prior))


def base_null(base: Calibration | None, rows: list, k: int) -> Calibration:
    """The base's null, the period's entities its neighbours (see :func:`build_reference`)."""
    assert base is not None
    return base.extended(rows)


#: Whose null a known-good period's reference draws its p-values from (``calibrate --null``).
REFERENCE_NULLS: dict[str, Callable[[Calibration | None, list, int], Calibration]] = {
    "base": base_null,
    "period": period_null,
}


def check_null(null: str, base: Reference | None) -> None:
    """A clear error for a null :func:`build_reference` cannot draw from (``null`` as given, or as
    ``auto`` resolved it). A base that keeps its own base's null cannot be extended with ``--null base``:
    one period's neighbours would dilute the other's elicitation rates, and a scan checks its p-values
    against the null's owner alone, which is the shipped reference, not that base."""
    if null not in ("auto", *REFERENCE_NULLS):
        raise UserError(f"--null must be one of auto, {', '.join(REFERENCE_NULLS)}, got {null!r}")
    if base is None and null == "base":
        raise UserError("--null base needs a base to extend (--base shipped or a reference file)")
    if base is not None and null == "base" and base.calibration.added:
        raise UserError(
            f"{base.meta.get('path') or 'the base'} keeps its own base's null (it was calibrated with --null "
            "base), so it cannot be extended on that null again: calibrate on the periods together with "
            "--base shipped, or give --null period"
        )


#: ``--null auto`` takes the period's own null from this many scored accounts, or from as many as the
#: base's null has draws when that is fewer (617 for the shipped reference): by rank alone its p-values
#: then reach about 1/(n + 1), 1e-3 at 999, as fine as the base's own.
PERIOD_NULL_MIN = 999


CHECK_NAMES = 10  # the period's accounts at p <= 0.001 a check names (the lowest p-values first)


def period_check(cal: Calibration, rows: list) -> dict[str, Any]:
    """The period's own accounts judged against ``cal`` on their own looks, each without its record and
    those of the accounts linked to it (leave-one-out, as a scan judges an account of a linked group): how
    many would be called unusual at each level. An account of a kind the period shows once has no
    neighbour of its kind left, as a new customer of a new kind would not: what the base's null says about
    this deployment's benign traffic where the period cannot vouch for it. A linked group's own look is
    not in it."""
    looks = Looks.of(cal, "period check")
    linked = {a: frozenset(ids) for ids, _ in rows if len(ids) > 1 for a in ids}
    ps: dict[str, float] = {}
    for ids, f in rows:
        if len(ids) == 1:
            queries = int(round(10 ** f.get("log_queries", 0.0)))
            st = EntityState(tuple(ids), queries, f, {}, None)  # type: ignore[arg-type]
            ps[ids[0]] = judge(looks, tuple(ids), st, exclude=linked.get(ids[0], frozenset())).p
    arr = np.asarray(list(ps.values()))
    unusual = sorted((p, a) for a, p in ps.items() if p <= 1e-3)[:CHECK_NAMES]
    return {
        "accounts": len(arr),
        "flagged": {f"{a:g}": int((arr <= a).sum()) for a in (0.05, 0.01, 1e-3)},
        "unusual": [a for _, a in unusual],  # the period's own, so an operator can see what kind they are
    }


#: A fitted reference with fewer scored accounts of its own than this is graded "low": its nulls are those
#: accounts alone (the base's entities are neighbours only), so a profile p-value below 1 / (n + 1) rests on
#: a tail extrapolated far past its data, and a campaign the shipped reference flags can pass against it.
#: Twelve is two accounts for each of the shipped reference's six benign kinds: below it, some kind of
#: ordinary traffic has no neighbour of its own kind in the null.
MIN_OWN_ACCOUNTS = 12


def thin_reference(meta: dict[str, Any]) -> str | None:
    """The warning for a reference fitted on too few scored accounts of its own, or None."""
    n = meta.get("accounts")
    if meta.get("shipped") or not isinstance(n, int) or n >= MIN_OWN_ACCOUNTS:
        return None
    return (
        f"fitted on only {n} accounts with enough queries to be scored (fewer than {MIN_OWN_ACCOUNTS}): "
        f"its nulls are theirs alone, profile p-values below {1.0 / (n + 1):.2g} come from a tail "
        "extrapolated far past them and elicitation counts from so few profiles, so it certifies little "
        "and campaigns that the shipped reference flags can pass; calibrate on a longer known-good period"
    )


def base_lineage(base: Reference) -> dict[str, Any]:
    """What a reference extends, as its meta records it: a description naming the shipped version or the
    file (and what that file extended in turn), whether the shipped simulated kinds are in it, its size."""
    m = base.meta
    inner = m.get("base") or {}
    if m.get("shipped"):
        what = f"the shipped reference {m.get('version')}"
    else:
        what = str(m.get("path") or m.get("source") or "a benign reference")
        if inner:
            what += f" (which extends {inner.get('what')})"
    out = {
        "what": what,
        "shipped": bool(m.get("shipped") or inner.get("shipped")),
        "accounts": m.get("accounts"),
        "entities": len(base.calibration.reference_ids),
    }
    # a base that keeps its own base's null is not graded on its period's size
    if warning := m.get("warning") or (thin_reference(m) if m.get("null") != "base" else None):
        out["warning"] = warning
    return out


def reference_info(reference: Reference) -> dict[str, Any]:
    """What a scan says about its reference: its source, size, the null its p-values are drawn from, how
    much to trust them, and whether automatic tiers stop at ``monitor_shipped_max_tier`` (``capped``)."""
    cal, meta = reference.calibration, reference.meta
    n_ref = len(cal.reference_ids)
    n_null = n_ref - cal.neighbours_only - cal.added  # the entities the nulls are drawn from
    shipped = bool(meta.get("shipped"))
    extends = meta.get("base") or {}
    base_what = extends.get("what", "the base reference")
    kind = "shipped default reference" if shipped else "benign reference"
    if cal.added:
        null = f"{base_what}, {n_null} entities (+ {cal.added} known-good neighbours)"
    else:
        null = f"{kind}, {n_null} entities" + (f" (+ {cal.neighbours_only} neighbours)" if extends else "")
    trust = (
        f"{kind} of {n_null} entities ({meta.get('accounts', '?')} accounts); profile p-values "
        f"below {1.0 / (len(cal.null) + 1):.1g} come from a conservatively fitted tail, elicitation "
        f"p-values from binomial counts against every one of its {n_null} profiles"
    )
    if cal.added:
        check = meta.get("check") or {}
        flagged = (check.get("flagged") or {}).get("0.001")
        trust = (
            f"the null is {base_what}'s ({n_null} entities); {cal.added} entities of known-good traffic "
            "are neighbours, so an account like one of them is cleared, and no p-value is below the one "
            "against the base alone (a scan flags nothing the base would not); the p-values hold where the "
            "base's do"
            + (", so automatic tiers stop at monitor_shipped_max_tier" if meta.get("capped") else "")
            + (
                f"; checked on the period: {flagged} of its {check.get('accounts')} accounts, each judged "
                "without its own record and those of the accounts linked to it, at p <= 0.001 (one of a "
                "kind the period shows once has no neighbour of its kind left)"
                if flagged is not None
                else ""
            )
            + "; `monitor calibrate --null period` draws the null from the period itself (needs a long one)"
        )
        if extends.get("warning"):
            trust = f"low: its base is {extends['warning']}. " + trust
        elif meta.get("capped"):
            trust = "medium: " + trust
    elif extends:
        trust = (
            f"a known-good period added to {extends.get('what')}: its {cal.neighbours_only} entities are "
            "neighbours of the profile look (an account is compared with them too) and enter no null. "
            + trust
        )
    fitted_under = meta.get("feature_revision", 1)
    if fitted_under < FEATURE_REVISION:
        changed = "; ".join(REVISION_NOTES[r] for r in range(fitted_under + 1, FEATURE_REVISION + 1))
        trust += f"; fitted under an older reading of the features ({changed}): refit it with "
        trust += "`distillguard monitor calibrate`"
    if not cal.added and (thin := thin_reference(meta)):
        trust = f"low: {thin}. " + trust
    if shipped:
        trust = (
            "medium: simulated benign kinds (" + ", ".join(meta.get("kinds", [])) + "), not "
            "this deployment's traffic, and a campaign cannot vouch for itself against it; a benign kind "
            "of your own that asks for more than all of these can look unusual, so automatic tiers stop "
            "at monitor_shipped_max_tier; run `distillguard monitor calibrate` on a known-good period. "
            + trust
        )
    return {
        "source": "shipped reference" if shipped else "reference",
        "entities": n_ref,
        "null": null,
        "trust": trust,
        "capped": shipped or bool(meta.get("capped")),
        **{k: meta[k] for k in ("version", "path", "base") if k in meta},
    }
