"""Train/test splitters on the events table.

* :func:`temporal_split` - one global cut date (what production sees: train on the past, test on
  the future);
* :func:`last_fraction_split` / :func:`last_n_split` - per user, the latest interactions (ordered
  by timestamp, then item_id so that ties are deterministic) go to test.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from storerec.core.schema import Columns

C = Columns


def temporal_split(events: pl.DataFrame, cut: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events before ``cut`` train, the rest test."""
    return events.filter(pl.col(C.Timestamp) < cut), events.filter(pl.col(C.Timestamp) >= cut)


def _per_user_tail(events: pl.DataFrame, n_test: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    ranked = (
        events.with_row_index("_row")
        .sort([C.User, C.Timestamp, C.Item, "_row"])
        .with_columns(
            pl.int_range(pl.len()).over(C.User).alias("_pos"),
            pl.len().over(C.User).alias("_n"),
        )
        .with_columns(n_test.alias("_n_test"))
    )
    is_test = pl.col("_pos") >= pl.col("_n") - pl.col("_n_test")
    drop = ["_pos", "_n", "_n_test"]
    train = ranked.filter(~is_test).sort("_row").drop(drop + ["_row"])
    test = ranked.filter(is_test).sort("_row").drop(drop + ["_row"])
    return train, test


def last_fraction_split(events: pl.DataFrame, fraction: float = 0.2, min_test: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, the last ``floor(fraction * n)`` events (at least ``min_test``) go to test.

    Users with a single event keep it in train (nothing would be left to learn from).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n_test = pl.max_horizontal((pl.col("_n") * fraction).floor().cast(pl.Int64), pl.lit(min_test))
    n_test = pl.when(pl.col("_n") > 1).then(pl.min_horizontal(n_test, pl.col("_n") - 1)).otherwise(0)
    return _per_user_tail(events, n_test)


def last_n_split(events: pl.DataFrame, n: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, the last ``n`` events go to test (users with <= n events stay in train)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _per_user_tail(events, pl.when(pl.col("_n") > n).then(pl.lit(n)).otherwise(0))
