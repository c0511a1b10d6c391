"""``calc_metrics``: every offline metric in one plain dict (RecTools style).

Metrics are computed a batch of users at a time by :class:`MetricsAccumulator`: each batch
leaves one row of ranking metrics per test user, one diversity value per list, the set of
recommended items (coverage) and a histogram of their train popularity (novelty), so memory
grows with the number of test users and the catalogue, never with their product.
:func:`calc_metrics_batched` asks a ``recommend`` callable for one batch of test users at a
time; :func:`calc_metrics` evaluates one recommendations frame (the same code, one batch).
Means use an exactly rounded sum, so the numbers do not depend on the batching.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator
from typing import Required, TypedDict, Unpack

import numpy as np
import polars as pl

from storerec.core.schema import Columns
from storerec.evaluation.beyond import (
    exact_mean,
    item_popularity,
    novelty_from_histogram,
    per_user_diversity,
    popularity_histogram,
)
from storerec.evaluation.ranking import RANKING_METRICS, per_user_ranking

C = Columns
class MetricOptions(TypedDict, total=False):
    """The keyword options of :class:`MetricsAccumulator` (``n_catalogue`` is required)."""

    k: int
    n_catalogue: Required[int]
    item_categories: pl.DataFrame | None
    user_groups: pl.DataFrame | None
    group_column: str
    cold_items: Collection[str] | None


BATCH_USERS = 20_000  # test users per batch of :func:`calc_metrics_batched` (about 10 MB of lists at k=10)


class MetricsAccumulator:
    """Every metric of :func:`calc_metrics`, fed one batch of users at a time.

    Call :meth:`add` with the top-k lists of a batch of users and the test interactions of the
    same users (every list and every test row of a user in one batch; a user seen in an earlier
    batch is an error), then :meth:`result`.

    Parameters
    ----------
    train
        Train events (``user_id, item_id``): item popularity and user count for novelty.
    k
        Cut-off; rows of rank above ``k`` are ignored.
    n_catalogue
        Catalogue size, for coverage.
    item_categories
        ``item_id, category`` for intra-list diversity.
    user_groups
        ``user_id, <group_column>``: adds ``ndcg@k/<group>=<value>`` (and recall) per group.
    cold_items
        Items without train interactions: adds ``cold_item_share@k`` (share of recommended rows)
        and ``cold_item_recall@k`` (share of test rows on those items that were recommended).
    """

    def __init__(
        self,
        train: pl.DataFrame,
        *,
        k: int = 10,
        n_catalogue: int,
        item_categories: pl.DataFrame | None = None,
        user_groups: pl.DataFrame | None = None,
        group_column: str = "segment",
        cold_items: Collection[str] | None = None,
    ) -> None:
        self.k = k
        self.n_catalogue = n_catalogue
        self.item_categories = item_categories.select(C.Item, C.Category) if item_categories is not None else None
        self.user_groups = user_groups
        self.group_column = group_column
        self.cold_items = pl.Series(C.Item, list(cold_items), dtype=pl.String) if cold_items is not None else None
        self.popularity = item_popularity(train)
        self.n_train_users = int(train.lazy().select(pl.col(C.User).n_unique()).collect(engine="streaming").item())
        self._users: set[str] = set()
        self._ranking: list[pl.DataFrame] = []
        self._diversity: list[pl.DataFrame] = []
        self._items: set[str] = set()
        self._popularity: Counter[int] = Counter()
        self._rows = self._cold_rows = self._cold_hits = self._cold_test = 0

    def add(self, reco: pl.DataFrame, test: pl.DataFrame) -> None:
        """One batch: ``reco`` (``user_id, item_id, rank``, rank 1 = best) and ``test`` (at least
        ``user_id, item_id``), both of the batch's users only."""
        batch_users = set(reco[C.User].unique().to_list()) | set(test[C.User].unique().to_list())
        again = batch_users & self._users
        if again:
            raise ValueError(f"{len(again)} user(s) already counted in an earlier batch, e.g. {sorted(again)[:3]}")
        self._users |= batch_users
        top = reco.filter(pl.col("rank") <= self.k).select(C.User, C.Item, "rank")
        self._ranking.append(per_user_ranking(top, test, self.k))
        if self.item_categories is not None:
            self._diversity.append(per_user_diversity(top, self.item_categories))
        self._items.update(top[C.Item].unique().to_list())
        self._popularity.update(popularity_histogram(top, self.popularity))
        self._rows += top.height
        if self.cold_items is not None:
            self._cold_rows += top.filter(pl.col(C.Item).is_in(self.cold_items)).height
            cold_test = test.filter(pl.col(C.Item).is_in(self.cold_items)).select(C.User, C.Item)
            self._cold_test += cold_test.height
            self._cold_hits += top.join(cold_test, on=[C.User, C.Item], how="inner").height

    def per_user(self, metric: str = "ndcg") -> pl.DataFrame:
        """``user_id, <metric>`` for every test user counted so far (sorted by user): the paired
        samples a comparison of two models on the same split needs (:mod:`storerec.evaluation.significance`)."""
        if not self._ranking:
            return pl.DataFrame({C.User: [], metric: []}, schema={C.User: pl.String, metric: pl.Float64})
        return pl.concat(self._ranking).select(C.User, metric).sort(C.User)

    def result(self) -> dict[str, float]:
        """Keys like ``ndcg@10``, ``coverage@10``, ``ndcg@10/segment=dormant``; ``n_test_users``."""
        k = self.k
        per_user = pl.concat(self._ranking) if self._ranking else None
        out: dict[str, float] = {
            f"{m}@{k}": exact_mean(per_user[m]) if per_user is not None else 0.0 for m in RANKING_METRICS
        }
        out["n_test_users"] = float(per_user.height if per_user is not None else 0)
        out[f"coverage@{k}"] = len(self._items) / max(1, self.n_catalogue)
        if self.item_categories is not None:
            out[f"diversity@{k}"] = exact_mean(pl.concat(self._diversity)["ild"]) if self._diversity else 0.0
        out[f"novelty@{k}"], out[f"avg_popularity@{k}"] = novelty_from_histogram(self._popularity, self.n_train_users)
        if self.user_groups is not None and per_user is not None:
            g = self.group_column
            grouped = per_user.join(self.user_groups.select(C.User, g), on=C.User, how="left").with_columns(
                pl.col(g).cast(pl.String).fill_null("unknown")
            )
            for (value,), part in sorted(grouped.partition_by(g, as_dict=True).items()):
                out[f"ndcg@{k}/{g}={value}"] = exact_mean(part["ndcg"])
                out[f"recall@{k}/{g}={value}"] = exact_mean(part["recall"])
                out[f"n_users/{g}={value}"] = float(part.height)
        if self.cold_items is not None:
            out[f"cold_item_share@{k}"] = self._cold_rows / self._rows if self._rows else 0.0
            if self._cold_test:
                out[f"cold_item_recall@{k}"] = self._cold_hits / self._cold_test
        return out


