"""The event log, one suite for SQLite and PostgreSQL (every test runs on both through the
``eventlog_url`` fixture): concurrent writers (threads and processes), idempotent event ids and
exact ``stored`` counts, nothing acknowledged lost (restart, kill -9), a writer that survives a
locked, full or read-only database and requests that give up or are cancelled, the queue bound,
rows the database refuses, the schema through Alembic (new, adopted, refused, concurrent
upgrades), retention, the ``storerec eventlog`` commands and the export to the events table."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from storerec.cli import main
from storerec.core.errors import UserError
from storerec.events import eventlog as el
from storerec.events.eventlog import EventLog, EventLogRejected, EventLogUnavailable, read_frames, upgrade
from storerec.events.export import export_events
from tests._eventlog_child import TS, child
from tests._eventlog_child import rows as _rows


def _imp(request_id: str, ts: datetime | None = None, user: str | None = "u1") -> tuple[dict, list[str]]:
    return ({"request_id": request_id, "ts": ts or datetime.now(UTC), "user_id": user, "session_id": None,
             "experiment": "e", "variant": "a", "model": "als", "model_version": "1", "page": "home"}, ["i1", "i2"])


def _wait(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _ids(url: str) -> set[str]:
    return set(read_frames(url)["feedback"]["event_id"].drop_nulls().to_list())


def _is_pg(url: str) -> bool:
    return url.startswith("postgresql")


class _Children:
    """Processes running ``tests/_eventlog_child.py`` code: started, released together once all
    are ready (``go``), their JSON results read, and always reaped."""

    def __init__(self, *calls: str) -> None:
        self.procs = [child(c) for c in calls]
        self.watchdog = threading.Timer(120, lambda: [p.kill() for p in self.procs])
        self.watchdog.start()

    def __enter__(self) -> _Children:
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return self

    def go(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()

    def results(self) -> list:
        out = [json.loads(p.stdout.readline() or "null") for p in self.procs]  # type: ignore[union-attr]
        assert [p.wait(60) for p in self.procs] == [0] * len(self.procs)
        return out

    def __exit__(self, *exc) -> None:
        self.watchdog.cancel()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


class _Gate:
    """Holds the writer's next transaction (once armed) until released: makes batches
    deterministic."""

    def __init__(self, engine: sa.Engine) -> None:
        self.armed = False
        self.entered, self.release = threading.Event(), threading.Event()

        @sa.event.listens_for(engine, "begin")
        def _begin(_conn) -> None:
            if self.armed:
                self.armed = False
                self.entered.set()
                self.release.wait(30)

    def arm(self) -> None:
        self.entered.clear()
        self.release.clear()
        self.armed = True


class _Fault:
    """While ``on``, every transaction the writer's engine starts fails to write: SQLite's file
    cannot grow (``max_page_count``: "database or disk is full") or the connection is read-only
    (SQLite ``query_only``, PostgreSQL read-only transactions)."""

    def __init__(self, url: str, kind: str) -> None:
        self.engine = el.make_engine(url)
        self.on = False
        pg = _is_pg(url)

        @sa.event.listens_for(self.engine, "checkout")
        def _checkout(dbapi_conn, _record, _proxy) -> None:
            if pg:
                dbapi_conn.autocommit = True
                try:
                    dbapi_conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION " + ("READ ONLY" if self.on else "READ WRITE"))
                finally:
                    dbapi_conn.autocommit = False
            elif kind == "disk_full":
                dbapi_conn.execute(f"PRAGMA max_page_count = {1 if self.on else 1_000_000_000}")  # 1: as small as the file is now
            else:
                dbapi_conn.execute(f"PRAGMA query_only = {int(self.on)}")


# ---- writing ------------------------------------------------------------------------------------


def test_concurrent_writers_lose_nothing(eventlog_url: str) -> None:
    url = eventlog_url
    upgrade(url)
    log = EventLog(url, flush_ms=5)
    acked = []

    def thread(t: int) -> None:
        for k in range(25):
            acked.append(log.store_feedback_sync(_rows(f"t{t}-{k}", 8), 60))
            log.log_impression(*_imp(f"imp-{t}-{k}"))

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(4)]
    with _Children(*(f"write_batches({url!r}, 'p{p}', 20, 10)" for p in range(2))) as procs:
        procs.go()
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert procs.results() == ["done", "done"]
    log.close()  # flushes the impressions
    frames = read_frames(url)
    assert sum(acked) == 4 * 25 * 8
    assert frames["feedback"].height == 4 * 25 * 8 + 2 * 20 * 10
    assert frames["impressions"].height == 100 and frames["items"].height == 200


def test_restart_keeps_acknowledged_events_and_retries_are_not_counted(eventlog_url: str) -> None:
    url = eventlog_url
    upgrade(url)
    first = EventLog(url, flush_ms=20)
    assert first.store_feedback_sync(_rows("a", 5), 30) == 5
    # no close(): the process "dies" here; the acknowledged rows are already committed
    second = EventLog(url, flush_ms=20)
    assert second.store_feedback_sync(_rows("a", 5) + _rows("b", 2), 30) == 2  # a retry of a-0..a-4 adds b-0, b-1
    dup = _rows("c", 2)
    assert asyncio.run(second.store_feedback(dup + dup + [dict(dup[0], event_id=None)], 30)) == 3  # c-0, c-1 once; no id: always
    for log in (first, second):
        log.close()
    fb = read_frames(url)["feedback"]
    assert fb.height == 10 and fb["event_id"].drop_nulls().n_unique() == 9


def test_a_duplicate_within_one_batch_counts_for_the_first_request(eventlog_url: str) -> None:
    """Requests B and C are committed in one transaction (the writer is held while they queue):
    an id both carry counts for B only, and an id stored by an earlier request for neither."""
    url = eventlog_url
    upgrade(url)
    engine = el.make_engine(url)
    gate = _Gate(engine)
    log = EventLog(url, engine=engine, flush_ms=60_000)
    out: dict[str, int] = {}

    def send(name: str, batch: list[dict]) -> threading.Thread:
        th = threading.Thread(target=lambda: out.__setitem__(name, log.store_feedback_sync(batch, 30)))
        th.start()
        return th

    ev = lambda eid: dict(_rows("x", 1)[0], event_id=eid)
    gate.arm()
    a = send("A", [ev("z-0"), ev("z-1")])
    assert gate.entered.wait(10)  # A is being written, held
    b = send("B", [ev("y-0"), ev("y-1"), ev("z-0")])
    _wait(lambda: log.status()["pending_feedback"] == 1, "B queued")
    c = send("C", [ev("y-1"), ev("y-2")])
    _wait(lambda: log.status()["pending_feedback"] == 2, "C queued")
    gate.release.set()
    for th in (a, b, c):
        th.join(30)
    log.close()
    assert out == {"A": 2, "B": 2, "C": 1}
    assert _ids(url) == {"z-0", "z-1", "y-0", "y-1", "y-2"}


def test_duplicate_event_ids_from_two_processes_at_once(eventlog_url: str) -> None:
    """2 processes x 6 threads send the same 120 ids at the same time: no error, each stored
    once, and the stored counts add up to the number of ids."""
    url = eventlog_url
    upgrade(url)
    ids = [f"d-{i}" for i in range(120)]
    with _Children(*(f"send_duplicates({url!r}, {ids!r}, 6, {p})" for p in range(2))) as procs:
        procs.go()
        results = procs.results()
    assert [errors for _, errors in results] == [[], []]
    assert sum(stored for stored, _ in results) == len(ids)
    fb = read_frames(url)["feedback"]
    assert fb.height == len(ids) and sorted(fb["event_id"].to_list()) == sorted(ids)


def test_acknowledged_events_survive_kill_9(eventlog_url: str) -> None:
    """A process writes batches and prints each one it got acknowledged; after SIGKILL every
    printed batch is in the database."""
    url = eventlog_url
    upgrade(url)
    proc = child(f"ack_stream({url!r})")
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    acked: list[int] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        while len(acked) < 40:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        acked += [int(x) for x in proc.stdout.read().split()]  # printed before it died
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 40
    stored = _ids(url)
    missing = [f"k{k}-{i}" for k in acked for i in range(5) if f"k{k}-{i}" not in stored]
    assert not missing


def test_feedback_commits_at_once_while_impressions_wait_for_the_interval(eventlog_url: str) -> None:
    """Impressions are group-committed per flush interval; feedback wakes the writer, so
    ``POST /events`` never waits for the timer (here a 60 s interval)."""
    url = eventlog_url
    upgrade(url)
    log = EventLog(url, flush_ms=60_000)
    log.log_impression(*_imp("imp-1"))
    time.sleep(0.3)
    assert read_frames(url)["impressions"].height == 0  # still waiting for the interval
    t0 = time.perf_counter()
    assert log.store_feedback_sync(_rows("f", 3), 30) == 3
    assert time.perf_counter() - t0 < 5.0
    frames = read_frames(url)
    assert frames["feedback"].height == 3 and frames["impressions"].height == 1  # the impression went with it
    ts = frames["impressions"]["ts"][0]
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60  # timestamps read back
    log.close()


def test_timestamps_are_stored_as_utc_instants(eventlog_url: str) -> None:
    url = eventlog_url
    upgrade(url)
    log = EventLog(url, flush_ms=20)
    cest = timezone(timedelta(hours=2))
    local = datetime(2026, 11, 1, 14, 0, tzinfo=cest)
    log.log_impression(*_imp("imp-tz", ts=local))
    assert log.store_feedback_sync([dict(_rows("tz", 1)[0], ts=local)], 30) == 1
    log.close()
    frames = read_frames(url)
    want = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert frames["feedback"]["ts"][0] == want and frames["impressions"]["ts"][0] == want


# ---- failures -----------------------------------------------------------------------------------


class _Locked:
    """Another connection holds the tables: SQLite ``BEGIN EXCLUSIVE``, PostgreSQL ``LOCK
    TABLE ... IN ACCESS EXCLUSIVE MODE``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> _Locked:
        if _is_pg(self.url):
            import psycopg

            self.conn = psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql"))
            self.conn.execute("LOCK TABLE feedback, impressions IN ACCESS EXCLUSIVE MODE")
        else:
            import sqlite3

            self.conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc) -> None:
        self.conn.rollback() if _is_pg(self.url) else self.conn.execute("ROLLBACK")
        self.conn.close()


