"""The monitor's whole jobs as library calls: ``calibrate`` a benign reference and ``scan`` a ledger.

``distillguard monitor ...`` and the demo both run these, so a workflow has one implementation and the demo
never goes through the command line to reach it. The small helpers resolve what a config names (account
store, ledger, saved reference, scan options) the same way for every monitor command. Heavy modules (numpy,
pyarrow) are imported inside the functions so that importing this one, as the CLI does, stays cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

from distillguard.errors import UserError
from distillguard.monitor.settings import MonitorSettings

Tick = Callable[[int], None]
# progress(what): a context around one long phase, yielding a counter callback (rows read, accounts scored)
Progress = Callable[[str], AbstractContextManager[Tick]]


@contextmanager
def quiet(what: str) -> Iterator[Tick]:
    """The default progress: count nothing."""
    yield lambda n: None


def json_default(x: Any) -> Any:
    """``json.dumps(default=...)`` for the numpy scalars a report may hold."""
    import numpy as np

    if isinstance(x, np.integer | np.floating):
        return x.item()
    raise TypeError(f"not JSON: {type(x)}")


def reference_path(config: dict[str, Any]) -> Path:
    """Where ``calibrate`` saves the benign reference and scans look for it."""
    return MonitorSettings.from_config(config).reference_path()


def load_reference(config: dict[str, Any], path: Path | None, population: bool):
    """The benign reference to score against: ``path``, else the one ``calibrate`` saved, else the shipped
    default (:mod:`distillguard.monitor.shipped`); ``population`` (None) calibrates on the scan itself."""
    from distillguard.monitor.scan import Reference
    from distillguard.monitor.shipped import load_shipped_reference

    if population:
        return None
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"reference not found: {path}")
        return Reference.load(path)
    default = reference_path(config)
    return Reference.load(default) if default.is_file() else load_shipped_reference()


def _shipped():
    from distillguard.monitor.shipped import load_shipped_reference

    return load_shipped_reference()


# What ``calibrate`` adds a known-good period to, by name; any other value is a reference file.
REFERENCE_BASES: dict[str, Callable[[], Any]] = {"shipped": _shipped, "none": lambda: None}


def reference_base(config: dict[str, Any], spec: str | None = None):
    """The reference a known-good period extends (``calibrate --base``, else config
    ``monitor_calibrate_base``): ``shipped``, ``none`` or a reference file."""
    from distillguard.monitor.scan import Reference

    what = "--base" if spec else "monitor_calibrate_base"
    spec = spec or MonitorSettings.from_config(config).calibrate_base
    if spec in REFERENCE_BASES:
        return REFERENCE_BASES[spec]()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"{what} must be one of {', '.join(REFERENCE_BASES)} or a reference file, got {spec!r}"
        )
    ref = Reference.load(path)
    ref.meta = {**ref.meta, "path": str(path)}
    return ref


def reference_null(config: dict[str, Any], spec: str | None, base) -> str:
    """Whose null a period's reference keeps (``calibrate --null``, else config ``monitor_calibrate_null``),
    checked against ``base`` before any pass over a ledger."""
    from distillguard.monitor.reference import check_null

    null = spec or MonitorSettings.from_config(config).calibrate_null
    check_null(null, base)
    return null


def shipped_note(ref, policy) -> str | None:
    """What a scan against the shipped reference's null tells its user (None for a null of its own)."""
    if ref.meta.get("shipped"):
        return (
            f"note: scored against the shipped default reference ({ref.meta.get('version')}: simulated "
            f"benign kinds, not this deployment's traffic), so tiers stop at {policy.shipped_max_tier!r} "
            "(monitor_shipped_max_tier); fit your own with `distillguard monitor calibrate` on a known-good "
            "period"
        )
    if ref.meta.get("capped"):
        return (
            f"note: p-values against the null of {(ref.meta.get('base') or {}).get('what')}, with a "
            f"known-good period's accounts as neighbours, so tiers stop at {policy.shipped_max_tier!r} "
            "(monitor_shipped_max_tier); `distillguard monitor calibrate --null period` on a long known-good "
            "period gives a null of your own"
        )
    return None


def open_store(config: dict[str, Any], create: bool):
    """The gateway's account store, or ``None`` when there is none and ``create`` is false."""
    from distillguard.gateway.accounts import account_store_from_config
    from distillguard.gateway.storage_settings import StorageSettings

    storage = StorageSettings.from_config(config)
    # a Postgres store is always there to open
    if not storage.is_postgres and not storage.accounts_file().is_file() and not create:
        return None
    return account_store_from_config(storage)


def ledger_path(config: dict[str, Any], ledger: Path | None) -> Path | str:
    """``--ledger``, else the gateway's ledger: its PostgreSQL ``database_url``, else its SQLite file."""
    from distillguard.gateway.storage_settings import StorageSettings

    if ledger is not None:
        return Path(ledger).expanduser()
    storage = StorageSettings.from_config(config)
    return str(storage.database_url) if storage.is_postgres else storage.ledger_file()


