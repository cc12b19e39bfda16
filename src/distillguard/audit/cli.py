"""``distillguard audit``: run a forensic audit into a signed evidence bundle; verify bundles; manage keys.

``audit run`` checks everything it can *before* querying the suspect (the suspect is a model or a reachable
URL, the bundle target is usable, the signing key loads), so that a bad argument costs seconds rather than an
audit, and it writes the bundle only after the audit finished: a failed audit leaves nothing behind that
could be mistaken for a result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from distillguard.errors import UserError
from distillguard.watermark.settings import DEFAULTS as WM

app = typer.Typer(
    help="Forensic audit: test whether a suspect model was distilled from ours; signed evidence bundles.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@app.command("run")
def run(
    suspect: Annotated[
        str, typer.Option(help="Suspect model: a local HF model dir or an http(s) API base URL.")
    ],
    out: Annotated[Path, typer.Option(help="Evidence bundle directory to create.")],
    scheme: Annotated[
        str | None, typer.Option(help=f"Watermark scheme: kgw or gumbel (default: config, else {WM.scheme}).")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Our watermark key (default: config `watermark_key`, else the gateway's)."),
    ] = None,
    gamma: Annotated[
        float | None, typer.Option(help=f"KGW green-list fraction (default: config, else {WM.gamma}).")
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help=f"KGW logit bias (default: config, else {WM.delta}).")
    ] = None,
    context_width: Annotated[
        int | None, typer.Option("--context-width", help="Tokens of context that key the watermark (h).")
    ] = None,
    hf_compat: Annotated[
        bool,
        typer.Option("--hf-compat", help="Bit-compatible with transformers' WatermarkingConfig lefthash."),
    ] = False,
    vocab_size: Annotated[
        int | None,
        typer.Option("--vocab-size", help="The watermarking model's vocab_size (if not derivable)."),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="Our model (dir or URL) for the provenance test (default: the world teacher)."),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option("--control", help="A control model (dir or URL) not trained on ours; repeat."),
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="Prompt pool for the suspect (JSONL or text lines).")
    ] = None,
    probes_ledger: Annotated[
        Path | None,
        typer.Option(
            "--probes-ledger",
            help="Draw the closed-mode probes from a `ledger export` (DIR or its ledger.parquet): the "
            "prompts the --probe-account accounts sent in admitted requests (last user turn, deduplicated, "
            "seeded sample up to the budget).",
        ),
    ] = None,
    retired_key: Annotated[
        list[str] | None,
        typer.Option(
            "--retired-key",
            help="A key the gateway marked with before rotating to --key; repeat. Each is tested on the "
            "same answers, with its own decoys, in the Holm family (default: config "
            "`watermark_retired_keys`).",
        ),
    ] = None,
    tier_marks: Annotated[
        bool,
        typer.Option(
            "--tier-marks/--no-tier-marks",
            help="Also test the watermarks the gateway's tiers mark with (the config's `restricted_scheme`, "
            "default Gumbel h 1 under our key), each in the Holm family.",
        ),
    ] = True,
    probe_account: Annotated[
        list[str] | None,
        typer.Option(
            "--probe-account",
            help="With --probes-ledger: an account whose prompts to use (e.g. a scan's campaign); repeat "
            "(default: every account).",
        ),
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="API key for a URL suspect; repeat.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="API model id (default: the first listed).")] = None,
    identity: Annotated[
        list[str] | None,
        typer.Option("--identity", help="Name our model/lab goes by; repeat (default: Aster, Northwind)."),
    ] = None,
    budget: Annotated[int | None, typer.Option(help="Most queries to send to the suspect.", min=1)] = None,
    alpha: Annotated[float, typer.Option(help="Family-wise significance level of the verdict.")] = 1e-3,
    decoys: Annotated[
        int,
        typer.Option(help="Random decoy keys scored for the empirical null (0: no claim possible).", min=0),
    ] = 100,
    max_tokens: Annotated[int, typer.Option(help="Max tokens per suspect answer.", min=1)] = 64,
    seed: Annotated[int, typer.Option(help="Seed for prompt sampling and decoy keys.")] = 0,
    test: Annotated[
        list[str] | None, typer.Option("--test", help="Run only these: radioactivity, identity, provenance.")
    ] = None,
    open_texts: Annotated[
        str,
        typer.Option(
            "--open-texts",
            help="Open mode (suspect weights are local, same vocabulary): read our 'plain' (unwatermarked) "
            "answers, exact null; our 'watermarked' answers, scoring only predicted tuples "
            "absent from every text read (conservative); or our watermarked answers scored at each "
            "window's 'first-occurrence' in corpus order (anytime-valid p-value); or the suspect's whole "
            "next-token distribution after each window of our plain answers, 'mass' (Chernoff p-value). "
            "Comma-separated for several: each is one more test in the Holm family. Default: plain,mass "
            "(mass is the strongest at small shares of our text: bench/results/audit_100k.json).",
        ),
    ] = "plain,mass",
    filter_windows: Annotated[
        bool,
        typer.Option(
            "--filter/--no-filter",
            help="Closed mode: score only windows that occur in our own watermarked answers to the pool.",
        ),
    ] = False,
    probe_logprobs: Annotated[
        int,
        typer.Option(
            "--probe-logprobs",
            help="Closed mode: top_logprobs asked with each probe (0: none). Where the suspect returns them "
            "(an API serving logprobs, or local weights), its own answers are also read the 'mass' way: "
            "its listed probabilities minus our model's, scored under our key (one more test). An API "
            "that refuses them is asked without.",
            min=0,
            max=64,
        ),
    ] = 20,
    signing_key: Annotated[
        Path | None,
        typer.Option("--signing-key", help="Ed25519 PEM that signs the bundle (default: home's)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="TOML config (watermark settings).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Query the suspect, test for radioactivity, identity leakage and provenance, write a signed bundle.

    Closed-mode radioactivity reads the suspect's answers to the probe prompts (any suspect, APIs too);
    open mode, when the suspect's weights are local and share our vocabulary, reads our plain or
    watermarked answers (--open-texts) teacher-forced through it. Only these key-dependent tests, with
    their decoy-key guard, can give 'distilled': the suspect's text depends on our key (trained on our
    outputs, directly or from copies published elsewhere, or relaying our API). Identity and provenance
    rank the suspect among the --control models (p >= 1/(controls + 1)) and only support a finding.
    """
    from distillguard.audit.bundle import (
        check_target,
        fingerprint,
        load_signing_key,
        summarize,
        write_bundle,
    )
    from distillguard.config import load_config

    cfg = load_config(config)
    _check_model("suspect", suspect, api_key)
    for c in control or []:
        _check_model("control", c, api_key)
    if reference is not None:
        _check_model("reference", reference, api_key)
    if prompts is not None and not prompts.is_file():
        raise UserError(f"prompts file not found: {prompts}")
    ledger = None
    if probes_ledger is not None:  # every ledger error before any model loads
        from distillguard.audit.probes import DEFAULT_LIMIT, ledger_probes

        ledger = ledger_probes(probes_ledger, probe_account, limit=budget or DEFAULT_LIMIT, seed=seed).path
    elif probe_account:
        raise UserError("--probe-account needs --probes-ledger PATH")
    check_target(out, overwrite=overwrite)
    signer = fingerprint(load_signing_key(signing_key)) if signing_key is not None else None
    settings, spec = _spec(cfg, scheme, key, gamma, delta, context_width, hf_compat, vocab_size)
    retired = _retired_keys(cfg, retired_key, spec)
    marks = {}
    if tier_marks:
        from distillguard.audit.marks import served_marks

        marks = served_marks(spec, settings, cfg)
    if reference is None:
        from distillguard.world import build_world

        reference = str(build_world("default", progress=not as_json).teacher)

    from distillguard.audit.runner import AuditConfig, run_audit

    extra: dict[str, Any] = {}
    if identity:
        extra["identity_names"] = list(identity)
    if test:
        extra["tests"] = tuple(test)
    audit_cfg = AuditConfig(
        suspect=suspect, spec=spec, reference=reference, controls=list(control or []), prompts=prompts,
        api_keys=list(api_key or []), model=model, budget=budget, alpha=alpha, decoys=decoys,
        max_tokens=max_tokens, seed=seed, open_texts=open_texts, filter_windows=filter_windows,
        probe_logprobs=probe_logprobs,
        probes_ledger=ledger, probe_accounts=list(probe_account or []), retired_keys=retired,
        tier_marks=marks, **extra,
    )  # fmt: skip
    result = run_audit(audit_cfg, progress=not as_json)

    inputs: dict[str, Path | str] = {"suspect": suspect, "reference": reference}
    for i, c in enumerate(control or []):
        inputs[f"control-{i + 1}"] = c
    if prompts is not None:
        inputs["prompts"] = prompts
    if ledger is not None:  # hashed, never copied: the export holds every account's traffic
        inputs["probes-ledger"] = ledger
    bundle = write_bundle(
        result, out, signing_key=signing_key, inputs=inputs, overwrite=overwrite, hash_only={"probes-ledger"}
    )
    summary = summarize(result, bundle, signer or fingerprint(load_signing_key(None)), alpha)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from distillguard.present import print_audit_summary

    print_audit_summary(summary)


