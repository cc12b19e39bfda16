"""Quotas: reserve-then-commit never overshoots, windows slide exactly, retry_after is right, and the memory
and Redis stores (a real redis-server) behave the same, also across OS processes."""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from distillguard.errors import UserError
from distillguard.gateway.accounts import Limits
from distillguard.gateway.quotas import (
    Denied,
    MemoryQuotaStore,
    QuotaStore,
    RedisQuotaStore,
    Reservation,
    effective_limits,
    open_quota_store,
)

T0 = 1_800_000_000.0  # a fixed clock: 2027-01-15 08:00:00 UTC
DAY = 86400.0


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Callable[[], QuotaStore]:
    """A factory of stores that share one state: the same object (memory) or the same Redis prefix."""
    if request.param == "memory":
        store = MemoryQuotaStore()
        return lambda: store
    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    made: list[RedisQuotaStore] = []

    def factory() -> QuotaStore:
        made.append(RedisQuotaStore(url, prefix=prefix))
        return made[-1]

    request.addfinalizer(lambda: [s.close() for s in made])
    return factory


def _parallel(n: int, fn: Callable[[int], object]) -> list[object]:
    barrier = threading.Barrier(n)
    out: list[object] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_fifty_parallel_requests_against_rpm_10_admit_exactly_10(make_store) -> None:
    store = make_store()
    scopes = [("key:k1", Limits(rpm=10)), ("account:a", Limits(rpm=100))]
    results = _parallel(50, lambda i: store.reserve(scopes, 7))
    admitted = [r for r in results if isinstance(r, Reservation)]
    denied = [r for r in results if isinstance(r, Denied)]
    assert len(admitted) == 10 and len(denied) == 40
    assert {d.reason for d in denied} == {"rpm"} and {d.scope for d in denied} == {"key:k1"}
    assert all(0 < d.retry_after <= 60 for d in denied)
    assert store.usage("key:k1")["requests"] == 10
    assert store.usage("account:a")["requests"] == 10  # a refused request took nothing from the other scope


@pytest.mark.parametrize("limit_field", ["tpm", "daily_tokens"])
def test_token_budget_never_exceeded_under_concurrency_with_reconciliation(make_store, limit_field) -> None:
    store = make_store()
    budget = 1000
    limits = Limits(**{limit_field: budget})
    scopes = [("key:k", limits), ("account:a", Limits())]
    lock = threading.Lock()
    spent: list[int] = []
    peak = [0]

    def worker(i: int) -> None:
        rng = random.Random(i)
        for _ in range(200):
            res = store.reserve(scopes, 100, now=T0)  # prompt + max_tokens, the upper bound
            if isinstance(res, Denied):
                assert res.reason == limit_field and not res.permanent
                # the others' reservations hold the budget until they commit: wait for them, or a worker
                # spins through its tries while they run (on a loaded machine, before any commit)
                time.sleep(0.002)
                continue
            used = store.usage("key:k", now=T0)
            with lock:
                peak[0] = max(peak[0], used["tokens"] if limit_field == "tpm" else used["daily_tokens"])
            actual = rng.randint(5, 100)
            store.commit(res, actual, now=T0)
            with lock:
                spent.append(actual)

    _parallel(8, worker)
    assert sum(spent) <= budget
    assert peak[0] <= budget
    # reconciliation gave unused reservations back: far more than budget / 100 = 10 requests got through
    assert len(spent) > 15
    usage = store.usage("key:k", now=T0)
    assert usage["tokens"] == sum(spent) and usage["daily_tokens"] == sum(spent)
    assert usage["concurrent"] == 0
    # and the budget is now nearly used up: what is left is less than one more reservation
    assert budget - sum(spent) < 100


def test_sliding_window_rpm_and_retry_after(make_store) -> None:
    store = make_store()
    lim = [("key:w", Limits(rpm=3))]
    for t in (0.0, 10.0, 20.0):
        assert isinstance(store.reserve(lim, 1, now=T0 + t), Reservation)
    d = store.reserve(lim, 1, now=T0 + 30.0)
    assert isinstance(d, Denied) and d.reason == "rpm" and d.limit == 3
    assert d.retry_after == pytest.approx(30.0, abs=1e-3)  # the entry at t=0 leaves at t=60
    d = store.reserve(lim, 1, now=T0 + 59.5)
    assert isinstance(d, Denied) and d.retry_after == pytest.approx(0.5, abs=1e-3)
    assert isinstance(store.reserve(lim, 1, now=T0 + 60.0), Reservation)  # exactly when it was promised
    d = store.reserve(lim, 1, now=T0 + 60.5)
    assert isinstance(d, Denied) and d.retry_after == pytest.approx(9.5, abs=1e-3)  # next: t=10


