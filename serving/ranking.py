"""The ranking pipeline shared by the service and offline evaluation.

candidates (model scores, plus trending / new-arrival / context candidates) -> business filters
-> scores -> diversity re-ranking (maximal marginal relevance with an exact category cap) ->
reasons. A reason is attached only when its condition holds for that user and item; the
conditions are spelled out on :class:`ReasonCode` and checked by the tests on the built-in store.

Everything here works on arrays and per-item facts prepared once by :class:`Ranker` (no polars
or I/O on the request path); the inner loops are compiled (:mod:`serving.kernels`), so one
request costs about 0.15 ms on a catalogue of 2,000 items (``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl

from features.schema import Columns as C
from models.base import ModelBase
from serving import kernels

NEIGHBOURS = 50  # "X is similar to Y" means Y is among X's 50 most similar items for the model
HISTORY_N = 20  # history items considered for "because you bought/viewed X"
MASK_CACHE = 256  # catalogue filter masks kept per Ranker
TYPE_RANK = {"purchase": 3, "cart": 2, "favorite": 1, "view": 0, "rating": 1}


class RankingInputError(ValueError):
    """A request names something that does not exist (e.g. an unknown category): a 4xx.
    ``field`` is the request field at fault, when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ReasonCode:
    """Reason codes and when each is true.

    because_bought / because_viewed: the user bought (or carted/favourited/viewed) history item X
        and the recommended item is among X's ``NEIGHBOURS`` most similar items for the model.
    similar_to_context: same, for an item in the request's context (current or recent items).
    popular_in_your_category: the item's category is among the user's profile top categories and
        the item is in the top 10 % of its category by 30-day popularity.
    new_arrival: the item is a new arrival (``is_new`` in the item features).
    trending: the item's trending score is at least 2 (users this week vs the weekly average of
        the 4 weeks before) with at least 3 users this week.
    price_fit: the user's price band (profile) equals the item's price band.
    tier_also_bought: at least 3 customers of the user's tier bought the item.
    popular_now: at least 3 users interacted with the item in the last 7 days.
    picked_for_you: the model scored the item from this user's own history (hot users only).
    recommended: the item was ranked by the named model (or list); used only when nothing more
        specific is true.
    bought_together: the item was bought in the same order as the page's item (co-purchases in
        the item features).
    """

    BECAUSE_BOUGHT = "because_bought"
    BECAUSE_VIEWED = "because_viewed"
    SIMILAR_TO_CONTEXT = "similar_to_context"
    POPULAR_IN_CATEGORY = "popular_in_your_category"
    NEW_ARRIVAL = "new_arrival"
    TRENDING = "trending"
    PRICE_FIT = "price_fit"
    TIER_ALSO_BOUGHT = "tier_also_bought"
    POPULAR_NOW = "popular_now"
    PICKED_FOR_YOU = "picked_for_you"
    RECOMMENDED = "recommended"
    BOUGHT_TOGETHER = "bought_together"


@dataclass(frozen=True)
class Filters:
    exclude_seen: bool = True
    exclude_purchased: bool = True
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    in_stock_only: bool = True
    exclude_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diversity:
    strength: float = 0.3  # 0 = pure relevance, 1 = maximal variety
    max_per_category: int | None = None


@dataclass(frozen=True)
class Context:
    page: str = "home"
    item_ids: tuple[str, ...] = ()
    recent_item_ids: tuple[str, ...] = ()


@dataclass
class RankedItem:
    item_id: str
    rank: int
    score: float
    category: str
    reasons: list[dict[str, Any]]


@dataclass
class RankResult:
    items: list[RankedItem]
    user_kind: str  # hot, warm, cold
    source: str  # model, model+context, context, trending
    extra: dict[str, Any] = field(default_factory=dict)


