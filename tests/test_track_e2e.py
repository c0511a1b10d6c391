"""POST /track against the real `storerec serve` (small store, ALS champion): an event posted for a
shopper changes their next list at once (a purchase leaves it, views become session context, a
new shopper gets a context list), the batch is refused whole with the field named when an item
or type is unknown, a retried event_id is stored once, a locked event log answers 503 and stores
nothing, and a restarted service rebuilds the overlay from the event log."""

from __future__ import annotations

import time

import polars as pl
import pytest
import sqlalchemy as sa

from storerec.cli import main
from storerec.events.eventlog import behaviour_since, read_engine
from tests._serve import small_store, sqlite_locked, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("track")
    data = root / "data"
    cfg = root / "storerec.toml"
    cfg.write_text(
        f"""{small_store(data)}
[mlflow]
tracking_uri = "sqlite:///{root / 'mlflow.db'}"
artifact_root = "{root / 'artifacts'}"
[eventlog]
url = "sqlite:///{root / 'events.db'}"
ack_timeout_ms = 1500
[serving]
control_url = "sqlite:///{root / 'control.db'}"
access_log = false
metrics = false
"""
    )
    for args in (["simulate"], ["features"], ["train", "--model", "als"], ["promote", "--version", "1"]):
        assert main(["--config", str(cfg), "-q", *args]) == 0, args
    proc, client = start(cfg, root / "serve.log")
    box = {"proc": proc, "client": client, "root": root, "cfg": cfg, "data": data, "db": root / "events.db"}
    yield box
    stop(box["proc"])


def _stored(served) -> list[dict]:
    engine = read_engine(f"sqlite:///{served['db']}")
    try:
        return behaviour_since(engine, None)
    finally:
        engine.dispose()


