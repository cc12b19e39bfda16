"""Run a forensic audit of a suspect model (local directory or OpenAI-compatible URL).

This is the I/O half of the audit: it asks the suspect, our model and the control models questions, and
hands the answers to the pure statistics in :mod:`.radioactivity`, :mod:`.identity`, :mod:`.provenance`,
:mod:`.sequential` and :mod:`.verdict`.

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

import asyncio
import datetime as dt
import hashlib
import math
import platform
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from distillguard.audit import identity as ident
from distillguard.audit import provenance as prov
from distillguard.audit import radioactivity as radio
from distillguard.audit.forward import predictions
from distillguard.audit.marks import extra_marks
from distillguard.audit.mass import ServedAnswers
from distillguard.audit.sequential import EProcess
from distillguard.audit.verdict import TestResult, combine
from distillguard.errors import UserError
from distillguard.watermark.schemes import WatermarkSpec

TESTS = ("radioactivity", "identity", "provenance")
OPEN_READINGS = ("plain", "watermarked", "first-occurrence", "mass")
PLAIN_READINGS = ("plain", "mass")  # readings of our unwatermarked texts: valid under any other watermark too


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
# Models we ask questions


class _Asked:
    """A model we query through :func:`~distillguard.models.open_model`: a local directory or a URL."""

    def __init__(self, target: str, role: str, *, api_keys: Sequence[str] = (), model: str | None = None):
        from distillguard.models import open_model

        self.role = role
        self.queries = 0
        self.failed = 0
        self.errors: list[str] = []
        target = str(target).strip()
        self.is_url = target.lower().startswith(("http://", "https://"))
        if "://" in target and not self.is_url:
            raise UserError(f"{role} URL must be http:// or https://, got {target!r}")
        try:
            if self.is_url:
                self.client = open_model(target, api_keys, role=role, model=model, max_retries=3)
            else:
                if api_keys:
                    raise UserError(f"API keys apply to a {role} URL, not to a model directory")
                p = Path(target).expanduser()
                if not p.exists():
                    raise UserError(f"{role} is neither a URL nor an existing model directory: {target}")
                self.client = open_model(p, role=role, batch_size=32)
        except UserError as exc:
            raise self._rename(exc) from None
        self.name = self.client.name

    def _rename(self, exc: UserError) -> UserError:
        """The client's errors name the role already; others (a loader's, a bad option) get it as a prefix."""
        msg = str(exc)
        if self.role not in msg:
            msg = f"{self.role}: {msg}"
        return UserError(msg)

    @property
    def model(self):
        return None if self.is_url else self.client.model

    @property
    def tokenizer(self):
        return None if self.is_url else self.client.tokenizer

    def ask(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int,
        temperature: float,
        seed: int,
        concurrency: int,
        top_logprobs: int | None = None,
    ):
        """Answers in prompt order; ``None`` where a request failed for good (counted in ``failed``)."""
        if not prompts:
            return []
        self.queries += len(prompts)
        try:
            if not self.is_url:
                return self.client.answer_many(
                    prompts,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    top_logprobs=top_logprobs,
                )
            return asyncio.run(
                self._ask_url(prompts, max_tokens, temperature, seed, concurrency, top_logprobs)
            )
        except UserError as exc:
            raise self._rename(exc) from None

    async def _ask_url(self, prompts, max_tokens, temperature, seed, concurrency, top_logprobs=None):
        """Concurrent requests; each carries a seed derived from ``seed`` and its position, so a server
        that honours OpenAI's ``seed`` answers the same audit the same way (reproducible evidence)."""
        from distillguard.models import ModelError

        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(i: int, p: str):
            async with sem:
                try:
                    return await self.client.answer(
                        p,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        top_logprobs=top_logprobs,
                        seed=_seed(seed, i),
                    )
                except ModelError as exc:
                    self.failed += 1
                    if len(self.errors) < 10:
                        self.errors.append(str(exc))
                    return None

        try:
            return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        finally:
            await self.client.aclose()


def _control_labels(controls: Sequence[_Asked]) -> list[str]:
    """One distinct label per control (two directories may carry the same model name)."""
    labels: list[str] = []
    for i, c in enumerate(controls):
        clash = c.name in labels or c.name == "suspect"  # "suspect" is the suspect's own label
        labels.append(f"{c.name} (control {i + 1})" if clash else c.name)
    return labels