def calc_metrics(reco: pl.DataFrame, test: pl.DataFrame, train: pl.DataFrame, **options: Unpack[MetricOptions]) -> dict[str, float]:
    """Ranking metrics averaged over test users, plus beyond-accuracy metrics, of one
    recommendations frame (see :class:`MetricsAccumulator` for the parameters).

    Parameters
    ----------
    reco
        ``user_id, item_id, rank`` (rank 1 = best).
    test, train
        Events (at least ``user_id, item_id``); metrics are over users with test items.

    Returns
    -------
    dict
        Keys like ``ndcg@10``, ``coverage@10``, ``ndcg@10/segment=dormant``; ``n_test_users``.
    """
    acc = MetricsAccumulator(train, **options)
    acc.add(reco, test)
    return acc.result()


def user_batches(test: pl.DataFrame, batch_users: int = BATCH_USERS) -> Iterator[tuple[list[str], pl.DataFrame]]:
    """The test users in batches (first-seen order) with their test rows."""
    if batch_users < 1:
        raise ValueError(f"batch_users must be >= 1, got {batch_users}")
    users = test[C.User].unique(maintain_order=True)
    batch_of = pl.DataFrame({C.User: users, "_batch": np.arange(len(users)) // batch_users})
    parts = test.join(batch_of, on=C.User, how="left").partition_by("_batch", as_dict=True, include_key=False)
    for b, start in enumerate(range(0, len(users), batch_users)):
        yield users[start : start + batch_users].to_list(), parts[(b,)]


def calc_metrics_batched(
    recommend: Callable[[list[str]], pl.DataFrame],
    test: pl.DataFrame,
    train: pl.DataFrame,
    *,
    batch_users: int = BATCH_USERS,
    **options: Unpack[MetricOptions],
) -> dict[str, float]:
    """:func:`calc_metrics` of ``recommend(users)`` (top-k lists of those users) over the test
    users, ``batch_users`` at a time: no recommendations frame for all users at once."""
    acc = MetricsAccumulator(train, **options)
    for users, test_part in user_batches(test, batch_users):
        acc.add(recommend(users), test_part)
    return acc.result()
