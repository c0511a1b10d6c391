"""Behavioural tests of the live overlay on the built-in store (ALS champion, the service in this
process): tracked events change the shopper's next list as docs/live.md states. A purchase
leaves the list; views of a category move a new shopper's list toward it (context list instead
of best sellers) and a known shopper's too; the measured replay lives in tools/live_replay.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from tests._serve import asgi_client, write_config

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def svc(store: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("live")
    cfg = write_config(root, store)
    assert main(["--config", str(cfg), "-q", "train", "--model", "als"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "1"]) == 0
    items = pl.read_parquet(store / "items.parquet")
    events = pl.read_parquet(store / "events.parquet")
    with asgi_client(cfg) as client:
        yield {"client": client, "items": items, "events": events, "cfg": cfg}


def _rec(svc, **body) -> dict:
    r = svc["client"].post("/recommend", json={"k": 10, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _track(svc, *events: dict) -> None:
    r = svc["client"].post("/track", json={"events": list(events)})
    assert r.status_code == 200, r.text


def _share(body: dict, category: str) -> float:
    return sum(i["category"] == category for i in body["items"]) / max(1, len(body["items"]))


def _least_shown_category(svc, body: dict) -> str:
    """A well-stocked category the list does not show."""
    shown = {i["category"] for i in body["items"]}
    sizes = svc["items"].filter(pl.col("in_stock")).group_by("category").len().sort(["len", "category"], descending=[True, False])
    return next(c for c in sizes["category"].to_list() if c not in shown)


def _popular_in(svc, category: str, n: int) -> list[str]:
    ev = svc["events"].join(svc["items"].select("item_id", "category", "in_stock"), on="item_id")
    top = ev.filter((pl.col("category") == category) & pl.col("in_stock")).group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    return top["item_id"].head(n).to_list()


def test_a_purchased_item_disappears_from_the_next_list(svc) -> None:
    ev = svc["events"]
    buyers = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().filter(pl.col("len") >= 5).sort("user_id")
    for user in buyers["user_id"].head(5).to_list():
        before = _rec(svc, user_id=user)
        assert before["user_kind"] == "hot"
        top = before["items"][0]["item_id"]
        _track(svc, {"event_type": "purchase", "item_id": top, "user_id": user, "price": 5.0})
        after = _rec(svc, user_id=user)
        assert top not in [i["item_id"] for i in after["items"]], user
        assert after["live_excluded"] == 1 and after["source"] == "model"  # a purchase is done with: not context


def test_views_of_a_category_move_a_new_shoppers_list_toward_it(svc) -> None:
    cold = _rec(svc, session_id="live-new-1")
    assert cold["user_kind"] == "cold" and cold["source"] in ("popular", "trending")
    category = _least_shown_category(svc, cold)
    assert _share(cold, category) == 0
    _track(svc, *({"event_type": "view", "item_id": i, "session_id": "live-new-1"} for i in _popular_in(svc, category, 3)))
    warm = _rec(svc, session_id="live-new-1")
    assert warm["source"] == "context" and warm["live_context"] == 3
    assert _share(warm, category) >= 0.5, [i["category"] for i in warm["items"]]
    assert all(any(r["code"] == "similar_to_context" for r in i["reasons"]) for i in warm["items"][:3])
    # a signed-in new shopper (an id the model never saw) the same
    _track(svc, *({"event_type": "view", "item_id": i, "user_id": "live-new-user"} for i in _popular_in(svc, category, 3)))
    assert _share(_rec(svc, user_id="live-new-user"), category) >= 0.5


def test_views_of_a_category_move_a_known_shoppers_list_toward_it(svc) -> None:
    ev = svc["events"]
    user = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][10]
    before = _rec(svc, user_id=user)
    category = _least_shown_category(svc, before)
    _track(svc, *({"event_type": "view", "item_id": i, "user_id": user} for i in _popular_in(svc, category, 3)))
    after = _rec(svc, user_id=user)
    assert after["source"] == "model+context" and after["live_context"] == 3
    assert _share(after, category) > _share(before, category)


def test_a_reminder_list_keeps_the_session_but_not_the_purchases(svc) -> None:
    """filters.exclude_seen = false: the items the shopper viewed in this session may come back
    (with their session as context); what they bought does not (exclude_purchased)."""
    items = _popular_in(svc, _least_shown_category(svc, _rec(svc, session_id="live-reminder")), 4)
    _track(svc, *({"event_type": "view", "item_id": i, "session_id": "live-reminder"} for i in items))
    _track(svc, {"event_type": "purchase", "item_id": items[0], "session_id": "live-reminder"})
    reminder = _rec(svc, session_id="live-reminder", filters={"exclude_seen": False})
    shown = [i["item_id"] for i in reminder["items"]]
    assert items[0] not in shown and set(items[1:]) & set(shown) and reminder["live_context"] == 3


def _session_reasons(body: dict) -> dict[str, list[dict]]:
    return {i["item_id"]: [r for r in i["reasons"] if r["code"] == "in_your_session"] for i in body["items"]}


def test_the_session_stays_in_the_default_list_with_its_own_reason(svc) -> None:
    """Default filters (exclude_seen): what the shopper viewed or carted in this session stays
    eligible ("keep shopping for") and says why; a purchase leaves; the page's item stays out;
    no item is "similar to" itself."""
    ev = svc["events"]
    user = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][20]
    before = [i["item_id"] for i in _rec(svc, user_id=user)["items"]]
    viewed = before[:3]
    t0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    at = lambda minutes: (t0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    _track(svc, *({"event_type": "view", "item_id": i, "user_id": user, "timestamp": at(n)} for n, i in enumerate(viewed)))
    _track(svc, {"event_type": "cart", "item_id": viewed[1], "user_id": user, "timestamp": at(5)})
    after = _rec(svc, user_id=user)
    mine = _session_reasons(after)
    assert set(viewed) <= set(mine) and after["live_excluded"] == 0 and after["live_context"] == 3
    assert mine[viewed[0]] == [{"code": "in_your_session", "text": "You viewed this",
                                "evidence": {"event_type": "view", "at": at(0)}}]
    assert mine[viewed[1]][0]["text"] == "You added this to your cart" and mine[viewed[1]][0]["evidence"]["event_type"] == "cart"
    for item in after["items"]:
        assert all(r["evidence"].get("item_id") != item["item_id"] for r in item["reasons"]), item
    assert not any(mine[i] for i in mine if i not in viewed)  # only the session's items say so
    on_page = _rec(svc, user_id=user, context={"page": "product", "item_ids": [viewed[2]]})
    assert viewed[2] not in [i["item_id"] for i in on_page["items"]]
    _track(svc, {"event_type": "purchase", "item_id": viewed[0], "user_id": user, "timestamp": at(6)})
    bought = _rec(svc, user_id=user)
    assert viewed[0] not in [i["item_id"] for i in bought["items"]] and bought["live_excluded"] == 1


def test_without_session_items_eligible_every_tracked_item_counts_as_seen(svc) -> None:
    """live.session_items_eligible = false: viewed items are left out under exclude_seen, as
    before; a reminder list (exclude_seen false) still shows them, with their reason."""
    from tests._serve import asgi_client

    ev = svc["events"]
    user = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])["user_id"][30]
    with asgi_client(svc["cfg"], env={"STOREREC__LIVE__SESSION_ITEMS_ELIGIBLE": "false"}) as client:
        top = [i["item_id"] for i in client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"]][:2]
        r = client.post("/track", json={"events": [{"event_type": "view", "item_id": i, "user_id": user} for i in top]})
        assert r.status_code == 200, r.text
        body = client.post("/recommend", json={"user_id": user, "k": 10}).json()
        assert not set(top) & {i["item_id"] for i in body["items"]} and body["live_excluded"] == 2
        reminder = client.post("/recommend", json={"user_id": user, "k": 10, "filters": {"exclude_seen": False}}).json()
        back = set(top) & set(_session_reasons(reminder))
        assert back and all(_session_reasons(reminder)[i] for i in back)  # what comes back says why