def scan_options(config: dict[str, Any]):
    """The scan's options: the config's ``monitor_sample_size`` and ``monitor_min_queries``, else defaults,
    and the installation's sketch key (:func:`sketch_key`)."""
    from distillguard.monitor.scan import ScanOptions

    s = MonitorSettings.from_config(config)
    given = {"sample_size": s.sample_size, "min_queries": s.min_queries}
    return ScanOptions(**{k: v for k, v in given.items() if v is not None}, sketch_key=sketch_key(config))


def sketch_key(config: dict[str, Any]) -> bytes:
    """The installation's secret that ranks the monitor's bounded sets (:func:`accumulator.sketch_rank`):
    the file ``monitor_sketch_key_file`` (which must exist), else ``<monitor state dir>/sketch.key``, 32
    random bytes made on first use (mode 0600)."""
    settings = MonitorSettings.from_config(config)
    path = settings.sketch_key_path()
    try:
        if settings.sketch_key_file or path.exists():
            key = path.read_bytes()
        else:
            from distillguard.gateway.accounts import load_or_create_secret

            key = load_or_create_secret(path)
    except OSError as exc:
        hint = (
            "; monitor_sketch_key_file names an existing file of 16 or more random bytes "
            "(e.g. head -c 32 /dev/urandom > FILE)"
            if settings.sketch_key_file
            else ""
        )
        raise UserError(
            f"cannot read the monitor's sketch key {path} ({exc.strerror or exc}){hint}"
        ) from None
    if len(key) < 16:
        raise UserError(f"the monitor's sketch key {path} is shorter than 16 bytes")
    return key


def open_source(ledger: Path | None, parquet: Path | None, config: dict[str, Any]):
    """(batches, created-times) of the chosen source: a ledger database or a Parquet export."""
    from distillguard.monitor.scan import ledger_batches, parquet_batches, parquet_created

    if ledger is not None and parquet is not None:
        raise UserError("give --ledger or --parquet, not both")
    if parquet is not None:
        return parquet_batches(parquet), parquet_created(parquet)
    return ledger_batches(ledger_path(config, ledger)), None


def export_ledger(config: dict[str, Any], ledger: Path | None, out_dir: Path) -> Path:
    """The ledger database (``--ledger``, else the gateway's) written to ``out_dir`` as Parquet."""
    from distillguard.gateway.ledger import Ledger, open_ledger
    from distillguard.monitor.scan import is_database_url

    src = ledger_path(config, ledger)
    if is_database_url(src):
        store = open_ledger(str(src), None)
    elif Path(src).is_file():
        store = Ledger(Path(src))
    else:
        raise UserError(f"ledger not found: {src}")
    try:
        return store.export_parquet(out_dir)
    finally:
        store.close()


def feature_pass(
    config: dict[str, Any],
    ledger: Path | None,
    parquet: Path | None,
    opts: Any,
    *,
    engine: str | None = None,
    address: str | None = None,
    intel: Any = None,
    progress: Progress = quiet,
):
    """(accumulator, created-times) of the chosen source, read on the chosen engine (``--engine``, else
    config ``monitor_engine``) with the :class:`~distillguard.monitor.scan.ScanOptions` ``opts``. An
    engine that reads Parquet only gets a ledger database exported first, to ``monitor_staging``
    (default: the monitor's state directory; on a cluster, a path every node reads), and removed after."""
    import tempfile

    from distillguard.monitor.engine import open_engine
    from distillguard.monitor.scan import parquet_batches, parquet_created

    settings = MonitorSettings.from_config(config, engine=engine)
    eng = open_engine(
        settings.engine, address=address, default_address=settings.ray_address, slice_rows=settings.slice_rows
    )
    if not eng.parquet_only:
        batches, created = open_source(ledger, parquet, config)
        if intel is not None:
            batches = intel.tap(batches)
        return read(batches, opts, progress), created
    if ledger is not None and parquet is not None:
        raise UserError("give --ledger or --parquet, not both")
    with ExitStack() as stack:
        if parquet is not None:
            created: dict[str, float] | None = parquet_created(parquet)
        else:  # the workers read Parquet: export the database first (key creation times: the store's)
            staging = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="export-", dir=_staging(settings))
            )
            with progress("ledger rows exported") as _:
                parquet = export_ledger(config, ledger, Path(staging)).parent
            created = None
        if intel is not None:  # intel matching reads the rows here (not yet distributed)
            for _ in intel.tap(parquet_batches(parquet)):
                pass
        with progress(f"ledger rows read on {eng.name} (each twice)") as tick:
            acc = eng.accumulate(
                parquet, sample_size=opts.sample_size, sketch_key=opts.sketch_key, progress=tick
            )
        if acc.sketch_key != opts.sketch_key:  # an engine that dropped the key ranked by the public hash
            raise UserError(f"the {eng.name} engine did not rank the monitor's sketches under its sketch key")
        return acc, created


def _staging(settings: MonitorSettings) -> Path:
    d = settings.staging_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use {d} to stage the ledger export (monitor_staging): {exc}") from None
    return d


