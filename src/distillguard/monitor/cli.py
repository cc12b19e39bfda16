"""``distillguard monitor ...``: scan, follow, calibrate, eval, revert.

``scan`` is a dry run unless ``--apply``; ``follow`` applies tiers live. Both use the benign reference saved
by ``calibrate`` (``home()/monitor/reference.npz``, or config ``monitor_reference``) when there is one, and
the scanned population otherwise. The gateway's account store and ledger come from the same config as
``distillguard serve`` (``--config FILE``, ``DISTILLGUARD_*``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from distillguard.config import home, load_config
from distillguard.errors import UserError

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
PopulationOpt = Annotated[
    bool, typer.Option("--population", help="Calibrate on the scanned population even if a reference exists.")
]


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=_default))


def _default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, np.integer | np.floating):
        return x.item()
    raise TypeError(f"not JSON: {type(x)}")


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


def _read(batches, sample_size: int):
    from distillguard.monitor.scan import accumulate

    with _progress("ledger rows read") as tick:
        return accumulate(batches, sample_size=sample_size, progress=tick)


def _analyse(acc, ref, opts, created):
    from distillguard.monitor.scan import analyse

    with _progress("accounts scored") as tick:
        return analyse(acc, ref, options=opts, created=created, progress=tick)


def _reference_path(config: dict[str, Any]) -> Path:
    return Path(config.get("monitor_reference") or home() / "monitor" / "reference.npz").expanduser()


def _reference(config: dict[str, Any], path: Path | None, population: bool):
    from distillguard.monitor.scan import Reference

    if population:
        return None
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"reference not found: {path}")
        return Reference.load(path)
    default = _reference_path(config)
    return Reference.load(default) if default.is_file() else None


def _store(config: dict[str, Any], create: bool):
    """The gateway's account store, or ``None`` when there is none and ``create`` is false."""
    from distillguard.gateway.accounts import AccountStore

    path = Path(config.get("accounts_path") or home() / "gateway" / "accounts.db").expanduser()
    if not path.is_file() and not create:
        return None
    return AccountStore.open_default(config)


def _ledger_path(config: dict[str, Any], ledger: Path | None) -> Path:
    from distillguard.gateway.ledger import Ledger

    return Path(ledger).expanduser() if ledger is not None else Ledger.default_path(config)


def _options(config: dict[str, Any]):
    from distillguard.monitor.scan import ScanOptions

    try:
        return ScanOptions(
            sample_size=int(config.get("monitor_sample_size", 256)),
            min_queries=int(config.get("monitor_min_queries", 20)),
        )
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid monitor setting: {exc}") from None


def _source(ledger: Path | None, parquet: Path | None, config: dict[str, Any]):
    """(batches, created-times) of the chosen source."""
    from distillguard.monitor.scan import ledger_batches, parquet_batches, parquet_created

    if ledger is not None and parquet is not None:
        raise UserError("give --ledger or --parquet, not both")
    if parquet is not None:
        return parquet_batches(parquet), parquet_created(parquet)
    return ledger_batches(_ledger_path(config, ledger)), None


