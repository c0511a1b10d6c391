"""`make bench-quality`'s own parts (#13 item 8): the held-out part, the peers' input matrix, the
peers called directly. The real data sets are not needed (tiny frames here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from storerec.tools.quality import build_matrix, holdout, peer_lists, relevant_pairs, score

T0 = datetime(2011, 1, 1, tzinfo=UTC)


def _events() -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        for j in range(8):
            item = int(rng.integers(0, 40))
            rows.append((f"u{u}", f"i{item:02d}", "purchase", T0 + timedelta(days=j * 3 + u % 3), int(rng.integers(1, 5)), None))
    rows.append(("u0", "i00", "rating", T0, None, 4.0))
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "event_type": pl.String,
                                      "timestamp": pl.Datetime("us", "UTC"), "quantity": pl.Int64, "value": pl.Float64}, orient="row")


def test_holdouts_and_relevant_pairs() -> None:
    ev = _events()
    train, test = holdout(ev, "temporal:5")
    assert train["timestamp"].max() < test["timestamp"].min()  # type: ignore[operator]
    train, test = holdout(ev, "random_fraction")
    assert train.height + test.height == ev.height
    rel = relevant_pairs(train, test, ("purchase",))
    # only items new to a user the train part knows
    assert rel.join(train.select("user_id", "item_id"), on=["user_id", "item_id"]).is_empty()
    assert set(rel["user_id"]) <= set(train["user_id"])
    with pytest.raises(ValueError, match="unknown holdout"):
        holdout(ev, "nope")


def test_the_peers_matrix_sums_value_else_quantity_else_one() -> None:
    ev = pl.DataFrame({"user_id": ["a", "a", "b", "b"], "item_id": ["x", "x", "x", "y"],
                       "quantity": [2, 3, None, None], "value": [None, None, 4.0, None]})
    m = build_matrix(ev, ["x", "y"])
    assert m.users == ["a", "b"] and m.raw.toarray().tolist() == [[5.0, 0.0], [4.0, 1.0]]
    assert m.weighted("binary").toarray().tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert np.allclose(m.weighted("log1p").toarray(), np.log1p([[5.0, 0.0], [4.0, 1.0]]))


def test_the_direct_ease_is_the_closed_form() -> None:
    """The peer's float32 Cholesky EASE ranks as the float64 textbook formula does."""
    from storerec.tools.quality import _ease_weights

    ev = _events()
    items = sorted(ev["item_id"].unique().to_list())
    m = build_matrix(ev, items)
    x = m.weighted("binary")
    g = (x.T @ x).toarray().astype(np.float64) + 50.0 * np.eye(len(items))
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    assert np.allclose(_ease_weights(x, 50.0), b, atol=1e-4)
    # a different matrix is not served from the Gram cache of the first
    x2 = m.weighted("raw")
    g2 = (x2.T @ x2).toarray().astype(np.float64) + 50.0 * np.eye(len(items))
    p2 = np.linalg.inv(g2)
    assert np.allclose(_ease_weights(x2, 50.0), -p2 / np.diag(p2) * (1 - np.eye(len(items))), atol=1e-4)


@pytest.mark.parametrize("peer,params", [
    ("implicit-als", {"factors": 8, "regularization": 0.1, "alpha": 1.0, "input": "bm25"}),
    ("implicit-itemknn", {"similarity": "cosine", "neighbours": 20, "input": "raw"}),
    ("ease", {"regularization": 50.0, "input": "binary"}),
])
def test_peers_rank_unseen_items_only(peer: str, params: dict) -> None:
    ev = _events()
    items = sorted(ev["item_id"].unique().to_list())
    train, test = holdout(ev, "random_fraction")
    rel = relevant_pairs(train, test, ("purchase",))
    users = rel["user_id"].unique().to_list()
    lists = peer_lists(peer, params, build_matrix(train, items), users)
    assert lists.group_by("user_id").len()["len"].max() == 10
    assert lists.join(train.select("user_id", "item_id"), on=["user_id", "item_id"]).is_empty(), "a train item was recommended"
    metrics = score(lists, rel, train, len(items))
    assert 0.0 <= metrics["ndcg@10"] <= 1.0 and metrics["n_test_users"] == len(users)
