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
    fields = {name for text in (spec.text, spec.item_page_text or "") for _, name, _, _ in string.Formatter().parse(text) if name}
    assert fields <= set(spec.evidence) | {"name"}, (spec.code, fields)
    assert spec.decide is not None or spec.code == "bought_together"  # attached by the item page only


def test_fallbacks_come_last_and_recommended_always_holds() -> None:
    order = [s.fallback for s in REASONS.values() if s.decide is not None]
    assert order == sorted(order), "fallback reasons come after the regular ones"
    assert [s.code for s in REASONS.values() if s.fallback][-1] == "recommended"


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
