"""The audit report: figures (PNG) and one self-contained HTML page for people who are not statisticians.

Self-contained on purpose: the page is part of the signed evidence, so it must look the same in ten years
and on an air-gapped machine. CSS is inline, figures are embedded as ``data:`` URIs, there is no script, and a
Content-Security-Policy forbids the browser from fetching anything at all. Every section copes with its data
being absent (a test that was not run has no series).

Figures (each drawn only when its series exists):
``pvalue``      log10 p-value of the radioactivity test vs tokens scored, with the alpha line;
``green_rate``  green-token rate with its confidence band vs tokens scored, against the null gamma;
``identity``    share of identity answers naming the provider, suspect vs reference vs controls;
``decoys``      histogram of the scores under decoy keys, with our key's score marked.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from distillguard.present import finite as _num
from distillguard.present import format_p

VERDICT_TEXT = {
    "distilled": ("Evidence of distillation", "The suspect's text depends on our secret watermark key: "
                  "a key-dependent test rejects its null at alpha (family-wise) and passed its decoy-key "
                  "check."),
    "no_evidence": ("No evidence of distillation", "Nothing in the suspect's outputs is unlikely under "
                    "the null hypothesis of an independent model."),
    "inconclusive": ("Inconclusive", "Some signal, but not enough (or not enough data, or only "
                     "behavioural evidence) to conclude that the suspect depends on our key; see the reasons "
                     "and caveats."),
}  # fmt: skip
VERDICT_COLOUR = {"distilled": "#b3261e", "no_evidence": "#1e6b34", "inconclusive": "#8a5a00"}
#: Transcript excerpt in the report: this many exchanges per kind (the full set is in transcripts.jsonl).
EXCERPT_PER_KIND = 4
EXCERPT_CHARS = 600


@dataclass
class IdentityRow:
    """One model's identity answers: ``hits`` of ``n`` answers named our model or lab."""

    model: str
    role: str  # suspect | reference | control
    hits: int | None
    n: int | None
    rate: float | None


# -- figures ------------------------------------------------------------------------------------------------


