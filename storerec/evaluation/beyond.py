"""Beyond-accuracy metrics: catalogue coverage, intra-list diversity, novelty, popularity."""

from __future__ import annotations

import numpy as np
import polars as pl

from storerec.core.schema import Columns

C = Columns


def coverage(reco: pl.DataFrame, k: int, n_catalogue: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    return reco.filter(pl.col("rank") <= k)[C.Item].n_unique() / max(1, n_catalogue)


def intra_list_diversity(reco: pl.DataFrame, k: int, item_categories: pl.DataFrame) -> float:
    """Mean over lists of the share of item pairs from different categories (0 = one category)."""
    top = reco.filter(pl.col("rank") <= k).join(item_categories.select(C.Item, C.Category), on=C.Item, how="left")
    per_cat = top.group_by(C.User, C.Category).agg(pl.len().alias("c"))
    per_user = per_cat.group_by(C.User).agg(pl.col("c").sum().alias("n"), (pl.col("c") * (pl.col("c") - 1)).sum().alias("same"))
    per_user = per_user.filter(pl.col("n") > 1).with_columns(
        (1.0 - pl.col("same") / (pl.col("n") * (pl.col("n") - 1))).alias("ild")
    )
    return float(per_user.select(pl.col("ild").mean()).item()) if per_user.height else 0.0


def item_popularity(train: pl.DataFrame) -> pl.DataFrame:
    """Distinct train users per item."""
    return train.group_by(C.Item).agg(pl.col(C.User).n_unique().alias("pop"))


def novelty_and_popularity(reco: pl.DataFrame, k: int, train: pl.DataFrame) -> tuple[float, float]:
    """Mean self-information ``-log2(users_i / n_users)`` of recommended items, and their mean
    train popularity (distinct users). Items nobody saw count as seen by one user."""
    n_users = max(1, train[C.User].n_unique())
    top = reco.filter(pl.col("rank") <= k).join(item_popularity(train), on=C.Item, how="left")
    pop = top["pop"].fill_null(0).to_numpy().astype(np.float64)
    if len(pop) == 0:
        return 0.0, 0.0
    novelty = float(np.mean(-np.log2(np.maximum(pop, 1.0) / n_users)))
    return novelty, float(pop.mean())
