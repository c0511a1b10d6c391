"""Formulas and defaults that more than one layer uses, defined once.

The bottom layer: numpy only, no storerec imports beyond :mod:`storerec.core.schema`. Models
(training side) and the ranking pipeline (serving side) call these same functions, so what a
model learns from and what the service shows agree by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

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

STRENGTH_TRANSFORMS: tuple[str, ...] = ("none", "linear", "log1p", "rating")
"""How an event's ``quantity`` or ``value`` scales its type's weight (see :func:`event_strength`)."""

DEFAULT_EVENT_STRENGTH: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {EventTypes.Rating: MappingProxyType({"source": "value", "transform": "linear"})}
)
"""Strength per event type (settings ``events.strength`` and ``InteractionConfig.strength``
default to it); types not named use their weight only (transform ``none``). Ratings count by their
value (stars): on MovieLens-100K this beat both the type weight alone and a like-threshold (README
"Interaction weighting"). The built-in store has no ratings, so nothing changes there."""


def event_strength(x: np.ndarray, transform: str, threshold: float | None = None, scaled: bool = False) -> np.ndarray:
    """The factor each event's type weight is multiplied by, from its ``quantity`` or ``value`` ``x``.

    * ``none``: 1;
    * ``linear``: ``max(x, 0)``;
    * ``log1p``: ``log1p(max(x, 0))``;
    * ``rating``: 0 below ``threshold`` (a disliked item adds nothing, never a negative weight);
      at or above it 1, or ``x - threshold + 1`` when ``scaled`` (5 stars over a threshold of 4
      count 2, 4 stars 1).

    A missing ``x`` (NaN) counts 1 under every transform: the event keeps its type's weight, it is
    never dropped. float64 in, float64 out.
    """
    x = np.asarray(x, dtype=np.float64)
    missing = np.isnan(x)
    if transform == "none":
        return np.ones_like(x)
    if transform == "linear":
        out = np.maximum(x, 0.0)
    elif transform == "log1p":
        out = np.log1p(np.maximum(x, 0.0))
    elif transform == "rating":
        if threshold is None:
            raise ValueError("the rating transform needs a threshold")
        above = x >= threshold
        out = np.where(above, (x - threshold + 1.0) if scaled else 1.0, 0.0)
    else:
        raise ValueError(f"unknown strength transform {transform!r}; expected one of {list(STRENGTH_TRANSFORMS)}")
    return np.where(missing, 1.0, out)


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
