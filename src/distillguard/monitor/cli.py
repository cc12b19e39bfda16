"""``distillguard monitor ...``: scan, follow, calibrate, eval, revert.

``scan`` is a dry run unless ``--apply``; ``follow`` applies tiers live. Both use the benign reference saved
by ``calibrate`` (``home()/monitor/reference.npz``, or config ``monitor_reference``) when there is one, and
the scanned population otherwise. The gateway's account store and ledger come from the same config as
``distillguard serve`` (``--config FILE``, ``DISTILLGUARD_*``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from distillguard.config import load_config
from distillguard.errors import UserError
from distillguard.monitor import jobs
from distillguard.monitor.jobs import json_default

app = typer.Typer(help="Traffic monitor: find distillation campaigns in the ledger.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config (the one `serve` uses).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
LedgerOpt = Annotated[Path | None, typer.Option("--ledger", help="Ledger database (default: the gateway's).")]
ParquetOpt = Annotated[
    Path | None, typer.Option("--parquet", help="A Parquet export (`distillguard ledger export --out DIR`).")
]
ReferenceOpt = Annotated[
    Path | None,
    typer.Option("--reference", help="Benign reference from `monitor calibrate` (default: the saved one)."),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine", help="Where the feature pass runs: local or ray (default: config monitor_engine)."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray cluster for --engine ray (default: monitor_ray_address, RAY_ADDRESS, else a local one).",
    ),
]
PopulationOpt = Annotated[
    bool, typer.Option("--population", help="Calibrate on the scanned population even if a reference exists.")
]


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=json_default))


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int], None]]:
    """A live counter on stderr for long scans (rows read, accounts scored); silent off a terminal, so
    ``--json`` output and logs stay clean."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(what)
        yield lambda n: bar.update(task, description=f"{what}: {n:,}")


def _warn(message: str) -> None:
    typer.echo(message, err=True)


@app.command("scan")
def scan_cmd(
    ledger: LedgerOpt = None,
    parquet: ParquetOpt = None,
    reference: ReferenceOpt = None,
    population: PopulationOpt = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the tier changes (default: dry run).")
    ] = False,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score every account and linked cluster of the ledger; propose (or --apply) tier changes."""
    from distillguard.monitor.report import summary_text

    report = jobs.scan(
        load_config(config),
        ledger=ledger,
        parquet=parquet,
        reference=reference,
        population=population,
        apply=apply,
        engine=engine,
        address=ray_address,
        progress=_progress,
        warn=_warn,
    )
    if as_json:
        _print(report)
    else:
        typer.echo(summary_text(report), nl=False)


@app.command("follow")
def follow_cmd(
    ledger: LedgerOpt = None,
    reference: ReferenceOpt = None,
    population: PopulationOpt = False,
    interval: Annotated[float, typer.Option(min=0.0, help="Seconds between ledger reads.")] = 10.0,
    iterations: Annotated[int | None, typer.Option(min=1, help="Stop after this many reads.")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each iteration's report as a JSON line.")
    ] = False,
) -> None:
    """Read new ledger records as they arrive, re-score and apply tiers live (until Ctrl-C)."""
    from distillguard.monitor.decisions import DecisionLog, Policy
    from distillguard.monitor.follow import Follower
    from distillguard.monitor.report import summary_text

    cfg = load_config(config)
    store = jobs.open_store(cfg, create=False)
    if store is None:
        raise UserError("monitor follow needs the gateway's account store (none found; check --config)")

    def emit(report: dict[str, Any]) -> None:
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False, default=json_default))
        else:
            typer.echo(summary_text(report, limit=10), nl=False)
        sys.stdout.flush()

    policy = Policy.from_config(cfg)
    ref = jobs.load_reference(cfg, reference, population)
    if ref is not None and (note := jobs.shipped_note(ref, policy)):
        typer.echo(note, err=True)
    follower = Follower(
        ledger_path=jobs.ledger_path(cfg, ledger),
        store=store,
        log=DecisionLog.open_default(cfg),
        policy=policy,
        reference=ref,
        options=jobs.scan_options(cfg),
        on_report=emit,
    )
    if follower.notice:
        typer.echo(follower.notice, err=True)
    follower.run(interval=interval, iterations=iterations)


BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base",
        help="What a known-good period extends: shipped (the shipped reference's simulated kinds; default, "
        "or config monitor_calibrate_base), none (the period alone), or a reference file.",
    ),
]


NullOpt = Annotated[
    str | None,
    typer.Option(
        "--null",
        help="Whose null the p-values come from: base (the base's, the period's accounts its neighbours: "
        "no p-value below the base's alone), period (the period's own: needs a long one), or auto (period "
        "from 999 scored accounts, or as many as the base's null has draws when fewer, 617 for the shipped "
        "one; else base; default, or config monitor_calibrate_null).",
    ),
]


@app.command("calibrate")
def calibrate_cmd(
    ledger: LedgerOpt = None,
    parquet: ParquetOpt = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="labels.json: use only the accounts labelled benign.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to save (default: the monitor's).")] = None,
    base: BaseOpt = None,
    null: NullOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the benign reference (score calibration and MMD windows) on a known-benign ledger."""
    doc = jobs.calibrate(
        load_config(config),
        ledger=ledger,
        parquet=parquet,
        labels=labels,
        out=out,
        engine=engine,
        address=ray_address,
        base=base,
        null=null,
        progress=_progress,
    )
    if doc.get("warning"):
        typer.echo(f"warning: the reference is {doc['warning']}", err=True)
    if as_json:
        _print(doc)
    else:
        extends = doc.get("base")
        added = f", added to {extends['what']} ({extends['entities']} entities)" if extends else ""
        typer.echo(f"benign reference of {doc['accounts']} accounts{added} saved to {doc['reference']}")
        if doc.get("null") == "base":
            check = doc.get("check") or {}
            typer.echo(
                f"p-values against {extends['what']}'s null, the period's accounts its neighbours "
                f"(--null base); checked on the period: {check.get('flagged', {}).get('0.001')} of its "
                f"{check.get('accounts')} accounts, each judged without its own record and its linked "
                "accounts', at p <= 0.001"
                + (f" ({', '.join(check['unusual'])})" if check.get("unusual") else "")
                + ("; tiers stop at monitor_shipped_max_tier" if doc.get("capped") else "")
            )
        else:
            typer.echo("p-values against the period's own null")


