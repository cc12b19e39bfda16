"""The feature pass as map + merge: slice accumulators merged in ledger order equal one pass over the whole
ledger, in this process and on a local two-node Ray cluster, and a scan on the ray engine gives the same
report as the local engine."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_run import run_cli
from distillguard.monitor.accumulator import OTHER, FeatureAccumulator, count_bounded
from distillguard.monitor.engine import open_engine, plan_slices
from distillguard.monitor.features import records_to_table
from distillguard.monitor.merge import CopyClaims, finish, merge_into, slice_accumulator
from distillguard.monitor.scan import accumulate
from distillguard.monitor.synth import synthesize_parquet

T0 = 1_717_372_800.0


def hard_rows(n: int = 6000, seed: int = 3, jitter: float = 0.0, first_seq: int = 1) -> list[dict]:
    """Traffic that stresses every order-dependent part of the state: an account on 700 networks and 90
    keys (past the 256-prefix and 64-key bounds), prompts copied between accounts, accounts whose
    queries straddle slice boundaries inside one active-time bin, timestamps tied, streams' start records
    and rows without an account. ``jitter``: timestamps out of ``seq`` order by up to that many seconds
    (a gateway stamps a request when it starts and appends it when it ends)."""
    rng = random.Random(seed)
    texts = [f"please explain how module number {i} handles its configuration files" for i in range(300)]
    rows = []
    ts = T0
    for seq in range(first_seq, first_seq + n):
        ts += rng.choice([0.0, 0.5, 3.0, 40.0, 900.0])
        acct = rng.choice(["rotator", "copier", "origin", "steady", "steady", "bot"])
        ip = f"10.{rng.randrange(30)}.{rng.randrange(250)}.9" if acct == "rotator" else "192.0.2.7"
        key = f"key_{rng.randrange(90)}" if acct == "rotator" else f"key_{acct}"
        prompt = (
            rng.choice(texts) if acct in ("copier", "origin", "rotator") else f"hello {rng.randrange(50)}"
        )
        params = {"logprobs": True, "top_logprobs": 5} if acct == "rotator" and seq % 3 else {}
        rows.append(
            {
                "seq": seq,
                "ts": ts + rng.uniform(-jitter, jitter),
                "account": None if seq % 997 == 0 else acct,
                "key_id": key,
                "org": "acme" if acct == "bot" else None,
                "client_ip": ip,
                "decision": "stream_started" if seq % 501 == 0 else "admitted",
                "prompt": prompt,
                "params": params,
                "prompt_tokens": 12,
                "completion_tokens": 40,
            }
        )
    return rows


def same_state(a: FeatureAccumulator, b: FeatureAccumulator) -> None:
    sa, sb = a.state(), b.state()
    assert sa["arrays"].keys() == sb["arrays"].keys()
    for k, x in sa["arrays"].items():
        y = sb["arrays"][k]
        assert x.shape == y.shape, k
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-9, err_msg=k)  # sums added in another order
        else:
            assert np.array_equal(x, y), k
    for k, x in sa["meta"].items():
        y = sb["meta"][k]
        if k == "prefixes":
            assert [Counter(p) for p in x] == [Counter(p) for p in y]
        else:
            assert x == y, k


def sliced(
    tables: list[pa.Table], cuts: list[int], sample_size: int, sketch_key: bytes | None = None, tree=False
) -> FeatureAccumulator:
    """What a distributed pass computes, in this process: claims of every table, then one accumulator per
    run of tables between ``cuts``, merged in order (``tree``: pairwise, as the Ray engine does)."""
    claims = CopyClaims.empty()
    base = 0
    for t in tables:
        claims.add(t, base)
        base += t.num_rows
    bounds = [0, *cuts, len(tables)]
    parts = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        parts.append(accumulate(tables[lo:hi], slice_accumulator(claims, sample_size, sketch_key), workers=1))
    while tree and len(parts) > 1:
        parts = [merge_into(a, b) for a, b in zip(parts[::2], parts[1::2], strict=False)] + parts[
            len(parts) - len(parts) % 2 :
        ]
    merged = parts[0]
    for p in parts[1:]:
        merge_into(merged, p)
    merged.claims = claims
    return finish(merged)


def test_bounded_counter_keeps_the_same_names_in_any_order():
    names = [f"10.0.{i}" for i in range(900)]
    counts = {n: 1 + i % 7 for i, n in enumerate(names)}
    got = []
    for seed in range(3):
        order = names[:]
        random.Random(seed).shuffle(order)
        c: Counter = Counter()
        worst: dict = {}
        for n in order:
            count_bounded(c, n, counts[n], 256, worst, 0)
        got.append(c)
    assert got[0] == got[1] == got[2]
    assert len(got[0]) == 257 and got[0][OTHER] == sum(counts.values()) - sum(
        v for k, v in got[0].items() if k != OTHER
    )


@pytest.mark.parametrize("key", [None, bytes(range(32))], ids=["public rank", "sketch key"])
@pytest.mark.parametrize("cuts", [[1], [2, 3, 7], list(range(1, 12))])
def test_slices_merge_into_one_pass(cuts, key):
    rows = hard_rows()
    whole = records_to_table(rows)
    tables = [whole.slice(i, 500) for i in range(0, whole.num_rows, 500)]
    one = accumulate(
        [whole.slice(i, 1700) for i in range(0, whole.num_rows, 1700)],
        sample_size=16,
        sketch_key=key,
        workers=1,
    )
    assert len(one.prefixes[one.index["rotator"]]) == 257  # the bound is reached
    assert len(one.keys[one.index["rotator"]]) == 64
    assert one.c["copied"].sum() > 100
    same_state(one, sliced(tables, cuts, 16, key))
    if key is not None:  # the key decides which names are kept: not the public rank's choice
        public = accumulate([whole], sample_size=16, workers=1)
        i = one.index["rotator"]
        assert set(one.prefixes[i]) != set(public.prefixes[i]) and one.keys[i] != public.keys[i]


@pytest.mark.parametrize(
    "case", ["jittered times", "jittered, merged as a tree", "seq from 0", "filtered slices"]
)
def test_slices_merge_into_one_pass_at_the_edges(case):
    rows = hard_rows(3000, seed=7, jitter=200.0 if case == "jittered times" else 0.0)
    if case.startswith("jittered,"):  # records hours out of time order: many bins a slice counts again
        rows = hard_rows(3000, seed=7, jitter=3 * 3600.0)
    if case == "seq from 0":
        rows = hard_rows(3000, seed=7, first_seq=0)
    if case == "filtered slices":  # the first 1,000 rows count for nothing: two slices with no account
        for r in rows[:1000]:
            r["account"] = None
    whole = records_to_table(rows)
    tables = [whole.slice(i, 500) for i in range(0, whole.num_rows, 500)]
    one = accumulate([whole.slice(i, 700) for i in range(0, whole.num_rows, 700)], sample_size=16, workers=1)
    same_state(one, sliced(tables, [1, 2, 3, 5], 16, tree=case.endswith("tree")))


def test_a_merged_state_continues_like_one_pass():
    """``monitor follow`` resumes from a state: one merged from slices must go on exactly like a pass."""
    rows = hard_rows(4000, seed=5)
    t = records_to_table(rows)
    head, tail = t.slice(0, 3000), t.slice(3000)
    one = accumulate([head, tail], sample_size=16, workers=1)
    merged = sliced([head.slice(i, 600) for i in range(0, 3000, 600)], [2, 4], 16)
    accumulate([tail], merged, workers=1)
    same_state(one, merged)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A synthetic export in the seed case's proportions, rewritten with small row groups (many slices)."""
    d = tmp_path_factory.mktemp("export")
    synthesize_parquet(
        d / "gen", rows=40_000, seed=2, accounts=60, campaign_accounts=24, queries_per_sybil=500
    )
    table = pq.read_table(d / "gen" / "ledger.parquet")
    out = d / "export"
    out.mkdir()
    pq.write_table(table, out / "ledger.parquet", row_group_size=2500)
    return out


