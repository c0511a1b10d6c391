"""Beyond-accuracy metrics: catalogue coverage, intra-list diversity, novelty, popularity.

Each metric has a per-batch part that :class:`storerec.evaluation.metrics.MetricsAccumulator`
keeps (the set of recommended items, one diversity value per user, a histogram of the
recommended items' popularity) and a final reduction; the functions below are the one-frame
forms of the same computations.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl

from storerec.core.schema import Columns

C = Columns


def coverage(reco: pl.DataFrame, k: int, n_catalogue: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    return reco.filter(pl.col("rank") <= k)[C.Item].n_unique() / max(1, n_catalogue)


def per_user_diversity(top: pl.DataFrame, item_categories: pl.DataFrame) -> pl.DataFrame:
    """``user_id, ild`` for every list of ``top`` (already cut at k) with at least two items:
    the share of its item pairs from different categories."""
    joined = top.select(C.User, C.Item).join(item_categories.select(C.Item, C.Category), on=C.Item, how="left")
    per_cat = joined.group_by(C.User, C.Category).agg(pl.len().alias("c"))
    per_user = per_cat.group_by(C.User).agg(pl.col("c").sum().alias("n"), (pl.col("c") * (pl.col("c") - 1)).sum().alias("same"))
    return per_user.filter(pl.col("n") > 1).select(
        C.User, (1.0 - pl.col("same") / (pl.col("n") * (pl.col("n") - 1))).alias("ild")
    )


def exact_mean(values: np.ndarray | pl.Series) -> float:
    """Mean with an exactly rounded sum (``math.fsum``): the same number in any row order, so a
    metric averaged over users does not depend on how they were batched."""
    arr = values.to_numpy() if isinstance(values, pl.Series) else np.asarray(values)
    return math.fsum(arr.astype(np.float64).tolist()) / len(arr) if len(arr) else 0.0


def intra_list_diversity(reco: pl.DataFrame, k: int, item_categories: pl.DataFrame) -> float:
    """Mean over lists of the share of item pairs from different categories (0 = one category)."""
    return exact_mean(per_user_diversity(reco.filter(pl.col("rank") <= k), item_categories)["ild"])


def item_popularity(train: pl.DataFrame) -> pl.DataFrame:
    """Distinct train users per item (users counted by their categorical code, in polars' streaming
    engine: the same counts as on the strings, with a fraction of the transient memory on millions
    of events)."""
    users = pl.col(C.User).cast(pl.Categorical).to_physical()
    return (
        train.lazy().select(C.Item, users).group_by(C.Item).agg(pl.col(C.User).n_unique().alias("pop"))
        .collect(engine="streaming")
    )


def popularity_histogram(top: pl.DataFrame, popularity: pl.DataFrame) -> Counter[int]:
    """How many rows of ``top`` (already cut at k) recommend an item of each train popularity
    (``item_popularity``; items nobody saw have popularity 0)."""
    pop = top.select(C.Item).join(popularity, on=C.Item, how="left")["pop"].fill_null(0)
    counts = pop.value_counts()
    return Counter(dict(zip(counts["pop"].to_list(), counts["count"].to_list(), strict=True)))


def novelty_from_histogram(histogram: Counter[int], n_users: int) -> tuple[float, float]:
    """Mean self-information ``-log2(max(pop, 1) / n_users)`` and mean popularity of the rows
    counted in ``histogram`` (popularity -> rows)."""
    total = sum(histogram.values())
    if total == 0:
        return 0.0, 0.0
    n_users = max(1, n_users)
    values = sorted(histogram)
    novelty = math.fsum(histogram[v] * -math.log2(max(v, 1) / n_users) for v in values) / total
    return novelty, sum(histogram[v] * v for v in values) / total


def novelty_and_popularity(reco: pl.DataFrame, k: int, train: pl.DataFrame) -> tuple[float, float]:
    """Mean self-information ``-log2(users_i / n_users)`` of recommended items, and their mean
    train popularity (distinct users). Items nobody saw count as seen by one user."""
    hist = popularity_histogram(reco.filter(pl.col("rank") <= k), item_popularity(train))
    return novelty_from_histogram(hist, train[C.User].n_unique())
