"""``calc_metrics``: every offline metric in one plain dict (RecTools style)."""

from __future__ import annotations

import polars as pl

from storerec.core.schema import Columns
from storerec.evaluation.beyond import coverage, intra_list_diversity, novelty_and_popularity
from storerec.evaluation.ranking import RANKING_METRICS, per_user_ranking

C = Columns


def calc_metrics(
    reco: pl.DataFrame,
    test: pl.DataFrame,
    train: pl.DataFrame,
    *,
    k: int = 10,
    n_catalogue: int,
    item_categories: pl.DataFrame | None = None,
    user_groups: pl.DataFrame | None = None,
    group_column: str = "segment",
) -> dict[str, float]:
    """Ranking metrics averaged over test users, plus beyond-accuracy metrics.

    Parameters
    ----------
    reco
        ``user_id, item_id, rank`` (rank 1 = best).
    test, train
        Events (at least ``user_id, item_id``); metrics are over users with test items.
    n_catalogue
        Catalogue size, for coverage.
    item_categories
        ``item_id, category`` for intra-list diversity.
    user_groups
        ``user_id, <group_column>``: adds ``ndcg@k/<group>=<value>`` (and recall) per group.

    Returns
    -------
    dict
        Keys like ``ndcg@10``, ``coverage@10``, ``ndcg@10/segment=dormant``; ``n_test_users``.
    """
    per_user = per_user_ranking(reco, test, k)
    means = per_user.select(pl.col(m).mean() for m in RANKING_METRICS).row(0, named=True) if per_user.height else {}
    out: dict[str, float] = {f"{m}@{k}": float(means.get(m) or 0.0) for m in RANKING_METRICS}
    out["n_test_users"] = float(per_user.height)
    out[f"coverage@{k}"] = coverage(reco, k, n_catalogue)
    if item_categories is not None:
        out[f"diversity@{k}"] = intra_list_diversity(reco, k, item_categories)
    out[f"novelty@{k}"], out[f"avg_popularity@{k}"] = novelty_and_popularity(reco, k, train)
    if user_groups is not None:
        grouped = per_user.join(user_groups.select(C.User, group_column), on=C.User, how="left").with_columns(
            pl.col(group_column).cast(pl.String).fill_null("unknown")
        )
        for row in grouped.group_by(group_column).agg(
            pl.col("ndcg").mean(), pl.col("recall").mean(), pl.len().alias("n")
        ).sort(group_column).iter_rows(named=True):
            g = row[group_column]
            out[f"ndcg@{k}/{group_column}={g}"] = float(row["ndcg"])
            out[f"recall@{k}/{group_column}={g}"] = float(row["recall"])
            out[f"n_users/{group_column}={g}"] = float(row["n"])
    return out
