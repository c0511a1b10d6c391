"""Ranking metrics at k with binary relevance, averaged over test users.

Definitions (rel = the user's test items, hits = rel among the top k):
precision = |hits| / k; recall = |hits| / |rel|; NDCG = DCG / IDCG with gains 1/log2(rank+1)
and IDCG over min(|rel|, k) items; MAP = sum_{hits} precision@rank / min(|rel|, k);
MRR = 1 / rank of the first hit; hit rate = 1 if any hit. A test user with no
recommendations scores 0 on every metric.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from storerec.core.schema import Columns

C = Columns
RANKING_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "hitrate")


def per_user_ranking(reco: pl.DataFrame, test: pl.DataFrame, k: int) -> pl.DataFrame:
    """One row per test user with every ranking metric at ``k``."""
    rel = test.select(C.User, C.Item).unique().group_by(C.User).agg(pl.len().alias("n_rel"))
    hits = (
        reco.filter(pl.col("rank") <= k)
        .select(C.User, C.Item, "rank")
        .join(test.select(C.User, C.Item).unique(), on=[C.User, C.Item], how="inner")
        .sort(C.User, "rank")
        .with_columns(pl.int_range(1, pl.len() + 1).over(C.User).alias("hit_no"))
    )
    per_user = hits.group_by(C.User).agg(
        pl.len().alias("n_hits"),
        (1.0 / (pl.col("rank") + 1).log(2)).sum().alias("dcg"),
        (pl.col("hit_no") / pl.col("rank")).sum().alias("ap_sum"),
        (1.0 / pl.col("rank").min()).alias("mrr"),
    )
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    out = rel.join(per_user, on=C.User, how="left").fill_null(0)
    ideal_n = pl.min_horizontal(pl.col("n_rel"), pl.lit(k))
    return out.select(
        C.User,
        (pl.col("n_hits") / k).alias("precision"),
        (pl.col("n_hits") / pl.col("n_rel")).alias("recall"),
        (pl.col("dcg") / pl.lit(pl.Series(discounts)).gather(ideal_n)).alias("ndcg"),
        (pl.col("ap_sum") / ideal_n).alias("map"),
        pl.col("mrr").cast(pl.Float64),
        (pl.col("n_hits") > 0).cast(pl.Float64).alias("hitrate"),
    )
