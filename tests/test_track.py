"""POST /track without a service (fast): the request model's validation as the gate answers it
(the field named, 400 for the schema, 422 for a rule), the live overlay's rules (serving/live.py)
and the event log's behaviour table on SQLite and (slow tier) PostgreSQL: committed before the
answer, a retried event_id stored once, nothing stored while the database is unavailable."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from storerec.events import eventlog as el
from storerec.events.eventlog import EventLog, EventLogUnavailable, behaviour_since, upgrade
from storerec.serving.http import ROUTES, validation_details
from storerec.serving.live import LiveOverlay, shopper_key
from storerec.serving.schemas import TrackRequest

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
WINDOW = {"max_event_age_days": 30, "max_future_seconds": 300}


def _refusal(body: dict) -> tuple[int, list[dict]]:
    try:
        TrackRequest.model_validate_json(__import__("json").dumps(body), context=WINDOW)
    except ValidationError as exc:
        return validation_details(exc)
    return 200, []


def _ev(**kw) -> dict:
    return {"event_type": "view", "item_id": "i1", "user_id": "u1", **kw}


# ---- validation -----------------------------------------------------------------------------------


def test_track_is_a_route_with_its_own_request_model() -> None:
    assert ROUTES["/track"].request is TrackRequest and 404 in ROUTES["/track"].statuses


def test_a_valid_batch_passes() -> None:
    body = {"events": [
        _ev(), _ev(event_type="cart", quantity=2), _ev(event_type="purchase", quantity=3, price=9.5, event_id="o1-l1"),
        _ev(event_type="favorite", user_id=None, session_id="s1", timestamp=(datetime.now(UTC) - timedelta(hours=1)).isoformat()),
    ]}
    assert _refusal(body) == (200, [])


@pytest.mark.parametrize(
    ("event", "status", "field", "words"),
    [
        (_ev(event_type="click"), 400, "events.3.event_type", "'view', 'favorite', 'cart' or 'purchase'"),
        (_ev(event_type="rating"), 400, "events.3.event_type", "'view'"),
        (_ev(item_id=""), 400, "events.3.item_id", "at least 1 character"),
        (_ev(quantity="2", event_type="cart"), 400, "events.3.quantity", "valid integer"),
        (_ev(quantity=0, event_type="cart"), 400, "events.3.quantity", "greater than or equal to 1"),
        (_ev(price=-1.0, event_type="purchase"), 400, "events.3.price", "greater than or equal to 0"),
        (_ev(colour="red"), 400, "events.3.colour", "Extra inputs"),
        (_ev(user_id=None), 422, "events.3", "give user_id, or session_id"),
        (_ev(price=3.0), 422, "events.3", "price is only allowed on purchase events"),
        (_ev(quantity=2), 422, "events.3", "quantity is only allowed on cart and purchase events"),
        (_ev(timestamp="2999-01-01T00:00:00Z"), 422, "events.3", "in the future"),
        (_ev(timestamp="2020-01-01T00:00:00Z"), 422, "events.3", "days old"),
    ],
)
def test_bad_events_are_refused_naming_the_field(event: dict, status: int, field: str, words: str) -> None:
    got, details = _refusal({"events": [_ev(), _ev(), _ev(), event]})
    assert got == status, details
    assert details[0]["field"] == field and words in details[0]["message"], details


def test_batches_are_bounded() -> None:
    assert _refusal({"events": []})[0] == 400
    assert _refusal({"events": [_ev()] * 1001})[0] == 400


# ---- the overlay ----------------------------------------------------------------------------------


def _row(user: str | None, item: str, kind: str, minutes: float, session: str | None = None) -> dict:
    return {"user_id": user, "session_id": session, "item_id": item, "event_type": kind, "ts": NOW + timedelta(minutes=minutes)}


def test_purchases_are_left_out_for_one_repurchase_cycle() -> None:
    live = LiveOverlay(repurchase_days=30)
    live.record([_row("u1", "kettle", "view", 0), _row("u1", "kettle", "purchase", 5), _row("u1", "mug", "view", 6)])
    v = live.view(["u1"], NOW + timedelta(minutes=10))
    assert v.purchased == ("kettle",) and v.recent == ("mug",)  # bought: done with, not context
    assert set(v.seen) == {"kettle", "mug"}
    later = live.view(["u1"], NOW + timedelta(days=31))  # a consumable's cycle is due: it may come back
    assert later.purchased == () and "kettle" in later.seen


def test_session_context_is_the_latest_distinct_items_within_the_window() -> None:
    live = LiveOverlay(context_items=3, context_hours=2)
    live.record([_row("u1", f"i{k}", "view", 10 * k) for k in range(6)])
    live.record([_row("u1", "i2", "cart", 65), _row("u1", "old", "view", -300)])
    v = live.view(["u1"], NOW)
    assert v.recent == ("i2", "i5", "i4")  # newest first, an item once, at most 3
    assert "old" in v.seen and "old" not in live.view(["u1"], NOW).recent  # 5 h before the latest event: outside


def test_the_session_is_split_from_older_tracked_items() -> None:
    """Session items (viewed/carted/favourited within the window of the latest event, not bought
    since) carry their strongest event; older ones and the bought ones are history (``older``)."""
    live = LiveOverlay(context_items=2, context_hours=2)
    live.record([
        _row("u1", "old", "view", -300),  # 5 h before the latest event
        _row("u1", "a", "view", 0), _row("u1", "a", "cart", 10), _row("u1", "a", "view", 20),  # carted: the cart is named
        _row("u1", "b", "view", 5), _row("u1", "b", "purchase", 15),  # bought since: done with
        _row("u1", "c", "purchase", 1), _row("u1", "c", "view", 25),  # bought, then viewed again: in the session
        _row("u1", "d", "favorite", 30), _row("u1", "d", "view", 40), _row("u1", "e", "view", 35), _row("u1", "e", "view", 45),
    ])
    v = live.view(["u1"], NOW + timedelta(hours=1))
    assert v.session == {"e": ("view", NOW + timedelta(minutes=45)), "d": ("favorite", NOW + timedelta(minutes=30)),
                         "c": ("view", NOW + timedelta(minutes=25)), "a": ("cart", NOW + timedelta(minutes=10))}
    assert list(v.session) == ["e", "d", "c", "a"]  # newest first
    assert v.recent == ("e", "d")  # the context: the latest context_items of them
    assert set(v.older()) == {"old", "b"} and set(v.seen) == {"old", "a", "b", "c", "d", "e"}
    assert set(v.purchased) == {"b", "c"}  # c stays out under filters.exclude_purchased
    assert LiveOverlay().view(["nobody"], NOW).session == {}


def test_anonymous_sessions_and_users_are_kept_apart_and_read_together() -> None:
    live = LiveOverlay()
    live.record([_row(None, "a", "view", 0, session="s1"), _row("u1", "b", "view", 1, session="s1"), _row(None, "x", "view", 0)])
    assert shopper_key(None, "s1") == "anonymous:s1" and shopper_key("u1", "s1") == "u1" and shopper_key(None, None) is None
    assert len(live) == 2  # the row with neither id is ignored
    assert live.view(["anonymous:s1"], NOW).recent == ("a",)
    assert live.view(["u1", "anonymous:s1"], NOW).recent == ("b", "a")
    assert not live.view(["u2"], NOW)


def test_replayed_and_late_events_are_kept_once_in_time_order() -> None:
    live = LiveOverlay()
    rows = [_row("u1", "a", "view", 0), _row("u1", "b", "view", 2)]
    live.record(rows)
    live.record(rows)  # the rebuild at start meeting events fed by /track, or a retry
    live.record([_row("u1", "c", "view", 1)])  # late
    assert live.view(["u1"], NOW).recent == ("b", "c", "a")
    assert len(live._users["u1"]) == 3


def test_memory_is_bounded() -> None:
    live = LiveOverlay(max_users=3, max_events_per_user=4)
    for u in range(5):
        live.record([_row(f"u{u}", f"i{k}", "view", k) for k in range(10)])
    assert len(live) == 3 and set(live._users) == {"u2", "u3", "u4"}  # least recently active went first
    assert [e[1] for e in live._users["u4"]] == ["i6", "i7", "i8", "i9"]
    live.record([_row("u2", "z", "view", 20)])  # active again: now the newest
    live.record([_row("u9", "z", "view", 20)])
    assert set(live._users) == {"u4", "u2", "u9"}


def test_a_newer_snapshot_takes_over_what_it_holds() -> None:
    live = LiveOverlay()
    live.record([_row("u1", "a", "purchase", 0), _row("u1", "b", "view", 10), _row("u2", "c", "view", 1)])
    live.drop_before(NOW + timedelta(minutes=5))
    assert live.view(["u1"], NOW).purchased == () and live.view(["u1"], NOW).recent == ("b",)
    assert len(live) == 1


# ---- the behaviour table --------------------------------------------------------------------------


def _behaviour(prefix: str, n: int, ts: datetime | None = None) -> list[dict]:
    return [{"event_id": f"{prefix}-{k}", "ts": ts or datetime.now(UTC), "user_id": "u1", "session_id": "s1", "item_id": f"i{k}",
             "event_type": "purchase" if k % 2 else "view", "quantity": 1 + k % 2, "price": 4.5 if k % 2 else None} for k in range(n)]


def test_behaviour_is_committed_before_the_answer_and_a_retry_is_stored_once(eventlog_url: str) -> None:
    upgrade(eventlog_url)
    log = EventLog(eventlog_url, flush_ms=1000)  # impressions wait a second; behaviour does not
    try:
        rows = _behaviour("b", 3)
        assert asyncio.run(log.store_behaviour(rows, 10)) == 3
        assert log.store_behaviour_sync(rows + _behaviour("c", 1), 10) == 1  # the retried ids are skipped
        got = behaviour_since(log.engine, None)
        assert [r["item_id"] for r in got] == ["i0", "i1", "i2", "i0"]
        assert [(r["quantity"], r["price"]) for r in got[:2]] == [(1, None), (2, 4.5)]
        assert got[0]["ts"].tzinfo is not None
        assert log.store_feedback_sync([{"event_id": "b-0", "ts": datetime.now(UTC), "item_id": "i0", "event_type": "click"}], 10) == 1
    finally:
        log.close()
    assert el.summary(eventlog_url)["tables"]["behaviour"]["rows"] == 4


def test_nothing_is_stored_while_the_database_is_unavailable(eventlog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(el, "SQLITE_BUSY_TIMEOUT_MS", 500)
    monkeypatch.setattr(el, "PG_LOCK_TIMEOUT_MS", 500)
    upgrade(eventlog_url)
    log = EventLog(eventlog_url, flush_ms=20)
    try:
        locked, release = threading.Event(), threading.Event()

        def hold() -> None:
            if eventlog_url.startswith("postgresql"):
                import psycopg

                with psycopg.connect(eventlog_url.replace("postgresql+psycopg", "postgresql")) as conn:
                    conn.execute("LOCK TABLE behaviour IN ACCESS EXCLUSIVE MODE")
                    locked.set()
                    release.wait(30)
                    conn.rollback()
            else:
                import sqlite3

                conn = sqlite3.connect(eventlog_url.removeprefix("sqlite:///"), isolation_level=None)
                conn.execute("BEGIN EXCLUSIVE")
                locked.set()
                release.wait(30)
                conn.execute("ROLLBACK")
                conn.close()

        t = threading.Thread(target=hold)
        t.start()
        try:
            assert locked.wait(10)
            with pytest.raises(EventLogUnavailable, match="not stored"):
                log.store_behaviour_sync(_behaviour("lost", 2), 0.3)
        finally:
            release.set()
            t.join(30)
        assert log.store_behaviour_sync(_behaviour("after", 1), 20) == 1
    finally:
        log.close()
    engine = el.read_engine(eventlog_url)
    try:
        assert [r["item_id"] for r in behaviour_since(engine, None)] == ["i0"]  # "after-0" only: the refused rows never arrive
    finally:
        engine.dispose()


def test_retention_prunes_behaviour_too(eventlog_url: str) -> None:
    upgrade(eventlog_url)
    now = datetime.now(UTC)
    log = EventLog(eventlog_url, flush_ms=20)
    try:
        log.store_behaviour_sync(_behaviour("old", 2, ts=now - timedelta(days=40)) + _behaviour("new", 1, ts=now), 20)
        assert log.prune(now - timedelta(days=30)) == (0, 2)
        assert len(behaviour_since(log.engine, now - timedelta(days=365))) == 1
        assert len(behaviour_since(log.engine, now - timedelta(minutes=1))) == 1
        assert behaviour_since(log.engine, now + timedelta(minutes=1)) == []
    finally:
        log.close()


def test_the_tail_follows_what_other_workers_stored(eventlog_url: str) -> None:
    """Each worker's overlay reads the behaviour rows other workers (or replicas) committed."""
    from storerec.events.eventlog import behaviour_max_id
    from storerec.serving.live import LiveTail

    upgrade(eventlog_url)
    log = EventLog(eventlog_url, flush_ms=20)
    try:
        log.store_behaviour_sync(_behaviour("before", 1), 20)
        overlay = LiveOverlay()
        tail = LiveTail(overlay, log.engine, behaviour_max_id(log.engine), poll_s=60)
        pg = eventlog_url.startswith("postgresql")
        assert tail.poll() == (1 if pg else 0)  # what was there at start is the rebuild's (PostgreSQL reads the last ids again)
        log.store_behaviour_sync(_behaviour("other-worker", 3), 20)
        assert tail.poll() >= 3
        v = overlay.view(["u1"], datetime.now(UTC))
        assert v.purchased == ("i1",) and set(v.recent) == {"i0", "i2"}
        tail.poll()  # nothing new (or the PostgreSQL overlap read again): kept once
        assert len(overlay._users["u1"]) == (4 if pg else 3)
    finally:
        log.close()
