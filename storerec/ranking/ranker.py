"""The ranking pipeline shared by the service and offline evaluation.

candidates (:mod:`storerec.ranking.sources`: model scores, context similarity, cold-start
trending, plus injected new arrivals and trending items) -> business filters -> diversity
re-ranking (maximal marginal relevance with an exact category cap) -> reasons
(:mod:`storerec.ranking.reasons`: a reason is attached only when its registered condition holds
for that user and item).

Everything here works on arrays and facts prepared once per model (:mod:`storerec.ranking.facts`;
no polars or I/O on the request path); the inner loops are compiled
(:mod:`storerec.ranking.kernels`), so one request costs about 0.15 ms on a catalogue of 2,000
items (``docs/benchmarks.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from storerec.models.base import ModelBase, top_k_row
from storerec.ranking import kernels
from storerec.ranking.facts import ItemFacts, ItemSimilarity, UserFacts, _cosine_of_vectors
from storerec.ranking.neighbours import EXACT_MAX_ITEMS, Neighbours
from storerec.ranking.reasons import ReasonBook, Subject
from storerec.ranking.sources import CandidateSources, Source

__all__ = ["Context", "Diversity", "Filters", "RankResult", "RankedItem", "Ranker", "RankingInputError", "Source"]

MASK_CACHE = 256  # catalogue filter masks kept per Ranker
POOL_FACTOR, MIN_POOL = 5, 50  # candidates kept for the diversity step: max(5 k, 50)
_NO_VECTORS = np.zeros((0, 0), dtype=np.float32)  # kernels.mmr's "no item vectors"


class RankingInputError(ValueError):
    """A request names something that does not exist (e.g. an unknown category): a 4xx.
    ``field`` is the request field at fault, when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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
    """What the shopper is doing now. ``item_ids`` (on the page) and ``recent_item_ids`` (sent
    by the storefront) are left out of the list. ``session_events`` (item -> (event type, time):
    what the shopper viewed, carted or favourited in their current tracked session,
    serving/live.py) are their current interest, not their history: ``filters.exclude_seen``
    does not leave them out even when the model's history holds them (the caller names them in
    ``filters.exclude_item_ids`` when they should go), and a session item in the list carries
    the ``in_your_session`` reason. ``session_item_ids`` (the latest of them) are context."""

    page: str = "home"
    item_ids: tuple[str, ...] = ()
    recent_item_ids: tuple[str, ...] = ()
    session_item_ids: tuple[str, ...] = ()
    session_events: Mapping[str, tuple[str, datetime]] | None = None


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
    user_kind: str  # hot, warm, cold (any: lists that are the same for everyone)
    source: str  # a Source name, or the list's name (trending, new_arrivals)


