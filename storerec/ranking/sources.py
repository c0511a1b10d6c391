"""Candidate sources: where the relevance of a personalised list comes from.

In order of preference (a fallback chain, as Gorse composes its recommenders):

1. **model** - the model's scores for the user, min-max scaled over the allowed items;
2. **context** - similarity to the request's context items (the product on the page, the cart,
   recently viewed items), blended with the model's scores by ``context_weight`` when both exist;
   for the shopper's tracked session (``Context.session_item_ids``, serving/live.py) half of the
   context score is 30-day popularity within the categories the session browses
   (:data:`SESSION_CATEGORY_SHARE`);
3. cold start, for users the model cannot score and who have no context:
   **trending** - the trending list of the user's region when the profile names one with recent
   activity, then 30-day popularity for items that are not trending; else
   **popular** - best sellers: distinct users over all history up to the features' date (the
   popularity model's cold list; on the built-in store it finds 0.046 NDCG@10 for cold users
   where the global trending list found none, see README).

Then **new arrivals** and **trending items** join the candidate pool at the boundary score (the
k-th candidate's), so that they can compete in the diversity step; how many of each depends on
the source (:data:`INJECTIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from storerec.core.formulas import established
from storerec.models.base import ModelBase
from storerec.ranking import kernels
from storerec.ranking.facts import POPULARITY_TIE_BREAK, ItemFacts, ItemSimilarity, UserFacts
from storerec.ranking.reasons import trending_items


class Source:
    """Names of the sources (``RankResult.source``)."""

    MODEL = "model"
    MODEL_CONTEXT = "model+context"
    CONTEXT = "context"
    TRENDING = "trending"
    POPULAR = "popular"


@dataclass(frozen=True)
class Injection:
    """How many new arrivals / trending items join the pool of a list from a given source."""

    new_arrivals: int = 0
    trending: int = 0


# Context lists stay about the context; regional cold-start lists are trending already; best-seller
# lists stay best sellers (each injected item cost cold users relevance on the built-in store).
INJECTIONS = {Source.MODEL: Injection(new_arrivals=2, trending=2), Source.TRENDING: Injection(new_arrivals=2)}

# A tracked session says which categories the shopper browses now more surely than which items
# are alike: on the built-in store's held-out day, with every tracked item left out, similarity
# alone found the next cart/purchase of an item not yet viewed no more often than the snapshot
# (0.081 vs 0.079 hit@10), half similarity and half popularity in the session's categories did
# better (0.086). With the session's own items eligible (live.session_items_eligible, the
# default) they take some of those slots: 0.081 on items not yet viewed, 0.211 overall against
# the snapshot's 0.064 (docs/live.md). An even split, not tuned: of the four shares and weights
# tried on that day it was not the best.
SESSION_CATEGORY_SHARE = 0.5


class CandidateSources:
    """The sources of one loaded model (built once; each call serves one request)."""

    def __init__(self, model: ModelBase, items: ItemFacts, users: UserFacts, similarity: ItemSimilarity, context_weight: float) -> None:
        self.model = model
        self.items = items
        self.users = users
        self.similarity = similarity
        self.context_weight = context_weight
        self.new_items = np.flatnonzero(items.is_new)
        trending = np.flatnonzero(trending_items(items))
        self.trending_order = trending[np.argsort(-items.trending_rank[trending], kind="stable")]

    def relevance(
        self, user_idx: int, by_model: bool, context: np.ndarray, valid: np.ndarray, profile: dict[str, Any] | None,
        session: np.ndarray | None = None,
    ) -> tuple[np.ndarray, str]:
        """Scores in [0, 1] per item (-inf: not allowed) and the name of their source.
        ``session``: the part of ``context`` that is the shopper's tracked session."""
        rel = self.model_scores(user_idx, valid, blend=len(context) > 0) if by_model else None
        if len(context):
            ctx = self.context_scores(context)
            if session is not None and len(session):
                share = SESSION_CATEGORY_SHARE
                ctx = (1 - share) * ctx + share * self.category_popularity(session)
            w = self.context_weight
            rel = ctx if rel is None else (1 - w) * rel + w * ctx
            return np.where(valid, rel, -np.inf).astype(np.float32), Source.MODEL_CONTEXT if by_model else Source.CONTEXT
        if rel is None:
            return self.cold_start(profile, valid)
        return rel, Source.MODEL

    def model_scores(self, user_idx: int, valid: np.ndarray, blend: bool) -> np.ndarray:
        """The model's scores scaled to [0, 1] over the allowed items; items the filters leave out
        get -inf, or 0 when the scores will be blended with the context's."""
        scores = self.model.score_user(user_idx)
        assert scores is not None, "only users the model routes as hot or warm come here"
        return kernels.minmax(scores, valid, 0.0 if blend else -np.inf)

    def context_scores(self, context: np.ndarray) -> np.ndarray:
        """Mean over the context items of each item's similarity to it, scaled by that context
        item's best similarity (so every context item counts alike), clipped to [0, 1]."""
        sim = self.similarity.rows(context)
        sim = np.where(np.isfinite(sim), sim, 0.0)
        peak = sim.max(axis=1, keepdims=True)
        peak[peak <= 0] = 1.0
        return np.clip(sim / peak, 0, 1).mean(axis=0)

    def category_popularity(self, items: np.ndarray) -> np.ndarray:
        """30-day popularity of the items in the categories of ``items``, scaled to [0, 1] (0
        elsewhere)."""
        browsed = np.zeros(self.items.n_groups, dtype=bool)
        browsed[self.items.group[items]] = True
        pop = np.where(browsed[self.items.group], self.items.pop_30d, np.float32(0))
        peak = float(pop.max())
        return pop / peak if peak > 0 else pop

    def cold_start(self, profile: dict[str, Any] | None, valid: np.ndarray) -> tuple[np.ndarray, str]:
        """Users the model cannot score: the trending list of their region (then 30-day
        popularity for items that are not trending) when their profile names a region with recent
        activity; else best sellers (trending order breaks ties). Scaled to [0, 1]."""
        region = (profile or {}).get("region") or ""
        if region in self.users.region_trending:
            base = self.trending(region)
            scores = np.where(base > 0, base, POPULARITY_TIE_BREAK * self.items.pop_30d).astype(np.float32)
            return kernels.minmax(scores, valid, -np.inf), Source.TRENDING
        scores = (self.items.users_total + POPULARITY_TIE_BREAK * self.items.trending_rank).astype(np.float32)
        return kernels.minmax(scores, valid, -np.inf), Source.POPULAR

    def trending(self, region: str | None) -> np.ndarray:
        """Trending scores: distinct users this week in ``region`` for established items, or the
        trending order of everyone (storerec.core.formulas) when the region is None or unknown."""
        counts = self.users.region_trending.get(region) if region is not None else None
        return self.items.trending_rank if counts is None else counts * established(self.items.is_new)

    def inject(
        self, rel: np.ndarray, pool: np.ndarray, valid: np.ndarray, profile: dict[str, Any] | None, source: str, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, pool) with the source's new arrivals and trending items added at the score of
        the k-th candidate; new arrivals are those the user is likeliest to want (their
        category's share of the user's purchases, then 7-day popularity)."""
        plan = INJECTIONS.get(source, Injection())
        n_new = plan.new_arrivals if len(self.new_items) else 0
        if not (n_new or plan.trending):
            return rel, pool
        boundary = float(rel[pool[min(k, len(pool)) - 1]])
        items = self.items
        share = np.zeros(items.n_groups)  # the user's purchase share of each category
        for cat, value in (profile["top_categories"] if profile else {}).items():
            if cat in items.cat_index:
                share[items.cat_index[cat]] = value
        return kernels.inject(
            rel, pool, valid, self.new_items, share, items.group, items.pop_7d, self.trending_order, n_new, plan.trending, boundary
        )
