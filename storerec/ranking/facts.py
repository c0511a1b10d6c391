"""What the ranking pipeline knows, prepared once per loaded model (no polars on the request path).

* :class:`ItemFacts` - per-item arrays from the item feature table, aligned with the model's
  item index (categories, price, stock, freshness, popularity, the trending / new-arrival
  orders).
* :class:`UserFacts` - per-user look-ups from the profiles and the events table (profile rows,
  recent history, purchases, what each tier buys, what is trending in each region).
* :class:`ItemSimilarity` - each item's nearest neighbours and, when the model has item
  vectors, unit vectors for diversity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from storerec.core.formulas import new_arrival_score, trending_rank_score, unit_rows
from storerec.core.schema import CATEGORY_SEP, EventTypes
from storerec.core.schema import Columns as C
from storerec.models.base import ModelBase
from storerec.models.dataset import table_column
from storerec.ranking import neighbours as nb
from storerec.ranking.neighbours import Neighbours

log = logging.getLogger("storerec.ranking")

NEIGHBOURS = 50  # "X is similar to Y" means Y is among X's 50 most similar items for the model
HISTORY_N = 20  # latest history items kept per user (for "because you bought/viewed X")
REGION_TRENDING_DAYS = 7  # "trending in your region": distinct users per item over the last week
POPULARITY_TIE_BREAK = 1e-3  # weight of 30-day popularity that orders equally similar/scored items
# How strongly an event shows interest in an item; a user's history keeps each item's strongest.
TYPE_RANK = {EventTypes.Purchase: 3, EventTypes.Cart: 2, EventTypes.Favorite: 1, EventTypes.View: 0, EventTypes.Rating: 1}
PROFILE_KEYS = ("price_band", "tier", "region", "segment")  # profile fields the ranker reads (None when absent)


@dataclass(frozen=True)
class ItemFacts:
    """Per-item arrays, row ``i`` = the model's item ``i``.

    ``category`` is ``""`` and ``cat_code`` -1 for items without a category; ``group`` gives
    those their own group (``n_groups - 1``) for the category cap.
    """

    ids: np.ndarray  # object: external item ids
    titles: list[str]
    category: np.ndarray  # object: category path
    categories: list[str]  # distinct category paths, sorted; cat_code indexes this
    cat_index: dict[str, int]
    cat_code: np.ndarray  # int64
    l1_code: np.ndarray  # int64: code of the top-level category
    prefix_masks: dict[str, np.ndarray]  # each category path and each of its ancestors -> item mask
    group: np.ndarray  # int64: cat_code, with -1 mapped to its own last group
    price: np.ndarray  # float64, nan when unknown
    in_stock: np.ndarray  # bool
    is_new: np.ndarray  # bool
    trending_score: np.ndarray  # float32: users this week / weekly average of the 4 weeks before
    pop_7d: np.ndarray  # float32: distinct users in the last 7 days
    pop_30d: np.ndarray  # float32: distinct users in the last 30 days
    users_total: np.ndarray  # float32: distinct users up to the features' date (best sellers)
    price_band: np.ndarray  # object: "" when unknown
    co_purchased: list[Any]  # item ids bought in the same orders (or None)
    trending_rank: np.ndarray  # float32: the trending list's order (storerec.core.formulas)
    new_rank: np.ndarray  # float32: the new-arrival list's order (storerec.core.formulas)
    brands: list[str] | None = None  # "" when unknown (None: not loaded)
    image_urls: list[str | None] | None = None  # None when the catalogue has no picture of the item

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def n_groups(self) -> int:
        return len(self.categories) + 1

    def details(self, i: int) -> dict[str, Any]:
        """What a storefront needs to render item ``i``: ``title``, ``brand``, ``price`` (None
        when unknown), ``in_stock``, ``image_url`` (None when the catalogue has no picture)."""
        brand = self.brands[i] if self.brands is not None else ""
        price = float(self.price[i])
        return {"title": self.titles[i] or None, "brand": brand or None, "price": None if price != price else price,
                "in_stock": bool(self.in_stock[i]), "image_url": self.image_urls[i] if self.image_urls is not None else None}

    def display_names(self) -> list[str]:
        """The title of each item, or its id when it has none."""
        return [title or item_id for title, item_id in zip(self.titles, self.ids.tolist())]

    @classmethod
    def from_table(cls, item_ids: Sequence[str], item_table: pl.DataFrame) -> ItemFacts:
        """Facts for ``item_ids`` (the model's items, in order) from the item feature table;
        items missing from the table get empty / default values."""
        n = len(item_ids)
        order = pl.DataFrame({C.Item: list(item_ids), "_i": np.arange(n)})
        table = item_table.join(order, on=C.Item, how="right").sort("_i")
        category = np.asarray(table[C.Category].fill_null("").to_list(), dtype=object)
        categories = sorted(set(category.tolist()) - {""})
        cat_index = {c: i for i, c in enumerate(categories)}
        cat_code = np.array([cat_index.get(c, -1) for c in category], dtype=np.int64)
        is_new = table_column(table, "is_new", False).astype(bool)
        pop_7d = table_column(table, "pop_7d", 0).astype(np.float32)
        trending_score = table_column(table, "trending_score", 0.0).astype(np.float32)
        users_total = table_column(table, "users_total", 0).astype(np.float32)
        price_band = (
            np.asarray(table["price_band"].cast(pl.String).fill_null("").to_list(), dtype=object)
            if "price_band" in table.columns
            else np.full(n, "", dtype=object)
        )
        return cls(
            ids=np.asarray(item_ids, dtype=object),
            titles=table[C.Title].fill_null("").to_list() if C.Title in table.columns else [""] * n,
            category=category,
            categories=categories,
            cat_index=cat_index,
            cat_code=cat_code,
            l1_code=_top_level_codes(category),
            prefix_masks=_prefix_masks(categories, cat_code),
            group=np.where(cat_code >= 0, cat_code, len(categories)),
            price=table[C.Price].fill_null(np.nan).to_numpy().astype(np.float64),
            in_stock=table_column(table, C.InStock, True).astype(bool),
            is_new=is_new,
            trending_score=trending_score,
            pop_7d=pop_7d,
            pop_30d=table_column(table, "pop_30d", 0).astype(np.float32),
            users_total=users_total,
            price_band=price_band,
            co_purchased=table["co_purchased"].to_list() if "co_purchased" in table.columns else [None] * n,
            trending_rank=trending_rank_score(trending_score, users_total, is_new),
            new_rank=new_arrival_score(is_new, pop_7d),
            brands=table[C.Brand].cast(pl.String).fill_null("").to_list() if C.Brand in table.columns else [""] * n,
            image_urls=table[C.ImageUrl].cast(pl.String).to_list() if C.ImageUrl in table.columns else None,
        )


def _prefix_masks(categories: list[str], cat_code: np.ndarray) -> dict[str, np.ndarray]:
    """Every category path and each of its ancestors ("Home", "Home > Kitchen") -> item mask."""
    masks: dict[str, np.ndarray] = {}
    for code, cat in enumerate(categories):
        parts = cat.split(CATEGORY_SEP)
        for depth in range(1, len(parts) + 1):
            prefix = CATEGORY_SEP.join(parts[:depth])
            mask = masks.setdefault(prefix, np.zeros(len(cat_code), dtype=bool))
            mask |= cat_code == code
    return masks


def _top_level_codes(category: np.ndarray) -> np.ndarray:
    l1 = [c.split(CATEGORY_SEP)[0] for c in category]
    codes = {c: i for i, c in enumerate(sorted(set(l1)))}
    return np.array([codes[c] for c in l1], dtype=np.int64)


@dataclass(frozen=True)
class UserFacts:
    """Per-user look-ups. ``history[user]`` = (latest ``HISTORY_N`` items, their ``TYPE_RANK``),
    newest first; ``tier_buyers[tier][i]`` / ``region_trending[region][i]`` count distinct
    buyers of item ``i`` in a tier / users of it in a region over the last week."""

    profiles: dict[str, dict[str, Any]]
    history: dict[str, tuple[np.ndarray, np.ndarray]]
    purchased: dict[str, np.ndarray]
    tier_buyers: dict[str, np.ndarray]
    region_trending: dict[str, np.ndarray]

    @classmethod
    def build(cls, profiles: pl.DataFrame | None, events: pl.DataFrame | None, items: ItemFacts) -> UserFacts:
        rows = _profile_rows(profiles)
        if events is None or not events.height:
            return cls(rows, {}, {}, {}, {})
        index = pl.DataFrame({C.Item: items.ids.tolist(), "_i": np.arange(items.n, dtype=np.int64)})
        ev = events.select(C.User, C.Item, C.EventType, C.Timestamp).join(index, on=C.Item, how="inner")
        bought = ev.filter(pl.col(C.EventType) == EventTypes.Purchase)
        tiers = _tier_region(rows)
        return cls(
            profiles=rows,
            history=_history(ev),
            purchased={user: np.asarray(i, dtype=np.int64) for user, i in bought.group_by(C.User).agg(pl.col("_i").unique()).iter_rows()},
            tier_buyers=_tier_buyers(bought, tiers, items.n) if rows else {},
            region_trending=_region_trending(ev, tiers, items.n) if rows else {},
        )


def _profile_rows(profiles: pl.DataFrame | None) -> dict[str, dict[str, Any]]:
    """user -> profile row: ``top_categories`` as {category: share}, ``PROFILE_KEYS`` as text or None."""
    out: dict[str, dict[str, Any]] = {}
    if profiles is None or not profiles.height:
        return out
    cols = [c for c in (C.User, "top_categories", *PROFILE_KEYS) if c in profiles.columns]
    texts = (pl.col(c).cast(pl.String) for c in ("price_band", "tier", "segment") if c in cols)
    for row in profiles.select(cols).with_columns(*texts).iter_rows(named=True):
        tops = row.get("top_categories") or []
        row["top_categories"] = {t["category"]: float(t["share"]) for t in tops}
        for key in PROFILE_KEYS:
            row.setdefault(key, None)
        out[row[C.User]] = row
    return out


def _tier_region(profiles: dict[str, dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        {C.User: list(profiles), "tier": [p.get("tier") for p in profiles.values()], "region": [p.get("region") for p in profiles.values()]}
    )


def _history(ev: pl.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each user's latest ``HISTORY_N`` items (by their last event), with their strongest event.
    The arrays are read-only views into two flat arrays: one small array per user from Python
    lists cost seconds and hundreds of MB at start on 5M events (docs/benchmarks.md)."""
    ranked = ev.with_columns(pl.col(C.EventType).replace_strict(TYPE_RANK, default=0).alias("_t"))
    per_pair = ranked.group_by(C.User, "_i").agg(pl.col("_t").max(), pl.col(C.Timestamp).max())
    latest = per_pair.sort([C.User, C.Timestamp, "_i"], descending=[False, True, False]).filter(  # same-time items: by index
        pl.int_range(pl.len()).over(C.User) < HISTORY_N
    )
    items = latest["_i"].to_numpy().astype(np.int64)
    types = latest["_t"].to_numpy().astype(np.int8)
    items.flags.writeable = types.flags.writeable = False
    runs = latest.select(C.User).with_row_index("_start").group_by(C.User, maintain_order=True).agg(pl.col("_start").first(), pl.len())
    return {user: (items[s : s + n], types[s : s + n]) for user, s, n in runs.iter_rows()}


def _counts_per(df: pl.DataFrame, key: str, n: int, dtype: type) -> dict[str, np.ndarray]:
    """``key`` value -> per-item array of distinct users (``df``: rows of ``key``, ``_i``, user)."""
    counts = df.group_by(key, "_i").agg(pl.col(C.User).n_unique().alias("n"))
    out = {}
    for value in counts[key].drop_nulls().unique().to_list():
        arr: np.ndarray = np.zeros(n, dtype=dtype)
        sub = counts.filter(pl.col(key) == value)
        arr[sub["_i"].to_numpy()] = sub["n"].to_numpy()
        out[value] = arr
    return out


def _tier_buyers(bought: pl.DataFrame, tiers: pl.DataFrame, n: int) -> dict[str, np.ndarray]:
    return _counts_per(bought.join(tiers, on=C.User), "tier", n, np.int32)


def _region_trending(ev: pl.DataFrame, tiers: pl.DataFrame, n: int) -> dict[str, np.ndarray]:
    end = ev[C.Timestamp].max()
    recent = ev.filter(pl.col(C.Timestamp) > end - pl.duration(days=REGION_TRENDING_DAYS)).join(tiers, on=C.User)
    return _counts_per(recent, "region", n, np.float32)


@dataclass(frozen=True)
class ItemSimilarity:
    """Item-item similarity for context candidates, "similar to X" reasons and diversity.

    Uses the model's ``item_similarity`` when it declares ``has_item_similarity``, else "same
    category" (ties by 30-day popularity where an order is needed); ``unit`` holds the model's
    unit item vectors when it declares ``has_item_vectors`` (None otherwise).
    """

    model: ModelBase
    items: ItemFacts
    unit: np.ndarray | None
    neighbours: np.ndarray  # (n, k) int32: each item's k most similar items (similarity > 0), best first, -1 padded

    @classmethod
    def build(cls, model: ModelBase, items: ItemFacts, stored: Neighbours | None = None) -> ItemSimilarity:
        """``stored``: the version's neighbour lists (its serving snapshot); used when they are
        for the model's items in the same order, else (and for versions registered before they
        were stored) found now, which is O(items²) for exact search (:mod:`storerec.ranking.neighbours`)."""
        unit = unit_rows(model.item_vectors()).astype(np.float32) if model.has_item_vectors else None
        k = min(NEIGHBOURS, max(items.n - 1, 0))
        why = stored.mismatch(items.ids, k) if stored is not None else "none stored (a version registered before they were, or a model not registered)"
        if stored is not None and why is None:
            return cls(model, items, unit, stored.table)
        t0 = time.perf_counter()
        found = find_neighbours(model, items, k, unit)
        (log.warning if stored is not None else log.info)(
            "nearest neighbours of %d items found now (%s, %.1f s): %s", items.n, found.method, time.perf_counter() - t0, why
        )
        return cls(model, items, unit, found.table)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Similarities (float32) of the items ``idx`` to every item."""
        if self.unit is not None and _cosine_of_vectors(self.model):  # the same product, without normalising every item again
            return self.unit[idx] @ self.unit.T
        return similarity_rows(self.model, self.items, idx)


def similarity_rows(model: ModelBase, items: ItemFacts | None, idx: np.ndarray, popularity_tie_break: bool = False) -> np.ndarray:
    """Similarities (float32) of the items ``idx`` to every item: the model's, else same category
    (+ ``POPULARITY_TIE_BREAK`` x 30-day popularity when ``popularity_tie_break``; ``items`` is
    needed only then)."""
    if model.has_item_similarity:
        return model.item_similarity(idx).astype(np.float32)
    assert items is not None, "a model without a similarity of its own needs the item facts"
    same = (items.cat_code[idx][:, None] == items.cat_code[None, :]).astype(np.float32)
    return same + POPULARITY_TIE_BREAK * items.pop_30d[None, :] if popularity_tie_break else same


def _cosine_of_vectors(model: ModelBase) -> bool:
    """Whether the model's similarity is the cosine of its item vectors (ModelBase's default)."""
    return model.has_item_vectors and model.has_item_similarity and type(model)._item_similarity is ModelBase._item_similarity


def find_neighbours(model: ModelBase, items: ItemFacts | None, k: int, unit: np.ndarray | None = None) -> Neighbours:
    """Each item's ``k`` most similar other items with a positive similarity, best first (-1
    padded): brute force over :func:`similarity_rows` (with the popularity tie break) up to
    ``EXACT_MAX_ITEMS`` items, the very lists ``model.similar_items`` gives (the same
    ``argpartition`` on the same rows: equally similar items at the boundary are chosen alike).
    Above that, by the fastest method that fits the model's similarity
    (:mod:`storerec.ranking.neighbours`): an HNSW graph for the cosine of item vectors,
    exact per-category or sparse methods otherwise (equally similar items may then differ).
    ``items`` (the item facts, in the model's order) is needed only by models without a
    similarity of their own."""
    from storerec.models.itemknn import ItemKNNModel
    from storerec.models.popularity import PopularityModel

    assert model.items is not None
    n = len(model.items)
    digest = nb.items_digest(model.items.external)
    if _cosine_of_vectors(model):
        if n > nb.EXACT_MAX_ITEMS:  # scales the vectors itself, block by block (no full unit copy at registration)
            return Neighbours(nb.cosine_hnsw(unit if unit is not None else model.item_vectors(), k), digest, "hnsw")
        # from the unit vectors at hand, not normalised again for every block
        vectors = unit if unit is not None else unit_rows(model.item_vectors()).astype(np.float32)
        return Neighbours(nb.exact(lambda idx: vectors[idx] @ vectors.T, n, k), digest, "exact")
    if n > nb.EXACT_MAX_ITEMS:
        if not model.has_item_similarity:
            assert items is not None, "a model without a similarity of its own needs the item facts"
            return Neighbours(nb.by_group(items.cat_code, POPULARITY_TIE_BREAK * items.pop_30d, 1.0, k), digest, "exact by category")
        if isinstance(model, PopularityModel):
            return Neighbours(nb.by_group(model.category_codes, model.item_scores, 1.0, k), digest, "exact by category")
        if isinstance(model, ItemKNNModel):
            return Neighbours(nb.sparse_rows(model.similarity, k), digest, "exact (sparse)")
    return Neighbours(nb.exact(lambda idx: similarity_rows(model, items, idx, popularity_tie_break=True), n, k), digest, "exact")


def item_neighbours(model: ModelBase, item_table: pl.DataFrame) -> Neighbours:
    """The neighbour lists a version is registered with (its serving snapshot): those the
    service would find at start for ``model`` and its item feature table (read only for a
    model without a similarity of its own: the item facts of 500k items cost hundreds of MB)."""
    assert model.items is not None
    items = None if model.has_item_similarity else ItemFacts.from_table(model.items.external.tolist(), item_table)
    return find_neighbours(model, items, min(NEIGHBOURS, max(len(model.items) - 1, 0)))
