"""The ranking pipeline shared by the service and offline evaluation.

candidates (model scores, plus trending / new-arrival / context candidates) -> business filters
-> scores -> diversity re-ranking (maximal marginal relevance with an exact category cap) ->
reasons. A reason is attached only when its condition holds for that user and item; the
conditions are spelled out on :class:`ReasonCode` and checked by the tests on the built-in store.

Everything here is plain numpy over arrays prepared once by :class:`Ranker` (no polars or I/O on
the request path), so one request costs a few milliseconds on a catalogue of thousands of items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl

from features.schema import Columns as C
from models.base import ModelBase

NEIGHBOURS = 50  # "X is similar to Y" means Y is among X's 50 most similar items for the model
HISTORY_N = 20  # history items considered for "because you bought/viewed X"
TYPE_RANK = {"purchase": 3, "cart": 2, "favorite": 1, "view": 0, "rating": 1}


class RankingInputError(ValueError):
    """A request names something that does not exist (e.g. an unknown category): a 4xx."""


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


def _minmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float32)
    ok = valid & np.isfinite(x)
    if ok.any():
        lo, hi = float(x[ok].min()), float(x[ok].max())
        out[ok] = (x[ok] - lo) / (hi - lo) if hi > lo else 1.0
    return out


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
    ) -> None:
        assert model.items is not None and model.users is not None
        self.model = model
        self.context_weight = context_weight
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

        self.profiles: dict[str, dict[str, Any]] = {}
        if profiles is not None and profiles.height:
            cols = [c for c in (C.User, "top_categories", "price_band", "tier", "region", "segment") if c in profiles.columns]
            for row in profiles.select(cols).with_columns(
                *(pl.col(c).cast(pl.String) for c in ("price_band", "tier", "segment") if c in cols)
            ).iter_rows(named=True):
                tops = row.get("top_categories") or []
                row["top_categories"] = {t["category"]: float(t["share"]) for t in tops}
                self.profiles[row[C.User]] = row
        self.history: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.purchased: dict[str, np.ndarray] = {}
        self.tier_buyers: dict[str, np.ndarray] = {}
        self.region_trending: dict[str, np.ndarray] = {}
        if events is not None and events.height:
            self._index_events(events)

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

    def _category_mask(self, categories: Sequence[str]) -> np.ndarray:
        """Items in any of ``categories`` (a full path, or a top level such as ``Home``)."""
        unknown = [c for c in categories if c not in self._prefix_masks]
        if unknown:
            raise RankingInputError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {self.categories}"
            )
        if len(categories) == 1:
            return self._prefix_masks[categories[0]].copy()
        return np.logical_or.reduce([self._prefix_masks[c] for c in categories])

    def filter_mask(self, filters: Filters, user_id: str | None = None) -> np.ndarray:
        valid = np.ones(self.n, dtype=bool)
        if filters.in_stock_only:
            valid &= self.in_stock.astype(bool)
        if filters.include_categories:
            valid &= self._category_mask(filters.include_categories)
        if filters.exclude_categories:
            valid &= ~self._category_mask(filters.exclude_categories)
        if filters.min_price is not None:
            valid &= self.price >= filters.min_price
        if filters.max_price is not None:
            valid &= self.price <= filters.max_price
        if filters.exclude_item_ids:
            ids = self.model.items.to_internal(list(filters.exclude_item_ids))  # type: ignore[union-attr]
            valid[ids[ids >= 0]] = False
        if filters.exclude_purchased and user_id is not None and user_id in self.purchased:
            valid[self.purchased[user_id]] = False
        if filters.exclude_seen and user_id is not None:
            u = int(self.model.users.to_internal([user_id])[0])  # type: ignore[union-attr]
            if u >= 0:
                seen = self.model.seen  # the interactions the model was fitted on
                valid[seen.indices[seen.indptr[u] : seen.indptr[u + 1]]] = False
        return valid

    def trending(self, k: int, category: str | None = None, region: str | None = None) -> RankResult:
        scores = self.region_trending.get(region) if region else None
        scores = self.trending_rank_score if scores is None else scores * (~self.is_new)
        return self._simple_list(scores, k, category, "trending")

    def new_arrivals(self, k: int, category: str | None = None) -> RankResult:
        return self._simple_list(self.new_rank_score, k, category, "new_arrivals")

    def _simple_list(self, scores: np.ndarray, k: int, category: str | None, source: str) -> RankResult:
        valid = self.in_stock.astype(bool) & (scores > 0)
        if category:
            valid &= self._category_mask([category])
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
            raise RankingInputError(f"unknown item_id {item_id!r}")
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

    def rank(
        self,
        user_id: str,
        k: int,
        context: Context = Context(),
        filters: Filters = Filters(),
        diversity: Diversity = Diversity(),
    ) -> RankResult:
        model = self.model
        uidx = model.users.to_internal([user_id])  # type: ignore[union-attr]
        groups = model.route(uidx)
        kind = "hot" if len(groups["hot"]) else ("warm" if uidx[0] >= 0 else "cold")
        served_by_model = bool(len(groups["hot"]) or len(groups["warm"]))
        valid = self.filter_mask(filters, user_id)

        ctx_ids = list(dict.fromkeys([*context.item_ids, *context.recent_item_ids]))
        ctx = model.items.to_internal(ctx_ids) if ctx_ids else np.empty(0, np.int64)  # type: ignore[union-attr]
        ctx = ctx[ctx >= 0]
        valid[ctx] = False  # do not recommend what is on the page / just viewed

        rel = None
        source = "model"
        if served_by_model:
            scores, _ = model.score([user_id])
            rel = _minmax(scores[0], valid)
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
            profile = self.profiles.get(user_id) or {}
            region_scores = self.region_trending.get(profile.get("region") or "")
            base = self.trending_rank_score if region_scores is None else region_scores * (~self.is_new)
            fallback = np.where(base > 0, base, 1e-3 * self.pop_30d)
            rel = _minmax(fallback, valid)
            source = "trending"
        rel = np.where(valid, rel, -np.inf).astype(np.float32)

        n_valid = int(valid.sum())
        if n_valid == 0:
            return RankResult([], kind, source)
        cap = diversity.max_per_category
        pool = self._candidates(rel, max(5 * k, 50), cap)
        # New arrivals and trending items join the pool at the boundary score so they can compete.
        boundary = float(rel[pool[min(k, len(pool)) - 1]]) if len(pool) else 0.0
        profile = self.profiles.get(user_id) or {}
        inject: list[int] = []
        if source in ("model", "trending"):
            new_valid = np.flatnonzero(valid & self.is_new)
            if len(new_valid):
                share = np.zeros(len(self.categories) + 1)  # last slot: items without a category
                for cat, value in (profile.get("top_categories") or {}).items():
                    if cat in self._cat_index:
                        share[self._cat_index[cat]] = value
                pref = share[self.cat_code[new_valid]] + 1e-3 * self.pop_7d[new_valid]
                inject += new_valid[np.argsort(-pref, kind="stable")[:2]].tolist()
        if source == "model":
            tr = np.flatnonzero(valid & self.trending_ok)
            if len(tr):
                inject += tr[np.argsort(-self.trending_rank_score[tr], kind="stable")[:2]].tolist()
        if inject:
            rel = rel.copy()
            for i in inject:
                rel[i] = max(rel[i], boundary)
            pool = np.unique(np.concatenate([pool, np.asarray(inject, dtype=np.int64)]))
            pool = pool[np.argsort(-rel[pool], kind="stable")]

        chosen = np.asarray(self._mmr(pool, rel[pool], k, diversity), dtype=np.int64)
        hist_items, hist_types = self.history.get(user_id, (np.empty(0, np.int64), np.empty(0, np.int8)))
        ctx_src = self._first_neighbour_of(ctx, chosen)
        hist_src = self._first_neighbour_of(hist_items, chosen)
        hot = kind == "hot" and served_by_model
        items = [
            RankedItem(
                self.item_ids[i],
                r + 1,
                float(rel[i]),
                self.category[i],
                self._reasons(
                    user_id, int(i), hot=hot,
                    ctx_item=int(ctx[ctx_src[r]]) if ctx_src[r] >= 0 else None,
                    hist_item=int(hist_items[hist_src[r]]) if hist_src[r] >= 0 else None,
                    hist_type=int(hist_types[hist_src[r]]) if hist_src[r] >= 0 else None,
                ),
            )
            for r, i in enumerate(chosen)
        ]
        return RankResult(items, kind, source)

    def _candidates(self, rel: np.ndarray, want: int, cap: int | None) -> np.ndarray:
        """The ``want`` best items by ``rel`` (finite only), best first. With a category cap,
        only items among their category's ``cap`` best count: the others can never fill a
        capped list. Works on the top of the ranking first and widens only when needed."""
        finite = np.flatnonzero(np.isfinite(rel))
        if len(finite) == 0:
            return finite
        top_n = min(len(finite), want if cap is None else 4 * want)
        while True:
            top = finite[np.argpartition(-rel[finite], top_n - 1)[:top_n]] if top_n < len(finite) else finite
            top = top[np.argsort(-rel[top], kind="stable")]
            if cap is None:
                return top[:want]
            by_cat = np.argsort(self.cat_code[top], kind="stable")  # keeps the rel order within a category
            sorted_cats = self.cat_code[top][by_cat]
            starts = np.flatnonzero(np.r_[True, sorted_cats[1:] != sorted_cats[:-1]])
            pos = np.empty(len(top), dtype=np.int64)  # rank of each item within its category
            pos[by_cat] = np.arange(len(top)) - np.repeat(starts, np.diff(np.r_[starts, len(top)]))
            keep = top[pos < cap]
            if len(keep) >= want or top_n == len(finite):
                return keep[:want]
            top_n = len(finite)

    def _mmr(self, pool: np.ndarray, rel: np.ndarray, k: int, diversity: Diversity) -> list[int]:
        lam = 1.0 - float(np.clip(diversity.strength, 0.0, 1.0))
        cap = diversity.max_per_category
        cats = self.cat_code[pool]
        if lam == 1.0:
            sim = np.zeros((len(pool), len(pool)))
        elif self.unit is not None:
            vec_sim = np.clip(self.unit[pool] @ self.unit[pool].T, 0, 1)
            sim = 0.5 * (cats[:, None] == cats[None, :]) + 0.5 * vec_sim
        else:
            l1 = self.l1_code[pool]
            sim = 1.0 * (cats[:, None] == cats[None, :]) + 0.3 * ((l1[:, None] == l1[None, :]) & (cats[:, None] != cats[None, :]))
        penalty = 1.0 - lam
        score = lam * rel.astype(np.float64)  # the MMR score of every pool item, updated in place
        max_sim = np.zeros(len(pool), dtype=np.float64)
        per_cat: dict[int, int] = {}
        chosen: list[int] = []
        for _ in range(min(k, len(pool))):
            j = int(score.argmax())
            if score[j] == -np.inf:
                break
            chosen.append(int(pool[j]))
            c = int(cats[j])
            per_cat[c] = per_cat.get(c, 0) + 1
            if penalty > 0:
                grown = np.maximum(max_sim, sim[j])
                score -= penalty * (grown - max_sim)
                max_sim = grown
            score[j] = -np.inf
            if cap is not None and per_cat[c] >= cap:
                score[cats == c] = -np.inf
        return chosen

    # ---- reasons ------------------------------------------------------------------------------

    @staticmethod
    def _reason(code: str, text: str, **evidence: Any) -> dict[str, Any]:
        return {"code": code, "text": text, "evidence": evidence}

    def _first_neighbour_of(self, sources: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """For each chosen item, the position of the first of ``sources`` that has it among its
        ``NEIGHBOURS`` most similar items, or -1."""
        if len(sources) == 0 or len(chosen) == 0 or self.neighbours.shape[1] == 0:
            return np.full(len(chosen), -1, dtype=np.int64)
        hit = (self.neighbours[sources][:, :, None] == chosen[None, None, :]).any(axis=1)  # (sources, chosen)
        return np.where(hit.any(axis=0), hit.argmax(axis=0), -1)

    def _reasons(
        self,
        user_id: str | None,
        i: int,
        *,
        hot: bool,
        ctx_item: int | None = None,
        hist_item: int | None = None,
        hist_type: int | None = None,
    ) -> list[dict[str, Any]]:
        """Reasons for item ``i``; ``ctx_item`` / ``hist_item`` are the context and history items
        that have ``i`` among their neighbours (from :meth:`_first_neighbour_of`)."""
        out = []
        cat = self.category[i]
        if ctx_item is not None:
            c = ctx_item
            out.append(self._reason(ReasonCode.SIMILAR_TO_CONTEXT, f"Similar to {self.titles[c] or self.item_ids[c]}, which you are looking at", item_id=self.item_ids[c]))
        if hist_item is not None:
            h = hist_item
            bought = hist_type == TYPE_RANK["purchase"]
            code = ReasonCode.BECAUSE_BOUGHT if bought else ReasonCode.BECAUSE_VIEWED
            verb = "bought" if bought else "viewed"
            out.append(self._reason(code, f"Because you {verb} {self.titles[h] or self.item_ids[h]}", item_id=self.item_ids[h]))
        profile = self.profiles.get(user_id) if user_id else None
        if profile:
            share = (profile.get("top_categories") or {}).get(cat)
            if share is not None and self.top_in_category[i]:
                out.append(self._reason(ReasonCode.POPULAR_IN_CATEGORY, f"Popular in {cat}, a category you often buy", category=cat, your_share=round(share, 3)))
        if self.is_new[i]:
            out.append(self._reason(ReasonCode.NEW_ARRIVAL, f"New arrival in {cat}", category=cat))
        if self.trending_ok[i]:
            out.append(self._reason(ReasonCode.TRENDING, "Trending this week", trending_score=round(float(self.trending_score[i]), 2), users_7d=int(self.pop_7d[i])))
        if profile:
            band = profile.get("price_band")
            if band and band == self.price_band[i]:
                out.append(self._reason(ReasonCode.PRICE_FIT, "Fits your usual price range", price_band=band))
            tier = profile.get("tier")
            buyers = self.tier_buyers.get(tier) if tier else None
            if buyers is not None and buyers[i] >= 3:
                out.append(self._reason(ReasonCode.TIER_ALSO_BOUGHT, f"Customers in your {tier} tier also bought this", tier=tier, buyers=int(buyers[i])))
        if not out and hot:
            out.append(self._reason(ReasonCode.PICKED_FOR_YOU, "Picked for you from your shopping history", model=self.model.name))
        if not out and self.pop_7d[i] >= 3:
            out.append(self._reason(ReasonCode.POPULAR_NOW, "Popular with shoppers this week", users_7d=int(self.pop_7d[i])))
        if not out:
            out.append(self._reason(ReasonCode.RECOMMENDED, f"Recommended by the {self.model.name} model", model=self.model.name))
        return out

