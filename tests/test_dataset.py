"""Interaction matrix and feature matrices."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from storerec.models.dataset import IdMap, InteractionConfig, interaction_matrix, item_features, user_features

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _events() -> pl.DataFrame:
    rows = [  # user, item, type, hours before T0
        ("u1", "a", "view", 48), ("u1", "a", "purchase", 47), ("u1", "b", "cart", 24),
        ("u2", "b", "view", 0), ("u2", "zz", "view", 0), ("u3", "a", "search", 0),
    ]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "event_type": [r[2] for r in rows],
            "timestamp": [T0 - timedelta(hours=r[3]) for r in rows],
        }
    )


USERS = IdMap.from_values(["u1", "u2", "u3"])
ITEMS = IdMap.from_values(["a", "b"])
W = {"view": 1.0, "favorite": 2.0, "cart": 3.0, "purchase": 5.0}


def test_weights_sum_per_pair_and_unknowns_left_out() -> None:
    m = interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W)).toarray()
    np.testing.assert_allclose(m, [[6.0, 3.0], [0.0, 1.0], [0.0, 0.0]])  # zz unknown item, 'search' unweighted


def test_binary_log_and_time_decay() -> None:
    ev = _events()
    np.testing.assert_allclose(interaction_matrix(ev, USERS, ITEMS, InteractionConfig(weights=W, binary=True)).toarray()[0], [1, 1])
    np.testing.assert_allclose(
        interaction_matrix(ev, USERS, ITEMS, InteractionConfig(weights=W, confidence="log")).toarray()[0], np.log1p([6.0, 3.0]), rtol=1e-6
    )
    decayed = interaction_matrix(ev, USERS, ITEMS, InteractionConfig(weights=W, half_life_days=1.0), as_of=T0).toarray()
    assert decayed[0, 1] == pytest.approx(3.0 * 0.5)  # a cart one day old
    assert decayed[0, 0] == pytest.approx(1.0 * 0.25 + 5.0 * 0.5 ** (47 / 24), rel=1e-5)


def test_user_recency_weights_latest_events_most() -> None:
    m = interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W, recency_half_life=1.0)).toarray()
    # u1's events from latest: cart b (k=0), purchase a (k=1), view a (k=2)
    assert m[0, 1] == pytest.approx(3.0)
    assert m[0, 0] == pytest.approx(5.0 * 0.5 + 1.0 * 0.25)


def test_feature_matrices_rows_and_names() -> None:
    items = pl.DataFrame({"item_id": ["a", "b"], "category": ["Home > Kitchen", "Beauty"], "brand": ["x", None], "tags": [["eco"], []]})
    f = item_features(ITEMS, items)
    assert {"cat:Home", "cat:Home > Kitchen", "brand:x", "tag:eco", "id:a", "cat:Beauty"} <= set(f.names)
    np.testing.assert_allclose(np.asarray(f.matrix.sum(axis=1)).ravel(), [1.0, 1.0])
    profiles = pl.DataFrame(
        {"user_id": ["u1", "u3"], "tier": ["gold", "bronze"],
         "top_categories": [[{"category": "Home", "share": 1.0}], []]}
    )
    uf = user_features(USERS, profiles, identity=False)
    row = dict(zip(uf.names, uf.matrix.toarray()[0]))
    assert row["tier:gold"] > 0 and row["likes:Home"] > 0
    assert uf.matrix[1].nnz == 0  # u2 has no profile row
