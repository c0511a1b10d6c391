"""Reasons: the registry is complete and every served reason is true.

A small synthetic store (6 categories of 20 items, 48 shoppers with a favourite category) is
ranked in process by the real :class:`Ranker` for three models; every reason on every list
(personal lists with and without context and filters, trending, new arrivals, the item page) is
checked against the data by ``tests/_reasons.py``, which has one check per registered code.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from storerec.models.base import ModelBase
from storerec.models.dataset import Dataset, IdMap, InteractionConfig, interaction_matrix
from storerec.models.registry import get_model_class
from storerec.ranking.ranker import Context, Filters, RankedItem, Ranker
from storerec.ranking.reasons import REASONS, ReasonSpec
from storerec.serving.live import LiveOverlay
from tests._reasons import CHECKS, Shown, Truth, check_reason

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CATS = ["Home > Kitchen", "Home > Decor", "Beauty > Makeup", "Beauty > Skin", "Sports > Run", "Sports > Gym"]
PER_CAT, N_USERS = 20, 48
N_ITEMS = PER_CAT * len(CATS)
BANDS = ["low", "mid", "high"]


def _events() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for u in range(N_USERS):
        taste = u % len(CATS)
        for j in range(12):
            cat = taste if rng.random() < 0.8 else int(rng.integers(len(CATS)))
            item = cat * PER_CAT + int(rng.integers(PER_CAT - 1 if j < 10 else PER_CAT))  # new arrivals: little history
            kind = ["view", "view", "favorite", "cart", "purchase", "purchase"][int(rng.integers(6))]
            ts = T0 - timedelta(hours=int(rng.integers(1, 40 * 24)), seconds=u * 100 + j)  # no ties
            rows.append((f"u{u}", f"i{item}", kind, ts))
    for u in range(N_USERS // 2):  # this week's rush on a few items
        for item in (3, 23, 41):
            rows.append((f"u{u}", f"i{item}", "view", T0 - timedelta(hours=u + 1, seconds=item)))
    rows.append((f"u{N_USERS}", "i100", "view", T0 - timedelta(days=3)))  # a light shopper: one view
    for u in range(N_USERS):  # steady favourites: popular this week, not trending
        for item in (65, 105):
            rows.append((f"u{u}", f"i{item}", "view", T0 - timedelta(hours=14 * u + 2, seconds=item)))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "event_type", "timestamp"], orient="row")


def _items(events: pl.DataFrame) -> pl.DataFrame:
    def users_since(days: int) -> dict[str, int]:
        recent = events.filter(pl.col("timestamp") > T0 - timedelta(days=days))
        return dict(recent.group_by("item_id").agg(pl.col("user_id").n_unique()).iter_rows())

    d7, d30, total = users_since(7), users_since(30), users_since(10_000)
    ids = [f"i{i}" for i in range(N_ITEMS)]
    pop_7d = [d7.get(i, 0) for i in ids]
    pop_30d = [d30.get(i, 0) for i in ids]
    weekly_before = [max(1.0, (b - a) / 3) for a, b in zip(pop_7d, pop_30d)]
    return pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"Item {i}" if i % 7 else None for i in range(N_ITEMS)],
            "category": [CATS[i // PER_CAT] for i in range(N_ITEMS)],
            "price": [5.0 + i for i in range(N_ITEMS)],
            "in_stock": [i % 17 != 5 for i in range(N_ITEMS)],
            "is_new": [i % PER_CAT == PER_CAT - 1 for i in range(N_ITEMS)],
            "pop_7d": pop_7d,
            "pop_30d": pop_30d,
            "users_total": [total.get(i, 0) for i in ids],
            "trending_score": [a / b for a, b in zip(pop_7d, weekly_before)],
            "price_band": pl.Series([BANDS[i % 3] for i in range(N_ITEMS)], dtype=pl.Categorical),
            "co_purchased": [[f"i{(i // PER_CAT) * PER_CAT + (i + s) % PER_CAT}" for s in (1, 2, 5)] for i in range(N_ITEMS)],
        }
    )


def _profiles(events: pl.DataFrame) -> pl.DataFrame:
    cats = pl.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)], "category": [CATS[i // PER_CAT] for i in range(N_ITEMS)]})
    bought = events.filter(pl.col("event_type") == "purchase").join(cats, on="item_id")
    shares = bought.group_by("user_id", "category").len().with_columns((pl.col("len") / pl.col("len").sum().over("user_id")).alias("share"))
    tops = shares.sort("share", "category", descending=[True, False]).group_by("user_id", maintain_order=True).agg(
        pl.struct("category", "share").head(2).alias("top_categories")
    )
    users = pl.DataFrame({"user_id": [f"u{u}" for u in range(N_USERS + 2)]})  # the last one has no events
    return users.join(tops, on="user_id", how="left").with_columns(
        pl.Series("tier", [["bronze", "bronze", "bronze", "silver", "gold"][u % 5] for u in range(N_USERS + 2)], dtype=pl.Categorical),
        pl.Series("price_band", [BANDS[u % 3] if u % 5 < 4 else None for u in range(N_USERS + 2)], dtype=pl.Categorical),
        pl.Series("region", [["North", "South", "East"][u % 3] for u in range(N_USERS + 2)]),
        pl.lit("active").alias("segment"),
    )


MODELS = {"itemknn": {"similarity": "cosine", "neighbours": 20}, "als": {"factors": 8, "iterations": 5, "num_threads": 1}, "popularity": {}}


@pytest.fixture(scope="module")
def store() -> dict[str, pl.DataFrame]:
    events = _events()
    return {"events": events, "items": _items(events), "profiles": _profiles(events)}


def _fit(name: str, store: dict[str, pl.DataFrame]) -> ModelBase:
    users = IdMap.from_values(store["profiles"]["user_id"].to_list())
    items = IdMap.from_values(store["items"]["item_id"].to_list())
    matrix = interaction_matrix(store["events"], users, items, InteractionConfig())
    dataset = Dataset(users=users, items=items, interactions=matrix, item_table=store["items"])
    return get_model_class(name)(**MODELS[name]).fit(dataset)


def test_every_registered_reason_has_a_check() -> None:
    assert set(CHECKS) == set(REASONS), "tests/_reasons.py must check exactly the registered reason codes"


def test_an_unknown_reason_code_fails_the_check() -> None:
    truth = Truth.__new__(Truth)  # never read: the code is refused first
    with pytest.raises(AssertionError, match="unregistered reason code"):
        check_reason(truth, Shown({"code": "because_we_said_so", "text": "x", "evidence": {}}, "i1"))


@pytest.mark.parametrize("spec", list(REASONS.values()), ids=list(REASONS))
def test_registry_entries_are_complete(spec: ReasonSpec) -> None:
    assert spec.code and spec.when and spec.text and spec.evidence
    assert "{" not in spec.when, spec.when  # thresholds were filled in
    texts = (spec.text, spec.item_page_text or "", *(spec.text_by[1].values() if spec.text_by else ()))
    fields = {name for text in texts for _, name, _, _ in string.Formatter().parse(text) if name}
    assert fields <= set(spec.evidence) | {"name"}, (spec.code, fields)
    assert spec.decide is not None or spec.code == "bought_together"  # attached by the item page only


def test_fallbacks_come_last_and_recommended_always_holds() -> None:
    order = [s.fallback for s in REASONS.values() if s.decide is not None]
    assert order == sorted(order), "fallback reasons come after the regular ones"
    assert [s.code for s in REASONS.values() if s.fallback][-1] == "recommended"


def _tracked(user: str, u: int) -> list[tuple[str, str, datetime]]:
    """Tracked events (POST /track) of a shopper after the snapshot: views, a cart and a favourite
    in the session (some of items in their history), an item viewed then bought, and a view
    older than the session window."""
    t = T0 + timedelta(days=1)
    base = (u % len(CATS)) * PER_CAT
    return [
        (f"i{base + 30 % PER_CAT}", "view", t - timedelta(hours=30)),  # before the session: history
        (f"i{base + 1}", "view", t), (f"i{base + 2}", "view", t + timedelta(minutes=2)),
        (f"i{base + 2}", "cart", t + timedelta(minutes=3)), (f"i{base + 2}", "view", t + timedelta(minutes=4)),
        (f"i{base + 3}", "favorite", t + timedelta(minutes=5)), (f"i{(base + 47) % N_ITEMS}", "view", t + timedelta(minutes=6)),
        (f"i{base + 4}", "view", t + timedelta(minutes=7)), (f"i{base + 4}", "purchase", t + timedelta(minutes=8)),
        (f"i{base + 6}", "view", t + timedelta(minutes=9)),
    ]


def _session_context(user: str, tracked: list[tuple[str, str, datetime]], now: datetime) -> tuple[Context, tuple[str, ...]]:
    """The Context and the left-out items the service builds from the live overlay (serving/service.py)."""
    live = LiveOverlay(context_items=3, context_hours=24)
    live.record({"user_id": user, "session_id": None, "item_id": i, "event_type": k, "ts": ts} for i, k, ts in tracked)
    view = live.view([user], now)
    return Context("home", (), (), view.recent, view.session), tuple(dict.fromkeys([*view.older(), *view.purchased]))


def _served_reasons(name: str, store: dict[str, pl.DataFrame]) -> set[str]:
    """Rank every kind of list with model ``name``, check each reason; the codes served."""
    model = _fit(name, store)
    ranker = Ranker(model, store["items"], store["profiles"], store["events"])
    truth = Truth(model, store["events"], store["items"], store["profiles"])
    seen: set[str] = set()

    def check(items: list[RankedItem], **where: Any) -> None:
        for it in items:
            codes = tuple(r["code"] for r in it.reasons)
            assert codes and list(codes) == [c for c in REASONS if c in codes], codes  # registry order
            for r in it.reasons:
                check_reason(truth, Shown(r, it.item_id, all_reasons=codes, **where))
                seen.add(r["code"])

    users = [f"u{u}" for u in range(0, N_USERS, 3)] + [f"u{N_USERS}", f"u{N_USERS + 1}", "a-stranger"]
    contexts = [Context(), Context("product", ("i12",)), Context("cart", ("i33", "i-unknown"), ("i44", "i4"))]
    for j, user in enumerate(users):
        for ctx in contexts:
            for filters in (Filters(), Filters(exclude_seen=False, exclude_purchased=False)):
                result = ranker.rank(user, 10, ctx, filters)
                check(result.items, user_id=user, user_kind=result.user_kind, context=ctx.item_ids + ctx.recent_item_ids)
        tracked = _tracked(user, j)
        session, older = _session_context(user, tracked, T0 + timedelta(days=2))
        for filters in (Filters(exclude_item_ids=older), Filters(exclude_seen=False, exclude_purchased=False)):
            result = ranker.rank(user, 20, session, filters)
            check(result.items, user_id=user, user_kind=result.user_kind, tracked=tuple(tracked))
        similar, together = ranker.similar(f"i{j * 7 % N_ITEMS}", 5)
        check(similar + together, page_item=f"i{j * 7 % N_ITEMS}")
    for category in (None, "Home", "Sports > Run"):
        check(ranker.trending(10, category).items)
        check(ranker.trending(10, category, region="North").items)
        check(ranker.new_arrivals(10, category).items)
    return seen


def test_every_served_reason_is_true(store: dict[str, pl.DataFrame]) -> None:
    seen = set().union(*(_served_reasons(name, store) for name in MODELS))
    assert seen == set(REASONS), f"never served: {set(REASONS) - seen}"


def test_the_session_stays_eligible_with_its_own_reason(store: dict[str, pl.DataFrame]) -> None:
    """Items the shopper viewed, carted or favourited in their tracked session stay candidates
    under the default filters, even those in the model's history (the session is their current
    interest), and say so; a bought one and one older than the session do not come back; page
    items stay left out; no session item is "similar to" itself."""
    model = _fit("itemknn", store)
    ranker = Ranker(model, store["items"], store["profiles"], store["events"])
    user = "u0"
    history = store["events"].filter(pl.col("user_id") == user)["item_id"].unique().sort().to_list()
    t = T0 + timedelta(days=1)
    in_stock = set(store["items"].filter(pl.col("in_stock"))["item_id"])
    viewed = [i for i in history if i in in_stock][:3]
    older = next(i for i in history if i in in_stock and i not in viewed)
    bought = next(f"i{k}" for k in range(PER_CAT) if f"i{k}" in in_stock and f"i{k}" not in history and f"i{k}" not in viewed)
    tracked = [(older, "view", t - timedelta(hours=30)), (bought, "view", t), (bought, "purchase", t + timedelta(minutes=1))]
    tracked += [(i, "cart" if n == 0 else "view", t + timedelta(minutes=2 + n)) for n, i in enumerate(viewed)]
    session, left_out = _session_context(user, tracked, t + timedelta(hours=1))
    assert set(session.session_events or {}) == set(viewed) and set(left_out) == {older, bought}
    result = ranker.rank(user, N_ITEMS, session, Filters(exclude_item_ids=left_out))
    shown = {it.item_id: it for it in result.items}
    assert set(viewed) <= set(shown) and not {older, bought} & set(shown)
    for n, i in enumerate(viewed):
        own = [r for r in shown[i].reasons if r["code"] == "in_your_session"]
        assert own == [{"code": "in_your_session", "text": "You added this to your cart" if n == 0 else "You viewed this",
                        "evidence": {"event_type": "cart" if n == 0 else "view",
                                     "at": (t + timedelta(minutes=2 + n)).isoformat().replace("+00:00", "Z")}}]
        assert all(r["evidence"].get("item_id") != i for r in shown[i].reasons), shown[i].reasons
    # the page's item is left out even when it is a session item
    on_page = Context("product", (viewed[0],), (), session.session_item_ids, session.session_events)
    assert viewed[0] not in {it.item_id for it in ranker.rank(user, N_ITEMS, on_page, Filters(exclude_item_ids=left_out)).items}
    # without the session, the model's history is left out as before
    assert not set(viewed) & {it.item_id for it in ranker.rank(user, N_ITEMS).items}