@app.command("eval")
def eval_cmd(
    ledger: LedgerOpt = None,
    parquet: ParquetOpt = None,
    labels: Annotated[Path, typer.Option("--labels", help="labels.json of the evaluated ledger.")] = Path(
        "labels.json"
    ),
    reference: ReferenceOpt = None,
    reference_ledger: Annotated[
        Path | None,
        typer.Option("--reference-ledger", help="Fit the benign reference on this (benign) ledger first."),
    ] = None,
    population: PopulationOpt = False,
    base: BaseOpt = None,
    null: NullOpt = None,
    qtd: Annotated[bool, typer.Option("--qtd/--no-qtd", help="Replay for queries-to-detection.")] = True,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for eval.json and roc.png.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-persona TPR/FPR, campaign detection, queries-to-detection, confusion table, ROC plot."""
    from distillguard.monitor.decisions import Policy
    from distillguard.monitor.evaluate import evaluate, queries_to_detection
    from distillguard.monitor.scan import build_reference, ledger_batches
    from distillguard.monitor.synth import read_labels

    cfg = load_config(config)
    policy = Policy.from_config(cfg)
    opts = jobs.scan_options(cfg)
    if (base is not None or null is not None) and reference_ledger is None:
        raise UserError(
            "--base and --null say how --reference-ledger's period is used; give --reference-ledger too"
        )
    lab = read_labels(labels)
    if reference_ledger is not None:
        extends = jobs.reference_base(cfg, base)  # a bad --base fails before the pass over the ledger
        null = jobs.reference_null(cfg, null, extends)
        ref_lab = Path(reference_ledger).parent / "labels.json"
        benign = None
        if ref_lab.is_file():
            benign = [a for a, x in read_labels(ref_lab).items() if x.get("kind") == "benign"]
        ref_acc = jobs.read(ledger_batches(reference_ledger), opts, _progress)
        ref = build_reference(ref_acc, opts, benign=benign, base=extends, null=null)
    else:
        ref = jobs.load_reference(cfg, reference, population)
    batches, created = jobs.open_source(ledger, parquet, cfg)
    acc = jobs.read(batches, opts, _progress)
    analysis = jobs.score(acc, ref, opts, created, _progress)
    q = None
    if qtd and ref is not None:
        batches, _ = jobs.open_source(ledger, parquet, cfg)
        q = queries_to_detection(batches, lab, ref, policy, options=opts, created=created)
    doc = evaluate(analysis, lab, policy, qtd=q, out_dir=out)
    if as_json:
        _print(doc)
        return
    op = doc["operating_points"][policy.flag_tier]
    typer.echo(
        f"AUC {doc['auc']:.4f}; at p <= {op['p_threshold']:g}: benign FPR {op['benign_fpr_observed']:.2%} "
        f"({op['benign_flagged']} of {doc['accounts']['benign']}; <= {op['benign_fpr_upper95']:.2%} at 95%), "
        f"attacker TPR {op['attacker_tpr']:.1%} (>= {op['attacker_tpr_lower95']:.1%} at 95%)"
    )
    for name, p in doc["personas"].items():
        rate = p.get("tpr", p.get("fpr"))
        typer.echo(
            f"  {name:<18} {p['kind']:<8} {p['accounts']:>5} accounts  "
            f"{'TPR' if 'tpr' in p else 'FPR'} {rate:.1%}"
        )
    if q is not None:
        for name, r in q["per_persona"].items():
            typer.echo(
                f"  queries to detection {name:<14} median {r['median']} max {r['max']} "
                f"({r['detected']}/{r['accounts']})"
            )
    if out is not None:
        typer.echo(f"wrote {Path(out) / 'eval.json'} and {doc.get('roc_png')}")


@app.command("revert")
def revert_cmd(
    account: Annotated[str, typer.Argument(help="Account whose last monitor decision to undo.")],
    to: Annotated[str | None, typer.Option("--to", help="Set this tier instead of the previous one.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Undo the monitor's last tier change of an account and hold it from further monitor changes."""
    from distillguard.monitor.decisions import DecisionLog, Policy, revert

    cfg = load_config(config)
    store = jobs.open_store(cfg, create=False)
    if store is None:
        raise UserError("no account store found (check --config)")
    dec = revert(account, store, DecisionLog.open_default(cfg), Policy.from_config(cfg), to=to)
    if as_json:
        _print({"account": dec.account, "from": dec.previous, "to": dec.tier, "kind": dec.kind})
    else:
        typer.echo(f"{dec.account}: {dec.previous} -> {dec.tier} (held from monitor changes)")
