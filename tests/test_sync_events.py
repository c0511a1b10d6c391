"""`storerec sync-events`: the event log's new events appended to the events table, watermark-based
(the log's own id), de-duplicated, safe to run twice and to re-run after a crash."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from storerec.core.schema import EVENTS_SCHEMA
from storerec.events import sync
from storerec.events.eventlog import EventLog, safe_url, upgrade
from storerec.events.eventlog import _alembic_config as _alembic
from storerec.events.eventlog import feedback as sa_feedback
from storerec.events.eventlog import make_engine as el_make_engine
from storerec.features.io import table_path, write_tables

T0 = datetime(2026, 11, 2, 12, tzinfo=UTC)


def _data(tmp_path: Path) -> Path:
    """A data folder with a two-row events table (history from before the log)."""
    data = tmp_path / "data"
    history = pl.DataFrame(
        {
            "user_id": ["u0", "u0"], "item_id": ["i1", "i2"], "event_type": ["view", "purchase"],
            "timestamp": [T0 - timedelta(days=30)] * 2, "quantity": [1, 1], "price": [None, 3.0],
            "session_id": ["s0", "s0"], "value": [None, None],
        },
        schema=EVENTS_SCHEMA,
    )
    write_tables(data, {"events": history})
    return data


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path / 'events.db'}"
    upgrade(u)
    return u


def _log(url: str, *events: tuple[str, str, str, datetime]) -> None:
    """Store feedback (user, item, type, ts) through the service's writer, committed on return."""
    log = EventLog(url, flush_ms=5)
    try:
        rows = [
            {"event_id": None, "ts": ts, "request_id": "r", "user_id": u, "session_id": "s", "item_id": i,
             "event_type": t, "revenue": 2.5 if t == "purchase" else 0.0}
            for u, i, t, ts in events
        ]
        assert log.store_feedback_sync(rows, 30) == len(rows)
    finally:
        log.close()


def _table(data: Path) -> pl.DataFrame:
    return pl.read_parquet(table_path(data, "events"))


def _watermark(data: Path, url: str) -> int:
    state = json.loads((data / sync.STATE_FILE).read_text())
    return state["logs"][safe_url(url)]["feedback"]["last_id"]


