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


SHUFFLE_SEED = 20240501  # per-user order when timestamps carry none (fixed: the split is reproducible)


def time_orders_events(events: pl.DataFrame, min_share: float = 0.5) -> bool:
    """Whether timestamps order each user's events: at least ``min_share`` of the users with two or
    more events have two or more distinct times. False for data imported with one constant or
    per-user time (play counts, baskets without dates): "the last 20 %" would then mean "the
    largest item ids"."""
    per_user = (
        events.lazy().select(C.User, C.Timestamp).group_by(C.User)
        .agg(pl.len().alias("n"), pl.col(C.Timestamp).n_unique().alias("t"))
        .collect(engine="streaming")
    )
    multi = per_user.filter(pl.col("n") > 1)
    if multi.is_empty():
        return True
    return int((multi["t"] > 1).sum()) >= min_share * multi.height


def _per_user_tail(events: pl.DataFrame, n_test: pl.Expr, shuffle: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    order = (
        [C.User, pl.struct(C.User, C.Item).hash(SHUFFLE_SEED).alias("_key"), "_row"] if shuffle
        else [C.User, C.Timestamp, C.Item, "_row"]
    )
    ranked = (
        events.with_row_index("_row")
        .sort(order)
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


def last_fraction_split(
    events: pl.DataFrame, fraction: float = 0.2, min_test: int = 1, shuffle: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, the last ``floor(fraction * n)`` events (at least ``min_test``) go to test.

    Users with a single event keep it in train (nothing would be left to learn from). With
    ``shuffle`` the order is a fixed pseudo-random one (a seeded hash of user and item) instead of
    time: for data whose timestamps carry no order (:func:`time_orders_events`).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n_test = pl.max_horizontal((pl.col("_n") * fraction).floor().cast(pl.Int64), pl.lit(min_test))
    n_test = pl.when(pl.col("_n") > 1).then(pl.min_horizontal(n_test, pl.col("_n") - 1)).otherwise(0)
    return _per_user_tail(events, n_test, shuffle)


def last_n_split(events: pl.DataFrame, n: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per user, the last ``n`` events go to test (users with <= n events stay in train)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _per_user_tail(events, pl.when(pl.col("_n") > n).then(pl.lit(n)).otherwise(0))
