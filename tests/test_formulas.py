"""The single-sourced formulas (storerec.core.formulas) and their users agree."""

from __future__ import annotations

import numpy as np
import polars as pl

from storerec.core.formulas import DEFAULT_EVENT_WEIGHTS, established, new_arrival_score, trending_rank_score, unit_rows
from storerec.core.settings import Settings
from storerec.models.dataset import InteractionConfig, table_column


def test_default_event_weights_are_the_settings_and_matrix_defaults() -> None:
    assert Settings().events.weights == dict(DEFAULT_EVENT_WEIGHTS) == InteractionConfig().weights
    assert set(DEFAULT_EVENT_WEIGHTS) <= set(Settings().events.types)


def test_trending_and_new_arrival_scores() -> None:
    trending = np.array([3.0, 3.0, 0.5, 4.0], np.float32)
    users = np.array([10, 20, 20, 0], np.float32)
    is_new = np.array([False, False, False, True])
    got = trending_rank_score(trending, users, is_new)
    np.testing.assert_allclose(got, [3.0 * 1.5, 3.0 * 2.0, 0.5 * 2.0, 0.0])
    assert got.dtype == np.float32 and established(is_new).tolist() == [True, True, True, False]
    assert trending_rank_score(trending, np.zeros(4, np.float32), is_new).tolist() == [3.0, 3.0, 0.5, 0.0]  # no division by 0
    new = new_arrival_score(is_new, np.array([5, 0, 1, 7], np.float32))
    assert new.dtype == np.float32 and new.tolist() == [0.0, 0.0, 0.0, 8.0]


def test_unit_rows_keep_zero_rows() -> None:
    v = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]], np.float32)
    np.testing.assert_allclose(unit_rows(v), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert v[0, 0] == 3.0  # the input is left alone


def test_table_column_defaults() -> None:
    t = pl.DataFrame({"a": [1, None, 3]})
    assert table_column(t, "a", 0).tolist() == [1, 0, 3]
    assert table_column(t, "missing", False).tolist() == [False, False, False]


def test_popularity_lists_rank_as_the_served_lists() -> None:
    """popularity kind="trending" / "new" order items by the same formulas as the Ranker's
    trending and new-arrival lists (here with all-time users = training users)."""
    import scipy.sparse as sp

    from storerec.models.dataset import Dataset, IdMap
    from storerec.models.popularity import PopularityModel
    from storerec.ranking.facts import ItemFacts

    table = pl.DataFrame({
        "item_id": ["a", "b", "c", "d"], "category": ["X", "X", "Y", "Y"], "price": [1.0, 2.0, 3.0, 4.0],
        "is_new": [False, False, True, False], "trending_score": [2.5, 3.0, 9.0, 0.0], "pop_7d": [4, 6, 2, 0],
        "users_total": [3, 1, 0, 2],
    })
    seen = sp.csr_matrix(np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 0, 0]], np.float32))
    dataset = Dataset(IdMap.from_values(["u1", "u2", "u3"]), IdMap.from_values(table["item_id"].to_list()), seen, item_table=table)
    facts = ItemFacts.from_table(table["item_id"].to_list(), table)
    trending = PopularityModel(kind="trending").fit(dataset)
    np.testing.assert_array_equal(trending.item_scores, facts.trending_rank)  # users_total == training users here
    new = PopularityModel(kind="new").fit(dataset)
    np.testing.assert_array_equal(new.item_scores, facts.new_rank)