def _rec(served, **body) -> dict:
    r = served["client"].post("/recommend", json={"k": 10, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _track(served, *events: dict):
    return served["client"].post("/track", json={"events": list(events)})


def _hot_user(served) -> str:
    ev = pl.read_parquet(served["data"] / "events.parquet")
    counts = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return counts["user_id"][0]


def test_a_purchase_leaves_the_next_list_and_views_become_context(served) -> None:
    user = _hot_user(served)
    first = _rec(served, user_id=user)
    assert first["source"] == "model" and first["live_context"] == 0 and first["live_excluded"] == 0
    bought = first["items"][0]["item_id"]
    r = _track(served, {"event_type": "purchase", "item_id": bought, "user_id": user, "quantity": 2, "price": 3.5, "event_id": "e2e-buy-1"})
    assert r.status_code == 200 and r.json() == {"received": 1, "stored": 1}
    after = _rec(served, user_id=user)
    assert bought not in [i["item_id"] for i in after["items"]] and after["live_excluded"] == 1
    # a view (not the purchased item) is session context now, and stays in the list with its own reason
    viewed = after["items"][3]["item_id"]
    assert _track(served, {"event_type": "view", "item_id": viewed, "user_id": user}).status_code == 200
    ctx = _rec(served, user_id=user)
    assert ctx["source"] == "model+context" and ctx["live_context"] == 1 and ctx["live_excluded"] == 1
    mine = {i["item_id"]: i["reasons"] for i in ctx["items"]}
    assert viewed in mine and mine[viewed][0]["code"] == "in_your_session" and mine[viewed][0]["text"] == "You viewed this"
    assert mine[viewed][0]["evidence"]["event_type"] == "view"
    assert all(x.get("evidence", {}).get("item_id") != viewed for x in mine[viewed])  # never "similar to" itself
    assert any(x["code"] == "similar_to_context" for i in ctx["items"] for x in i["reasons"])
    # the storefront can still ask for a reminder list with the purchases in it
    keep = _rec(served, user_id=user, filters={"exclude_seen": False, "exclude_purchased": False})
    assert keep["live_excluded"] == 0


def test_a_new_shopper_with_a_few_views_gets_a_context_list(served) -> None:
    items = pl.read_parquet(served["data"] / "items.parquet")
    cat = items.group_by("category").len().sort(["len", "category"], descending=[True, False])["category"][0]
    in_cat = items.filter(pl.col("category") == cat)["item_id"].head(3).to_list()
    cold = _rec(served, session_id="e2e-new-shopper")
    assert cold["source"] in ("popular", "trending") and cold["user_kind"] == "cold"
    for k, item in enumerate(in_cat):
        r = _track(served, {"event_type": "view", "item_id": item, "session_id": "e2e-new-shopper", "event_id": f"e2e-new-{k}"})
        assert r.status_code == 200, r.text
    warm = _rec(served, session_id="e2e-new-shopper")
    assert warm["source"] == "context" and warm["live_context"] == 3
    share = lambda body: sum(i["category"] == cat for i in body["items"]) / len(body["items"])
    assert share(warm) > share(cold), (share(cold), share(warm))


def test_unknown_items_and_types_are_refused_whole_naming_the_field(served) -> None:
    before = len(_stored(served))
    ok = {"event_type": "view", "item_id": "i00001", "user_id": "u-refused"}
    r = _track(served, ok, {"event_type": "view", "item_id": "no-such-item", "user_id": "u-refused"})
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["code"] == "not_found" and body["field"] == "events.1.item_id" and "no-such-item" in body["error"]
    assert [d["field"] for d in body["details"]] == ["events.1.item_id"]
    r = _track(served, ok, ok, {"event_type": "wishlist", "item_id": "i00001", "user_id": "u-refused"})
    assert r.status_code == 400 and r.json()["field"] == "events.2.event_type"
    r = _track(served, {"event_type": "view", "item_id": "i00001"})
    assert r.status_code == 422 and r.json()["field"] == "events.0"
    assert len(_stored(served)) == before
    assert _rec(served, user_id="u-refused")["live_context"] == 0


def test_a_retried_event_id_is_stored_once(served) -> None:
    ev = {"event_type": "cart", "item_id": "i00002", "user_id": "u-retry", "quantity": 2, "event_id": "e2e-retry-1"}
    assert _track(served, ev).json() == {"received": 1, "stored": 1}
    assert _track(served, ev).json() == {"received": 1, "stored": 0}
    assert sum(r["user_id"] == "u-retry" for r in _stored(served)) == 1


def test_a_locked_event_log_answers_503_and_stores_nothing(served) -> None:
    c = served["client"]
    with sqlite_locked(served["db"]):
        r = _track(served, {"event_type": "purchase", "item_id": "i00003", "user_id": "u-locked", "event_id": "e2e-locked-1"})
        assert r.status_code == 503 and r.json()["code"] == "event_log_unavailable", r.text
    assert "e2e-locked-1" not in {r.get("event_id") for r in _stored(served)}
    assert not any(r["user_id"] == "u-locked" for r in _stored(served))
    assert _rec(served, user_id="u-locked")["live_excluded"] == 0  # not acknowledged: not applied either
    deadline = time.monotonic() + 20
    while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _track(served, {"event_type": "view", "item_id": "i00003", "user_id": "u-locked"}).status_code == 200


def test_a_restarted_service_rebuilds_the_overlay_and_sync_events_takes_the_rows(served) -> None:
    user = _hot_user(served)
    bought = [r["item_id"] for r in _stored(served) if r["user_id"] == user and r["event_type"] == "purchase"]
    assert bought  # from the first test
    stop(served["proc"])
    served["proc"], served["client"] = start(served["cfg"], served["root"] / "serve.log")
    live = served["client"].get("/readyz").json()["live"]
    assert live["enabled"] and live["shoppers"] >= 1 and live["follows_log"] and live["error"] is None
    again = _rec(served, user_id=user)
    assert bought[0] not in [i["item_id"] for i in again["items"]] and again["live_excluded"] >= 1 and again["live_context"] >= 1
    # the tracked events reach the training data with sync-events
    n = len(_stored(served))
    assert main(["--config", str(served["cfg"]), "-q", "sync-events"]) == 0
    ev = pl.read_parquet(served["data"] / "events.parquet")
    mine = ev.filter((pl.col("user_id") == user) & (pl.col("event_type") == "purchase") & (pl.col("item_id") == bought[0]))
    assert mine.filter(pl.col("quantity") == 2)["price"].to_list()[-1:] == [3.5]
    engine = sa.create_engine(f"sqlite:///{served['db']}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM behaviour")).scalar() == n
    engine.dispose()


def test_every_worker_follows_the_events_another_one_took(served) -> None:
    """Two workers: the worker that took POST /track applies it at once, the other reads it from
    the event log within live.poll_ms; asked on fresh connections (either worker), every list
    reacts."""
    import httpx

    from tests._serve import free_port

    env = {"STOREREC__SERVING__WORKERS": "2", "STOREREC__LIVE__POLL_MS": "200"}
    proc, client = start(served["cfg"], served["root"] / "serve-2.log", port=free_port(), env=env)
    try:
        url = str(client.base_url)
        user = "u00007"
        before = client.post("/recommend", json={"user_id": user, "k": 10}).json()
        top = before["items"][0]["item_id"]
        r = client.post("/track", json={"events": [{"event_type": "purchase", "item_id": top, "user_id": user, "event_id": "e2e-2w-1"}]})
        assert r.status_code == 200, r.text
        time.sleep(1.0)
        for _ in range(20):
            with httpx.Client(base_url=url, timeout=30) as fresh:
                body = fresh.post("/recommend", json={"user_id": user, "k": 10}).json()
            assert top not in [i["item_id"] for i in body["items"]] and body["live_excluded"] == 1
    finally:
        client.close()
        stop(proc)


def test_on_a_postgresql_event_log(served) -> None:
    """The same path on PostgreSQL (the service in this process, its own database, dropped after):
    stored once after commit, applied at once, rebuilt by the next start."""
    from tests._pg import pg_available, pg_skip_reason, temp_database
    from tests._serve import asgi_client

    if not pg_available():
        pytest.skip(pg_skip_reason())
    user = "u00011"
    with temp_database() as url:
        env = {"STOREREC__EVENTLOG__URL": url}
        with asgi_client(served["cfg"], env=env) as c:
            top = c.post("/recommend", json={"user_id": user, "k": 10}).json()["items"][0]["item_id"]
            ev = {"event_type": "purchase", "item_id": top, "user_id": user, "price": 2.0, "event_id": "pg-1"}
            assert c.post("/track", json={"events": [ev]}).json() == {"received": 1, "stored": 1}
            assert c.post("/track", json={"events": [ev]}).json() == {"received": 1, "stored": 0}
            assert top not in [i["item_id"] for i in c.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]]
        with asgi_client(served["cfg"], env=env) as c:  # a new start: rebuilt from the log
            body = c.post("/recommend", json={"user_id": user, "k": 10}).json()
            assert top not in [i["item_id"] for i in body["items"]] and body["live_excluded"] == 1
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*), max(quantity), max(price) FROM behaviour")).one() == (1, 1, 2.0)
        finally:
            engine.dispose()
