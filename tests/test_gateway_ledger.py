"""The query ledger: every tampering done with plain sqlite3 is caught and named, appends from several
processes form one valid chain, export round-trips through Parquet, redaction stores no prompt text."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distillguard.cli import main
from distillguard.gateway.ledger import GENESIS, Ledger, canonical_json

SECRET = b"L" * 32
N = 10
_DATA = "ts, account, key_id, client_ip, decision, tier, tokens, prev_hash, hash, mac, record"


def _record(i: int) -> dict:
    return {
        "request_id": f"req-{i}",
        "ts": 1_800_000_000.0 + i,
        "ts_start": 1_800_000_000.0 + i,
        "ts_end": 1_800_000_000.5 + i,
        "account": f"acct{i % 3}",
        "key_id": f"key_{i % 3:012x}",
        "org": "acme",
        "client_ip": f"198.51.100.{i}",
        "endpoint": "/v1/chat/completions",
        "model": "aster",
        "params": {"temperature": 0.7, "max_tokens": 64, "logprobs": i % 2 == 0, "stop": ["\n\n"]},
        "prompt": f"user: question number {i}",
        "messages": [{"role": "user", "content": f"question number {i}"}],
        "completion": f"answer {i} \u2014 with unicode",
        "prompt_tokens": 10 + i,
        "completion_tokens": 20 + i,
        "tier": "normal",
        "decision": "admitted" if i % 4 else "refused",
        "status": 200 if i % 4 else 429,
        "error_code": None if i % 4 else "rate_limit_exceeded",
        "watermark": {"scheme": "kgw", "delta": 2.0},
    }


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    lg = Ledger(tmp_path / "ledger.db", secret=SECRET)
    for i in range(1, N + 1):
        entry = lg.append(_record(i))
        assert entry.seq == i and len(entry.hash) == 64
    yield lg
    lg.close()


def _sql(ledger: Ledger, *statements: tuple) -> None:
    """Tamper the way an insider with sqlite3 would: a separate connection on the file."""
    con = sqlite3.connect(ledger.path)
    for stmt in statements:
        con.execute(*stmt) if isinstance(stmt, tuple) else con.execute(stmt)
    con.commit()
    con.close()


def _row(ledger: Ledger, seq: int) -> tuple:
    con = sqlite3.connect(ledger.path)
    row = con.execute(f"SELECT {_DATA} FROM ledger WHERE seq = ?", (seq,)).fetchone()
    con.close()
    return row


def _set_row(seq: int, values: tuple) -> tuple:
    sets = ", ".join(f"{c.strip()} = ?" for c in _DATA.split(","))
    return (f"UPDATE ledger SET {sets} WHERE seq = ?", (*values, seq))


def test_intact_ledger_verifies(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok and report.records == N and report.first_bad_seq is None and report.signed
    assert report.head_hash == ledger.head()["hash"]
    fresh = Ledger(ledger.path, secret=SECRET)  # another process's view: same verdict
    assert fresh.verify().ok
    fresh.close()


def test_records_read_back_and_caller_dict_untouched(ledger: Ledger) -> None:
    rec = _record(99)
    before = json.loads(json.dumps(rec))
    entry = ledger.append(rec)
    assert rec == before and entry.seq == N + 1
    got = list(ledger.iter_records(since_seq=N - 2))
    assert [r["seq"] for r in got] == [N - 1, N, N + 1]
    assert {k: v for k, v in got[-1].items() if k != "seq"} == before
    assert list(ledger.iter_records(since_seq=N + 1)) == []
    con = sqlite3.connect(ledger.path)
    plan = " ".join(
        str(r)
        for r in con.execute("EXPLAIN QUERY PLAN SELECT seq, record FROM ledger WHERE seq > 5 ORDER BY seq")
    )
    cols = con.execute(
        "SELECT account, key_id, client_ip, decision, tier, tokens FROM ledger WHERE seq = 3"
    ).fetchone()
    con.close()
    assert "INTEGER PRIMARY KEY" in plan  # incremental reads are a range scan on the primary key
    assert cols == ("acct0", "key_000000000000", "198.51.100.3", "admitted", "normal", 13 + 23)


def test_append_is_committed_with_full_sync_before_it_returns(ledger: Ledger) -> None:
    ledger.append({"ts": 1.0, "decision": "refused", "account": "late"})
    con = sqlite3.connect(ledger.path)  # an independent reader sees it at once: committed, not buffered
    assert con.execute("SELECT account FROM ledger WHERE seq = ?", (N + 1,)).fetchone() == ("late",)
    con.close()
    assert ledger._db.get().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: WAL fsynced per commit
    assert ledger._db.get().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("tamper", "bad_seq", "reason"),
    [
        ("edit_json", 4, "hash mismatch"),
        ("edit_column", 6, "column account does not match"),
        ("edit_tokens_column", 2, "column tokens does not match"),
        ("edit_hash", 5, "hash mismatch"),
        ("delete_middle", 5, "missing seq 5"),
        ("delete_first", 1, "missing seq 1"),
        ("delete_last", N, f"tail truncated after seq {N - 1}"),
        ("delete_last_three", N - 2, f"tail truncated after seq {N - 3}"),
        ("swap_rows", 3, "out of order"),
        ("renumber_rows", 2, "out of order"),
        ("rechain_after_edit", 4, "signature mismatch"),
        ("forge_append", N + 1, "signature mismatch"),
        ("replay_old_head", N - 1, f"tail truncated after seq {N - 2}"),
    ],
)
def test_tampering_is_detected_and_named(
    ledger: Ledger, tamper: str, bad_seq: int, reason: str, capsys
) -> None:
    if tamper == "edit_json":
        _sql(ledger, ("UPDATE ledger SET record = replace(record, 'question number 4', 'question number 5')"
                      " WHERE seq = 4",))  # fmt: skip
    elif tamper == "edit_column":
        _sql(ledger, ("UPDATE ledger SET account = 'someone-else' WHERE seq = 6",))
    elif tamper == "edit_tokens_column":
        _sql(ledger, ("UPDATE ledger SET tokens = 1 WHERE seq = 2",))
    elif tamper == "edit_hash":
        _sql(ledger, ("UPDATE ledger SET hash = ? WHERE seq = 5", ("f" * 64,)))
    elif tamper == "delete_middle":
        _sql(ledger, ("DELETE FROM ledger WHERE seq = 5",))
    elif tamper == "delete_first":
        _sql(ledger, ("DELETE FROM ledger WHERE seq = 1",))
    elif tamper == "delete_last":
        _sql(ledger, ("DELETE FROM ledger WHERE seq = ?", (N,)))
    elif tamper == "delete_last_three":
        _sql(ledger, ("DELETE FROM ledger WHERE seq > ?", (N - 3,)))
    elif tamper == "swap_rows":
        a, b = _row(ledger, 3), _row(ledger, 7)
        _sql(ledger, _set_row(3, b), _set_row(7, a))
    elif tamper == "renumber_rows":
        _sql(ledger, "UPDATE ledger SET seq = -2 WHERE seq = 2", "UPDATE ledger SET seq = 2 WHERE seq = 8",
             "UPDATE ledger SET seq = 8 WHERE seq = -2")  # fmt: skip
    elif tamper == "rechain_after_edit":
        # edit record 4 and recompute every later hash and the head: a consistent SHA-256 chain, but the
        # per-record signatures need the server secret
        con = sqlite3.connect(ledger.path)
        prev = con.execute("SELECT hash FROM ledger WHERE seq = 3").fetchone()[0]
        for seq, text in con.execute("SELECT seq, record FROM ledger WHERE seq >= 4 ORDER BY seq").fetchall():
            if seq == 4:
                text = text.replace("acct1", "acct2")
                con.execute("UPDATE ledger SET account = 'acct2', record = ? WHERE seq = 4", (text,))
            digest = hashlib.sha256((prev + text).encode()).hexdigest()
            con.execute("UPDATE ledger SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
            prev = digest
        con.execute("UPDATE ledger_head SET hash = ?", (prev,))
        con.commit()
        con.close()
    elif tamper == "forge_append":
        prev = _row(ledger, N)[8]
        rec = {**_record(N + 1), "seq": N + 1}
        text = canonical_json(rec)
        digest = hashlib.sha256((prev + text).encode()).hexdigest()
        _sql(
            ledger,
            (f"INSERT INTO ledger (seq, {_DATA}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (N + 1, rec["ts"], rec["account"], rec["key_id"], rec["client_ip"], rec["decision"], rec["tier"],
              rec["prompt_tokens"] + rec["completion_tokens"], prev, digest, "0" * 64, text)),
            ("UPDATE ledger_head SET count = ?, hash = ?", (N + 1, digest)),
        )  # fmt: skip
    elif tamper == "replay_old_head":
        # the insider kept the validly signed head from when the ledger had N - 2 records ...
        kept = _row(ledger, N - 2)[8]
        old = (N - 2, kept, ledger._head_mac(N - 2, kept))  # what `ledger head` printed back then
        # ... truncates and restores it: the database alone looks intact, the head file does not agree
        _sql(
            ledger,
            ("DELETE FROM ledger WHERE seq > ?", (N - 2,)),
            ("UPDATE ledger_head SET count = ?, hash = ?, mac = ?", old),
        )

    report = Ledger(ledger.path, secret=SECRET).verify()
    assert not report.ok
    assert report.first_bad_seq == bad_seq, report
    assert reason in report.reason

    code = _run_cli(ledger, capsys)
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith(f"error: ledger record {bad_seq}: ") and reason in err


def _run_cli(ledger: Ledger, capsys, *extra: str) -> int:
    cfg = ledger.path.with_name("gateway.toml")
    cfg.write_text(f'ledger_path = "{ledger.path}"\nsecret = "{SECRET.decode()}"\n')
    capsys.readouterr()
    try:
        main(["ledger", *(extra or ("verify",)), "--config", str(cfg)])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_verify_export_head(ledger: Ledger, tmp_path: Path, capsys) -> None:
    assert _run_cli(ledger, capsys, "verify") == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"ledger intact: {N} records") and out.count("\n") == 1
    assert _run_cli(ledger, capsys, "export", "--out", str(tmp_path / "exp"), "--json") == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == {"path": str(tmp_path / "exp" / "ledger.parquet"), "records": N}
    assert _run_cli(ledger, capsys, "head") == 0
    head = json.loads(capsys.readouterr()[0])
    assert head["count"] == N and head["hash"] == ledger.verify().head_hash


def test_head_file_damage_and_wrong_secret(ledger: Ledger) -> None:
    assert not Ledger(ledger.path, secret=b"W" * 32).verify().ok
    wrong = Ledger(ledger.path, secret=b"W" * 32).verify()
    assert wrong.first_bad_seq == 1 and "signature mismatch" in wrong.reason
    unsigned = Ledger(ledger.path).verify()
    assert unsigned.ok and not unsigned.signed  # without the secret only the chain is checked
    raw = bytearray(ledger.sidecar.read_bytes())
    newest = (N % 2) * 512
    raw[newest : newest + 40] = b"#" * 40  # a torn newest head slot (power loss, or someone covering tracks)
    ledger.sidecar.write_bytes(bytes(raw))
    assert ledger.read_head_file()["count"] == N - 1  # the other slot still holds the previous head ...
    report = ledger.verify()  # ... but a torn slot is reported, never skipped
    assert not report.ok and f"slot {N % 2} is torn" in report.reason
    raw[:] = b"#" * len(raw)
    ledger.sidecar.write_bytes(bytes(raw))
    report = ledger.verify()
    assert not report.ok and "unreadable" in report.reason
    ledger.sidecar.unlink()
    report = ledger.verify()
    assert not report.ok and report.first_bad_seq is None and "missing" in report.reason


def test_the_newest_record_cannot_be_deleted_with_the_older_head_slot(ledger: Ledger) -> None:
    """Without the secret: delete the last record, restore the database head from the head file's older
    slot (a validly signed head for one record fewer) and tear the newest slot so a reader skips it."""
    assert ledger.verify().ok and ledger.count() == N
    raw = bytearray(ledger.sidecar.read_bytes())
    older = json.loads(raw[((N - 1) % 2) * 512 : ((N - 1) % 2) * 512 + 512])
    assert older["count"] == N - 1
    _sql(
        ledger,
        ("DELETE FROM ledger WHERE seq = ?", (N,)),
        ("UPDATE ledger_head SET count = ?, hash = ?, mac = ?", (N - 1, older["hash"], older["mac"])),
    )
    newest = (N % 2) * 512
    raw[newest : newest + 512] = b"\0" * 512
    ledger.sidecar.write_bytes(bytes(raw))
    report = Ledger(ledger.path, secret=SECRET).verify()
    assert not report.ok and report.records == N - 1 and "torn or missing" in report.reason
    raw[newest : newest + 512] = raw[((N - 1) % 2) * 512 : ((N - 1) % 2) * 512 + 512]  # both slots N - 1
    ledger.sidecar.write_bytes(bytes(raw))
    assert not Ledger(ledger.path, secret=SECRET).verify().ok


def test_a_batch_append_leaves_consecutive_head_slots(tmp_path: Path) -> None:
    lg = Ledger(tmp_path / "b.db", secret=SECRET)
    lg.append({"decision": "admitted"})
    assert lg.verify().ok  # a one-record ledger has the genesis head in its other slot
    lg.append_many([{"decision": "admitted"} for _ in range(5)])
    assert lg.verify().ok and lg.count() == 6
    lg.close()


def test_a_head_file_left_behind_by_a_crash_is_named_and_recovered_with_the_secret(tmp_path: Path) -> None:
    lg = Ledger(tmp_path / "c.db", secret=SECRET)
    lg.append_many([{"decision": "admitted"} for _ in range(3)])
    old = lg.sidecar.read_bytes()
    lg.append_many([{"decision": "admitted"} for _ in range(3)])
    lg.sidecar.write_bytes(old)  # a crash after the commit, before the head-file write
    report = lg.verify()
    assert not report.ok and report.reason == "head file is behind: it names 3 of 6 records"
    assert lg.recover() == 6 and lg.verify().ok and lg.recover() is None
    lg.close()
    unsigned = Ledger(tmp_path / "c.db")
    assert unsigned.recover() is None  # without the secret nothing is rewritten
    unsigned.close()


def test_empty_ledger_verifies_and_bad_records_are_refused(tmp_path: Path) -> None:
    lg = Ledger(tmp_path / "empty.db", secret=SECRET)
    report = lg.verify()
    assert report.ok and report.records == 0 and report.head_hash == GENESIS
    with pytest.raises(ValueError, match="decision"):
        lg.append({"ts": 1.0})
    with pytest.raises(ValueError, match="plain JSON"):
        lg.append({"ts": 1.0, "decision": "admitted", "params": {"temperature": float("nan")}})
    with pytest.raises(ValueError, match="plain JSON"):
        lg.append({"ts": 1.0, "decision": "admitted", "blob": b"bytes"})
    assert lg.append({"decision": "admitted"}).seq == 1  # ts defaults to now
    assert lg.verify().ok
    lg.close()


def _append_worker(path: str, worker: int, count: int, barrier) -> None:  # runs in a child process
    lg = Ledger(Path(path), secret=SECRET)
    barrier.wait()
    for i in range(count):
        lg.append(
            {
                "ts": float(i),
                "decision": "admitted",
                "account": f"proc{worker}",
                "request_id": f"{worker}-{i}",
            }
        )
    lg.close()


def test_appends_from_several_processes_and_threads_form_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    Ledger(path, secret=SECRET).close()
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_append_worker, args=(str(path), w, 30, barrier)) for w in range(3)]
    for p in procs:
        p.start()
    lg = Ledger(path, secret=SECRET)
    threads = [
        threading.Thread(
            target=lambda t=t: [
                lg.append({"decision": "refused", "account": f"thread{t}"}) for _ in range(10)
            ]
        )
        for t in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    report = lg.verify()
    assert report.ok and report.records == 110
    records = list(lg.iter_records())
    assert [r["seq"] for r in records] == list(range(1, 111))
    ids = {r["request_id"] for r in records if "request_id" in r}
    assert ids == {f"{w}-{i}" for w in range(3) for i in range(30)}
    assert lg.head()["count"] == 110 and lg.read_head_file()["count"] == 110
    lg.close()


def _open_new(path: str) -> str:
    try:
        Ledger(Path(path), secret=SECRET).close()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the test reports what went wrong
        return repr(exc)


def test_gateway_processes_starting_together_all_open_a_new_ledger(tmp_path: Path) -> None:
    # two replicas started at once on one new file: one of them used to get "database is locked" while
    # the other switched the file to WAL (about 5% of opens with eight at once)
    ctx = mp.get_context("fork")
    with ctx.Pool(8) as pool:
        for rep in range(40):
            path = str(tmp_path / f"new-{rep}.db")
            assert pool.map(_open_new, [path] * 8) == ["ok"] * 8


def test_export_parquet_has_every_row(ledger: Ledger, tmp_path: Path) -> None:
    path = ledger.export_parquet(tmp_path / "out")
    table = pq.read_table(path)
    assert table.num_rows == N
    rows = table.to_pylist()
    assert [r["seq"] for r in rows] == list(range(1, N + 1))
    for r in rows:
        src = _record(r["seq"])
        assert r["account"] == src["account"] and r["prompt"] == src["prompt"]
        assert r["completion"] == src["completion"] and r["status"] == src["status"]
        assert r["tokens"] == src["prompt_tokens"] + src["completion_tokens"]
        assert json.loads(r["params"]) == src["params"] and json.loads(r["messages"]) == src["messages"]
        assert json.loads(r["record"]) == {**src, "seq": r["seq"]}
    assert rows[-1]["hash"] == ledger.head()["hash"]
    assert rows[1]["prev_hash"] == rows[0]["hash"] and rows[0]["prev_hash"] == GENESIS


def test_redaction_stores_no_prompt_text(tmp_path: Path) -> None:
    lg = Ledger(tmp_path / "private.db", secret=SECRET, redact_prompts=True)
    secret_prompt, secret_message = "SECRET-PROMPT-0xC0FFEE", "SECRET-MESSAGE-0xBEEF"
    messages = [
        {"role": "system", "content": secret_message},
        {"role": "user", "content": [{"type": "text", "text": secret_message}]},
    ]
    lg.append({"ts": 5.0, "decision": "admitted", "prompt": secret_prompt, "completion": "visible answer",
               "messages": messages,
               "params": {"user": "patient-SECRET-ID", "stop": ["SECRET-STOP"], "n": 1}})  # fmt: skip
    rec = next(lg.iter_records())
    assert rec["prompt"] == "sha256:" + hashlib.sha256(secret_prompt.encode()).hexdigest()
    assert rec["messages"][0] == {
        "role": "system",
        "content": "sha256:" + hashlib.sha256(secret_message.encode()).hexdigest(),
    }
    assert rec["messages"][1]["content"].startswith("sha256:") and rec["prompt_redacted"] is True
    assert rec["completion"] == "visible answer"
    assert lg.verify().ok
    out = lg.export_parquet(tmp_path / "exp")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file()) + out.read_bytes()
    assert secret_prompt.encode() not in raw and secret_message.encode() not in raw
    assert b"SECRET-ID" not in raw and b"SECRET-STOP" not in raw
    assert rec["params"]["n"] == 1 and rec["params"]["user"].startswith("sha256:")
    assert b"visible answer" in b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    lg.close()
