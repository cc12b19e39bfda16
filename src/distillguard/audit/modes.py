"""The radioactivity readings of an audit: the closed mode (the suspect's answers to probes, read as top-1
tuples and, with served logprobs, the mass way) and the open mode's readings of local weights.

The readings return their :class:`~distillguard.audit.verdict.TestResult` (one, or a list for the served
reading) with the series and decoy scores the report plots; :func:`own_texts` makes our watermarked or
plain texts that the filter and the open readings read; :func:`logprob_support` asks a URL suspect whether
it serves top logprobs. :func:`~distillguard.audit.runner.run_audit` decides which run and in what order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np

from distillguard.audit import radioactivity as radio
from distillguard.audit.asking import Asked, prompt_stream, seed_of, take
from distillguard.audit.forward import predictions
from distillguard.audit.mass import ServedAnswers
from distillguard.audit.sequential import EProcess
from distillguard.audit.verdict import TestResult
from distillguard.errors import UserError
from distillguard.watermark.schemes import WatermarkSpec

if TYPE_CHECKING:
    from distillguard.audit.runner import AuditConfig

OPEN_READINGS = ("plain", "watermarked", "first-occurrence", "mass")
PLAIN_READINGS = ("plain", "mass")  # readings of our unwatermarked texts: valid under any other watermark too

_OWN_CACHE: dict[tuple, dict] = {}
_OWN_CACHE_MAX = 4


def _model_stamp(path: str) -> tuple:
    """What identifies a model directory's contents cheaply: its files' names, sizes and mtimes."""
    p = Path(path).expanduser().resolve()
    return (str(p),) + tuple(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()
    )


def own_texts(
    cfg: AuditConfig, ours: Asked, spec: WatermarkSpec, pool: Sequence[str], log, *, watermarked: bool = True
) -> dict:
    """Our watermarked answers (our model, our key) to pool prompts: filter set and open-mode texts.

    Generation is seeded, so the same request gives the same texts; they are memoised in this process
    (a few entries) so that auditing several suspects against one reference generates them once.
    """
    from distillguard.lm.chat import prompt_ids
    from distillguard.watermark.generate import bind_to_model

    n = cfg.own_texts if cfg.own_texts is not None else max(len(pool), 256)
    prompts = take(prompt_stream(pool, cfg.seed, "own"), n)
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
                seed=seed_of(cfg.seed, "own", start),
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


def closed_mode(
    cfg,
    suspect: Asked,
    ours: Asked,
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
    prompts_it = prompt_stream(pool, cfg.seed, "probe")
    cache: dict = {}
    used = 0
    answered = 0
    stopped = False
    step = 0
    # budgeted: small steps so the sequential test can stop early; otherwise wide (faster) batches
    step_size = cfg.batch_size if cfg.budget is not None else max(cfg.batch_size, 128)
    log(f"radioactivity (closed): up to {n_queries} probes" + (" (sequential)" if cfg.budget else ""))
    while used < n_queries:
        batch = take(prompts_it, min(step_size, n_queries - used))
        answers = suspect.ask(
            batch,
            max_tokens=cfg.max_tokens,
            temperature=cfg.probe_temperature,
            seed=seed_of(cfg.seed, "probe", step),
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
    out = closed_result(cfg, spec, prep, ep if cfg.budget is not None else None, allowed, details, caveats)
    out["prep"], out["details"], out["caveats"], out["texts"] = prep, details, caveats, seen
    return out, used, stopped


def logprob_support(cfg: AuditConfig, suspect: Asked, wanted: bool) -> tuple[int, str]:
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


def served_mode(cfg, ours: Asked, spec, marks, served: ServedAnswers, stopped: bool, log) -> list[TestResult]:
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


def restream(spec, texts: list[tuple[list, list]], allowed) -> radio.Prepared:
    """The closed-mode tuples of the answers ``texts`` for a watermark of another window width."""
    stream = radio.TupleStream(spec.window, allowed_windows=allowed, spec=spec)
    for comps, pids in texts:
        stream.add_texts(comps, pids)
    return stream.prepared()


def closed_result(cfg, spec, prep, ep, allowed, details: dict, caveats: list[str]) -> dict:
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
    decoy_doc = {"mode": "closed", **decoy_series(decoys)}
    return {"result": result, "series": radio.series(spec, values), "decoys": decoy_doc}


def decoy_series(d: radio.DecoyNull) -> dict:
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


def open_mode(
    cfg,
    suspect: Asked,
    spec,
    own: dict,
    log,
    *,
    reading: str = "plain",
    preds: dict | None = None,
    key=None,
    ours: Asked | None = None,
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
        return mass_mode(cfg, suspect, ours, spec, seqs, plens, pad, log, preds)
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
        "decoys": {"mode": "open", **decoy_series(decoys)},
    }


def mass_mode(cfg, suspect: Asked, ours, spec, seqs, plens, pad: int, log, cache: dict | None) -> dict:
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
    series = {"mode": "open", **decoy_series(decoys), "statistic": "z (null standard deviations)"}
    return {"result": result, "series": {}, "decoys": series}