class Ranker:
    """Holds one model and the tables it needs; ``rank`` serves one request.

    Parameters
    ----------
    model
        A fitted storerec model.
    item_table
        Item features aligned with ``model.items`` (the registered version's
        ``item_features.parquet``).
    profiles
        User profiles (``profiles/users.parquet``), optional.
    events
        The events table, for history, purchases and regional trends; optional.
    """

    def __init__(
        self,
        model: ModelBase,
        item_table: pl.DataFrame,
        profiles: pl.DataFrame | None = None,
        events: pl.DataFrame | None = None,
        *,
        context_weight: float = 0.5,
        forgotten: frozenset[str] = frozenset(),
    ) -> None:
        assert model.items is not None and model.users is not None
        self.model = model
        self.context_weight = context_weight
        # Users erased with `storerec forget-user` that this model still knows: served as unknown
        # (cold), so neither their learned factors nor their history is used.
        self.forgotten = forgotten
        items = model.items.external.tolist()
        table = item_table.join(pl.DataFrame({C.Item: items, "_i": np.arange(len(items))}), on=C.Item, how="right")
        table = table.sort("_i")
        self.n = len(items)
        self.item_ids = np.asarray(items, dtype=object)
        self.titles = table[C.Title].fill_null("").to_list() if C.Title in table.columns else [""] * self.n
        self.category = np.asarray(table[C.Category].fill_null("").to_list(), dtype=object)
        self.categories = sorted(set(self.category.tolist()) - {""})
        self._cat_index = {c: i for i, c in enumerate(self.categories)}
        self.cat_code = np.array([self._cat_index.get(c, -1) for c in self.category], dtype=np.int64)
        # Every category path and each of its ancestors ("Home", "Home > Kitchen") -> item mask.
        self._prefix_masks: dict[str, np.ndarray] = {}
        for code, cat in enumerate(self.categories):
            parts = cat.split(" > ")
            for depth in range(1, len(parts) + 1):
                prefix = " > ".join(parts[:depth])
                mask = self._prefix_masks.setdefault(prefix, np.zeros(self.n, dtype=bool))
                mask |= self.cat_code == code
        l1 = [c.split(" > ")[0] for c in self.category]
        l1_codes = {c: i for i, c in enumerate(sorted(set(l1)))}
        self.l1_code = np.array([l1_codes[c] for c in l1], dtype=np.int64)
        self.price = table[C.Price].fill_null(np.nan).to_numpy().astype(np.float64)
        self.in_stock = table[C.InStock].fill_null(True).to_numpy() if C.InStock in table.columns else np.ones(self.n, bool)
        col = lambda name, default: table[name].fill_null(default).to_numpy() if name in table.columns else np.full(self.n, default)  # noqa: E731
        self.is_new = col("is_new", False).astype(bool)
        self.trending_score = col("trending_score", 0.0).astype(np.float32)
        self.pop_7d = col("pop_7d", 0).astype(np.float32)
        self.pop_30d = col("pop_30d", 0).astype(np.float32)
        users_total = col("users_total", 0).astype(np.float32)
        self.price_band = np.asarray(table["price_band"].cast(pl.String).fill_null("").to_list(), dtype=object) if "price_band" in table.columns else np.full(self.n, "", dtype=object)
        # Top 10 % of each category by 30-day popularity (at least the top item).
        self.top_in_category = np.zeros(self.n, dtype=bool)
        for code in range(len(self.categories)):
            members = np.flatnonzero(self.cat_code == code)
            if len(members):
                n_top = max(1, int(np.ceil(0.1 * len(members))))
                best = members[np.argsort(-self.pop_30d[members], kind="stable")[:n_top]]
                self.top_in_category[best[self.pop_30d[best] > 0]] = True
        self.trending_ok = (self.trending_score >= 2.0) & (self.pop_7d >= 3)
        self.co_purchased = table["co_purchased"].to_list() if "co_purchased" in table.columns else [None] * self.n
        base = users_total / max(1.0, float(users_total.max()))
        self.trending_rank_score = self.trending_score * (1.0 + base) * (~self.is_new)
        self.new_rank_score = np.where(self.is_new, 1.0 + self.pop_7d, 0.0).astype(np.float32)

        # Item similarity: top neighbours per item, and unit vectors for diversity when the model has them.
        try:
            vecs = model._item_vectors()
            norms = np.linalg.norm(vecs, axis=1)
            norms[norms == 0] = 1.0
            self.unit = (vecs / norms[:, None]).astype(np.float32)
        except NotImplementedError:
            self.unit = None
        self.neighbours = self._neighbours()
        self._mask_cache: dict[tuple, np.ndarray] = {}
        self._new_idx = np.flatnonzero(self.is_new)
        self._group = np.where(self.cat_code >= 0, self.cat_code, len(self.categories))  # no category: its own group
        self._n_groups = len(self.categories) + 1
        self._no_unit = np.zeros((0, 0), dtype=np.float32)
        kernels.warm_up()
        trending = np.flatnonzero(self.trending_ok)
        self._trending_order = trending[np.argsort(-self.trending_rank_score[trending], kind="stable")]

        self.profiles: dict[str, dict[str, Any]] = {}
        if profiles is not None and profiles.height:
            cols = [c for c in (C.User, "top_categories", "price_band", "tier", "region", "segment") if c in profiles.columns]
            for row in profiles.select(cols).with_columns(
                *(pl.col(c).cast(pl.String) for c in ("price_band", "tier", "segment") if c in cols)
            ).iter_rows(named=True):
                tops = row.get("top_categories") or []
                row["top_categories"] = {t["category"]: float(t["share"]) for t in tops}
                for key in ("price_band", "tier", "region", "segment"):
                    row.setdefault(key, None)
                self.profiles[row[C.User]] = row
        self.history: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.purchased: dict[str, np.ndarray] = {}
        self.tier_buyers: dict[str, np.ndarray] = {}
        self.region_trending: dict[str, np.ndarray] = {}
        if events is not None and events.height:
            self._index_events(events)
        self._prepare_reasons()

    # ---- preparation --------------------------------------------------------------------------

    def _neighbours(self) -> np.ndarray:
        k = min(NEIGHBOURS, self.n - 1)
        out = np.full((self.n, max(k, 0)), -1, dtype=np.int32)
        if k <= 0:
            return out
        for start in range(0, self.n, 512):
            idx = np.arange(start, min(self.n, start + 512))
            try:
                sim = self.model._item_similarity(idx).astype(np.float32)
            except NotImplementedError:
                sim = (self.cat_code[idx][:, None] == self.cat_code[None, :]).astype(np.float32) + 1e-3 * self.pop_30d[None, :]
            sim[np.arange(len(idx)), idx] = -np.inf
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            ok = np.isfinite(np.take_along_axis(sim, top, axis=1)) & (np.take_along_axis(sim, top, axis=1) > 0)
            out[idx] = np.where(ok, top, -1)
        return out

    def _index_events(self, events: pl.DataFrame) -> None:
        idx_of = pl.DataFrame({C.Item: self.item_ids.tolist(), "_i": np.arange(self.n, dtype=np.int64)})
        ev = events.select(C.User, C.Item, C.EventType, C.Timestamp).join(idx_of, on=C.Item, how="inner")
        ev = ev.with_columns(pl.col(C.EventType).replace_strict(TYPE_RANK, default=0).alias("_t"))
        per_pair = ev.group_by(C.User, "_i").agg(pl.col("_t").max(), pl.col(C.Timestamp).max())
        hist = per_pair.sort([C.User, C.Timestamp], descending=[False, True]).group_by(C.User, maintain_order=True).agg(
            pl.col("_i").head(HISTORY_N), pl.col("_t").head(HISTORY_N)
        )
        for user, items, types in hist.iter_rows():
            self.history[user] = (np.asarray(items, dtype=np.int64), np.asarray(types, dtype=np.int8))
        bought = ev.filter(pl.col(C.EventType) == "purchase").group_by(C.User).agg(pl.col("_i").unique())
        for user, items in bought.iter_rows():
            self.purchased[user] = np.asarray(items, dtype=np.int64)
        if self.profiles:
            tiers = pl.DataFrame(
                {C.User: list(self.profiles), "tier": [p.get("tier") for p in self.profiles.values()], "region": [p.get("region") for p in self.profiles.values()]}
            )
            buyers = ev.filter(pl.col(C.EventType) == "purchase").join(tiers, on=C.User).group_by("tier", "_i").agg(pl.col(C.User).n_unique().alias("n"))
            for tier in buyers["tier"].drop_nulls().unique().to_list():
                counts = np.zeros(self.n, dtype=np.int32)
                sub = buyers.filter(pl.col("tier") == tier)
                counts[sub["_i"].to_numpy()] = sub["n"].to_numpy()
                self.tier_buyers[tier] = counts
            end = ev[C.Timestamp].max()
            recent = ev.filter(pl.col(C.Timestamp) > end - pl.duration(days=7)).join(tiers, on=C.User)
            by_region = recent.group_by("region", "_i").agg(pl.col(C.User).n_unique().alias("n"))
            for region in by_region["region"].drop_nulls().unique().to_list():
                counts = np.zeros(self.n, dtype=np.float32)
                sub = by_region.filter(pl.col("region") == region)
                counts[sub["_i"].to_numpy()] = sub["n"].to_numpy()
                self.region_trending[region] = counts

    # ---- public lists -------------------------------------------------------------------------

    def _category_mask(self, categories: Sequence[str], field: str | None = None) -> np.ndarray:
        """Items in any of ``categories`` (a full path, or a top level such as ``Home``)."""
        unknown = [c for c in categories if c not in self._prefix_masks]
        if unknown:
            raise RankingInputError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {self.categories}", field
            )
        if len(categories) == 1:
            return self._prefix_masks[categories[0]].copy()
        return np.logical_or.reduce([self._prefix_masks[c] for c in categories])

    def filter_mask(self, filters: Filters, user_id: str | None = None) -> np.ndarray:
        """Items the request allows (a fresh array the caller may change)."""
        valid = self._catalogue_mask(filters).copy()
        if filters.exclude_item_ids:
            ids = self.model.items.to_internal(list(filters.exclude_item_ids))  # type: ignore[union-attr]
            valid[ids[ids >= 0]] = False
        if filters.exclude_purchased and user_id is not None and user_id in self.purchased:
            valid[self.purchased[user_id]] = False
        if filters.exclude_seen and user_id is not None:
            u = self.user_index(user_id)
            if u >= 0:
                seen = self.model.seen  # the interactions the model was fitted on
                valid[seen.indices[seen.indptr[u] : seen.indptr[u + 1]]] = False
        return valid

    def _catalogue_mask(self, filters: Filters) -> np.ndarray:
        """The part of the filters that depends only on the catalogue (stock, categories, price),
        cached for up to ``MASK_CACHE`` filter combinations: storefronts repeat a few."""
        key = (filters.in_stock_only, filters.include_categories, filters.exclude_categories, filters.min_price, filters.max_price)
        mask = self._mask_cache.get(key)
        if mask is not None:
            return mask
        mask = np.ones(self.n, dtype=bool)
        if filters.in_stock_only:
            mask &= self.in_stock.astype(bool)
        if filters.include_categories:
            mask &= self._category_mask(filters.include_categories, "filters.include_categories")
        if filters.exclude_categories:
            mask &= ~self._category_mask(filters.exclude_categories, "filters.exclude_categories")
        if filters.min_price is not None:
            mask &= self.price >= filters.min_price
        if filters.max_price is not None:
            mask &= self.price <= filters.max_price
        mask.flags.writeable = False
        if len(self._mask_cache) >= MASK_CACHE:
            self._mask_cache.clear()
        self._mask_cache[key] = mask
        return mask

    def trending(self, k: int, category: str | None = None, region: str | None = None) -> RankResult:
        scores = self.region_trending.get(region) if region else None
        scores = self.trending_rank_score if scores is None else scores * (~self.is_new)
        return self._simple_list(scores, k, category, "trending")

    def new_arrivals(self, k: int, category: str | None = None) -> RankResult:
        return self._simple_list(self.new_rank_score, k, category, "new_arrivals")

    def _simple_list(self, scores: np.ndarray, k: int, category: str | None, source: str) -> RankResult:
        valid = self.in_stock.astype(bool) & (scores > 0)
        if category:
            valid &= self._category_mask([category], "category")
        order = np.flatnonzero(valid)[np.argsort(-scores[valid], kind="stable")][:k]
        items = [
            RankedItem(self.item_ids[i], r + 1, float(scores[i]), self.category[i], self._reasons(None, i, hot=False))
            for r, i in enumerate(order)
        ]
        return RankResult(items, "any", source)

    def similar(self, item_id: str, k: int) -> tuple[list[RankedItem], list[RankedItem]]:
        """(similar items, bought together) for an item page."""
        idx = self.model.items.to_internal([item_id])  # type: ignore[union-attr]
        if idx[0] < 0:
            raise RankingInputError(f"unknown item_id {item_id!r}", "item_id")
        i = int(idx[0])
        sims = self.model.similar_items([item_id], k)
        similar = []
        for r, (sid, score) in enumerate(zip(sims["similar_item_id"], sims["score"])):
            j = int(self.model.items.to_internal([sid])[0])  # type: ignore[union-attr]
            text = f"Similar to {self.titles[i] or item_id}"
            similar.append(RankedItem(sid, r + 1, float(score), self.category[j], [self._reason(ReasonCode.SIMILAR_TO_CONTEXT, text, item_id=item_id)]))
        together = []
        for sid in self.co_purchased[i] or []:
            j = int(self.model.items.to_internal([sid])[0])  # type: ignore[union-attr]
            if j < 0 or not self.in_stock[j]:
                continue
            text = f"Often bought together with {self.titles[i] or item_id}"
            together.append(RankedItem(sid, len(together) + 1, 1.0 / (len(together) + 1), self.category[j], [self._reason(ReasonCode.BOUGHT_TOGETHER, text, item_id=item_id)]))
            if len(together) >= k:
                break
        return similar, together

    # ---- personalised ranking -----------------------------------------------------------------

    def user_index(self, user_id: str) -> int:
        """The model's index of ``user_id``; -1 for unknown or forgotten users."""
        if user_id in self.forgotten:
            return -1
        return self.model.users.index_of(user_id)  # type: ignore[union-attr]

    def rank(
        self,
        user_id: str,
        k: int,
        context: Context = Context(),
        filters: Filters = Filters(),
        diversity: Diversity = Diversity(),
    ) -> RankResult:
        model = self.model
        u = self.user_index(user_id)
        group = model.group_of(u)
        kind = "hot" if group == "hot" else ("warm" if u >= 0 else "cold")
        served_by_model = group in ("hot", "warm")
        profile = self.profiles.get(user_id)
        valid = self.filter_mask(filters, user_id)

        ctx = np.empty(0, np.int64)
        if context.item_ids or context.recent_item_ids:
            ctx_ids = list(dict.fromkeys([*context.item_ids, *context.recent_item_ids]))
            ctx = model.items.to_internal(ctx_ids)  # type: ignore[union-attr]
            ctx = ctx[ctx >= 0]
            valid[ctx] = False  # do not recommend what is on the page / just viewed

        rel = None
        source = "model"
        if served_by_model:  # scores in [0, 1]; -inf marks what the filters leave out (0 where context blends in)
            rel = kernels.minmax(model.score_user(u), valid, 0.0 if len(ctx) else -np.inf)
        if len(ctx):
            try:
                sim = model._item_similarity(ctx).astype(np.float32)
            except NotImplementedError:
                sim = (self.cat_code[ctx][:, None] == self.cat_code[None, :]).astype(np.float32)
            sim = np.where(np.isfinite(sim), sim, 0.0)
            peak = sim.max(axis=1, keepdims=True)
            peak[peak <= 0] = 1.0
            ctx_score = np.clip(sim / peak, 0, 1).mean(axis=0)
            rel = ctx_score if rel is None else (1 - self.context_weight) * rel + self.context_weight * ctx_score
            source = "model+context" if served_by_model else "context"
        if rel is None:
            region_scores = self.region_trending.get((profile or {}).get("region") or "")
            base = self.trending_rank_score if region_scores is None else region_scores * (~self.is_new)
            fallback = np.where(base > 0, base, 1e-3 * self.pop_30d).astype(np.float32)
            rel = kernels.minmax(fallback, valid, -np.inf)
            source = "trending"
        elif len(ctx):
            rel = np.where(valid, rel, -np.inf).astype(np.float32)

        cap = diversity.max_per_category
        pool = self._candidates(rel, max(5 * k, 50), cap)
        if not len(pool):
            return RankResult([], kind, source)
        # New arrivals and trending items join the pool at the boundary score so they can compete.
        boundary = float(rel[pool[min(k, len(pool)) - 1]])
        n_new = 2 if source in ("model", "trending") and len(self._new_idx) else 0
        n_trending = 2 if source == "model" else 0
        if n_new or n_trending:
            share = np.zeros(self._n_groups)  # the user's purchase share of each category
            for cat, value in (profile["top_categories"] if profile else {}).items():
                if cat in self._cat_index:
                    share[self._cat_index[cat]] = value
            rel, pool = kernels.inject(
                rel, pool, valid, self._new_idx, share, self._group, self.pop_7d, self._trending_order, n_new, n_trending, boundary
            )

        chosen = self._mmr(pool, rel[pool], k, diversity)
        chosen_l = chosen.tolist()
        hist_items, hist_types = self.history.get(user_id, (np.empty(0, np.int64), np.empty(0, np.int8)))
        ctx_src = self._first_neighbour_of(ctx, chosen)
        hist_src = self._first_neighbour_of(hist_items, chosen)
        hot = kind == "hot" and served_by_model
        ctx_l, hist_l, types_l = ctx.tolist(), hist_items.tolist(), hist_types.tolist()
        items = []
        for r, (i, score) in enumerate(zip(chosen_l, rel[chosen].tolist())):
            c, h = ctx_src[r], hist_src[r]
            reasons = self._reasons(
                profile, i, hot=hot,
                ctx_item=ctx_l[c] if c >= 0 else None,
                hist_item=hist_l[h] if h >= 0 else None,
                hist_type=types_l[h] if h >= 0 else None,
            )
            items.append(RankedItem(self.item_ids[i], r + 1, score, self.category[i], reasons))
        return RankResult(items, kind, source)

    def _candidates(self, rel: np.ndarray, want: int, cap: int | None) -> np.ndarray:
        """The ``want`` best items by ``rel`` (finite only), best first, equal scores in item
        order. With a category cap, only each category's ``cap`` best items count (equal scores
        in item order): the others can never fill a capped list."""
        if cap is not None:
            return kernels.capped_top(rel, self._group, self._n_groups, cap, want)
        top = np.argpartition(-rel, want - 1)[:want] if want < self.n else np.arange(self.n)
        vals = rel[top]
        order = np.lexsort((top, -vals))
        return top[order[: min(want, int(np.isfinite(vals).sum()))]]

    def _mmr(self, pool: np.ndarray, rel: np.ndarray, k: int, diversity: Diversity) -> np.ndarray:
        """Maximal marginal relevance over ``pool`` (best first): each pick maximises
        ``lam * rel - (1 - lam) * max similarity to the picks so far``; a category that reached
        its cap is closed. Similarity: half same category, half the cosine of the model's item
        vectors (clipped to [0, 1]); for models without vectors, same category plus 0.3 for the
        same top-level category. Returns the picks in order (:func:`serving.kernels.mmr`)."""
        lam = 1.0 - min(max(float(diversity.strength), 0.0), 1.0)
        unit = self.unit if self.unit is not None else self._no_unit
        return kernels.mmr(pool, rel, self.cat_code[pool], self.l1_code[pool], unit, k, lam, diversity.max_per_category or 0)

    # ---- reasons ------------------------------------------------------------------------------

    @staticmethod
    def _reason(code: str, text: str, **evidence: Any) -> dict[str, Any]:
        return {"code": code, "text": text, "evidence": evidence}

    def _first_neighbour_of(self, sources: np.ndarray, chosen: np.ndarray) -> list[int]:
        """For each chosen item, the position of the first of ``sources`` that has it among its
        ``NEIGHBOURS`` most similar items, or -1."""
        if not len(sources) or not len(chosen) or self.neighbours.shape[1] == 0:
            return [-1] * len(chosen)
        return kernels.first_neighbour_of(sources, chosen, self.neighbours).tolist()

    def _reasons(
        self,
        profile: dict[str, Any] | None,
        i: int,
        *,
        hot: bool,
        ctx_item: int | None = None,
        hist_item: int | None = None,
        hist_type: int | None = None,
    ) -> list[dict[str, Any]]:
        """Reasons for item ``i`` shown to the user with ``profile`` (None: no profile);
        ``ctx_item`` / ``hist_item`` are the context and history items that have ``i`` among
        their neighbours (from :meth:`_first_neighbour_of`)."""
        out = []
        cat, top_in_category, new_arrival, trending, band, popular_now = self._item_facts[i]
        if ctx_item is not None:
            out.append({"code": ReasonCode.SIMILAR_TO_CONTEXT, "text": self._similar_text[ctx_item], "evidence": {"item_id": self.item_ids[ctx_item]}})
        if hist_item is not None:
            if hist_type == TYPE_RANK["purchase"]:
                out.append({"code": ReasonCode.BECAUSE_BOUGHT, "text": self._bought_text[hist_item], "evidence": {"item_id": self.item_ids[hist_item]}})
            else:
                out.append({"code": ReasonCode.BECAUSE_VIEWED, "text": self._viewed_text[hist_item], "evidence": {"item_id": self.item_ids[hist_item]}})
        if profile:
            share = profile["top_categories"].get(cat)
            if share is not None and top_in_category:
                out.append({"code": ReasonCode.POPULAR_IN_CATEGORY, "text": self._popular_in_text[cat], "evidence": {"category": cat, "your_share": round(share, 3)}})
        if new_arrival is not None:
            out.append(new_arrival)
        if trending is not None:
            out.append(trending)
        if profile:
            if band and profile["price_band"] == band:
                out.append(self._price_fit[band])
            tier = profile["tier"]
            buyers = self._tier_buyers_l.get(tier) if tier else None
            if buyers is not None and buyers[i] >= 3:
                out.append({"code": ReasonCode.TIER_ALSO_BOUGHT, "text": self._tier_text[tier], "evidence": {"tier": tier, "buyers": buyers[i]}})
        if not out and hot:
            out.append(self._picked_for_you)
        if not out and popular_now is not None:
            out.append(popular_now)
        if not out:
            out.append(self._recommended)
        return out

    def _prepare_reasons(self) -> None:
        """Per-item facts and the reasons that do not depend on the user, built once (shared,
        read-only dicts)."""
        facts = []
        for i in range(self.n):
            cat = self.category[i]
            new = self._reason(ReasonCode.NEW_ARRIVAL, f"New arrival in {cat}", category=cat) if self.is_new[i] else None
            trending = (
                self._reason(ReasonCode.TRENDING, "Trending this week", trending_score=round(float(self.trending_score[i]), 2), users_7d=int(self.pop_7d[i]))
                if self.trending_ok[i] else None
            )
            popular = self._reason(ReasonCode.POPULAR_NOW, "Popular with shoppers this week", users_7d=int(self.pop_7d[i])) if self.pop_7d[i] >= 3 else None
            facts.append((cat, bool(self.top_in_category[i]), new, trending, self.price_band[i], popular))
        self._item_facts = facts
        self._tier_buyers_l = {tier: counts.tolist() for tier, counts in self.tier_buyers.items()}
        self._popular_in_text = {cat: f"Popular in {cat}, a category you often buy" for cat in set(self.category.tolist())}
        self._tier_text = {tier: f"Customers in your {tier} tier also bought this" for tier in self.tier_buyers}
        names = [self.titles[i] or self.item_ids[i] for i in range(self.n)]
        self._similar_text = [f"Similar to {name}, which you are looking at" for name in names]
        self._bought_text = [f"Because you bought {name}" for name in names]
        self._viewed_text = [f"Because you viewed {name}" for name in names]
        self._price_fit = {band: self._reason(ReasonCode.PRICE_FIT, "Fits your usual price range", price_band=band) for band in set(self.price_band.tolist()) if band}
        self._picked_for_you = self._reason(ReasonCode.PICKED_FOR_YOU, "Picked for you from your shopping history", model=self.model.name)
        self._recommended = self._reason(ReasonCode.RECOMMENDED, f"Recommended by the {self.model.name} model", model=self.model.name)