@app.command("scan")
def scan_cmd(
    ledger: LedgerOpt = None,
    parquet: ParquetOpt = None,
    reference: ReferenceOpt = None,
    population: PopulationOpt = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Write the tier changes (default: dry run).")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score every account and linked cluster of the ledger; propose (or --apply) tier changes."""
    from distillguard.monitor.decisions import DecisionLog, Policy, apply_decisions
    from distillguard.monitor.scan import (
        plan_decisions,
        report_json,
        store_created,
        summary_text,
    )

    cfg = load_config(config)
    policy = Policy.from_config(cfg)
    opts = _options(cfg)
    ref = _reference(cfg, reference, population)
    batches, created = _source(ledger, parquet, cfg)
    acc = _read(batches, opts.sample_size)
    store = _store(cfg, create=False)
    if apply and store is None:
        raise UserError("--apply needs the gateway's account store (none found; check --config)")
    if created is None and store is not None:
        created = store_created(store)
    if ref is None:
        typer.echo(
            "note: calibrated on the scanned population (no benign reference): a campaign holding a large "
            "share of the accounts can vouch for itself; fit one with `distillguard monitor calibrate`",
            err=True,
        )
    analysis = _analyse(acc, ref, opts, created)
    store_tiers = {a["name"]: a["tier"] for a in store.list_accounts()} if store is not None else {}
    log = DecisionLog.open_default(cfg)
    states, extra = log.load_state()
    decisions, new_states, tiers = plan_decisions(analysis, policy, store_tiers, states, time.time())
    if apply:
        apply_decisions(store, log, decisions)
        log.save_state(new_states, extra)
    report = report_json(
        analysis, tiers, store_tiers=store_tiers, decisions=decisions, applied=apply, policy=policy
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
    from distillguard.monitor.scan import Follower, summary_text

    cfg = load_config(config)
    store = _store(cfg, create=False)
    if store is None:
        raise UserError("monitor follow needs the gateway's account store (none found; check --config)")

    def emit(report: dict[str, Any]) -> None:
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False, default=_default))
        else:
            typer.echo(summary_text(report, limit=10), nl=False)
        sys.stdout.flush()

    follower = Follower(
        ledger_path=_ledger_path(cfg, ledger),
        store=store,
        log=DecisionLog.open_default(cfg),
        policy=Policy.from_config(cfg),
        reference=_reference(cfg, reference, population),
        options=_options(cfg),
        on_report=emit,
    )
    follower.run(interval=interval, iterations=iterations)


@app.command("calibrate")
def calibrate_cmd(
    ledger: LedgerOpt = None,
    parquet: ParquetOpt = None,
    labels: Annotated[
        Path | None, typer.Option("--labels", help="labels.json: use only the accounts labelled benign.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to save (default: the monitor's).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit the benign reference (score calibration and MMD windows) on a known-benign ledger."""
    from distillguard.monitor.scan import build_reference
    from distillguard.monitor.synth import read_labels

    cfg = load_config(config)
    opts = _options(cfg)
    batches, created = _source(ledger, parquet, cfg)
    acc = _read(batches, opts.sample_size)
    benign = None
    if labels is not None:
        lab = read_labels(labels)
        benign = [a for a, x in lab.items() if x.get("kind") == "benign"]
    ref = build_reference(
        acc, opts, benign=benign, created=created, meta={"source": str(ledger or parquet or "")}
    )
    path = ref.save(out or _reference_path(cfg))
    cal = ref.calibration
    doc = {
        "reference": str(path),
        **ref.meta,
        "null": {"u": cal.tail_u, "p_u": cal.tail_p, "beta": cal.tail_beta},
        "score_at_p": {f"{p:g}": cal.score_for_p(p) for p in (1e-3, 1e-4, 1e-6)},
    }
    if as_json:
        _print(doc)
    else:
        typer.echo(f"benign reference of {ref.meta['accounts']} accounts saved to {path}")


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
    opts = _options(cfg)
    lab = read_labels(labels)
    if reference_ledger is not None:
        ref_lab = Path(reference_ledger).parent / "labels.json"
        benign = None
        if ref_lab.is_file():
            benign = [a for a, x in read_labels(ref_lab).items() if x.get("kind") == "benign"]
        ref_acc = _read(ledger_batches(reference_ledger), opts.sample_size)
        ref = build_reference(ref_acc, opts, benign=benign)
    else:
        ref = _reference(cfg, reference, population)
    batches, created = _source(ledger, parquet, cfg)
    acc = _read(batches, opts.sample_size)
    analysis = _analyse(acc, ref, opts, created)
    q = None
    if qtd and ref is not None:
        batches, _ = _source(ledger, parquet, cfg)
        q = queries_to_detection(batches, lab, ref, policy, options=opts, created=created)
    doc = evaluate(analysis, lab, policy, qtd=q, out_dir=out)
    if as_json:
        _print(doc)
        return
    op = doc["operating_points"]["throttled"]
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
    store = _store(cfg, create=False)
    if store is None:
        raise UserError("no account store found (check --config)")
    dec = revert(account, store, DecisionLog.open_default(cfg), Policy.from_config(cfg), to=to)
    if as_json:
        _print({"account": dec.account, "from": dec.previous, "to": dec.tier, "kind": dec.kind})
    else:
        typer.echo(f"{dec.account}: {dec.previous} -> {dec.tier} (held from monitor changes)")
