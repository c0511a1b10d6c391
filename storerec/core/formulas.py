"""Formulas and defaults that more than one layer uses, defined once.

The bottom layer: numpy only, no storerec imports beyond :mod:`storerec.core.schema`. Models
(training side) and the ranking pipeline (serving side) call these same functions, so what a
model learns from and what the service shows agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from storerec.core.schema import EventTypes

DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        EventTypes.View: 1.0,
        EventTypes.Favorite: 2.0,
        EventTypes.Cart: 3.0,
        EventTypes.Purchase: 5.0,
        EventTypes.Rating: 1.0,
    }
)
"""Strength of each event type (settings ``events.weights`` and ``InteractionConfig.weights``
default to it); its keys, in this order, are the default accepted event types."""


def established(is_new: np.ndarray) -> np.ndarray:
    """``True`` for items that are not new arrivals: only they can trend (a new arrival has no
    earlier weeks to grow from; it has its own list)."""
    return ~np.asarray(is_new, dtype=bool)


def trending_rank_score(trending_score: np.ndarray, popularity: np.ndarray, is_new: np.ndarray) -> np.ndarray:
    """The order of trending lists: ``trending_score * (1 + popularity / max popularity)`` for
    established items, 0 for new arrivals.

    ``trending_score`` is users this week over the weekly average of the four weeks before
    (item features); ``popularity`` is all-time users per item (the tie-breaker between equally
    fast growers). float32 in, float32 out.
    """
    base = popularity / max(1.0, float(popularity.max())) if len(popularity) else popularity
    return trending_score * (1.0 + base) * established(is_new)


def new_arrival_score(is_new: np.ndarray, pop_7d: np.ndarray) -> np.ndarray:
    """The order of new-arrival lists: ``1 + users in the last 7 days`` for new arrivals, 0 for
    other items (float32)."""
    return np.where(np.asarray(is_new, dtype=bool), 1.0 + pop_7d, 0.0).astype(np.float32)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (cosine normalisation); all-zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    return vectors / norms[:, None]
