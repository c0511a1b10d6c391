"""The event log: batched writes, concurrent writers (threads and processes), idempotent
event ids, nothing acknowledged is lost across a restart; the export to the events table."""

from __future__ import annotations

import multiprocessing as mp
import threading
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from serving.eventlog import EventLog, read_frames
from serving.export import export_events


def _rows(prefix: str, n: int) -> list[dict]:
    ts = datetime(2026, 11, 1, tzinfo=timezone.utc)
    return [{"event_id": f"{prefix}-{i}", "ts": ts, "request_id": f"r{prefix}", "user_id": "u1", "session_id": None,
             "item_id": f"i{i}", "event_type": "click", "revenue": 0.0} for i in range(n)]


def _writer_process(url: str, prefix: str) -> None:
    log = EventLog(url, flush_ms=5)
    for k in range(20):
        log.log_feedback(_rows(f"{prefix}{k}", 10)).result(timeout=60)
    log.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    log = EventLog(url, flush_ms=5)
    acked = []

    def thread(t: int) -> None:
        for k in range(25):
            acked.append(log.log_feedback(_rows(f"t{t}-{k}", 8)).result(timeout=60))
            log.log_impression({"request_id": f"imp-{t}-{k}", "ts": datetime.now(timezone.utc), "user_id": "u1", "session_id": None,
                                "experiment": "e", "variant": "a", "model": "als", "model_version": "1", "page": "home"}, ["i1", "i2"])

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(4)]
    procs = [mp.get_context("spawn").Process(target=_writer_process, args=(url, f"p{p}")) for p in range(2)]
    for x in threads + procs:
        x.start()
    for x in threads + procs:
        x.join(120)
    assert all(p.exitcode == 0 for p in procs)
    log.close()  # flushes the impressions
    frames = read_frames(url)
    assert sum(acked) == 4 * 25 * 8
    assert frames["feedback"].height == 4 * 25 * 8 + 2 * 20 * 10
    assert frames["impressions"].height == 100 and frames["items"].height == 200


def test_restart_keeps_acknowledged_events_and_event_ids_dedupe(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    first = EventLog(url, flush_ms=20)
    assert first.log_feedback(_rows("a", 5)).result(timeout=30) == 5
    # no close(): the process "dies" here; the acknowledged rows are already committed
    second = EventLog(url, flush_ms=20)
    second.log_feedback(_rows("a", 5) + _rows("b", 2)).result(timeout=30)  # a retry of a-0..a-4
    second.close()
    fb = read_frames(url)["feedback"]
    assert fb.height == 7 and fb["event_id"].n_unique() == 7


def test_export_to_events_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    log = EventLog(url, flush_ms=5)
    ts = datetime(2026, 11, 2, tzinfo=timezone.utc)
    log.log_feedback([
        {"event_id": None, "ts": ts, "request_id": "r", "user_id": "u1", "session_id": "s", "item_id": "i1", "event_type": "click", "revenue": 0.0},
        {"event_id": None, "ts": ts, "request_id": "r", "user_id": None, "session_id": "s2", "item_id": "i1", "event_type": "purchase", "revenue": 12.5},
    ]).result(timeout=30)
    log.close()
    out = tmp_path / "logged.parquet"
    assert export_events(url, out) == 2
    df = pl.read_parquet(out).sort("event_type")
    assert df["event_type"].to_list() == ["purchase", "view"]
    assert df["user_id"].to_list() == ["anonymous:s2", "u1"]
    assert df["price"].to_list()[0] == 12.5 and df["timestamp"].dtype == pl.Datetime("us", "UTC")


def test_feedback_commits_at_once_while_impressions_wait_for_the_interval(tmp_path: Path) -> None:
    """Impressions are group-committed per flush interval; feedback wakes the writer, so
    ``POST /events`` never waits for the timer (here a 60 s interval)."""
    import time

    url = f"sqlite:///{tmp_path / 'events.db'}"
    log = EventLog(url, flush_ms=60_000)
    log.log_impression({"request_id": "imp-1", "ts": datetime.now(timezone.utc), "user_id": "u1", "session_id": None,
                        "experiment": None, "variant": None, "model": "als", "model_version": "1", "page": "home"}, ["i1"])
    time.sleep(0.3)
    assert read_frames(url)["impressions"].height == 0  # still waiting for the interval
    t0 = time.perf_counter()
    assert log.log_feedback(_rows("f", 3)).result(timeout=30) == 3
    assert time.perf_counter() - t0 < 5.0
    frames = read_frames(url)
    assert frames["feedback"].height == 3 and frames["impressions"].height == 1  # the impression went with it
    ts = frames["impressions"]["ts"][0]
    assert abs((datetime.now(timezone.utc) - ts.replace(tzinfo=timezone.utc)).total_seconds()) < 60  # timestamps read back
    log.close()


def test_an_event_log_with_an_older_schema_is_refused(tmp_path: Path) -> None:
    """create_all never alters an existing table: writing would fail on every batch and lose the
    impressions, so an older table stops the event log at start-up with what to do."""
    import sqlite3

    import pytest

    from storerec.errors import UserError

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the impressions table as an earlier version made it
        conn.execute("CREATE TABLE impressions (request_id VARCHAR(64) PRIMARY KEY, ts DATETIME NOT NULL, user_id VARCHAR(200))")
    with pytest.raises(UserError, match=r"older 'impressions' table \(no column .*items.*\).*eventlog.url"):
        EventLog(f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:  # left as it was
        assert [r[1] for r in conn.execute("PRAGMA table_info(impressions)")] == ["request_id", "ts", "user_id"]