def _check_model(role: str, where: str, api_keys: list[str] | None) -> None:
    """A URL must answer (any HTTP status will do); a directory must hold a Hugging Face model config."""
    if where.startswith(("http://", "https://")):
        import httpx

        url = where.rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {api_keys[0]}"} if api_keys else {}
        try:
            httpx.get(url, headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise UserError(f"{role} URL {where} is unreachable ({type(exc).__name__}: {exc})") from None
        return
    if "://" in where:
        raise UserError(f"{role} {where!r}: only http(s) URLs and local model directories are supported")
    path = Path(where)
    if not path.is_dir():
        raise UserError(f"{role} model directory not found: {where}")
    if not (path / "config.json").is_file():
        raise UserError(f"{role} {where} is not a model directory (no config.json)")


def _retired_keys(cfg: dict[str, Any], given: list[str] | None, spec: Any) -> list[int | str]:
    """``--retired-key`` values, else the config's ``watermark_retired_keys``; parsed like ``--key``, each
    once and none equal to the current key (a one-line error)."""
    from distillguard.watermark.keys import parse_key
    from distillguard.watermark.settings import WatermarkSettings

    raw = list(given) if given else list(WatermarkSettings.from_config(cfg).retired_keys)
    keys = [parse_key(k) for k in raw if str(k).strip()]
    if spec.key in keys:
        raise UserError("a retired watermark key equals the current one (--key): list each key once")
    if len(set(map(str, keys))) != len(keys):
        raise UserError("a retired watermark key is listed twice")
    return keys


def _spec(
    cfg: dict[str, Any],
    scheme: str | None,
    key: str | None,
    gamma: float | None,
    delta: float | None,
    context_width: int | None,
    hf_compat: bool,
    vocab_size: int | None,
) -> Any:
    """``(settings, spec)``: command line > config (the gateway's ``[watermark]`` settings) > the gateway's
    key file > defaults.

    Reading the same settings as ``distillguard serve`` means an audit tests the watermark that was served.
    """
    from distillguard.watermark.settings import WatermarkSettings

    settings = WatermarkSettings.from_config(
        cfg, scheme=scheme, key=key, gamma=gamma, delta=delta, context_width=context_width,
        hf_compat=hf_compat or None,
    )  # fmt: skip
    served = None
    if settings.key is None:
        from distillguard.config import home

        path = home() / "gateway" / "watermark.key"
        if path.is_file() and path.read_text().strip():
            served = path.read_text().strip()
    return settings, settings.spec(key=served, vocab_size=vocab_size)


@app.command("verify")
def verify(
    bundle: Annotated[Path, typer.Argument(help="The evidence bundle directory.")],
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="Expected signer: a PEM file (public or private key) or its sha256:... fingerprint. "
            "Without it a re-signed bundle cannot be told from the original.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the signature and every file's SHA-256; exit 1 naming the first altered, missing or added one."""
    from distillguard.audit.bundle import verify_bundle

    res = verify_bundle(bundle, public_key=public_key)
    if as_json:
        typer.echo(json.dumps(res.as_dict()))
    elif res.ok:
        pin = "pinned key" if res.pinned else "its own key; pass --public-key to rule out re-signing"
        typer.echo(
            f"bundle OK: {res.files} files intact, verdict {res.verdict}, signed by {res.fingerprint} ({pin})"
        )
    if not res.ok:
        more = f" (and {len(res.problems) - 1} more)" if len(res.problems) > 1 else ""
        print(f"error: bundle {bundle} failed verification: {res.problems[0]}{more}", file=sys.stderr)
        sys.exit(1)  # not typer.Exit: in main()'s non-standalone mode click returns its code instead


@app.command("keygen")
def keygen(
    out: Annotated[
        Path | None, typer.Option(help="Private key PEM to write (default: the installation's signing key).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing key (old bundles keep their old signer).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an Ed25519 signing key (0600) and its public half ``*.pub.pem``, to publish or hand over."""
    from distillguard.audit.bundle import (
        default_signing_key_path,
        fingerprint,
        generate_signing_key,
        public_path,
    )

    path = out or default_signing_key_path()
    key = generate_signing_key(path, overwrite=force)
    doc = {"private_key": str(path), "public_key": str(public_path(path)), "fingerprint": fingerprint(key)}
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        typer.echo(f"wrote {doc['private_key']} (keep it secret) and {doc['public_key']} (publish it)")
        typer.echo(f"fingerprint: {doc['fingerprint']}")


@app.command("public-key")
def public_key_cmd(
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="Private key PEM (default: the installation's).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the public key (PEM) and fingerprint for verifiers to pin (creates the default key if needed)."""
    from distillguard.audit.bundle import fingerprint, load_signing_key, public_key_pem

    key = load_signing_key(signing_key)
    if as_json:
        typer.echo(
            json.dumps({"fingerprint": fingerprint(key), "public_key_pem": public_key_pem(key).decode()})
        )
    else:
        typer.echo(public_key_pem(key).decode().rstrip())
        typer.echo(f"fingerprint: {fingerprint(key)}")
