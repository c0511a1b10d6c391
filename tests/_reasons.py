"""Is a served reason true? One check per registered reason code (``CHECKS``), against the data
the reason is about: the events, the profiles, the item features and the model.

``check_reason`` fails on a code that has no check, and ``tests/test_reasons.py`` fails when a
registered code (``storerec.ranking.reasons.REASONS``) has none: a new reason needs its check
here. Used by ``tests/test_reasons.py`` (in process) and usable by the service tests (over HTTP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import polars as pl

from storerec.core.schema import EventTypes
from storerec.models.base import ModelBase
from storerec.ranking import facts, reasons


@dataclass
class Truth:
    """The data reasons are checked against (the same tables the Ranker was built from)."""

    model: ModelBase
    events: pl.DataFrame
    items: pl.DataFrame  # item features
    profiles: pl.DataFrame
    _item: dict[str, dict[str, Any]] = field(init=False)
    _profile: dict[str, dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self._item = {r["item_id"]: r for r in self.items.with_columns(pl.col("price_band").cast(pl.String)).iter_rows(named=True)}
        cols = [pl.col(c).cast(pl.String) for c in ("price_band", "tier")]
        self._profile = {r["user_id"]: r for r in self.profiles.with_columns(*cols).iter_rows(named=True)}
        self.similar = cache(self._similar)
        self._events_of = cache(self._user_events)
        self._buyers = cache(self._tier_buyer_counts)

    def item(self, item_id: str) -> dict[str, Any]:
        return self._item[item_id]

    def profile(self, user_id: str) -> dict[str, Any]:
        return self._profile[user_id]

    def _similar(self, item_id: str) -> frozenset[str]:
        """The model's ``NEIGHBOURS`` most similar items of ``item_id``."""
        return frozenset(self.model.similar_items([item_id], facts.NEIGHBOURS)["similar_item_id"])

    def _user_events(self, user_id: str) -> pl.DataFrame:
        return self.events.filter(pl.col("user_id") == user_id)

    def kinds(self, user_id: str, item_id: str) -> set[str]:
        """Event types of the user on the item."""
        return set(self._events_of(user_id).filter(pl.col("item_id") == item_id)["event_type"])

    def latest_items(self, user_id: str) -> list[str]:
        """The user's latest ``HISTORY_N`` items (by their last event), newest first."""
        ev = self._events_of(user_id).group_by("item_id").agg(pl.col("timestamp").max())
        return ev.sort("timestamp", descending=True)["item_id"].head(facts.HISTORY_N).to_list()

    def top_in_category(self, item_id: str) -> bool:
        """Among the top ``TOP_IN_CATEGORY_SHARE`` of its category by 30-day popularity (ties: item order)."""
        cat = self.item(item_id)["category"]
        members = [r for r in self._item.values() if r["category"] == cat]
        pops = np.array([float(r["pop_30d"] or 0) for r in members])
        n_top = max(1, int(np.ceil(reasons.TOP_IN_CATEGORY_SHARE * len(members))))
        best = {members[j]["item_id"] for j in np.argsort(-pops, kind="stable")[:n_top] if pops[j] > 0}
        return item_id in best

    def _tier_buyer_counts(self, tier: str) -> dict[str, int]:
        tiers = self.profiles.select("user_id", pl.col("tier").cast(pl.String)).filter(pl.col("tier") == tier)
        bought = self.events.filter(pl.col("event_type") == EventTypes.Purchase).join(tiers, on="user_id")
        return dict(bought.group_by("item_id").agg(pl.col("user_id").n_unique()).iter_rows())

    def tier_buyers(self, tier: str, item_id: str) -> int:
        """Distinct customers of ``tier`` who bought the item."""
        return self._buyers(tier).get(item_id, 0)


@dataclass(frozen=True)
class Shown:
    """One reason as served, and where: the list's user (None: lists for everyone), their kind,
    the request's context items, the item page's item (similar / bought together lists), and
    the shopper's tracked events (POST /track: (item, event type, time)) with the session
    window (``live.context_hours``) they were served under."""

    reason: dict[str, Any]
    item_id: str
    user_id: str | None = None
    user_kind: str | None = None
    context: tuple[str, ...] = ()
    page_item: str | None = None
    all_reasons: tuple[str, ...] = ()  # every code on the item
    tracked: tuple[tuple[str, str, datetime], ...] = ()
    session_hours: float = 24.0

    @property
    def evidence(self) -> dict[str, Any]:
        return self.reason["evidence"]


SESSION_KINDS = {EventTypes.Cart: 2, EventTypes.Favorite: 1, EventTypes.View: 0}
SESSION_TEXT = {EventTypes.View: "You viewed this", EventTypes.Cart: "You added this to your cart",
                EventTypes.Favorite: "You added this to your favourites"}


def session_events(s: Shown) -> dict[str, tuple[str, datetime]]:
    """Re-derived from the tracked events: item -> its strongest (cart, favourite, view) event
    within ``session_hours`` of the latest tracked event and not followed by a purchase of it."""
    if not s.tracked:
        return {}
    latest = max(ts for _, _, ts in s.tracked)
    out: dict[str, tuple[str, datetime]] = {}
    for item, kind, ts in s.tracked:
        if kind not in SESSION_KINDS or latest - ts > timedelta(hours=s.session_hours):
            continue
        if any(i == item and k == EventTypes.Purchase and t > ts for i, k, t in s.tracked):
            continue
        had = out.get(item)
        if had is None or (SESSION_KINDS[kind], ts) > (SESSION_KINDS[had[0]], had[1]):
            out[item] = (kind, ts)
    return out