def _distinct_targets(cfg: AuditConfig) -> None:
    """Each control model once, and never the suspect: a model listed twice would count as two models."""

    def key(t: str) -> str:
        t = str(t).strip()
        return t.rstrip("/").lower() if "://" in t else str(Path(t).expanduser().resolve())

    seen = {key(cfg.suspect): "the suspect"}
    for c in cfg.controls:
        if key(c) in seen:
            raise UserError(f"control {c} is listed twice or is {seen[key(c)]}: list each control model once")
        seen[key(c)] = "another control"


def _is_model_dir(path: str) -> bool:
    return (Path(path).expanduser() / "config.json").is_file()


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


def _seed(*parts) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def _prompt_stream(pool: Sequence[str], seed: int, tag: str):
    """Pool prompts in a fresh seeded order per pass, forever."""
    epoch = 0
    while True:
        order = list(range(len(pool)))
        random.Random(f"{seed}:{tag}:{epoch}").shuffle(order)
        for i in order:
            yield pool[i]
        epoch += 1


def _take(it, n: int) -> list[str]:
    return [next(it) for _ in range(n)]


class _Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[audit] {msg}", file=sys.stderr, flush=True)


def run_audit(cfg: AuditConfig, *, progress: bool = True) -> dict:
    """Audit ``cfg.suspect`` and return the JSON-serialisable evidence document (see module docstring)."""
    from distillguard.config import num_threads

    started = _now()
    tests = _validate(cfg)
    log = _Log(progress)
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
    suspect = _Asked(cfg.suspect, "suspect", api_keys=cfg.api_keys, model=cfg.model)
    log(f"suspect: {suspect.name} ({'API' if suspect.is_url else 'local weights'})")
    # the served reading needs probes that do not depend on our key (audit.mass): never ledger probes
    served_k, served_why = _logprob_support(cfg, suspect, "radioactivity" in tests and ledger is None)
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
    if not _is_model_dir(reference):
        raise UserError(f"reference (our model): not a model directory: {reference}")
    ours = _Asked(reference, "reference")
    spec = cfg.spec.with_vocab(int(ours.model.config.vocab_size)) if cfg.spec.vocab_size is None else cfg.spec
    from distillguard.text.prompts import load_pool

    pool_path = Path(cfg.prompts) if cfg.prompts is not None else world.prompts
    pool = load_pool(pool_path)
    probe_pool = ledger.prompts if ledger is not None else pool  # closed-mode probes
    _distinct_targets(cfg)
    controls = [_Asked(c, f"control {i + 1}") for i, c in enumerate(cfg.controls)]
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

    def greedy(m: _Asked, prompts: Sequence[str], kind: str, label: str) -> list[str | None]:
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

    labels = _control_labels(controls)

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
        own = _own_texts(cfg, ours, spec, pool, log) if need_own else None
        allowed = (
            radio.own_windows(own["completions"], own["prompts"], spec.window) if cfg.filter_windows else None
        )
        served = ServedAnswers.empty(served_k) if run_served else None
        closed, queries_radio, stopped_early = _closed_mode(
            cfg, suspect, ours, spec, probe_pool, radio_n, allowed, stop_p, same_vocab, record, log, served
        )
        results.append(closed["result"])
        series["radioactivity"] = closed["series"]
        series["decoys"] = closed["decoys"]
        if served is not None:
            results += _served_mode(cfg, ours, spec, marks, served, stopped_early, log)
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
                prep = _restream(mark.spec, closed["texts"], kept)
            extra = _closed_result(cfg, mark.spec, prep, None, kept, closed["details"], caveats)
            extra["result"].name += mark.suffix
            results.append(extra["result"])
        texts = {True: own}  # our watermarked texts (if generated), and our plain ones on demand
        preds: dict[bool, list] = {}  # the suspect's reading of each, computed once
        for i, reading in enumerate(readings if run_open else ()):
            marked = reading not in PLAIN_READINGS
            if texts.get(marked) is None:
                texts[marked] = _own_texts(cfg, ours, spec, pool, log, watermarked=marked)
            opened = _open_mode(
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
                    extra = _open_mode(cfg, suspect, mark.spec, texts[marked], log, reading=reading,
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


_OWN_CACHE: dict[tuple, dict] = {}
_OWN_CACHE_MAX = 4


def _model_stamp(path: str) -> tuple:
    """What identifies a model directory's contents cheaply: its files' names, sizes and mtimes."""
    p = Path(path).expanduser().resolve()
    return (str(p),) + tuple(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()
    )


def _own_texts(
    cfg: AuditConfig, ours: _Asked, spec: WatermarkSpec, pool: Sequence[str], log, *, watermarked: bool = True
) -> dict:
    """Our watermarked answers (our model, our key) to pool prompts: filter set and open-mode texts.

    Generation is seeded, so the same request gives the same texts; they are memoised in this process
    (a few entries) so that auditing several suspects against one reference generates them once.
    """
    from distillguard.lm.chat import prompt_ids
    from distillguard.watermark.generate import bind_to_model

    n = cfg.own_texts if cfg.own_texts is not None else max(len(pool), 256)
    prompts = _take(_prompt_stream(pool, cfg.seed, "own"), n)
    memo = (
        _model_stamp(ours.name), spec, watermarked, hashlib.sha256("\x00".join(prompts).encode()).hexdigest(),
        cfg.max_tokens, cfg.own_temperature, cfg.seed,
    )  # fmt: skip
    if memo in _OWN_CACHE:
        log(f"our watermarked texts: {n} answers (already generated in this process)")
        return _OWN_CACHE[memo]
    log(f"our watermarked texts: {n} answers from {ours.name}")
    ours.client.watermark = bind_to_model(spec, ours.model) if watermarked else None
    try:
        answers = []
        for start in range(0, n, 256):
            answers += ours.client.answer_many(
                prompts[start : start + 256],
                max_tokens=cfg.max_tokens,
                temperature=cfg.own_temperature,
                seed=_seed(cfg.seed, "own", start),
            )
    finally:
        ours.client.watermark = None
    own = {
        "prompts": prompt_ids(ours.tokenizer, prompts, {}),
        "completions": [a.token_ids for a in answers],
        "questions": prompts,
    }
    while len(_OWN_CACHE) >= _OWN_CACHE_MAX:
        _OWN_CACHE.pop(next(iter(_OWN_CACHE)))
    _OWN_CACHE[memo] = own
    return own


def _closed_mode(
    cfg,
    suspect: _Asked,
    ours: _Asked,
    spec,
    pool,
    n_queries,
    allowed,
    stop_p,
    same_vocab,
    record,
    log,
    served,
):
    """Probe the suspect in batches; score its answers as one growing corpus; stop when budgeted and sure.
    With ``served`` (:class:`ServedAnswers`) each probe asks for its top logprobs too, and they are kept."""
    from distillguard.lm.chat import prompt_ids
    from distillguard.lm.tokens import token_bytes_table
    from distillguard.watermark.schemes import token_scores

    tok = ours.tokenizer
    table = token_bytes_table(tok) if served is not None else None
    stream = radio.TupleStream(spec.window, allowed_windows=allowed, spec=spec)
    seen: list[tuple[list, list]] = []  # the answers' token ids, for watermarks of other widths
    ep = EProcess.for_spec(spec)
    prompts_it = _prompt_stream(pool, cfg.seed, "probe")
    cache: dict = {}
    used = 0
    answered = 0
    stopped = False
    step = 0
    # budgeted: small steps so the sequential test can stop early; otherwise wide (faster) batches
    step_size = cfg.batch_size if cfg.budget is not None else max(cfg.batch_size, 128)
    log(f"radioactivity (closed): up to {n_queries} probes" + (" (sequential)" if cfg.budget else ""))
    while used < n_queries:
        batch = _take(prompts_it, min(step_size, n_queries - used))
        answers = suspect.ask(
            batch,
            max_tokens=cfg.max_tokens,
            temperature=cfg.probe_temperature,
            seed=_seed(cfg.seed, "probe", step),
            concurrency=cfg.concurrency,
            top_logprobs=served.k if served is not None else None,
        )
        used += len(batch)
        step += 1
        record("radioactivity", "suspect", batch, answers)
        keep = [(p, a) for p, a in zip(batch, answers, strict=True) if a is not None]
        if served is not None:  # every probe is a barrier, answered or not (a stateful suspect read it)
            probe_ids = tok(batch, add_special_tokens=False)["input_ids"]
            served.bar(q for q, a in zip(probe_ids, answers, strict=True) if a is None)
            answered_ids = [q for q, a in zip(probe_ids, answers, strict=True) if a is not None]
        answered += len(keep)
        if not keep:
            continue
        pids = prompt_ids(tok, [p for p, _ in keep], cache)
        comps = [
            a.token_ids
            if same_vocab and a.token_ids is not None
            else tok(a.text, add_special_tokens=False)["input_ids"]
            for _, a in keep
        ]
        seen.append((comps, pids))
        if served is not None:
            for (_, a), pid, q in zip(keep, pids, answered_ids, strict=True):
                served.add(table, pid, q, a.logprobs)
        added = stream.add_texts(comps, pids)
        if added:
            w, t = stream.last(added)
            ep.update(token_scores(spec, w, t).numpy())
        else:
            ep.update([])
        if cfg.budget is not None and ep.crossed(stop_p):
            stopped = used < n_queries
            break
    if not answered:
        raise UserError(
            f"suspect at {suspect.name} answered none of {used} probes"
            + (f": {suspect.errors[0]}" if suspect.errors else "")
        )
    prep = stream.prepared()
    log(f"radioactivity (closed): {len(stream)} tuples from {answered} answers; {cfg.decoys} decoy keys")
    caveats = []
    if not same_vocab:
        caveats.append(
            "the suspect's answers were re-tokenised with our tokenizer; its own token boundaries may differ"
        )
    if cfg.probe_temperature > 0:
        caveats.append(f"probes sampled at temperature {cfg.probe_temperature:g}")
    details = {
        "queries": used,
        "answers": answered,
        "completion_tokens": stream.completion_tokens,
        "candidate_tuples": stream.offered,
        "stop_p": stop_p if cfg.budget is not None else None,
        "stopped_early": stopped,
        "anytime_log10_p_value": ep.log_p / math.log(10),
    }
    out = _closed_result(cfg, spec, prep, ep if cfg.budget is not None else None, allowed, details, caveats)
    out["prep"], out["details"], out["caveats"], out["texts"] = prep, details, caveats, seen
    return out, used, stopped


def _logprob_support(cfg: AuditConfig, suspect: _Asked, wanted: bool) -> tuple[int, str]:
    """How many top logprobs the closed-mode probes ask for (0: none), and if none, why. A URL suspect gets
    one tiny request first: it must answer one (else nothing here can work), and its answer says whether
    the API serves logprobs (at least one alternative per token). An API that refuses ``k`` is asked for
    OpenAI's maximum (20) if ``k`` was more, then without."""
    k = int(cfg.probe_logprobs) if wanted else 0
    if not suspect.is_url:
        return k, "" if k > 0 else "probe_logprobs is 0"

    def hello(top: int | None):
        asked = suspect.ask(["Hello"], max_tokens=1, temperature=0.0, seed=0, concurrency=1, top_logprobs=top)
        return asked[0]

    for top in dict.fromkeys(t for t in (k, min(k, 20)) if t > 0):
        answer = hello(top)
        if answer is not None:
            listed = bool(answer.logprobs) and all(e.get("top_logprobs") for e in answer.logprobs)
            return (top, "") if listed else (0, "the suspect's API returned no top_logprobs")
    if hello(None) is None:
        raise UserError(f"suspect at {suspect.name} fails every request: {suspect.errors[-1]}")
    if k <= 0:
        return 0, "probe_logprobs is 0"
    return 0, f"the suspect's API refused top_logprobs={k}: {suspect.errors[0]}"


def _served_mode(
    cfg, ours: _Asked, spec, marks, served: ServedAnswers, stopped: bool, log
) -> list[TestResult]:
    """The mass reading (audit.mass) of the suspect's own answers to the closed-mode probes, from the top
    logprobs it returned, weighted against our model's probabilities of the same tokens: under ``spec`` and
    under each other mark the answers may carry."""
    from distillguard.audit import mass as ms
    from distillguard.audit.forward import listed_probs

    tok = ours.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ref = listed_probs(ours.model, served.seqs, served.starts, served.top_idx, pad)
    tables: dict[int, tuple] = {}
    caveats = []
    if served.without_logprobs or served.unmapped or served.malformed:
        caveats.append(
            f"not read: {served.without_logprobs} answer(s) without logprobs, {served.unmapped} with a token "
            f"outside our vocabulary, {served.malformed} with malformed logprobs"
        )
    if cfg.probe_temperature > 0:
        caveats.append(f"probes sampled at temperature {cfg.probe_temperature:g}")
    out = []
    for s, suffix, why in [(spec, "", None), *((m.spec, m.suffix, m.why) for m in marks)]:
        if s.window not in tables:
            tables[s.window] = ms.served_table(served, s.window, ref)
        table, barred = tables[s.window]
        m, dropped = ms.keyed(s, table)
        if not suffix:
            log(f"radioactivity (closed, mass): {m.n_windows} windows of {served.answers} answers; decoys")
        decoys = ms.mass_null(s, m, cfg.decoys, cfg.seed + 3)
        prep = SimpleNamespace(aggregate_count=m.n_windows, degenerate_corpus=dropped)
        result = radio.radioactivity_test(
            "closed", s, prep, decoys, reading="mass", caveats=[*caveats, *([why] if why else [])],
            null=ms.null_text(s, texts="its own answers to our probes (no window that occurs in a probe)"),
            statistic_name="z: the suspect's extra expected score over our model's, in null sds",
            details={"answers_read": served.answers, "positions": served.positions,
                     "positions_barred": barred, "top_logprobs": served.k,
                     "answers_without_logprobs": served.without_logprobs,
                     "answers_unmapped": served.unmapped, "answers_malformed": served.malformed,
                     "windows": m.n_windows,
                     "weighted_tuples": int(len(m.tokens)), "z_score": decoys.our_score,
                     "score": ms.total(s, m), "null_rate": 0.0, "tokens_to_p_1e-6": None,
                     "scored_tuples": int(len(m.tokens)), "p_value_kind": "Chernoff bound (fixed-sample)"},
        )  # fmt: skip
        result.name += "_mass" + suffix
        if stopped and s.key == spec.key:
            # which answers were read depends on our key's scores when the sequential test stopped early
            # (under another key it does not): the p-value of the answers read is not valid, so none counts
            result.log_p, result.claim_allowed = 0.0, False
            result.refusal = "the closed test stopped early under this key"
            result.caveats.append(
                "not counted (p set to 1): the closed test stopped early under this key, so which answers "
                "were read depends on the key's scores"
            )
        elif stopped:
            result.caveats.append("the sequential stop followed another key; this p-value is fixed-sample")
        out.append(result)
    return out


def _restream(spec, texts: list[tuple[list, list]], allowed) -> radio.Prepared:
    """The closed-mode tuples of the answers ``texts`` for a watermark of another window width."""
    stream = radio.TupleStream(spec.window, allowed_windows=allowed, spec=spec)
    for comps, pids in texts:
        stream.add_texts(comps, pids)
    return stream.prepared()


def _closed_result(cfg, spec, prep, ep, allowed, details: dict, caveats: list[str]) -> dict:
    """The closed-mode test of the prepared tuples under ``spec``'s key, with its decoys and series."""
    decoys = radio.decoy_null(spec, prep, cfg.decoys, cfg.seed)
    values = radio.score_values(spec, prep)
    result = radio.radioactivity_test(
        "closed",
        spec,
        prep,
        decoys,
        eprocess=ep,
        filtered=allowed is not None,
        details={**details, "tokens_to_p_1e-6": radio.tokens_to_reach(values, spec, -6.0)},
        caveats=caveats,
    )
    decoy_series = {"mode": "closed", **_decoy_series(decoys)}
    return {"result": result, "series": radio.series(spec, values), "decoys": decoy_series}


def _decoy_series(d: radio.DecoyNull) -> dict:
    return {
        "our_score": d.our_score,
        "decoy_scores": [float(x) for x in d.decoy_scores],
        "our_log10_p": d.our_log_p / math.log(10),
        "decoy_log10_p": [float(x) / math.log(10) for x in d.decoy_log_p],
        "statistic": "per-tuple mean score (green fraction for kgw)",
    }


def open_readings(cfg: AuditConfig) -> tuple[str, ...]:
    """The open-mode readings asked for, in order, without repeats."""
    raw = cfg.open_texts.split(",") if isinstance(cfg.open_texts, str) else list(cfg.open_texts)
    return tuple(dict.fromkeys(r.strip() for r in raw if r.strip()))


def _open_mode(
    cfg,
    suspect: _Asked,
    spec,
    own: dict,
    log,
    *,
    reading: str = "plain",
    preds: dict | None = None,
    key=None,
    ours: _Asked | None = None,
) -> dict:
    """Read our texts with the suspect's weights and score its top-1 predictions.

    ``reading``: "plain" (our unwatermarked answers, every predicted tuple scored once), "watermarked"
    (our watermarked answers; every true tuple of the texts excluded, see :mod:`.radioactivity`) or
    "first-occurrence" (our watermarked answers; each window scored at its first occurrence in corpus
    order, with the anytime-valid p-value, see :mod:`.reading`).
    """
    from distillguard.audit.reading import first_occurrence_candidates

    seqs = [list(p) + list(c) for p, c in zip(own["prompts"], own["completions"], strict=True)]
    plens = [len(p) for p in own["prompts"]]
    tok = suspect.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if reading == "mass":
        return _mass_mode(cfg, suspect, ours, spec, seqs, plens, pad, log, preds)
    if preds is None or key not in preds:  # the suspect reads each set of texts once
        read = predictions(suspect.model, seqs, pad)
        if preds is not None:
            preds[key] = read
    else:
        read = preds[key]
    excluded = None
    if reading == "first-occurrence":
        win, toks, text, _ = first_occurrence_candidates(seqs, plens, read, spec.window)
    preds = [p[:-1] for p in read]  # one per token of the text, for the other readings
    if reading != "first-occurrence":
        win, toks, text, true_ids = radio.reading_candidates(seqs, plens, preds, spec.window)
        excluded = true_ids if reading == "watermarked" else None
    stream = radio.TupleStream(spec.window, excluded=excluded, spec=spec)
    stream.add_candidates(win, toks, text, n_texts=len(seqs))
    prep = stream.prepared()
    log(f"radioactivity (open, {reading}): {len(stream)} tuples scored from {len(seqs)} texts; decoys")
    decoys = radio.decoy_null(spec, prep, cfg.decoys, cfg.seed + 1)
    values = radio.score_values(spec, prep)
    ep = None
    if reading == "first-occurrence":  # the number scored depends on the texts: anytime-valid p-value
        ep = EProcess.for_spec(spec)
        ep.update(values)
    agree = sum(
        int(np.sum(p[pl:] == np.asarray(s)[pl:])) for p, s, pl in zip(preds, seqs, plens, strict=True)
    )
    positions = sum(len(s) - pl for s, pl in zip(seqs, plens, strict=True))
    result = radio.radioactivity_test(
        "open",
        spec,
        prep,
        decoys,
        eprocess=ep,
        reading=reading,
        details={
            "texts_read": len(seqs),
            "positions": positions,
            "candidate_tuples": int(len(toks)),
            "excluded_true_tuples": int(len(excluded)) if excluded is not None else 0,
            "top1_matches_our_token": agree / positions if positions else None,
            "tokens_to_p_1e-6": radio.tokens_to_reach(values, spec, -6.0),
        },
    )
    return {
        "result": result,
        "series": radio.series(spec, values),
        "decoys": {"mode": "open", **_decoy_series(decoys)},
    }


def _mass_mode(cfg, suspect: _Asked, ours, spec, seqs, plens, pad: int, log, cache: dict | None) -> dict:
    """The "mass" reading (audit.mass) of our plain texts: the suspect's averaged next-token distributions
    per distinct window minus our model's, scored under ``spec`` with a Chernoff p-value and decoy keys."""
    from distillguard.audit import mass as ms

    key = ("mass", spec.window)
    table = None if cache is None else cache.get(key)
    if table is None:  # the suspect reads the texts once per window width
        table = ms.read_table(suspect.model, ours.model, seqs, plens, spec.window, pad)
        if cache is not None:
            cache[key] = table
    m, dropped = ms.keyed(spec, table)
    log(f"radioactivity (open, mass): {m.n_windows} windows, {len(m.tokens)} weighted tuples; decoys")
    decoys = ms.mass_null(spec, m, cfg.decoys, cfg.seed + 2)
    prep = SimpleNamespace(aggregate_count=m.n_windows, degenerate_corpus=dropped)
    result = radio.radioactivity_test(
        "open", spec, prep, decoys, reading="mass", null=ms.null_text(spec),
        statistic_name="z: the suspect's extra expected score over our model's, in null sds",
        details={"texts_read": len(seqs), "windows": m.n_windows, "weighted_tuples": int(len(m.tokens)),
                 "window_occurrences": int(m.counts.sum()), "z_score": decoys.our_score,
                 "score": ms.total(spec, m), "null_rate": 0.0, "tokens_to_p_1e-6": None,
                 "scored_tuples": int(len(m.tokens)), "p_value_kind": "Chernoff bound (fixed-sample)",
                 "statistic": "the suspect's probability minus our model's, times each token's score, "
                              "summed over windows; rate: in null standard deviations"},
    )  # fmt: skip
    series = {"mode": "open", **_decoy_series(decoys), "statistic": "z (null standard deviations)"}
    return {"result": result, "series": {}, "decoys": series}


def _public_config(cfg: AuditConfig, suspect: _Asked, spec, pool_path, reference, controls, stop_p) -> dict:
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