def render_plots(result: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per figure name, only for the series present in ``result``.

    The closed-model test (the suspect's answers) draws ``pvalue``, ``green_rate`` and ``decoys``; the
    open-model test (the suspect's weights reading our texts), when it ran, the same with an ``_open`` suffix.
    """
    series = result.get("series") or {}
    out: dict[str, bytes] = {}
    for suffix, mode in (("", None), ("_open", "open model")):
        radio = series.get(f"radioactivity{suffix}") or {}
        tokens = _floats(radio.get("tokens_scored"))
        if tokens and _floats(radio.get("log10_p")):
            out[f"pvalue{suffix}"] = _plot_pvalue(
                tokens, _floats(radio["log10_p"]), result.get("alpha"), radio, mode
            )
        if tokens and _floats(radio.get("green_rate")):
            gamma = _num(radio.get("null_rate")) if suffix else find_gamma(result)
            out[f"green_rate{suffix}"] = _plot_green(tokens, radio, gamma, mode)
        if not suffix:
            rows = identity_rows(result)
            if rows:
                out["identity"] = _plot_identity(rows)
        decoys = series.get(f"decoys{suffix}") or {}
        if _floats(decoys.get("decoy_scores")):
            out[f"decoys{suffix}"] = _plot_decoys(decoys, mode)
    return out


def _titled(title: str, mode: str | None) -> str:
    return f"{title} ({mode})" if mode else title


def _figure(width: float = 6.4, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _plot_pvalue(
    tokens: list[float], log10_p: list[float], alpha: Any, radio: dict[str, Any], mode: str | None
) -> bytes:
    fig, ax = _figure()
    n = min(len(tokens), len(log10_p))
    ax.plot(tokens[:n], log10_p[:n], marker="o", markersize=3, color="#1f4e9c", label="fixed-n exact test")
    anytime = _floats(radio.get("log10_p_anytime"))
    if anytime:
        m = min(len(tokens), len(anytime))
        ax.plot(tokens[:m], anytime[:m], color="#6a8fd0", linestyle=":", label="anytime-valid (e-value)")
    a = _num(alpha)
    if a is not None and a > 0:
        ax.axhline(math.log10(a), color="#b3261e", linestyle="--", label=f"alpha = {a:g}")
    ax.axhline(0.0, color="#888888", linewidth=0.8)
    _token_axis(ax, tokens)
    ax.set_ylabel("log10 p-value")
    ax.set_title(_titled("p-value vs tokens scored (lower = stronger evidence)", mode))
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def _plot_green(tokens: list[float], radio: dict[str, Any], gamma: float | None, mode: str | None) -> bytes:
    fig, ax = _figure()
    rate = _floats(radio.get("green_rate"))
    n = min(len(tokens), len(rate))
    ci = radio.get("green_rate_ci") or []
    band = [(x, _num(c[0]), _num(c[1])) for x, c in zip(tokens, ci, strict=False) if _pair(c)]
    if band:
        ax.fill_between(
            [b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
            color="#1f4e9c", alpha=0.2, label="confidence band",
        )  # fmt: skip
    what = str(radio.get("statistic") or "green fraction")
    level = _num(radio.get("ci_level"))
    if band and level is not None:
        ax.collections[0].set_label(f"{level:.0%} confidence band")
    ax.plot(tokens[:n], rate[:n], marker="o", markersize=3, color="#1f4e9c", label=f"{what} (suspect)")
    if gamma is not None:
        ax.axhline(gamma, color="#b3261e", linestyle="--", label=f"null: {gamma:g}")
    _token_axis(ax, tokens)
    ax.set_ylabel(what)
    ax.set_title(_titled("Watermark score with confidence band vs the null", mode))
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def _token_axis(ax: Any, tokens: list[float]) -> None:
    """Checkpoints are geometric (10, 20, 50, ... tokens): a log axis shows the early ones too."""
    if tokens and min(tokens) > 0 and max(tokens) / min(tokens) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel("tokens scored")


def _plot_identity(rows: list[IdentityRow]) -> bytes:
    fig, ax = _figure(6.4, 1.2 + 0.45 * max(3, len(rows)))
    colours = {"suspect": "#b3261e", "reference": "#1f4e9c", "control": "#777777"}
    labels = [r.model if r.model == r.role else f"{r.model} ({r.role})" for r in rows]
    values = [r.rate or 0.0 for r in rows]
    bars = ax.barh(labels, values, color=[colours.get(r.role, "#777777") for r in rows])
    for bar, r in zip(bars, rows, strict=True):
        text = f"{r.hits}/{r.n}" if r.hits is not None and r.n else f"{(r.rate or 0.0):.2f}"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {text}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, max(values) * 1.15))
    ax.set_xlabel("share of identity answers naming our model or lab")
    ax.set_title("Identity answers: suspect vs controls")
    return _png(fig)


def _plot_decoys(data: dict[str, Any], mode: str | None) -> bytes:
    decoys = _floats(data.get("decoy_scores"))
    ours = _num(data.get("our_score"))
    fig, ax = _figure()
    ax.hist(
        decoys, bins=min(30, max(5, len(decoys) // 4)), color="#777777", label=f"{len(decoys)} decoy keys"
    )
    if ours is not None:
        emp = _num(data.get("empirical_p_value"))
        extra = f", empirical p = {emp:.3g}" if emp is not None else ""
        ax.axvline(ours, color="#b3261e", linewidth=2, label=f"our key: {ours:.4g}{extra}")
    ax.set_xlabel(str(data.get("statistic") or "score"))
    ax.set_ylabel("decoy keys")
    ax.set_title(_titled("Score under our key vs random decoy keys", mode))
    ax.legend(loc="best")
    return _png(fig)


# -- data helpers -------------------------------------------------------------------------------------------


def find_gamma(result: dict[str, Any]) -> float | None:
    """The null green rate, wherever the result states it (series, radioactivity details, config)."""
    series = (result.get("series") or {}).get("radioactivity") or {}
    if _num(series.get("null_rate")) is not None:  # kgw: gamma; gumbel: the mean score 1 under H0
        return _num(series.get("null_rate"))
    candidates = [series.get("gamma")]
    for t in result.get("tests") or []:
        if isinstance(t, dict) and t.get("name") == "radioactivity":
            candidates.append((t.get("details") or {}).get("gamma"))
    cfg = result.get("config") or {}
    for scope in (cfg, cfg.get("spec"), cfg.get("watermark")):
        if isinstance(scope, dict):
            candidates += [scope.get("gamma"), scope.get("watermark_gamma")]
    for c in candidates:
        v = _num(c)
        if v is not None and 0 < v < 1:
            return v
    return None


def identity_rows(result: dict[str, Any]) -> list[IdentityRow]:
    """Identity answers per model, from ``series["identity"]`` in any of the shapes the engine may use:
    ``{"models": {label: stats}}``, ``{"models": [{"model": label, ...stats}]}``, ``{"suspect": stats,
    "controls": {label: stats} | [...], "reference": stats}`` or ``{label: stats}``; stats are a rate or a
    dict with ``rate`` and/or ``hits``/``n``."""
    ident = (result.get("series") or {}).get("identity")
    if not isinstance(ident, dict):
        return []
    entries: list[tuple[str, Any, str | None]] = []
    models = ident.get("models")
    if isinstance(models, dict):
        entries = [(str(k), v, None) for k, v in models.items()]
    elif isinstance(models, list):
        entries = [(str(m.get("model") or m.get("name") or i), m, m.get("role")) for i, m in
                   enumerate(models) if isinstance(m, dict)]  # fmt: skip
    else:
        for name in ("suspect", "reference", "teacher"):
            if name in ident:
                entries.append((name, ident[name], "reference" if name == "teacher" else name))
        controls = ident.get("controls")
        if isinstance(controls, dict):
            entries += [(str(k), v, "control") for k, v in controls.items()]
        elif isinstance(controls, list):
            entries += [(str(c.get("model") or c.get("name") or f"control {i}"), c, "control")
                        for i, c in enumerate(controls) if isinstance(c, dict)]  # fmt: skip
        if not entries:
            skip = {"names", "patterns", "prompts", "identity_names", "n_prompts"}
            entries = [(str(k), v, None) for k, v in ident.items() if k not in skip]
    rows = []
    for label, stats, role in entries:
        row = _identity_row(label, stats, role)
        if row is not None:
            rows.append(row)
    return rows


def _identity_row(label: str, stats: Any, role: str | None) -> IdentityRow | None:
    hits = n = None
    if isinstance(stats, bool):
        return None
    if isinstance(stats, int | float):
        rate = _num(stats)
    elif isinstance(stats, dict):
        role = role or stats.get("role")
        rate = _num(stats.get("rate"))
        h = next((stats[k] for k in ("hits", "k", "count", "named", "identity_answers") if k in stats), None)
        t = next((stats[k] for k in ("n", "total", "answers", "queries") if k in stats), None)
        hits = int(h) if isinstance(h, int | float) and not isinstance(h, bool) else None
        n = int(t) if isinstance(t, int | float) and not isinstance(t, bool) else None
        if rate is None and hits is not None and n:
            rate = hits / n
    else:
        return None
    if rate is None:
        return None
    low = label.lower()
    if role is None:
        role = (
            "suspect" if "suspect" in low else "reference" if low in ("reference", "teacher") else "control"
        )
    return IdentityRow(model=label, role=str(role), hits=hits, n=n, rate=rate)


def _floats(values: Any) -> list[float]:
    if not isinstance(values, list | tuple):
        return []
    out = [_num(v) for v in values]
    return [v for v in out if v is not None] if all(v is not None for v in out) else []


def _pair(c: Any) -> bool:
    return isinstance(c, list | tuple) and len(c) == 2 and _num(c[0]) is not None and _num(c[1]) is not None


# -- HTML ---------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1b1b1b;
       background: #f6f6f4; line-height: 1.45; }
main { max-width: 980px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.5rem; margin: 0 0 4px 0; } h2 { font-size: 1.15rem; margin-top: 28px; }
.banner { color: #fff; padding: 18px 22px; border-radius: 6px; }
.banner .verdict { font-size: 1.6rem; font-weight: 700; }
.banner .p { font-size: 1.05rem; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 0.9rem; }
th, td { border: 1px solid #d4d4d0; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #ecece8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { background: #fff; border: 1px solid #d4d4d0; margin: 12px 0; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 0.85rem; color: #444; margin-top: 4px; }
pre { white-space: pre-wrap; word-break: break-word; background: #fff; border: 1px solid #d4d4d0;
      padding: 8px; font-size: 0.8rem; margin: 4px 0; }
.muted { color: #555; font-size: 0.85rem; } code { font-size: 0.85rem; }
ul.caveats { margin: 0; padding-left: 18px; }
"""

CAPTIONS = {
    "pvalue": "Radioactivity test: log10 p-value as more of the suspect's tokens are scored. Below the "
    "dashed alpha line the null (the suspect was not trained on our watermarked outputs) is rejected.",
    "green_rate": "Share of the suspect's tokens that fall in our key's green lists, with its confidence "
    "band; an independent model stays at gamma (dashed).",
    "identity": "Identity probes: how often each model's answer names our model or lab.",
    "decoys": "The same statistic under random decoy keys: our key's score (red) far right of the decoys "
    "means the signal is specific to our key.",
}


def _caption(name: str) -> str:
    if name.endswith("_open"):
        base = CAPTIONS.get(name[: -len("_open")], name)
        return (
            "Open-model test (the suspect's weights read our watermarked texts; its top-1 predictions are "
            f"scored). {base}"
        )
    return CAPTIONS.get(name, name)


def render_html(
    result: dict[str, Any],
    *,
    plots: dict[str, bytes],
    fingerprint: str | None = None,
    written: str | None = None,
) -> str:
    """The report page; ``plots`` are PNG bytes from ``render_plots``, embedded as data URIs."""
    e = html.escape
    verdict = str(result.get("verdict") or "inconclusive")
    title, explain = VERDICT_TEXT.get(verdict, (verdict, ""))
    colour = VERDICT_COLOUR.get(verdict, "#444444")
    combined = format_p(result.get("combined_p_value"), result.get("log10_combined_p_value"))
    alpha = _num(result.get("alpha"))
    cfg = result.get("config") or {}
    suspect = cfg.get("suspect") if isinstance(cfg, dict) else None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>distillguard audit: {e(title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>Distillation audit report</h1>",
        f'<p class="muted">Suspect: <code>{e(str(suspect or "unknown"))}</code> &middot; audit '
        f"{e(str(result.get('started') or '?'))} to {e(str(result.get('finished') or '?'))}</p>",
        f'<section class="banner" id="verdict" data-verdict="{e(verdict)}" style="background:{colour}">',
        f'<div class="verdict">{e(title)}</div>',
        f'<div class="p">Combined p-value: <strong id="combined-p">{e(combined)}</strong>'
        + (f" (alpha = {alpha:g})" if alpha is not None else "")
        + "</div>",
        f"<div>{e(explain)}</div>",
        _reasons(result),
        "</section>",
        _meaning(result),
        _tests_table(result),
        _probes(result),
        _figures(plots),
        _identity_table(result),
        _transcripts(result),
        _provenance(result, fingerprint, written),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _reasons(result: dict[str, Any]) -> str:
    reasons = [r for r in result.get("reasons") or [] if isinstance(r, str)]
    if not reasons:
        return ""
    return '<ul class="reasons">' + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>"


def _meaning(result: dict[str, Any]) -> str:
    """What a 'distilled' finding establishes and what it does not tell apart (from the verdict document)."""
    meaning = result.get("meaning")
    if not isinstance(meaning, str):
        return ""
    alts = [a for a in result.get("alternatives") or [] if isinstance(a, str)]
    items = "".join(f"<li>{html.escape(a)}</li>" for a in alts)
    return (
        f'<section id="meaning"><h2>What the verdict means</h2><p>{html.escape(meaning)}.</p>'
        + (f"<p>The key-dependent tests cannot tell these apart:</p><ul>{items}</ul>" if items else "")
        + "<p>Identity and provenance tests are behavioural: they support a finding, never make one.</p>"
        "</section>"
    )


def _probes(result: dict[str, Any]) -> str:
    """Where the closed-mode probes came from, when it was not the prompt pool: a ledger export's accounts."""
    cfg = result.get("config") or {}
    src = cfg.get("probes") if isinstance(cfg, dict) else None
    if not isinstance(src, dict) or src.get("source") != "ledger":
        return ""
    e = html.escape
    accounts = src.get("accounts")
    who = "every account" if not isinstance(accounts, list) else "account(s) " + ", ".join(map(str, accounts))
    ledger, sampled, seed = (e(str(src.get(k))) for k in ("ledger", "sampled", "seed"))
    available, admitted = (e(str(src.get(k))) for k in ("available", "admitted_requests"))
    return (
        f'<p id="probes">Closed-mode probes: prompts that {e(who)} sent in admitted requests, from the '
        f"ledger export <code>{ledger}</code>: {sampled} drawn (seed {seed}) of {available} distinct "
        f"prompts in {admitted} admitted requests.</p>"
    )


def _tests_table(result: dict[str, Any]) -> str:
    e = html.escape
    tests = [t for t in result.get("tests") or [] if isinstance(t, dict)]
    if not tests:
        return "<h2>Tests</h2><p>No test was run.</p>"
    with_holm = any("p_value_holm" in t for t in tests)
    rows = []
    for t in tests:
        caveats = t.get("caveats") or []
        cav = (
            '<ul class="caveats">' + "".join(f"<li>{e(str(c))}</li>" for c in caveats) + "</ul>"
            if caveats
            else "none"
        )
        if t.get("refusal"):
            cav = f"<strong>claim refused: {e(str(t['refusal']))}</strong>" + cav
        stat = _num(t.get("statistic"))
        stat_text = f"{stat:.4g}" if stat is not None else "n/a"
        stat_name = (
            f'<div class="muted">{e(str(t["statistic_name"]))}</div>' if t.get("statistic_name") else ""
        )
        holm = (
            f'<td class="num">{e(format_p(t.get("p_value_holm"), t.get("log10_p_value_holm")))}</td>'
            if with_holm
            else ""
        )
        rows.append(
            f"<tr><td>{e(str(t.get('name', '')))}{_kind(t)}</td><td>{e(str(t.get('null', '')))}</td>"
            f'<td class="num">{e(stat_text)}{stat_name}</td><td class="num">{e(str(t.get("n", "")))}</td>'
            f'<td class="num">{e(format_p(t.get("p_value"), t.get("log10_p_value")))}</td>'
            f"{holm}<td>{cav}</td></tr>"
        )
    head = "<tr><th>test</th><th>null hypothesis</th><th>statistic</th><th>n</th><th>p-value</th>"
    head += ("<th>Holm-adjusted</th>" if with_holm else "") + "<th>caveats</th></tr>"
    extra = []
    if result.get("queries_used") is not None:
        extra.append(f"{e(str(result['queries_used']))} queries sent to the suspect")
    if result.get("stopped_early"):
        extra.append("stopped early once the evidence was conclusive")
    note = f'<p class="muted">{"; ".join(extra)}.</p>' if extra else ""
    skipped = [x for x in result.get("skipped") or [] if isinstance(x, dict)]
    if skipped:
        note += (
            '<p class="muted">Not run: '
            + "; ".join(f"{e(str(x.get('name', '?')))} ({e(str(x.get('reason', '')))})" for x in skipped)
            + ".</p>"
        )
    return f'<h2>Tests</h2><table id="tests">{head}{"".join(rows)}</table>{note}'


def _kind(test: dict[str, Any]) -> str:
    kind = test.get("evidence")
    return f'<div class="muted">{html.escape(str(kind))}</div>' if kind else ""


def _figures(plots: dict[str, bytes]) -> str:
    if not plots:
        return ""
    out = ["<h2>Figures</h2>"]
    for name, png in plots.items():
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        cap = _caption(name)
        out.append(
            f'<figure id="fig-{html.escape(name)}"><img src="{uri}" alt="{html.escape(cap)}">'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        )
    return "\n".join(out)


def _identity_table(result: dict[str, Any]) -> str:
    rows = identity_rows(result)
    if not rows:
        return ""
    e = html.escape
    body = "".join(
        f"<tr><td>{e(r.model)}</td><td>{e(r.role)}</td>"
        f'<td class="num">{"" if r.hits is None else r.hits}</td>'
        f'<td class="num">{"" if r.n is None else r.n}</td>'
        f'<td class="num">{"" if r.rate is None else f"{r.rate:.3f}"}</td></tr>'
        for r in rows
    )
    names = ((result.get("series") or {}).get("identity") or {}).get("names")
    said = f'<p class="muted">Names looked for: {e(", ".join(map(str, names)))}.</p>' if names else ""
    return (
        '<h2>Identity answers</h2><table id="identity"><tr><th>model</th><th>role</th><th>naming us</th>'
        f"<th>answers</th><th>rate</th></tr>{body}</table>{said}"
    )


def _transcripts(result: dict[str, Any]) -> str:
    transcripts = [t for t in result.get("transcripts") or [] if isinstance(t, dict)]
    if not transcripts:
        return ""
    e = html.escape
    shown: dict[str, int] = {}
    items = []
    for t in transcripts:
        kind = str(t.get("kind", "other"))
        if shown.get(kind, 0) >= EXCERPT_PER_KIND:
            continue
        shown[kind] = shown.get(kind, 0) + 1
        items.append(
            f"<tr><td>{e(kind)}</td><td>{e(str(t.get('model') or ''))}</td>"
            f"<td><pre>{e(_clip(t.get('prompt')))}</pre></td><td><pre>{e(_clip(t.get('response')))}</pre></td></tr>"
        )
    return (
        f'<h2>Transcript excerpt</h2><p class="muted">{sum(shown.values())} of {len(transcripts)} exchanges '
        "(all of them are in <code>transcripts.jsonl</code>).</p>"
        '<table id="transcripts"><tr><th>probe</th><th>model</th><th>prompt</th><th>response</th></tr>'
        + "".join(items)
        + "</table>"
    )


def _clip(value: Any) -> str:
    if value is None:
        return "(no answer: the request failed)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + " [...]"


def _provenance(result: dict[str, Any], fingerprint: str | None, written: str | None) -> str:
    e = html.escape
    versions = result.get("versions") or {}
    ver = (
        ", ".join(f"{e(str(k))} {e(str(v))}" for k, v in versions.items())
        if versions
        else "see versions.json"
    )
    fp = e(fingerprint or "unsigned")
    return (
        '<h2>Integrity</h2><p id="integrity">This report is one file of a signed evidence bundle. '
        "<code>manifest.json</code> lists the SHA-256 of every file, including this page, and "
        "<code>manifest.sig</code> is an Ed25519 signature over it by the key with fingerprint "
        f'<code id="fingerprint">{fp}</code>. Check it with '
        "<code>distillguard audit verify BUNDLE --public-key SIGNER.pem</code>, pinning a public key "
        "obtained independently of the bundle (a bundle carries its own key, so an unpinned check cannot "
        "tell a re-signed bundle from the original).</p>"
        f'<p class="muted">Bundle written {e(str(written or "?"))}; '
        f"software: {ver}.</p>"
    )