def test_no_double_burst_at_a_minute_boundary(make_store) -> None:
    """Fixed per-minute buckets admit 2x around a boundary; a sliding window must not."""
    store = make_store()
    lim = [("key:b", Limits(rpm=5))]
    minute = (T0 // 60 + 1) * 60  # a minute boundary
    admitted = sum(isinstance(store.reserve(lim, 1, now=minute - 1 + i * 0.1), Reservation) for i in range(5))
    burst = [store.reserve(lim, 1, now=minute + 1 + i * 0.1) for i in range(5)]
    assert admitted == 5 and all(isinstance(b, Denied) for b in burst)
    assert burst[0].retry_after == pytest.approx(58.0, abs=1e-3)


def test_tpm_retry_after_counts_reconciled_tokens(make_store) -> None:
    store = make_store()
    lim = [("key:t", Limits(tpm=100))]
    r0 = store.reserve(lim, 40, now=T0)
    r1 = store.reserve(lim, 30, now=T0 + 10)
    store.reserve(lim, 30, now=T0 + 20)
    d = store.reserve(lim, 50, now=T0 + 30)
    # 100 used, 50 more needs 50 freed: t=0 frees 40, t=10 brings it to 70 -> at t=70, 40 s from now
    assert isinstance(d, Denied) and d.reason == "tpm" and d.retry_after == pytest.approx(40.0, abs=1e-3)
    store.commit(r1, 10, now=T0 + 31)  # used 10 of 30: now 80 in the window, need 30 -> t=0 frees 40
    d = store.reserve(lim, 50, now=T0 + 32)
    assert isinstance(d, Denied) and d.retry_after == pytest.approx(28.0, abs=1e-3)
    store.commit(r0, 0, now=T0 + 33)  # 40 -> 0: 40 in the window, 50 more fits
    assert isinstance(store.reserve(lim, 50, now=T0 + 34), Reservation)


def test_daily_budget_resets_at_utc_midnight(make_store) -> None:
    store = make_store()
    lim = [("account:d", Limits(daily_tokens=100))]
    midnight = (T0 // DAY + 1) * DAY
    assert isinstance(store.reserve(lim, 80, now=midnight - 60), Reservation)
    d = store.reserve(lim, 30, now=midnight - 60)
    assert isinstance(d, Denied) and d.reason == "daily_tokens" and not d.permanent
    assert d.retry_after == pytest.approx(60.0, abs=1e-3)
    assert isinstance(store.reserve(lim, 30, now=midnight + 1), Reservation)


def test_a_request_larger_than_a_limit_is_permanently_denied(make_store) -> None:
    store = make_store()
    d = store.reserve([("key:p", Limits(tpm=100, daily_tokens=1000))], 150, now=T0)
    assert isinstance(d, Denied) and d.permanent and d.reason == "tpm" and d.limit == 100
    assert d.retry_after > 0 and "never" in d.message
    d = store.reserve([("key:p", Limits(daily_tokens=1000))], 1001, now=T0)
    assert isinstance(d, Denied) and d.permanent and d.reason == "daily_tokens"
    assert store.usage("key:p", now=T0)["requests"] == 0


def test_concurrency_leases_released_by_commit_and_expire(make_store) -> None:
    store = make_store()
    lim = [("key:c", Limits(max_concurrent=2))]
    a = store.reserve(lim, 5, now=T0)
    b = store.reserve(lim, 5, now=T0)
    d = store.reserve(lim, 5, now=T0)
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    assert isinstance(d, Denied) and d.reason == "max_concurrent" and 0 < d.retry_after <= 1
    store.commit(a, 3, now=T0 + 1)
    store.commit(a, 3, now=T0 + 1)  # idempotent: must not release b's lease or change tokens again
    assert store.usage("key:c", now=T0 + 1) == {
        "requests": 2,
        "tokens": 8,
        "daily_tokens": 8,
        "concurrent": 1,
    }
    c = store.reserve(lim, 5, now=T0 + 2)
    assert isinstance(c, Reservation)
    assert isinstance(store.reserve(lim, 5, now=T0 + 3), Denied)
    # a crashed process never commits: its leases lapse after the TTL (600 s)
    assert isinstance(store.reserve(lim, 5, now=T0 + 2 + 601), Reservation)


def test_reservation_is_atomic_across_scopes_and_picks_the_longest_wait(make_store) -> None:
    store = make_store()
    key = ("key:x", Limits(rpm=5))
    account = ("account:x", Limits(rpm=3, daily_tokens=1000))
    for i in range(3):
        assert isinstance(store.reserve([key, account], 100, now=T0 + i), Reservation)
    d = store.reserve([key, account], 100, now=T0 + 3)
    assert isinstance(d, Denied) and d.scope == "account:x" and d.reason == "rpm"
    assert store.usage("key:x", now=T0 + 3)["requests"] == 3
    # both the key's rpm (wait ~57 s) and the account's daily budget (wait until midnight) refuse: report
    # the one that has to pass last
    for i in range(2):
        assert isinstance(store.reserve([key], 1, now=T0 + 4 + i), Reservation)
    d = store.reserve([key, ("account:x", Limits(daily_tokens=300))], 100, now=T0 + 10)
    assert isinstance(d, Denied) and d.reason == "daily_tokens" and d.scope == "account:x"
    assert d.retry_after == pytest.approx((T0 // DAY + 1) * DAY - (T0 + 10), abs=1e-3)


def test_memory_and_redis_agree_on_a_random_workload(redis_url) -> None:
    mem = MemoryQuotaStore()
    red = RedisQuotaStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    rng = random.Random(7)
    limits = {
        "key:a": Limits(rpm=6, tpm=400, max_concurrent=3),
        "key:b": Limits(rpm=4, daily_tokens=900),
        "account:z": Limits(tpm=700, max_concurrent=4),
    }
    open_res: list[tuple[Reservation, Reservation]] = []
    t = T0
    for _ in range(300):
        t += rng.expovariate(1 / 3.0)
        if open_res and rng.random() < 0.45:
            rm, rr = open_res.pop(rng.randrange(len(open_res)))
            actual = rng.randint(0, rm.tokens + 10)
            mem.commit(rm, actual, now=t)
            red.commit(rr, actual, now=t)
            continue
        scopes = [(s, limits[s]) for s in rng.sample(["key:a", "key:b"], 1) + ["account:z"]]
        tokens = rng.randint(1, 200) if rng.random() < 0.95 else 450  # 450: above every tpm
        a, b = mem.reserve(scopes, tokens, now=t), red.reserve(scopes, tokens, now=t)
        assert type(a) is type(b)
        if isinstance(a, Denied):
            assert (a.reason, a.scope, a.limit, a.permanent) == (b.reason, b.scope, b.limit, b.permanent)
            assert a.retry_after == pytest.approx(b.retry_after, abs=1e-3)
        else:
            open_res.append((a, b))
        for s in limits:
            assert mem.usage(s, now=t) == red.usage(s, now=t)
    red.close()


def _process_worker(url: str, prefix: str, barrier, queue) -> None:  # runs in a child process
    store = RedisQuotaStore(url, prefix=prefix)
    scopes = [("key:shared", Limits(rpm=10, tpm=10_000)), ("account:shared", Limits())]
    barrier.wait()
    results = _parallel(25, lambda i: store.reserve(scopes, 50))
    queue.put(sum(isinstance(r, Reservation) for r in results))


def test_two_processes_sharing_redis_admit_exactly_the_limit(redis_url) -> None:
    ctx = mp.get_context("fork")
    prefix = f"test:{uuid.uuid4().hex}:"
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(redis_url, prefix, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    counts = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(counts) == 10
    store = RedisQuotaStore(redis_url, prefix=prefix)
    assert store.usage("key:shared")["requests"] == 10 and store.usage("key:shared")["tokens"] == 500
    store.close()


def test_redis_clock_is_used_without_now(redis_url) -> None:
    store = RedisQuotaStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    res = store.reserve([("key:clock", Limits(rpm=1))], 1)
    assert isinstance(res, Reservation) and abs(res.created - time.time()) < 5
    d = store.reserve([("key:clock", Limits(rpm=1))], 1)
    assert isinstance(d, Denied) and 55 < d.retry_after <= 60
    store.close()


def test_effective_limits_per_tier() -> None:
    lim = Limits(rpm=60, tpm=5, daily_tokens=None, max_concurrent=4)
    assert effective_limits(lim, "normal") == lim
    assert effective_limits(lim, "restricted") == lim
    assert effective_limits(lim, "throttled") == Limits(rpm=6, tpm=1, daily_tokens=None, max_concurrent=1)
    assert effective_limits(lim, "throttled", 0.5) == Limits(
        rpm=30, tpm=2, daily_tokens=None, max_concurrent=2
    )
    filled = effective_limits(lim, "throttled", throttled_default=Limits(daily_tokens=1000))
    assert filled.daily_tokens == 1000 and filled.rpm == 6
    with pytest.raises(UserError):
        effective_limits(lim, "throttled", 0)


def test_bad_arguments_and_store_selection(redis_url) -> None:
    store = MemoryQuotaStore()
    with pytest.raises(ValueError, match="twice"):
        store.reserve([("s", Limits()), ("s", Limits())], 1)
    with pytest.raises(ValueError, match="non-negative"):
        store.reserve([("s", Limits())], -1)
    assert isinstance(open_quota_store(None), MemoryQuotaStore)
    assert isinstance(open_quota_store(redis_url), RedisQuotaStore)
    from redis_server import free_port

    with pytest.raises(UserError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1"):
        open_quota_store(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