class Ranker:
    """Holds one model and the facts it needs; ``rank`` serves one request.

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
    context_weight
        Weight of the context's similarity against the model's scores.
    forgotten
        Users erased with ``storerec forget-user`` that this model still knows: served as
        unknown (cold), so neither their learned factors nor their history is used.
    neighbours
        The version's stored neighbour lists (its serving snapshot); found now when None or
        when they are for other items (:meth:`ItemSimilarity.build`).
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
        neighbours: Neighbours | None = None,
    ) -> None:
        assert model.items is not None and model.users is not None
        self.model = model
        self.forgotten = forgotten
        self.items = ItemFacts.from_table(model.items.external.tolist(), item_table)
        self.users = UserFacts.build(profiles, events, self.items)
        self.similarity = ItemSimilarity.build(model, self.items, neighbours)
        self.sources = CandidateSources(model, self.items, self.users, self.similarity, context_weight)
        self.reasons = ReasonBook(self.items, self.users, model.name)
        self._mask_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._regions: list[str] | None = None  # the profiles' regions, listed at the first request naming one
        kernels.warm_up()

    @property
    def n(self) -> int:
        """Items in the catalogue (the model's items)."""
        return self.items.n

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """user id -> profile row (tier, segment, region, price band, top categories)."""
        return self.users.profiles

    def user_index(self, user_id: str) -> int:
        """The model's index of ``user_id``; -1 for unknown or forgotten users."""
        if user_id in self.forgotten:
            return -1
        return self.model.users.index_of(user_id)  # type: ignore[union-attr]

    # ---- filters ------------------------------------------------------------------------------

    def _category_mask(self, categories: Sequence[str], field: str | None = None) -> np.ndarray:
        """Items in any of ``categories`` (a full path, or a top level such as ``Home``)."""
        masks = self.items.prefix_masks
        unknown = [c for c in categories if c not in masks]
        if unknown:
            raise RankingInputError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {self.items.categories}", field
            )
        if len(categories) == 1:
            return masks[categories[0]].copy()
        return np.logical_or.reduce([masks[c] for c in categories])

    def filter_mask(self, filters: Filters, user_id: str | None = None, keep: np.ndarray | None = None) -> np.ndarray:
        """Items the request allows (a fresh array the caller may change). ``keep``: items
        ``exclude_seen`` does not leave out (the shopper's current session)."""
        valid = self._catalogue_mask(filters).copy()
        if filters.exclude_item_ids:
            ids = self.model.items.to_internal(list(filters.exclude_item_ids))  # type: ignore[union-attr]
            valid[ids[ids >= 0]] = False
        purchased = self.users.purchased
        if filters.exclude_purchased and user_id is not None and user_id in purchased:
            valid[purchased[user_id]] = False
        if filters.exclude_seen and user_id is not None:
            u = self.user_index(user_id)
            if u >= 0:
                seen = self.model.seen  # the interactions the model was fitted on
                history = seen.indices[seen.indptr[u] : seen.indptr[u + 1]]  # type: ignore[union-attr]
                if keep is not None and len(keep):
                    history = history[~np.isin(history, keep)]
                valid[history] = False
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
            mask &= self.items.in_stock
        if filters.include_categories:
            mask &= self._category_mask(filters.include_categories, "filters.include_categories")
        if filters.exclude_categories:
            mask &= ~self._category_mask(filters.exclude_categories, "filters.exclude_categories")
        if filters.min_price is not None:
            mask &= self.items.price >= filters.min_price
        if filters.max_price is not None:
            mask &= self.items.price <= filters.max_price
        mask.flags.writeable = False
        if len(self._mask_cache) >= MASK_CACHE:
            self._mask_cache.clear()
        self._mask_cache[key] = mask
        return mask

    # ---- lists that are the same for everyone -------------------------------------------------

    def trending(self, k: int, category: str | None = None, region: str | None = None) -> RankResult:
        """The trending list, of ``region``'s shoppers when given (a region of the profiles; one
        without activity this week gets everyone's list). An unknown region is an error, as an
        unknown category is: a misspelt or wrongly-cased one never passes silently."""
        if region:
            self._check_region(region)
        return self._simple_list(self.sources.trending(region or None), k, category, "trending")

    def _check_region(self, region: str) -> None:
        if self._regions is None:
            self._regions = sorted({str(p["region"]) for p in self.profiles.values() if p.get("region")})
        if region in self._regions:
            return
        near = [r for r in self._regions if r.casefold() == region.casefold()]
        hint = f"; did you mean {near[0]!r}? (regions are case-sensitive)" if near else ""
        raise RankingInputError(f"unknown region {region!r}{hint}; known: {self._regions}", "region")

    def new_arrivals(self, k: int, category: str | None = None) -> RankResult:
        return self._simple_list(self.items.new_rank, k, category, "new_arrivals")

    def _simple_list(self, scores: np.ndarray, k: int, category: str | None, source: str) -> RankResult:
        valid = self.items.in_stock & (scores > 0)
        if category:
            valid &= self._category_mask([category], "category")
        order = np.flatnonzero(valid)[np.argsort(-scores[valid], kind="stable")][:k]
        items = [self._ranked(i, r, float(scores[i]), Subject(i, None, False)) for r, i in enumerate(order.tolist())]
        return RankResult(items, "any", source)

    def similar(self, item_id: str, k: int) -> tuple[list[RankedItem], list[RankedItem]]:
        """(similar items, bought together) for an item page."""
        index = self.model.items.index_of  # type: ignore[union-attr]
        i = index(item_id)
        if i < 0:
            raise RankingInputError(f"unknown item_id {item_id!r}", "item_id")
        similar = []
        for r, (j, score) in enumerate(zip(*self._similar_to(i, k))):
            reason = self.reasons.item_page("similar_to_context", i)
            similar.append(RankedItem(self.items.ids[j], r + 1, float(score), self.items.category[j], [reason]))
        together: list[RankedItem] = []
        for sid in self.items.co_purchased[i] or []:
            j = index(sid)
            if j < 0 or not self.items.in_stock[j]:
                continue
            reason = self.reasons.item_page("bought_together", i)
            together.append(RankedItem(sid, len(together) + 1, 1.0 / (len(together) + 1), self.items.category[j], [reason]))
            if len(together) >= k:
                break
        return similar, together

    def _similar_to(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i``'s ``k`` most similar other items (indices, float32 scores; score desc, then
        index), as ``model.similar_items`` gives them, without normalising the catalogue per call.

        For the cosine of item vectors (ALS, BPR, LightFM), from the unit vectors made at start
        (``self.similarity.unit``, the very ``unit_rows`` array the model would compute):

        * above ``EXACT_MAX_ITEMS`` items, whose stored lists are approximate (HNSW) and the
          basis of the "similar to X" reasons: from the item's listed neighbours when it has at
          least ``k`` (re-scored and re-ordered), O(NEIGHBOURS) whatever the catalogue size; an
          item with a zero vector (no interactions) is equally similar (0) to every item, and gets
          the ``k`` lowest indices with score 0 in O(k) (the product would pick ``k`` of the equal
          zeros by ``argpartition``, i.e. others of the same score);
        * otherwise (and for ``k`` above the lists or an item with fewer listed neighbours) the
          same product as the model (one row against all items) and the same top k: identical
          items, scores and order (``tests/test_neighbours.py``).

        Other models: ``model.similar_items``."""
        sim = self.similarity
        if sim.unit is None or not _cosine_of_vectors(self.model) or self.model.item_vectors().dtype != sim.unit.dtype:
            ext = self.model.similar_items([self.items.ids[i]], k)
            idx = self.model.items.to_internal(ext["similar_item_id"].to_list())  # type: ignore[union-attr]
            return np.asarray(idx, dtype=np.int64), ext["score"].to_numpy()
        unit = sim.unit
        row = np.array([i])
        if self.items.n > EXACT_MAX_ITEMS and not unit[i].any():
            idx = np.arange(min(k + 1, self.items.n))
            idx = idx[idx != i][:k]
            return idx, np.zeros(len(idx), dtype=np.float32)
        if self.items.n > EXACT_MAX_ITEMS and k <= sim.neighbours.shape[1]:
            listed = sim.neighbours[i]
            listed = listed[listed >= 0].astype(np.int64)
            if len(listed) >= k:
                scores = (unit[row] @ unit[listed].T)[0].astype(np.float32)
                order = np.lexsort((listed, -scores))[:k]
                return listed[order], scores[order]
        scores = (unit[row] @ unit.T)[0].astype(np.float32)  # a (1, dim) product, as the model's
        scores[i] = -np.inf
        return top_k_row(scores, k)

    # ---- personalised ranking -----------------------------------------------------------------

    def rank(
        self,
        user_id: str,
        k: int,
        context: Context = Context(),
        filters: Filters = Filters(),
        diversity: Diversity = Diversity(),
    ) -> RankResult:
        u = self.user_index(user_id)
        group = self.model.group_of(u)
        kind = "hot" if group == "hot" else ("warm" if u >= 0 else "cold")
        by_model = group in ("hot", "warm")
        profile = self.users.profiles.get(user_id)
        in_session = self._session_events(context)
        valid = self.filter_mask(filters, user_id, np.fromiter(in_session, np.int64, len(in_session)) if in_session else None)
        ctx = self._context_items(context)
        valid[ctx] = False  # do not recommend what is on the page / what the storefront says was just viewed
        session = self._session_items(context, ctx)  # context too, but (after the mask) still candidates
        if len(session):
            ctx = np.concatenate([ctx, session])

        rel, source = self.sources.relevance(u, by_model, ctx, valid, profile, session)
        pool = self._candidates(rel, max(POOL_FACTOR * k, MIN_POOL), diversity.max_per_category)
        if not len(pool):
            return RankResult([], kind, source)
        rel, pool = self.sources.inject(rel, pool, valid, profile, source, k)
        chosen = self._mmr(pool, rel[pool], k, diversity)

        hist_items, hist_types = self.users.history.get(user_id, (np.empty(0, np.int64), np.empty(0, np.int8)))
        ctx_src = self._first_neighbour_of(ctx, chosen)
        hist_src = self._first_neighbour_of(hist_items, chosen)
        hot = kind == "hot" and by_model
        ctx_l, hist_l, types_l = ctx.tolist(), hist_items.tolist(), hist_types.tolist()
        items = []
        for r, (i, score) in enumerate(zip(chosen.tolist(), rel[chosen].tolist())):
            c, h = ctx_src[r], hist_src[r]
            # positional: a third of the keyword call's cost, on the request path
            subject = Subject(
                i, profile, hot, ctx_l[c] if c >= 0 else None, hist_l[h] if h >= 0 else None, types_l[h] if h >= 0 else None, in_session
            )
            items.append(self._ranked(i, r, score, subject))
        return RankResult(items, kind, source)

    def _ranked(self, i: int, position: int, score: float, subject: Subject) -> RankedItem:
        return RankedItem(self.items.ids[i], position + 1, score, self.items.category[i], self.reasons.explain(subject))

    def _context_items(self, context: Context) -> np.ndarray:
        """Internal indices of the context's known items (page items, then recent ones)."""
        if not (context.item_ids or context.recent_item_ids):
            return np.empty(0, np.int64)
        ids = list(dict.fromkeys([*context.item_ids, *context.recent_item_ids]))
        ctx = self.model.items.to_internal(ids)  # type: ignore[union-attr]
        return ctx[ctx >= 0]

    def _session_events(self, context: Context) -> dict[int, tuple[str, datetime]] | None:
        """``context.session_events`` by internal index (known items only; None when empty)."""
        if not context.session_events:
            return None
        ids = list(context.session_events)
        idx = self.model.items.to_internal(ids).tolist()  # type: ignore[union-attr]
        return {i: context.session_events[item] for i, item in zip(idx, ids) if i >= 0} or None

    def _session_items(self, context: Context, ctx: np.ndarray) -> np.ndarray:
        """Internal indices of the known session items not already in ``ctx``."""
        if not context.session_item_ids:
            return np.empty(0, np.int64)
        idx = self.model.items.to_internal(list(dict.fromkeys(context.session_item_ids)))  # type: ignore[union-attr]
        idx = idx[idx >= 0]
        return idx[~np.isin(idx, ctx)] if len(ctx) else idx

    def _candidates(self, rel: np.ndarray, want: int, cap: int | None) -> np.ndarray:
        """The ``want`` best items by ``rel`` (finite only), best first, equal scores in item
        order. With a category cap, only each category's ``cap`` best items count (equal scores
        in item order): the others can never fill a capped list."""
        if cap is not None:
            return kernels.capped_top(rel, self.items.group, self.items.n_groups, cap, want)
        top = np.argpartition(-rel, want - 1)[:want] if want < self.n else np.arange(self.n)
        vals = rel[top]
        order = np.lexsort((top, -vals))
        return top[order[: min(want, int(np.isfinite(vals).sum()))]]

    def _mmr(self, pool: np.ndarray, rel: np.ndarray, k: int, diversity: Diversity) -> np.ndarray:
        """Maximal marginal relevance over ``pool`` (best first): each pick maximises
        ``lam * rel - (1 - lam) * max similarity to the picks so far``; a category that reached
        its cap is closed. Similarity: half same category, half the cosine of the model's item
        vectors (clipped to [0, 1]); for models without vectors, same category plus 0.3 for the
        same top-level category. Returns the picks in order (:func:`kernels.mmr`)."""
        lam = 1.0 - min(max(float(diversity.strength), 0.0), 1.0)
        unit = self.similarity.unit if self.similarity.unit is not None else _NO_VECTORS
        items = self.items
        return kernels.mmr(pool, rel, items.cat_code[pool], items.l1_code[pool], unit, k, lam, diversity.max_per_category or 0)

    def _first_neighbour_of(self, sources: np.ndarray, chosen: np.ndarray) -> list[int]:
        """For each chosen item, the position of the first of ``sources`` that has it among its
        ``NEIGHBOURS`` most similar items, or -1."""
        neighbours = self.similarity.neighbours
        if not len(sources) or not len(chosen) or neighbours.shape[1] == 0:
            return [-1] * len(chosen)
        return kernels.first_neighbour_of(sources, chosen, neighbours).tolist()