def test_ray_cluster_of_two_nodes_equals_the_local_pass(export):
    import ray  # a dev dependency: `make test` installs it
    from ray.cluster_utils import Cluster

    assert len(plan_slices(export, 5000)) == 8
    key = bytes(range(32))  # the installation's sketch key travels to every worker with its task
    local = open_engine("local").accumulate(export, sample_size=32, sketch_key=key)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        ticks: list[int] = []
        remote = open_engine("ray", slice_rows=5000).accumulate(
            export, sample_size=32, sketch_key=key, progress=ticks.append
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    stored = pq.ParquetFile(export / "ledger.parquet").metadata.num_rows
    assert ticks[-1] == 2 * stored  # each stored row read twice: claims, then features
    same_state(local, remote)
    assert remote.sketch_key == key
    # the result owns its arrays (not read-only views into Ray's object store) and goes on like a pass
    more = records_to_table(hard_rows(500, seed=4, first_seq=10_000_000))
    accumulate([more], local, workers=1)
    accumulate([more], remote, workers=1)
    same_state(local, remote)


def scan_on_each_engine(source: list[str], capsys) -> list[dict]:
    """``monitor scan SOURCE --json`` on the local and the ray engine: the two reports."""
    reports = []
    for engine in ("local", "ray"):
        code, out, err = run_cli(["monitor", "scan", *source, "--engine", engine, "--json"], capsys)
        assert code == 0, err
        reports.append(json.loads(out))
    return reports


def test_scan_on_the_ray_engine_reports_what_the_local_engine_reports(export, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILLGUARD_MONITOR_SLICE_ROWS", "5000")
    reports = scan_on_each_engine(["--parquet", str(export)], capsys)
    assert reports[0] == reports[1]
    assert any(a["tier"] != "normal" for a in reports[0]["accounts"])


def test_engine_errors_are_one_line(export, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    code, _, err = run_cli(["monitor", "scan", "--parquet", str(export), "--engine", "spark"], capsys)
    assert code != 0 and "one of local, ray" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["monitor", "scan", "--parquet", str(export), "--ray-address", "x:1"], capsys)
    assert code != 0 and "takes no address" in err
    # a configured cluster address is the ray engine's; the local engine does not mind it
    monkeypatch.setenv("DISTILLGUARD_MONITOR_RAY_ADDRESS", "ray://nowhere:10001")
    code, _, err = run_cli(["monitor", "scan", "--parquet", str(export), "--json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        ["monitor", "scan", "--parquet", str(export / "nothing.parquet"), "--engine", "ray"], capsys
    )
    assert code != 0 and len(err.strip().splitlines()) == 1


def test_a_ledger_database_is_exported_for_the_ray_engine(tmp_path, monkeypatch, capsys):
    """``--engine ray --ledger DB`` exports the ledger to the monitor's staging directory, reads it on
    Ray, reports what the local engine reports, and leaves no export behind."""
    from distillguard.gateway.ledger import Ledger

    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    db = tmp_path / "ledger.db"
    led = Ledger(db)
    led.append_many([{k: v for k, v in r.items() if k != "seq"} for r in hard_rows(3000, seed=9)])
    led.close()
    reports = scan_on_each_engine(["--ledger", str(db)], capsys)
    assert reports[0] == reports[1] and reports[0]["rows"] > 2900
    assert not any((tmp_path / "home" / "monitor" / "staging").iterdir())
    # the export goes where monitor_staging says (a shared path on a cluster), and is removed there too
    monkeypatch.setenv("DISTILLGUARD_MONITOR_STAGING", str(tmp_path / "shared"))
    code, out, err = run_cli(["monitor", "scan", "--ledger", str(db), "--engine", "ray", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == reports[0] and (tmp_path / "shared").is_dir()
    assert not any((tmp_path / "shared").iterdir())


def test_a_saved_state_packs_its_sampled_texts(tmp_path):
    """The follow state keeps sampled texts as UTF-8 bytes: one long prompt must not size every entry (a
    fixed-width array of 4M samples took 45 GiB at the seed case's scale)."""
    from distillguard.monitor.follow import load_follow_state, save_accumulator

    rows = hard_rows(2000, seed=11)
    rows[5]["prompt"] = "déjà vu " * 6000  # 48k characters, not ASCII
    acc = accumulate([records_to_table(rows)], sample_size=64, workers=1)
    path = tmp_path / "state.npz"
    save_accumulator(acc, path)
    back, _ = load_follow_state(path)
    same_state(acc, back)
    with np.load(path) as z:
        assert z["pool_text_utf8"].nbytes < 200_000


def test_an_engine_that_drops_the_sketch_key_is_refused(export, tmp_path, monkeypatch):
    """An engine written to the protocol before the sketch key (taking any keyword) would hand back
    sketches ranked by the public hash; the feature pass refuses its result instead of scoring it."""
    from distillguard.errors import UserError
    from distillguard.monitor import engine as engines
    from distillguard.monitor.jobs import feature_pass, scan_options

    class Keyless:
        name, parquet_only = "keyless", True

        def accumulate(self, path, *, sample_size, progress=None, **_):
            return open_engine("local").accumulate(path, sample_size=sample_size)

    monkeypatch.setitem(engines.ENGINES, "keyless", Keyless)
    config = {"monitor_dir": str(tmp_path / "m")}
    opts = scan_options(config)
    acc, _ = feature_pass(config, None, export, opts, engine="local")
    assert acc.sketch_key == opts.sketch_key is not None
    with pytest.raises(UserError, match="keyless engine did not rank the monitor's sketches"):
        feature_pass(config, None, export, opts, engine="keyless")