def test_first_sync_then_a_second_appends_nothing(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data(tmp_path)
    _log(url, ("u1", "i1", "click", T0), ("u1", "i2", "cart", T0 + timedelta(minutes=1)), ("u2", "i2", "purchase", T0))
    assert main(["-q", "sync-events", "--data-dir", str(data), "--eventlog-url", url]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("sync-events: read 3 new event(s)") and "appended 3, already present 0" in line
    assert "(2 -> 5 rows); watermark 3" in line
    df = _table(data)
    assert df.height == 5 and df.schema == pl.Schema(EVENTS_SCHEMA)
    new = df.filter(pl.col("user_id") != "u0").sort("user_id", "item_id")
    assert new["event_type"].to_list() == ["view", "cart", "purchase"]
    assert new["price"].to_list() == [None, None, 2.5]
    assert _watermark(data, url) == 3

    before = (data / "events.parquet").read_bytes()
    assert main(["-q", "sync-events", "--data-dir", str(data), "--eventlog-url", url]) == 0
    line = capsys.readouterr().out.strip()
    assert "read 0 new event(s)" in line and "appended 0, already present 0" in line and "watermark 3" in line
    assert (data / "events.parquet").read_bytes() == before  # not even rewritten


def test_new_events_after_the_watermark_are_appended(tmp_path: Path, url: str) -> None:
    data = _data(tmp_path)
    _log(url, ("u1", "i1", "click", T0))
    assert sync.sync_events(data, url).appended == 1
    _log(url, ("u1", "i2", "purchase", T0 + timedelta(hours=1)), ("u3", "i1", "click", T0 + timedelta(hours=2)))
    s = sync.sync_events(data, url)
    assert (s.read, s.appended, s.already_present, s.watermark_before, s.watermark) == (2, 2, 0, 1, 3)
    assert _table(data).height == 2 + 3
    # Same table whichever way it was built: one sync of everything from scratch gives the same rows.
    again = _data(tmp_path / "again")
    sync.sync_events(again, url)
    assert _table(again).sort(pl.all()).equals(_table(data).sort(pl.all()))


def test_a_crash_before_the_watermark_then_a_rerun_duplicates_nothing(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(tmp_path)
    _log(url, ("u1", "i1", "click", T0))
    sync.sync_events(data, url)
    _log(url, ("u1", "i2", "cart", T0 + timedelta(minutes=5)), ("u2", "i1", "purchase", T0 + timedelta(minutes=6)))

    def die(*_a: object) -> None:
        raise KeyboardInterrupt("killed after the table, before the watermark")

    monkeypatch.setattr(sync, "write_state", die)
    with pytest.raises(KeyboardInterrupt):
        sync.sync_events(data, url)
    assert _table(data).height == 5  # the table was written ...
    assert _watermark(data, url) == 1  # ... the watermark was not
    monkeypatch.undo()

    s = sync.sync_events(data, url)
    assert (s.read, s.appended, s.already_present, s.watermark) == (2, 0, 2, 3)
    df = _table(data)
    assert df.height == 5 and df.unique().height == 5
    assert sync.sync_events(data, url).read == 0


def test_a_late_event_with_an_older_timestamp_is_picked_up(tmp_path: Path, url: str) -> None:
    data = _data(tmp_path)
    _log(url, ("u1", "i1", "click", T0), ("u1", "i2", "click", T0 + timedelta(hours=1)))
    sync.sync_events(data, url)
    # Stored after the sync, but dated a day before everything synced so far (a delayed batch):
    # a timestamp watermark would skip it, the log's id does not.
    _log(url, ("u9", "i2", "purchase", T0 - timedelta(days=1)))
    s = sync.sync_events(data, url)
    assert (s.read, s.appended, s.watermark) == (1, 1, 3)
    late = _table(data).filter(pl.col("user_id") == "u9")
    assert late["timestamp"].to_list() == [T0 - timedelta(days=1)] and late["event_type"].to_list() == ["purchase"]


def test_full_rereads_the_log_and_skips_what_is_there(tmp_path: Path, url: str) -> None:
    data = _data(tmp_path)
    _log(url, ("u1", "i1", "click", T0), ("u1", "i2", "click", T0))
    sync.sync_events(data, url)
    s = sync.sync_events(data, url, full=True)
    assert (s.read, s.appended, s.already_present, s.watermark) == (2, 0, 2, 2)


def test_on_both_databases(tmp_path: Path, eventlog_url: str) -> None:
    """SQLite and (slow tier) PostgreSQL: first sync, nothing the second time, a late event."""
    upgrade(eventlog_url)
    data = _data(tmp_path)
    _log(eventlog_url, ("u1", "i1", "click", T0), ("u2", "i2", "purchase", T0))
    first = sync.sync_events(data, eventlog_url)
    assert (first.read, first.appended) == (2, 2) and first.gaps == 0
    assert sync.sync_events(data, eventlog_url).read == 0
    _log(eventlog_url, ("u3", "i1", "cart", T0 - timedelta(days=2)))
    late = sync.sync_events(data, eventlog_url)
    assert (late.read, late.appended, late.already_present) == (1, 1, 0) and late.watermark > first.watermark
    assert _table(data).height == 5 and _watermark(data, eventlog_url) == late.watermark


def test_postgresql_style_gaps_are_asked_for_again_until_they_expire() -> None:
    now = T0
    gaps = sync._gaps(0, 5, {1, 2, 4, 5}, {}, now)
    assert sorted(gaps) == ["3"]
    # Seen on the next run: settled; a new hole appears.
    assert sorted(sync._gaps(5, 8, {3, 6, 8}, gaps, now)) == ["7"]
    # Never committed (a rolled-back batch, an ON CONFLICT skip): dropped after the grace period.
    assert sync._gaps(5, 5, set(), gaps, now + sync.GAP_GRACE) == {}


def test_bad_states_are_clear_errors_with_exit_2(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["-q", "sync-events", "--data-dir", str(missing), "--eventlog-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"data folder {missing} does not exist" in err and "Traceback" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["-q", "sync-events", "--data-dir", str(empty), "--eventlog-url", url]) == 2
    assert "events.parquet not found" in capsys.readouterr().err

    data = _data(tmp_path)
    gone = f"sqlite:///{tmp_path / 'no-such.db'}"
    assert main(["-q", "sync-events", "--data-dir", str(data), "--eventlog-url", gone]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no event log at") and len(err.splitlines()) == 1
    assert not (data / sync.STATE_FILE).exists()

    (data / sync.STATE_FILE).write_text("{not json")
    assert main(["-q", "sync-events", "--data-dir", str(data), "--eventlog-url", url]) == 2
    assert "is not a sync state" in capsys.readouterr().err


def _track(url: str, *events: tuple[str | None, str, str, datetime, int, float | None]) -> None:
    """Store behaviour events (user, item, type, ts, quantity, price) as POST /track does."""
    log = EventLog(url, flush_ms=5)
    try:
        rows = [
            {"event_id": None, "ts": ts, "user_id": u, "session_id": "s9", "item_id": i, "event_type": t, "quantity": q, "price": p}
            for u, i, t, ts, q, p in events
        ]
        assert log.store_behaviour_sync(rows, 30) == len(rows)
    finally:
        log.close()


def _behaviour_watermark(data: Path, url: str) -> int:
    return json.loads((data / sync.STATE_FILE).read_text())["logs"][safe_url(url)]["behaviour"]["last_id"]


def test_behaviour_events_are_appended_with_quantity_and_price_on_their_own_watermark(tmp_path: Path, eventlog_url: str) -> None:
    """Tracked events (POST /track) go into the events table as they were sent (type, quantity,
    unit price; anonymous shoppers as anonymous:<session>), beside list feedback, each table
    with its own watermark; twice gives the same table; SQLite and (slow tier) PostgreSQL."""
    url = eventlog_url
    upgrade(url)
    data = _data(tmp_path)
    _log(url, ("u1", "i1", "click", T0))
    _track(url, ("u1", "i2", "view", T0, 1, None), ("u1", "i2", "purchase", T0 + timedelta(minutes=3), 3, 4.25),
           (None, "i1", "favorite", T0, 1, None))
    s = sync.sync_events(data, url)
    assert (s.read, s.read_behaviour, s.appended, s.already_present) == (1, 3, 4, 0)
    assert "and 3 behaviour event(s) (id > 0)" in s.line() and "behaviour 3" in s.line()
    df = _table(data)
    assert df.schema == pl.Schema(EVENTS_SCHEMA) and df.height == 2 + 4
    bought = df.filter((pl.col("user_id") == "u1") & (pl.col("event_type") == "purchase")).row(0, named=True)
    assert (bought["item_id"], bought["quantity"], bought["price"], bought["value"], bought["session_id"]) == ("i2", 3, 4.25, None, "s9")
    assert df.filter(pl.col("user_id") == "anonymous:s9")["event_type"].to_list() == ["favorite"]
    assert _behaviour_watermark(data, url) >= 3 and _watermark(data, url) >= 1

    before = (data / "events.parquet").read_bytes()
    again = sync.sync_events(data, url)
    assert (again.read, again.read_behaviour, again.appended) == (0, 0, 0)
    assert (data / "events.parquet").read_bytes() == before

    _track(url, ("u7", "i1", "cart", T0 - timedelta(days=1), 2, None))  # late, dated before everything synced
    late = sync.sync_events(data, url)
    assert (late.read, late.read_behaviour, late.appended) == (0, 1, 1) and late.behaviour_watermark > s.behaviour_watermark
    assert _table(data).filter(pl.col("user_id") == "u7")["quantity"].to_list() == [2]
    # from scratch, one sync of everything gives the same rows
    fresh = _data(tmp_path / "fresh")
    sync.sync_events(fresh, url)
    assert _table(fresh).sort(pl.all()).equals(_table(data).sort(pl.all()))


def test_a_crash_before_the_watermarks_duplicates_no_behaviour(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data(tmp_path)
    _track(url, ("u1", "i1", "view", T0, 1, None), ("u1", "i1", "purchase", T0 + timedelta(minutes=1), 1, 2.0))

    def die(*_a: object) -> None:
        raise KeyboardInterrupt("killed after the table, before the watermark")

    monkeypatch.setattr(sync, "write_state", die)
    with pytest.raises(KeyboardInterrupt):
        sync.sync_events(data, url)
    monkeypatch.undo()
    s = sync.sync_events(data, url)
    assert (s.read_behaviour, s.appended, s.already_present, s.behaviour_watermark) == (2, 0, 2, 2)
    assert _table(data).height == 4


def test_a_log_at_revision_0001_syncs_its_feedback(tmp_path: Path) -> None:
    """An event log not upgraded yet (no behaviour table) is read as before."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = el_make_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "0001")
            conn.execute(sa_feedback.insert(), [{"event_id": None, "ts": T0, "request_id": "r", "user_id": "u1", "session_id": "s",
                                                 "item_id": "i1", "event_type": "click", "revenue": 0.0}])
    finally:
        engine.dispose()
    data = _data(tmp_path)
    s = sync.sync_events(data, url)
    assert (s.read, s.read_behaviour, s.appended) == (1, 0, 1)
