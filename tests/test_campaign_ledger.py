"""The campaign ledger in the event log (``campaign_sends``, schema revision 0003), on SQLite and
PostgreSQL (the ``eventlog_url`` fixture): the upgrade from 0002 keeps every row, a campaign is
recorded all or nothing and once per id, the frequency cap's window is inclusive and ignores the
holdout, and erasing a user deletes their ledger rows."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest
import sqlalchemy as sa

from storerec.events import campaigns
from storerec.events import eventlog as el
from storerec.events.campaigns import CampaignExists, campaign_members, contacted_since, record_campaign
from storerec.events.eventlog import EventLog, delete_users, read_frames, upgrade
from tests._eventlog_child import TS
from tests._eventlog_child import rows as _rows

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


@pytest.fixture
def engine(eventlog_url: str):
    upgrade(eventlog_url)
    engine = el.make_engine(eventlog_url)
    yield engine
    engine.dispose()


def _count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(el.campaign_sends)).scalar_one())


def test_upgrade_from_0002_keeps_every_row(eventlog_url: str) -> None:
    from alembic import command

    url = eventlog_url
    engine = el.make_engine(url, bounded=False)
    with engine.connect() as conn:
        command.upgrade(el._alembic_config(conn), "0002")  # an event log as the previous version left it
        conn.commit()
    with engine.begin() as conn:
        conn.execute(el.impressions.insert(), [{"request_id": "imp-old", "ts": TS, "user_id": "u1", "items": '["i1", "i2"]'}])
        conn.execute(el.feedback.insert(), [dict(r) for r in _rows("old", 3)])
        conn.execute(el.behaviour.insert(), [{"event_id": "b-old", "ts": TS, "user_id": "u1", "item_id": "i1", "event_type": "purchase",
                                              "quantity": 2, "price": 3.5}])
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("campaign_sends")
    engine.dispose()
    assert el.current_revision(url) == "0002"
    with pytest.raises(el.UserError, match="0002, this version needs 0003.*storerec eventlog upgrade"):
        EventLog(url)
    assert upgrade(url) == ("0002", "0003") and el.head_revision() == "0003"
    frames = read_frames(url)
    assert frames["impressions"]["request_id"].to_list() == ["imp-old"] and frames["items"].height == 2
    assert sorted(frames["feedback"]["event_id"].to_list()) == ["old-0", "old-1", "old-2"]
    engine = el.make_engine(url)
    try:
        assert [(r["item_id"], r["quantity"], r["price"]) for r in el.behaviour_since(engine, None)] == [("i1", 2, 3.5)]
        assert record_campaign(engine, "c1", "winback", T0, [("u1", False, 5)]) == 1
        assert contacted_since(engine, T0) == {"u1"}
    finally:
        engine.dispose()
    log = EventLog(url, flush_ms=20)  # the service accepts the upgraded log
    assert log.store_feedback_sync(_rows("new", 1), 30) == 1
    log.close()


def test_record_and_read_back(engine: sa.Engine) -> None:
    members = [("u2", False, 5), ("u1", True, 0), ("u3", False, 3)]
    assert record_campaign(engine, "replenish-2026-11-20", "replenish", T0, members, holdout_share=0.2) == 3
    assert record_campaign(engine, "winback-1", "winback", T0 + timedelta(days=1), [("u4", False, 4)]) == 1
    got = campaign_members(engine, "replenish-2026-11-20")
    assert got.columns == ["user_id", "holdout", "n_items", "ts", "kind", "holdout_share"]
    assert got.schema["ts"] == pl.Datetime("us", "UTC") and got.schema["holdout"] == pl.Boolean
    assert got.rows() == [("u1", True, 0, T0, "replenish", 0.2), ("u2", False, 5, T0, "replenish", 0.2), ("u3", False, 3, T0, "replenish", 0.2)]
    assert campaign_members(engine, "winback-1")["holdout_share"].to_list() == [None]  # not given: not recorded
    with pytest.raises(ValueError, match="holdout share 1.0"):
        record_campaign(engine, "bad-share", "winback", T0, [("u5", False, 1)], holdout_share=1.0)
    assert contacted_since(engine, T0 - timedelta(days=7)) == {"u2", "u3", "u4"}
    with engine.connect() as conn:  # a connection works as well as an engine
        assert campaign_members(conn, "winback-1")["user_id"].to_list() == ["u4"]
        assert contacted_since(conn, T0 + timedelta(hours=1)) == {"u4"}


def test_an_unknown_campaign_is_an_empty_frame_with_the_columns(engine: sa.Engine) -> None:
    got = campaign_members(engine, "nope")
    assert got.height == 0 and got.columns == ["user_id", "holdout", "n_items", "ts", "kind", "holdout_share"]
    assert got.schema["n_items"] == pl.Int64 and got.schema["ts"] == pl.Datetime("us", "UTC")


def test_the_cap_window_is_inclusive_and_in_utc(engine: sa.Engine) -> None:
    record_campaign(engine, "c1", "winback", T0, [("u1", False, 5)])
    assert contacted_since(engine, T0) == {"u1"}  # sent exactly at the start of the window: capped
    assert contacted_since(engine, T0 + timedelta(microseconds=1)) == set()
    assert contacted_since(engine, T0 - timedelta(microseconds=1)) == {"u1"}
    paris = timezone(timedelta(hours=1))
    assert contacted_since(engine, T0.astimezone(paris)) == {"u1"}  # the same instant in another zone
    assert contacted_since(engine, (T0 + timedelta(seconds=1)).astimezone(paris)) == set()
    record_campaign(engine, "c2", "new-arrivals", (T0 + timedelta(hours=2)).astimezone(paris), [("u2", False, 2)])
    assert campaign_members(engine, "c2")["ts"].to_list() == [T0 + timedelta(hours=2)]
    assert contacted_since(engine, T0 + timedelta(hours=1)) == {"u2"}
    with pytest.raises(ValueError, match="timezone-aware"):
        contacted_since(engine, T0.replace(tzinfo=None))


def test_holdout_members_are_not_contacted(engine: sa.Engine) -> None:
    record_campaign(engine, "c1", "points-expiring", T0, [("treated", False, 5), ("held", True, 0)])
    assert contacted_since(engine, T0 - timedelta(days=7)) == {"treated"}
    record_campaign(engine, "c2", "winback", T0 + timedelta(days=1), [("held", False, 4)])  # later treated: now capped
    assert contacted_since(engine, T0 - timedelta(days=7)) == {"treated", "held"}
    assert campaign_members(engine, "c1").filter(pl.col("holdout"))["user_id"].to_list() == ["held"]  # the holdout stays recorded


def test_a_campaign_id_already_recorded_is_refused_and_nothing_written(engine: sa.Engine) -> None:
    record_campaign(engine, "c1", "winback", T0, [("u1", False, 5), ("u2", True, 0)])
    with pytest.raises(CampaignExists, match="campaign id 'c1' is already recorded") as info:
        record_campaign(engine, "c1", "replenish", T0 + timedelta(days=8), [("u3", False, 5), ("u4", False, 5)])  # other members too
    assert info.value.campaign_id == "c1"
    assert _count(engine) == 2
    assert campaign_members(engine, "c1")["user_id"].to_list() == ["u1", "u2"]
    assert contacted_since(engine, T0 + timedelta(days=1)) == set()


def test_members_are_checked_before_anything_is_written(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="'u1' is listed twice"):
        record_campaign(engine, "c1", "winback", T0, [("u1", False, 5), ("u2", False, 5), ("u1", True, 0)])
    with pytest.raises(ValueError, match="non-empty"):
        record_campaign(engine, "c1", "winback", T0, [("u1", False, 5), ("", False, 5)])
    with pytest.raises(ValueError, match="timezone-aware"):
        record_campaign(engine, "c1", "winback", T0.replace(tzinfo=None), [("u1", False, 5)])
    assert _count(engine) == 0
    assert record_campaign(engine, "c1", "winback", T0, [("u1", False, 5)]) == 1  # the id was not taken by the failures


def test_a_failure_midway_leaves_nothing(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(campaigns, "INSERT_CHUNK", 2)
    inserts: list[int] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _fail_second_insert(_conn, _cursor, statement, _params, _context, _many) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CAMPAIGN_SENDS"):
            inserts.append(1)
            if len(inserts) == 2:
                raise RuntimeError("injected: the database went away midway")

    members = [(f"u{k}", k % 5 == 0, 5) for k in range(5)]
    with pytest.raises(RuntimeError, match="injected"):
        record_campaign(engine, "c1", "winback", T0, members)
    assert len(inserts) == 2  # the first chunk had been sent to the database
    assert _count(engine) == 0 and campaign_members(engine, "c1").height == 0
    sa.event.remove(engine, "before_cursor_execute", _fail_second_insert)
    assert record_campaign(engine, "c1", "winback", T0, members) == 5  # and the id is still free
    assert _count(engine) == 5


def test_two_writers_of_one_campaign_id_one_wins(eventlog_url: str, engine: sa.Engine) -> None:
    """Checked and inserted under a lock: two processes recording the same id with different
    members cannot both pass the check (the unique constraint alone would let them)."""
    barrier = threading.Barrier(2)
    out: dict[str, object] = {}

    def run(name: str) -> None:
        own = el.make_engine(eventlog_url)
        try:
            barrier.wait(10)
            out[name] = record_campaign(own, "c1", "winback", T0, [(f"{name}-{k}", False, 3) for k in range(200)])
        except Exception as exc:
            out[name] = exc
        finally:
            own.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(type(v).__name__ for v in out.values()) == ["CampaignExists", "int"], out
    winner = next(n for n, v in out.items() if v == 200)
    assert set(campaign_members(engine, "c1")["user_id"].str.split("-").list.first()) == {winner}


def test_delete_users_removes_their_campaign_rows(engine: sa.Engine) -> None:
    record_campaign(engine, "c1", "winback", T0, [("gone", False, 5), ("kept", False, 5)])
    record_campaign(engine, "c2", "replenish", T0 + timedelta(days=8), [("gone", True, 0), ("kept", True, 0)])
    with engine.begin() as conn:
        assert delete_users(conn, ["gone"]) == (0, 0, 0, 2)
    assert campaign_members(engine, "c1")["user_id"].to_list() == ["kept"]
    assert campaign_members(engine, "c2")["user_id"].to_list() == ["kept"]
    assert contacted_since(engine, T0) == {"kept"}
    with engine.begin() as conn:
        assert delete_users(conn, ["gone"]) == (0, 0, 0, 0)  # safe to run again