def _in_your_session(t: Truth, s: Shown) -> None:
    got = session_events(s).get(s.item_id)
    assert got is not None, "the item is not in the shopper's session"
    kind, ts = got
    assert s.evidence == {"event_type": kind, "at": ts.isoformat().replace("+00:00", "Z")}
    assert s.reason["text"] == SESSION_TEXT[kind]


def _similar_to_context(t: Truth, s: Shown) -> None:
    src = s.evidence["item_id"]
    assert src != s.item_id, "similar to itself"
    if s.page_item is not None:
        assert src == s.page_item and s.item_id in t.similar(src)
        return
    assert src in s.context or src in session_events(s), src
    assert s.item_id in t.similar(src)
    if "which you looked at" in s.reason["text"]:
        assert src in session_events(s)


def _from_history(t: Truth, s: Shown, bought: bool) -> None:
    assert s.user_id is not None
    src = s.evidence["item_id"]
    assert src != s.item_id, "because of itself"
    kinds = t.kinds(s.user_id, src)
    assert (EventTypes.Purchase in kinds) if bought else (kinds and EventTypes.Purchase not in kinds), kinds
    assert src in t.latest_items(s.user_id)
    assert s.item_id in t.similar(src)


def _popular_in_your_category(t: Truth, s: Shown) -> None:
    assert s.user_id is not None
    cat = t.item(s.item_id)["category"]
    shares = {x["category"]: x["share"] for x in t.profile(s.user_id)["top_categories"]}
    assert s.evidence == {"category": cat, "your_share": round(shares[cat], 3)}
    assert t.top_in_category(s.item_id)


def _new_arrival(t: Truth, s: Shown) -> None:
    assert t.item(s.item_id)["is_new"] and s.evidence == {"category": t.item(s.item_id)["category"]}


def _trending(t: Truth, s: Shown) -> None:
    it = t.item(s.item_id)
    assert it["trending_score"] >= reasons.TRENDING_MIN_SCORE and it["pop_7d"] >= reasons.TRENDING_MIN_USERS_7D
    assert s.evidence == {"trending_score": round(it["trending_score"], 2), "users_7d": it["pop_7d"]}


def _price_fit(t: Truth, s: Shown) -> None:
    assert s.user_id is not None
    band = t.item(s.item_id)["price_band"]
    assert band and t.profile(s.user_id)["price_band"] == band == s.evidence["price_band"]


def _tier_also_bought(t: Truth, s: Shown) -> None:
    assert s.user_id is not None
    tier = t.profile(s.user_id)["tier"]
    n = t.tier_buyers(tier, s.item_id)
    assert n >= reasons.TIER_MIN_BUYERS and s.evidence == {"tier": tier, "buyers": n}


def _alone(s: Shown) -> None:
    assert s.all_reasons == (s.reason["code"],), s.all_reasons  # a fallback: no other reason held


def _picked_for_you(t: Truth, s: Shown) -> None:
    _alone(s)
    assert s.user_kind == "hot" and s.evidence == {"model": t.model.name}


def _popular_now(t: Truth, s: Shown) -> None:
    _alone(s)
    assert t.item(s.item_id)["pop_7d"] >= reasons.POPULAR_NOW_MIN_USERS_7D
    assert s.evidence == {"users_7d": t.item(s.item_id)["pop_7d"]}


def _recommended(t: Truth, s: Shown) -> None:
    _alone(s)
    assert s.evidence == {"model": t.model.name}


def _bought_together(t: Truth, s: Shown) -> None:
    assert s.page_item is not None and s.evidence == {"item_id": s.page_item}
    assert s.item_id in (t.item(s.page_item)["co_purchased"] or [])


CHECKS: dict[str, Callable[[Truth, Shown], None]] = {
    "in_your_session": _in_your_session,
    "similar_to_context": _similar_to_context,
    "because_bought": lambda t, s: _from_history(t, s, bought=True),
    "because_viewed": lambda t, s: _from_history(t, s, bought=False),
    "popular_in_your_category": _popular_in_your_category,
    "new_arrival": _new_arrival,
    "trending": _trending,
    "price_fit": _price_fit,
    "tier_also_bought": _tier_also_bought,
    "picked_for_you": _picked_for_you,
    "popular_now": _popular_now,
    "recommended": _recommended,
    "bought_together": _bought_together,
}


def check_reason(truth: Truth, shown: Shown) -> None:
    """Fail unless ``shown.reason`` is a registered code whose check passes."""
    code = shown.reason["code"]
    assert code in reasons.REASONS, f"unregistered reason code {code!r}"
    assert code in CHECKS, f"no check for reason code {code!r}: add one to tests/_reasons.py"
    spec = reasons.REASONS[code]
    assert set(shown.evidence) == set(spec.evidence), (code, shown.evidence)
    assert shown.reason["text"], shown.reason
    try:
        CHECKS[code](truth, shown)
    except AssertionError as exc:
        raise AssertionError(f"untrue reason {shown.reason} for item {shown.item_id} ({shown}): {exc}") from exc
