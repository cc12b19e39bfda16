"""Run a forensic audit of a suspect model (local directory or OpenAI-compatible URL).

This is the I/O half of the audit: it asks the suspect, our model and the control models questions, and
hands the answers to the pure statistics in :mod:`.radioactivity`, :mod:`.identity`, :mod:`.provenance`,
:mod:`.sequential` and :mod:`.verdict`. The models it asks are :class:`~.asking.Asked` objects; the
radioactivity readings (closed, served-logprob and open modes) are in :mod:`.modes`.

Order of work, chosen so that a bad suspect fails before anything expensive happens: open the suspect
(a directory must be a loadable model; a URL gets one tiny probe query), then identity questions,
provenance prompts, our own watermarked texts, radioactivity (closed mode, sequential when budgeted; open
mode when the suspect's weights are local and share our vocabulary), decoy keys, verdict. Any
:class:`~distillguard.errors.UserError` propagates: a caller never receives a half-finished result.

Budget: ``budget`` caps the number of queries sent to the suspect. Identity and provenance get at most a
quarter of it each; the rest goes to radioactivity probes, asked in batches, and an anytime-valid e-process
stops the probing as soon as its p-value reaches ``stop_p`` (default: alpha divided by the number of tests,
the level the Holm step needs for the smallest p-value).
"""

from __future__ import annotations

import datetime as dt
import platform
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distillguard.audit import identity as ident
from distillguard.audit import provenance as prov
from distillguard.audit import radioactivity as radio
from distillguard.audit.asking import Asked, Log, control_labels, distinct_targets, is_model_dir
from distillguard.audit.marks import extra_marks
from distillguard.audit.mass import ServedAnswers
from distillguard.audit.modes import (
    OPEN_READINGS,
    PLAIN_READINGS,
    closed_mode,
    closed_result,
    logprob_support,
    open_mode,
    open_readings,
    own_texts,
    restream,
    served_mode,
)
from distillguard.audit.verdict import TestResult, combine
from distillguard.errors import UserError
from distillguard.watermark.schemes import WatermarkSpec

TESTS = ("radioactivity", "identity", "provenance")


@dataclass
class AuditConfig:
    """What to audit and how. Secrets (the watermark key, API keys) never leave this object."""

    suspect: str  # local HF dir or http(s) base URL
    spec: WatermarkSpec  # our watermark (the secret key)
    reference: str | None = None  # our model dir (teacher) for provenance and for our own watermarked texts
    controls: list[str] = field(default_factory=list)  # control model dirs (or URLs)
    prompts: Path | None = None  # probe prompt pool (default: the world's held-out prompts)
    # closed-mode probes from a ledger export instead of the pool: what these accounts asked (none: all)
    probes_ledger: Path | None = None
    probe_accounts: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    model: str | None = None
    identity_names: list[str] = field(default_factory=lambda: ["Aster", "Northwind"])
    budget: int | None = None  # max suspect queries (closed mode); sequential test may stop earlier
    alpha: float = 1e-3
    decoys: int = 100
    max_tokens: int = 64
    seed: int = 0
    tests: tuple[str, ...] = ("radioactivity", "identity", "provenance")
    # --- additions ---
    # radioactivity queries without a budget (default: one pass over the pool, or over the ledger probes)
    probe_queries: int | None = None
    probe_temperature: float = 0.7  # sampling temperature of radioactivity probes
    own_temperature: float = 1.0  # sampling temperature of our own watermarked texts
    own_texts: int | None = None  # our watermarked texts (filter set, open mode); default max(pool, 256)
    filter_windows: bool = False  # closed mode: score only windows that occur in our watermarked texts
    # closed mode: top_logprobs asked with each probe (0: none). Where the suspect returns them (an API that
    # serves logprobs, or local weights), its own answers are also read the "mass" way (audit.mass):
    # one more test in the Holm family
    probe_logprobs: int = 20
    provenance_prompts: int = 64
    batch_size: int = 32  # radioactivity queries per sequential step
    concurrency: int = 8  # parallel requests to a suspect URL
    stop_p: float | None = None  # sequential stop level (default alpha / number of tests)
    # open mode reads our "plain" (unmarked) answers, our "watermarked" ones minus every tuple they contain,
    # or our watermarked ones scored at each window's "first-occurrence" (see audit.reading)
    # several readings (a tuple, or comma-separated) each add one test to the Holm family
    open_texts: str | tuple[str, ...] = "plain"
    # keys the gateway marked with before it rotated to ``spec.key``: each is tested on the same answers
    # (closed mode, and the open readings of our plain texts) and adds its tests to the Holm family, with
    # its own decoys
    retired_keys: list[int | str] = field(default_factory=list)
    # watermarks a tier of the gateway marks with besides ``spec`` (same key), by tier: the restricted tier's
    # Gumbel h 1 (audit.marks.served_marks). Each is tested like a retired key, and under each retired key
    tier_marks: dict[str, WatermarkSpec] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The audit