def read(batches, opts: Any, progress: Progress = quiet):
    """Accumulate the features of every account over ``batches`` (``opts``: the scan's options)."""
    from distillguard.monitor.scan import accumulate

    with progress("ledger rows read") as tick:
        return accumulate(batches, sample_size=opts.sample_size, sketch_key=opts.sketch_key, progress=tick)


def score(acc, ref, opts, created, progress: Progress = quiet):
    """Score every account and linked cluster of an accumulation."""
    from distillguard.monitor.scan import analyse

    with progress("accounts scored") as tick:
        return analyse(acc, ref, options=opts, created=created, progress=tick)


def calibrate(
    config: dict[str, Any],
    *,
    ledger: Path | None = None,
    parquet: Path | None = None,
    labels: Path | None = None,
    out: Path | None = None,
    engine: str | None = None,
    address: str | None = None,
    base: str | None = None,
    null: str | None = None,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Fit and save the benign reference on a known-benign ledger; the document ``calibrate --json`` prints.

    With ``labels`` (a simulation's labels.json) only the accounts labelled benign are used. ``base``
    (default: config ``monitor_calibrate_base``, else ``shipped``) is what the period extends
    (:func:`reference_base`), ``null`` (default: config ``monitor_calibrate_null``, else ``auto``) whose
    null its p-values are drawn from (see :func:`~distillguard.monitor.scan.build_reference`).
    """
    from distillguard.monitor.scan import build_reference
    from distillguard.monitor.synth import read_labels

    extends = reference_base(config, base)
    null = reference_null(config, null, extends)
    target = Path(out or reference_path(config)).expanduser()
    held = extends.meta.get("path") if extends is not None else None
    if held and Path(held).expanduser().resolve() == target.resolve():
        raise UserError(
            f"the base reference is {target}, the file this calibration writes: every run would extend the "
            "last one again; give another --out, or --base shipped|none"
        )
    opts = scan_options(config)
    acc, created = feature_pass(
        config, ledger, parquet, opts, engine=engine, address=address, progress=progress
    )
    benign = None
    if labels is not None:
        benign = [a for a, x in read_labels(labels).items() if x.get("kind") == "benign"]
    ref = build_reference(
        acc,
        opts,
        benign=benign,
        created=created,
        meta={"source": str(ledger or parquet or "")},
        base=extends,
        null=null,
    )
    path = ref.save(target)
    cal = ref.calibration
    return {
        "reference": str(path),
        **ref.meta,
        "tail": {"u": cal.tail_u, "p_u": cal.tail_p, "beta": cal.tail_beta},
        "score_at_p": {f"{p:g}": cal.score_for_p(p) for p in (1e-3, 1e-4, 1e-6)},
    }


def scan(
    config: dict[str, Any],
    *,
    ledger: Path | None = None,
    parquet: Path | None = None,
    reference: Path | None = None,
    population: bool = False,
    apply: bool = False,
    engine: str | None = None,
    address: str | None = None,
    progress: Progress = quiet,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score the ledger and propose tier changes (write them with ``apply``); the ``scan --json`` document.

    Without a benign reference the scan calibrates on the scanned population, which a campaign holding a
    large share of the accounts can skew in its own favour; ``warn`` is told so.
    """
    from distillguard.intel.match import IntelMatcher
    from distillguard.monitor.decisions import DecisionLog, Policy, apply_decisions
    from distillguard.monitor.report import plan_decisions, report_json
    from distillguard.monitor.scan import store_created

    policy = Policy.from_config(config)
    opts = scan_options(config)
    ref = load_reference(config, reference, population)
    intel = IntelMatcher.from_config(config)  # indicators imported with `distillguard intel import|pull`
    acc, created = feature_pass(
        config,
        ledger,
        parquet,
        opts,
        engine=engine,
        address=address,
        intel=intel,
        progress=progress,
    )
    store = open_store(config, create=False)
    if apply and store is None:
        raise UserError("--apply needs the gateway's account store (none found; check --config)")
    if created is None and store is not None:
        created = store_created(store)
    if warn is not None and ref is None:
        warn(
            "note: calibrated on the scanned population (--population): linked clusters holding 5% "
            "or more of the accounts are left out of it and scored against the rest, but a campaign spread "
            "over unlinked accounts can still vouch for itself; fit a reference with "
            "`distillguard monitor calibrate`"
        )
    elif warn is not None and (note := shipped_note(ref, policy)):
        warn(note)
    analysis = score(acc, ref, opts, created, progress)
    if intel is not None:
        analysis = intel.apply(analysis, policy)
    store_tiers = {a["name"]: a["tier"] for a in store.list_accounts()} if store is not None else {}
    log = DecisionLog.open_default(config)
    states, extra = log.load_state()
    decisions, new_states, tiers = plan_decisions(analysis, policy, store_tiers, states, time.time())
    if apply:
        apply_decisions(store, log, decisions)
        log.save_state(new_states, extra)
    return report_json(
        analysis, tiers, store_tiers=store_tiers, decisions=decisions, applied=apply, policy=policy
    )