def test_the_writer_survives_a_locked_database(eventlog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = eventlog_url
    monkeypatch.setattr(el, "SQLITE_BUSY_TIMEOUT_MS", 1000)  # the writer's attempts give up sooner than the 3 s default:
    monkeypatch.setattr(el, "PG_LOCK_TIMEOUT_MS", 1000)  # a faster test, the same path
    upgrade(url)
    log = EventLog(url, flush_ms=20)
    assert log.store_feedback_sync(_rows("before", 2), 10) == 2
    with _Locked(url):
        for k in range(5):
            log.log_impression(*_imp(f"locked-{k}"))
        t0 = time.monotonic()
        with pytest.raises(EventLogUnavailable, match="not stored"):
            log.store_feedback_sync(_rows("lost", 3), 0.3)
        with pytest.raises(EventLogUnavailable, match="not stored"):
            asyncio.run(log.store_feedback(_rows("lost-async", 2), 0.3))
        assert time.monotonic() - t0 < 10  # at most the write attempt in progress (bounded by the lock timeout)
        _wait(lambda: not log.status()["ok"], "status not ok")
        st = log.status()
        assert "lock" in st["reason"] and "since" in st["reason"] and "attempt" in st["reason"]
        assert st["queued_impressions"] == 5 and st["last_commit_at"] is not None
    assert log.store_feedback_sync(_rows("after", 2), 20) == 2  # recovers by itself
    _wait(lambda: log.status()["queued_impressions"] == 0, "queued impressions written")
    st = log.status()
    assert st["ok"] and st["reason"] is None
    log.close()
    assert _ids(url) == {"before-0", "before-1", "after-0", "after-1"}  # the abandoned rows never reach the table
    assert read_frames(url)["impressions"].height == 5


def test_a_request_giving_up_while_its_rows_are_written_gets_that_attempts_outcome(eventlog_url: str) -> None:
    """Past its timeout a request whose rows are in a write attempt waits for that attempt:
    committed -> their count; failed -> EventLogUnavailable, and the writer drops them (it
    keeps retrying only what is still wanted)."""
    url = eventlog_url
    upgrade(url)
    fault = _Fault(url, "read_only")
    gate = _Gate(fault.engine)
    log = EventLog(url, engine=fault.engine, flush_ms=20)

    def held_past_its_timeout(name: str) -> object:
        """Store with a 0.3 s timeout while the writer is held 0.6 s inside the transaction."""
        out: list[object] = []

        def run() -> None:
            try:
                out.append(log.store_feedback_sync(_rows(name, 2), 0.3))
            except Exception as exc:
                out.append(exc)

        gate.arm()
        th = threading.Thread(target=run)
        th.start()
        assert gate.entered.wait(10)  # the writer holds these rows
        time.sleep(0.6)
        gate.release.set()
        th.join(30)
        return out[0]

    assert held_past_its_timeout("late") == 2  # the attempt committed
    fault.on = True
    failed = held_past_its_timeout("failed")
    assert isinstance(failed, EventLogUnavailable) and "within 0.3 s" in str(failed)
    _wait(lambda: log.status()["failed_attempts"] >= 3, "retries")  # nothing left to write: it probes
    fault.on = False
    _wait(lambda: log.status()["ok"], "recovery without new traffic")
    assert log.store_feedback_sync(_rows("next", 1), 20) == 1
    log.close()
    assert _ids(url) == {"late-0", "late-1", "next-0"}


def test_a_cancelled_waiter_does_not_kill_the_writer(eventlog_url: str) -> None:
    """BentoML cancels the handler task on its timeout or a client disconnect. Cancelled while
    its rows are written (they are committed) or while they are queued (never written): later
    requests are still committed."""
    url = eventlog_url
    upgrade(url)
    engine = el.make_engine(url)
    gate = _Gate(engine)
    log = EventLog(url, engine=engine, flush_ms=20)

    async def scenario() -> int:
        gate.arm()
        task = asyncio.create_task(log.store_feedback(_rows("writing", 2), 30))
        assert await asyncio.to_thread(gate.entered.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.release.set()
        gate.arm()
        log.log_impression(*_imp("imp-queued"))  # the writer takes it and is held
        assert await asyncio.to_thread(gate.entered.wait, 10)
        task = asyncio.create_task(log.store_feedback(_rows("queued", 2), 30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.release.set()
        return await log.store_feedback(_rows("later", 2), 30)

    assert asyncio.run(scenario()) == 2
    assert log.status()["ok"]
    log.close()
    assert _ids(url) == {"writing-0", "writing-1", "later-0", "later-1"}
    assert read_frames(url)["impressions"].height == 1


def test_the_writer_survives_its_own_bugs(eventlog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is no database error (a bug, in a write or in the loop around it)
    is retried like one: nothing is lost, and the writer goes on."""
    url = eventlog_url
    upgrade(url)
    log = EventLog(url, flush_ms=20)
    real_insert, real_log_drops = EventLog._insert_feedback, EventLog._log_drops
    calls = {"insert": 0, "loop": 0}

    def buggy_insert(conn, tickets):
        calls["insert"] += 1
        if calls["insert"] <= 2:
            raise RuntimeError("a bug")
        return real_insert(conn, tickets)

    def buggy_log_drops(self) -> None:
        calls["loop"] += 1
        if calls["loop"] == 1:
            raise KeyError("another bug")
        real_log_drops(self)

    monkeypatch.setattr(EventLog, "_insert_feedback", staticmethod(buggy_insert))
    monkeypatch.setattr(EventLog, "_log_drops", buggy_log_drops)
    log.log_impression(*_imp("imp-bug"))
    assert log.store_feedback_sync(_rows("bug", 2), 20) == 2
    _wait(lambda: log.status()["queued_impressions"] == 0 and calls["loop"] > 1, "the loop going on")
    assert log.status()["ok"] and log._thread.is_alive()
    log.close()
    assert _ids(url) == {"bug-0", "bug-1"} and read_frames(url)["impressions"].height == 1


@pytest.mark.parametrize("kind", ["disk_full", "read_only"])
def test_the_writer_recovers_from_a_full_or_read_only_database(eventlog_url: str, kind: str) -> None:
    url = eventlog_url
    if kind == "disk_full" and _is_pg(url):
        pytest.skip("PostgreSQL has no per-session size limit to simulate a full disk with; its write errors take the read-only path")
    upgrade(url)
    fault = _Fault(url, kind)
    log = EventLog(url, engine=fault.engine, flush_ms=20)
    assert log.store_feedback_sync(_rows("ok", 2), 10) == 2
    fault.on = True
    for k in range(300):
        log.log_impression(*_imp(f"f-{k}"))
    big = [dict(r, item_id="x" * 3000) for r in _rows("lost", 3)]  # needs new pages even alone
    with pytest.raises(EventLogUnavailable):
        log.store_feedback_sync(big if kind == "disk_full" else _rows("lost", 3), 0.5)
    _wait(lambda: not log.status()["ok"], "status not ok")
    expected = {"disk_full": "full", "read_only": "read-only" if _is_pg(url) else "readonly"}[kind]
    assert expected in log.status()["reason"]
    fault.on = False
    assert log.store_feedback_sync(_rows("after", 2), 20) == 2
    _wait(lambda: log.status()["queued_impressions"] == 0, "queued impressions written")
    assert log.status()["ok"]
    log.close()
    assert _ids(url) == {"ok-0", "ok-1", "after-0", "after-1"}
    assert read_frames(url)["impressions"].height == 300


def test_queued_impressions_are_bounded_oldest_dropped(eventlog_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = eventlog_url
    upgrade(url)
    fault = _Fault(url, "read_only")
    log = EventLog(url, engine=fault.engine, flush_ms=20, max_queued_impressions=50)
    fault.on = True
    with caplog.at_level(logging.WARNING, logger="storerec.eventlog"):
        for k in range(80):
            log.log_impression(*_imp(f"b-{k:02d}"))
        _wait(lambda: not log.status()["ok"] and log.status()["queued_impressions"] == 50, "a failed attempt")
        _wait(lambda: "dropped" in caplog.text, "the warning")
    assert log.status()["dropped_impressions"] == 30
    fault.on = False
    _wait(lambda: log.status()["ok"] and log.status()["queued_impressions"] == 0, "recovery")
    log.close()
    kept = sorted(read_frames(url)["impressions"]["request_id"].to_list())
    assert kept == [f"b-{k:02d}" for k in range(30, 80)]  # the newest 50
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "u1" in line or "b-" in line]  # no user or request ids in the log lines
    assert not [line for line in lines if "pipeline aborted" in line]  # psycopg's own duplicate of the error is filtered


def test_rows_the_database_refuses_are_isolated_not_retried(eventlog_url: str) -> None:
    """A row the database rejects by itself (here a missing required value) fails alone: the
    rest of its batch is written and the writer goes on."""
    url = eventlog_url
    upgrade(url)
    log = EventLog(url, flush_ms=60_000)  # the writer wakes only for feedback: everything below is one batch or two
    for k in range(10):
        log.log_impression(*_imp(f"good-{k}"))
        if k == 4:
            row, items = _imp("bad-imp")
            log.log_impression(dict(row, ts=None), items)
    out: dict[str, object] = {}

    def send(name: str, batch: list[dict]) -> threading.Thread:
        def run() -> None:
            try:
                out[name] = log.store_feedback_sync(batch, 30)
            except Exception as exc:
                out[name] = exc
        th = threading.Thread(target=run)
        th.start()
        return th

    threads = [send("good", _rows("g", 2)), send("bad", [dict(_rows("b", 1)[0], item_id=None)])]
    for th in threads:
        th.join(30)
    assert out["good"] == 2 and isinstance(out["bad"], EventLogRejected)
    _wait(lambda: log.status()["queued_impressions"] == 0, "impressions handled")
    st = log.status()
    assert st["ok"] and st["rejected_impressions"] == 1 and st["rejected_events"] == 1
    assert log.store_feedback_sync(_rows("after", 1), 30) == 1
    log.close()
    assert _ids(url) == {"g-0", "g-1", "after-0"}
    assert sorted(read_frames(url)["impressions"]["request_id"].to_list()) == sorted(f"good-{k}" for k in range(10))


# ---- schema -------------------------------------------------------------------------------------


def test_a_new_database_is_upgraded_to_the_tables_of_the_code(eventlog_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = eventlog_url
    head = el.head_revision()
    with pytest.raises(UserError, match="storerec eventlog upgrade"):
        EventLog(url)  # workers only check: nothing there yet
    assert upgrade(url) == (None, head)
    assert upgrade(url) == (head, head)
    assert el.current_revision(url) == head
    engine = el.make_engine(url)
    try:
        with engine.connect() as conn:
            skip_version = lambda name, type_, _parent: not (type_ == "table" and name == el.VERSION_TABLE)
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": skip_version})
            assert compare_metadata(ctx, el.metadata) == []  # the migrations make exactly the sa.Table definitions
            assert set(sa.inspect(conn).get_table_names()) == {"impressions", "feedback", "behaviour", "campaign_sends", el.VERSION_TABLE}
    finally:
        engine.dispose()
    EventLog(url).close()


def test_an_unversioned_database_made_by_create_all_is_adopted(eventlog_url: str) -> None:
    url = eventlog_url
    engine = sa.create_engine(url)
    el.metadata.create_all(engine, tables=[el.impressions, el.feedback])  # what earlier versions did (revision 0001)
    with engine.begin() as conn:
        conn.execute(el.feedback.insert(), [dict(r, ts=TS) for r in _rows("old", 2)])
        conn.execute(el.impressions.insert(), [dict(_imp("imp-old", ts=TS)[0], items='["i1"]')])
    engine.dispose()
    with pytest.raises(UserError, match="predates schema versions.*storerec eventlog upgrade"):
        EventLog(url)
    assert upgrade(url) == (None, el.head_revision())
    log = EventLog(url, flush_ms=20)
    assert log.store_feedback_sync(_rows("old", 2) + _rows("new", 1), 30) == 1
    log.close()
    assert _ids(url) == {"old-0", "old-1", "new-0"} and read_frames(url)["impressions"].height == 1


def test_an_event_log_with_an_older_schema_is_refused(eventlog_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An impressions table as an earlier version made it: writing would fail on every batch,
    so workers, upgrade and readers refuse it with what to do, and leave it as it is."""
    url = eventlog_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE impressions (request_id VARCHAR(64) PRIMARY KEY, ts TIMESTAMP NOT NULL, user_id VARCHAR(200))")
    refused = r"older 'impressions' table \(no column .*items.*\).*eventlog.url"
    with pytest.raises(UserError, match=refused):
        EventLog(url)
    with pytest.raises(UserError, match=refused):
        upgrade(url)
    assert main(["eventlog", "upgrade", "--eventlog-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "older 'impressions' table" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="older 'impressions' table"):
        read_frames(url)
    with engine.connect() as conn:  # left as it was
        insp = sa.inspect(conn)
        assert [c["name"] for c in insp.get_columns("impressions")] == ["request_id", "ts", "user_id"]
        assert set(insp.get_table_names()) == {"impressions"}
    engine.dispose()


def test_two_upgrades_at_once_both_succeed(eventlog_url: str) -> None:
    url = eventlog_url
    with _Children(f"upgrade_together({url!r})", f"upgrade_together({url!r})") as procs:
        procs.go()
        results = procs.results()
    head = el.head_revision()
    assert sorted(results, key=str) == sorted([["ok", [None, head]], ["ok", [head, head]]], key=str)  # one migrated, one found it done
    assert el.current_revision(url) == head
    EventLog(url).close()


def test_readers_create_and_migrate_nothing(eventlog_url: str, tmp_path: Path) -> None:
    url = eventlog_url
    with pytest.raises(UserError, match="no event log at|no 'impressions' table"):
        read_frames(url)
    with pytest.raises(UserError):
        export_events(url, tmp_path / "out.parquet")
    with pytest.raises(UserError, match="storerec eventlog upgrade"):
        EventLog(url)
    if _is_pg(url):
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
        engine.dispose()
    else:
        assert not Path(url.removeprefix("sqlite:///")).exists()


# ---- retention ----------------------------------------------------------------------------------


def test_retention_prunes_only_rows_older_than_the_cutoff(eventlog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = eventlog_url
    upgrade(url)
    monkeypatch.setattr(el, "PRUNE_CHUNK", 2)  # several delete transactions per table
    now = el.now_utc()
    ages = {"old": 100, "mid": 10, "new": 0}
    log = EventLog(url, flush_ms=20)
    for name, days in ages.items():
        n = 5 if name == "old" else 1
        ts = now - timedelta(days=days)
        for k in range(n):
            log.log_impression(*_imp(f"imp-{name}-{k}", ts=ts))
        log.store_feedback_sync(_rows(name, n, ts=ts), 30)
    _wait(lambda: log.status()["queued_impressions"] == 0, "impressions written")
    assert log.prune(now - timedelta(days=30)) == (5, 5)
    log.close()
    assert _ids(url) == {"mid-0", "new-0"}
    # the service's writer prunes by itself at start (and hourly)
    log = EventLog(url, flush_ms=20, retention_days=5)
    _wait(lambda: _ids(url) == {"new-0"}, "the writer's own pruning")
    log.close()
    assert read_frames(url)["impressions"]["request_id"].to_list() == ["imp-new-0"]


# ---- command line -------------------------------------------------------------------------------


def test_eventlog_commands(eventlog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = eventlog_url
    cfg = tmp_path / "storerec.toml"
    cfg.write_text(f'[eventlog]\nurl = "{url}"\nretention_days = 30\n')
    cmd = ["--config", str(cfg), "eventlog"]
    if _is_pg(url):
        assert main([*cmd, "status"]) == 0 and "no tables yet" in capsys.readouterr().out
    else:
        assert main([*cmd, "status"]) == 2 and capsys.readouterr().err.startswith("error: no event log at")
    assert main([*cmd, "upgrade"]) == 0
    head = el.head_revision()
    assert f"schema empty -> {head}" in capsys.readouterr().out
    assert main([*cmd, "upgrade"]) == 0
    assert f"already at {head}" in capsys.readouterr().out
    now = el.now_utc()
    log = EventLog(url, flush_ms=20)
    for name, days in (("old", 100), ("mid", 10), ("new", 0)):
        log.log_impression(*_imp(f"imp-{name}", ts=now - timedelta(days=days)))
        log.store_feedback_sync(_rows(name, 2, ts=now - timedelta(days=days)), 30)
    log.close()
    assert main([*cmd, "status"]) == 0
    out = capsys.readouterr().out
    assert f"revision {head} (newest)" in out and "behaviour:   0 rows" in out and "impressions: 3 rows" in out and "feedback:    6 rows" in out
    assert main([*cmd, "prune"]) == 0  # eventlog.retention_days = 30
    assert "deleted 1 impressions and 2 events older than 30 days" in capsys.readouterr().out
    assert main([*cmd, "prune", "--older-than-days", "5"]) == 0
    assert "deleted 1 impressions and 2 events older than 5 days" in capsys.readouterr().out
    assert _ids(url) == {"new-0", "new-1"}
    assert main([*cmd, "prune", "--older-than-days", "0"]) == 2  # not a positive number
    capsys.readouterr()


def test_serve_upgrades_or_refuses_the_event_log(eventlog_url: str) -> None:
    """What ``storerec serve`` does before starting workers (``eventlog.auto_upgrade``)."""
    from storerec.cli.eventlog import prepare_for_serving
    from storerec.core.settings import Settings

    url = eventlog_url
    with pytest.raises(UserError, match="storerec eventlog upgrade.*auto_upgrade is off|storerec eventlog upgrade"):
        prepare_for_serving(Settings(eventlog={"url": url, "auto_upgrade": False}))
    assert prepare_for_serving(Settings(eventlog={"url": url})) == f"event log {el.safe_url(url)}: schema empty -> {el.head_revision()}"
    assert prepare_for_serving(Settings(eventlog={"url": url})) is None
    assert prepare_for_serving(Settings(eventlog={"url": url, "auto_upgrade": False})) is None


# ---- export -------------------------------------------------------------------------------------


def test_export_to_events_table(eventlog_url: str, tmp_path: Path) -> None:
    url = eventlog_url
    upgrade(url)
    log = EventLog(url, flush_ms=5)
    ts = datetime(2026, 11, 2, tzinfo=UTC)
    assert log.store_feedback_sync([
        {"event_id": None, "ts": ts, "request_id": "r", "user_id": "u1", "session_id": "s", "item_id": "i1", "event_type": "click", "revenue": 0.0},
        {"event_id": None, "ts": ts, "request_id": "r", "user_id": None, "session_id": "s2", "item_id": "i1", "event_type": "purchase", "revenue": 12.5},
    ], 30) == 2
    log.close()
    out = tmp_path / "logged.parquet"
    assert export_events(url, out) == 2
    df = pl.read_parquet(out).sort("event_type")
    assert df["event_type"].to_list() == ["purchase", "view"]
    assert df["user_id"].to_list() == ["anonymous:s2", "u1"]
    assert df["price"].to_list()[0] == 12.5 and df["timestamp"].dtype == pl.Datetime("us", "UTC")