def _validate(cfg: AuditConfig) -> tuple[str, ...]:
    tests = tuple(dict.fromkeys(cfg.tests))
    unknown = [t for t in tests if t not in TESTS]
    if unknown or not tests:
        raise UserError(
            f"unknown audit test(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TESTS)}"
        )
    if not 0.0 < cfg.alpha < 1.0:
        raise UserError(f"alpha must be in (0, 1), got {cfg.alpha}")
    if cfg.decoys < 0:
        raise UserError(f"decoys must be >= 0, got {cfg.decoys}")
    if cfg.budget is not None and cfg.budget < 1:
        raise UserError(f"budget must be >= 1 query, got {cfg.budget}")
    if cfg.max_tokens < 1:
        raise UserError(f"max_tokens must be >= 1, got {cfg.max_tokens}")
    if cfg.probe_temperature < 0 or cfg.own_temperature < 0:
        raise UserError("sampling temperatures must be >= 0")
    if cfg.batch_size < 1 or cfg.concurrency < 1:
        raise UserError("batch size and concurrency must be >= 1")
    bad = [r for r in open_readings(cfg) if r not in OPEN_READINGS]
    if bad or not open_readings(cfg):
        raise UserError(f"open-mode texts must be among {', '.join(OPEN_READINGS)}, got {cfg.open_texts!r}")
    if cfg.stop_p is not None and not 0.0 < cfg.stop_p < 1.0:
        raise UserError(f"stop_p must be in (0, 1), got {cfg.stop_p}")
    if "identity" in tests and not [n for n in cfg.identity_names if n.strip()]:
        raise UserError("the identity test needs at least one name (--identity NAME)")
    if cfg.probe_accounts and cfg.probes_ledger is None:
        raise UserError("probe accounts need a ledger export to draw from (--probes-ledger PATH)")
    if cfg.probes_ledger is not None and "radioactivity" not in tests:
        raise UserError("probes from a ledger export are radioactivity probes: add --test radioactivity")
    return tests


def _default_world():
    from distillguard.world import build_world

    return build_world("default", progress=True)


def run_audit(cfg: AuditConfig, *, progress: bool = True) -> dict:
    """Audit ``cfg.suspect`` and return the JSON-serialisable evidence document (see module docstring)."""
    from distillguard.config import num_threads

    started = _now()
    tests = _validate(cfg)
    log = Log(progress)
    ledger = None
    if cfg.probes_ledger is not None:  # read before any model loads: a bad export costs nothing
        from distillguard.audit.probes import DEFAULT_LIMIT, ledger_probes

        limit = cfg.budget if cfg.budget is not None else cfg.probe_queries or DEFAULT_LIMIT
        ledger = ledger_probes(cfg.probes_ledger, cfg.probe_accounts, limit=limit, seed=cfg.seed)
        log(
            f"probes: {len(ledger.prompts)} of {ledger.available} distinct prompts asked by "
            f"{'every account' if ledger.accounts is None else ', '.join(ledger.accounts)} in {ledger.path}"
        )
    try:
        import torch

        torch.set_num_threads(num_threads())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass

    # 1. the suspect first: a bad directory or URL fails before any work
    suspect = Asked(cfg.suspect, "suspect", api_keys=cfg.api_keys, model=cfg.model)
    log(f"suspect: {suspect.name} ({'API' if suspect.is_url else 'local weights'})")
    # the served reading needs probes that do not depend on our key (audit.mass): never ledger probes
    served_k, served_why = logprob_support(cfg, suspect, "radioactivity" in tests and ledger is None)
    if ledger is not None and cfg.probe_logprobs > 0:
        served_why = (
            "the probes come from a ledger: a probe can hold a fragment of our watermarked text, whose first "
            "token was chosen under the list of a window the probe does not show; the served reading's null "
            "needs probes that do not depend on our key (audit/mass.py)"
        )

    # 2. our side: model, tokenizer, watermark bound to our vocabulary, prompt pool
    world = None
    reference = cfg.reference
    if reference is None or cfg.prompts is None:
        world = _default_world()
        reference = reference or str(world.teacher)
    if not is_model_dir(reference):
        raise UserError(f"reference (our model): not a model directory: {reference}")
    ours = Asked(reference, "reference")
    spec = cfg.spec.with_vocab(int(ours.model.config.vocab_size)) if cfg.spec.vocab_size is None else cfg.spec
    from distillguard.text.prompts import load_pool

    pool_path = Path(cfg.prompts) if cfg.prompts is not None else world.prompts
    pool = load_pool(pool_path)
    probe_pool = ledger.prompts if ledger is not None else pool  # closed-mode probes
    distinct_targets(cfg)
    controls = [Asked(c, f"control {i + 1}") for i, c in enumerate(cfg.controls)]
    names = [n.strip() for n in cfg.identity_names if n.strip()]

    skipped: list[dict] = []
    run_identity = "identity" in tests
    run_provenance = "provenance" in tests
    if (run_identity or run_provenance) and not controls:
        for t in ("identity", "provenance"):
            if t in tests:
                skipped.append(
                    {"name": t, "reason": "no control models given (models not trained on our outputs)"}
                )
        run_identity = run_provenance = False
    run_radio = "radioactivity" in tests
    same_vocab = (
        not suspect.is_url
        and suspect.tokenizer is not None
        and suspect.tokenizer.get_vocab() == ours.tokenizer.get_vocab()
    )
    run_open = run_radio and same_vocab
    if run_radio and not run_open:
        reason = (
            "the suspect is an API: open-model reading needs local weights"
            if suspect.is_url
            else "the suspect's vocabulary differs from ours: its predictions cannot be scored with our key"
        )
        skipped.append({"name": "radioactivity_open", "reason": reason})
    run_served = run_radio and served_k > 0
    if run_radio and not run_served:
        skipped.append({"name": "radioactivity_closed_mass", "reason": served_why})
    readings = open_readings(cfg)
    tier_marks = {
        t: m if m.vocab_size else m.with_vocab(int(spec.vocab_size)) for t, m in cfg.tier_marks.items()
    }
    # each mark adds a closed test and one per plain-text reading
    marks = extra_marks(spec, cfg.retired_keys, tier_marks)
    family = (
        int(run_identity)
        + int(run_provenance)
        + int(run_radio) * (1 + len(marks))
        + int(run_served) * (1 + len(marks))
        + int(run_open) * (len(readings) + len(marks) * sum(r in PLAIN_READINGS for r in readings))
    )
    stop_p = cfg.stop_p if cfg.stop_p is not None else cfg.alpha / max(family, 1)

    # budget split
    battery = ident.battery(names)
    id_n = len(battery)
    prov_n = min(cfg.provenance_prompts, len(pool))
    radio_n = cfg.probe_queries if cfg.probe_queries is not None else len(probe_pool)
    if cfg.budget is not None:
        left = cfg.budget - suspect.queries
        id_n = min(id_n, left // 4) if run_identity else 0
        prov_n = min(prov_n, left // 4) if run_provenance else 0
        radio_n = left - id_n - prov_n if run_radio else 0
        if (run_identity and id_n < 1) or (run_provenance and prov_n < 1) or (run_radio and radio_n < 1):
            raise UserError(f"budget of {cfg.budget} queries is too small for the tests asked")
    results: list[TestResult] = []
    transcripts: list[dict] = []
    series: dict = {"radioactivity": {}, "decoys": {}, "identity": {}}  # empty: that test did not run

    def record(kind: str, model: str, prompts: Sequence[str], answers) -> None:
        for p, a in zip(prompts, answers, strict=True):
            transcripts.append(
                {"kind": kind, "prompt": p, "response": None if a is None else a.text, "model": model}
            )

    def greedy(m: Asked, prompts: Sequence[str], kind: str, label: str) -> list[str | None]:
        """Greedy answers; None where a request failed for good. A model that answers none is an error."""
        answers = m.ask(
            prompts, max_tokens=cfg.max_tokens, temperature=0.0, seed=cfg.seed, concurrency=cfg.concurrency
        )
        record(kind, label, prompts, answers)
        if prompts and all(a is None for a in answers):
            raise UserError(
                f"{m.role} at {m.name} answered none of the {kind} queries: {(m.errors or ['no answer'])[0]}"
            )
        return [None if a is None else a.text for a in answers]

    labels = control_labels(controls)

    # 3. identity leakage
    if run_identity:
        items = (
            battery
            if id_n >= len(battery)
            else sorted(random.Random(f"{cfg.seed}:identity").sample(battery, id_n))
        )
        questions, asked = [q for q, _ in items], [p for _, p in items]
        log(f"identity: {len(asked)} questions to the suspect and {len(controls)} control(s)")
        s_ans = greedy(suspect, asked, "identity", "suspect")
        c_ans = {
            label: greedy(c, asked, "identity", f"control:{c.name}")
            for label, c in zip(labels, controls, strict=True)
        }
        result = ident.identity_test(questions, s_ans, c_ans, names, alpha=cfg.alpha / family)
        results.append(result)
        series["identity"] = {
            "names": names,
            "suspect": result.details["suspect"],
            "controls": result.details["controls"],
        }

    # 4. behavioural provenance
    if run_provenance:
        prompts = random.Random(f"{cfg.seed}:provenance").sample(list(pool), prov_n)
        log(f"provenance: {len(prompts)} prompts to the suspect, our model and {len(controls)} control(s)")
        s_ans = greedy(suspect, prompts, "provenance", "suspect")
        o_ans = greedy(ours, prompts, "provenance", "ours")
        c_ans = {
            label: greedy(c, prompts, "provenance", f"control:{c.name}")
            for label, c in zip(labels, controls, strict=True)
        }
        ok = [i for i in range(len(prompts)) if s_ans[i] is not None and o_ans[i] is not None]
        ok = [i for i in ok if all(a[i] is not None for a in c_ans.values())]  # every model answered
        results.append(
            prov.provenance_test(
                [s_ans[i] for i in ok],
                [o_ans[i] for i in ok],
                {k: [a[i] for i in ok] for k, a in c_ans.items()},
                alpha=cfg.alpha / family,  # the Holm level the smallest p-value must reach
            )
        )

    # 5. radioactivity
    queries_radio = 0
    stopped_early = False
    if run_radio:
        need_own = cfg.filter_windows or (run_open and any(r not in PLAIN_READINGS for r in readings))
        own = own_texts(cfg, ours, spec, pool, log) if need_own else None
        allowed = (
            radio.own_windows(own["completions"], own["prompts"], spec.window) if cfg.filter_windows else None
        )
        served = ServedAnswers.empty(served_k) if run_served else None
        closed, queries_radio, stopped_early = closed_mode(
            cfg, suspect, ours, spec, probe_pool, radio_n, allowed, stop_p, same_vocab, record, log, served
        )
        results.append(closed["result"])
        series["radioactivity"] = closed["series"]
        series["decoys"] = closed["decoys"]
        if served is not None:
            results += served_mode(cfg, ours, spec, marks, served, stopped_early, log)
        for mark in marks:  # the same answers, scored under each other watermark they may carry
            caveats = [*closed["caveats"], mark.why]
            if cfg.budget is not None:
                caveats.append(
                    "the sequential stop followed the main watermark; this p-value is fixed-sample"
                )
            prep, kept = closed["prep"], allowed
            if (mark.spec.window, mark.spec.hf_compat) != (spec.window, spec.hf_compat):  # other tuples
                kept = (
                    radio.own_windows(own["completions"], own["prompts"], mark.spec.window)
                    if allowed is not None
                    else None
                )
                prep = restream(mark.spec, closed["texts"], kept)
            extra = closed_result(cfg, mark.spec, prep, None, kept, closed["details"], caveats)
            extra["result"].name += mark.suffix
            results.append(extra["result"])
        texts = {True: own}  # our watermarked texts (if generated), and our plain ones on demand
        preds: dict[bool, list] = {}  # the suspect's reading of each, computed once
        for i, reading in enumerate(readings if run_open else ()):
            marked = reading not in PLAIN_READINGS
            if texts.get(marked) is None:
                texts[marked] = own_texts(cfg, ours, spec, pool, log, watermarked=marked)
            opened = open_mode(
                cfg, suspect, spec, texts[marked], log, reading=reading, preds=preds, key=marked, ours=ours
            )
            suffix = "" if len(readings) == 1 else "_" + reading.replace("-", "_")
            opened["result"].name += suffix
            results.append(opened["result"])
            if i == 0:  # the report's figures show the first reading
                series["radioactivity_open"] = opened["series"]
                series["decoys_open"] = opened["decoys"]
            if suffix:
                series["radioactivity_open" + suffix] = opened["series"]
            if reading in PLAIN_READINGS:  # the suspect's reading of our plain texts, under each other mark
                for mark in marks:
                    extra = open_mode(cfg, suspect, mark.spec, texts[marked], log, reading=reading,
                                       preds=preds, key=marked, ours=ours)  # fmt: skip
                    extra["result"].name += suffix + mark.suffix
                    extra["result"].caveats.append(mark.why)
                    results.append(extra["result"])

    combined = combine(results, cfg.alpha)
    log(f"verdict: {combined['verdict']} (combined p = {combined['combined_p_value']:.3g})")
    return {
        "verdict": combined["verdict"],
        "combined_p_value": combined["combined_p_value"],
        "log10_combined_p_value": combined["log10_combined_p_value"],
        "alpha": cfg.alpha,
        "family": combined["family"],
        "reasons": combined["reasons"],
        "meaning": combined["meaning"],
        "alternatives": combined["alternatives"],
        "tests": combined["tests"],
        "skipped": skipped,
        "queries_used": suspect.queries,
        "queries_failed": suspect.failed,
        "radioactivity_queries": queries_radio,
        "stopped_early": stopped_early,
        "transcripts": transcripts,
        "series": series,
        "config": {
            **_public_config(cfg, suspect, spec, pool_path, reference, controls, stop_p),
            "probes": ledger.source()
            if ledger is not None
            else {"source": "prompts", "prompts": str(pool_path)},
        },
        "versions": _versions(),
        "started": started,
        "finished": _now(),
    }


def _public_config(cfg: AuditConfig, suspect: Asked, spec, pool_path, reference, controls, stop_p) -> dict:
    """Everything needed to rerun the audit except secrets: no watermark key, no API keys."""
    return {
        "suspect": suspect.name,
        "suspect_kind": "url" if suspect.is_url else "dir",
        "watermark": spec.describe(),
        "retired_keys": len(cfg.retired_keys),  # how many, never which
        "tier_marks": {t: m.describe() for t, m in cfg.tier_marks.items()},
        "reference": str(reference),
        "controls": [c.name for c in controls],
        "prompts": str(pool_path),
        "model": cfg.model,
        "api_keys": len(cfg.api_keys),
        "identity_names": list(cfg.identity_names),
        "budget": cfg.budget,
        "alpha": cfg.alpha,
        "decoys": cfg.decoys,
        "max_tokens": cfg.max_tokens,
        "seed": cfg.seed,
        "tests": list(cfg.tests),
        "probe_queries": cfg.probe_queries,
        "probe_temperature": cfg.probe_temperature,
        "own_temperature": cfg.own_temperature,
        "own_texts": cfg.own_texts,
        "filter_windows": cfg.filter_windows,
        "open_texts": list(open_readings(cfg)),
        "provenance_prompts": cfg.provenance_prompts,
        "batch_size": cfg.batch_size,
        "stop_p": stop_p,
    }


def _versions() -> dict:
    import importlib.metadata as md

    import distillguard

    out = {"distillguard": distillguard.__version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "numpy", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = None
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
