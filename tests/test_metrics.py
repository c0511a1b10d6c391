"""Metrics and splitters, checked against values computed by hand."""

from datetime import UTC, datetime, timedelta
from math import log2

import polars as pl
import pytest

from storerec.evaluation.beyond import coverage, intra_list_diversity, novelty_and_popularity
from storerec.evaluation.metrics import calc_metrics
from storerec.evaluation.ranking import per_user_ranking
from storerec.evaluation.splitters import last_fraction_split, last_n_split, temporal_split

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _reco(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rank"], orient="row")


def _pairs(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id"], orient="row")


def test_ranking_metrics_by_hand() -> None:
    # u1: hits at ranks 1 and 3 of k=3, 2 relevant; u2: no hits, 1 relevant; u3: hit at rank 2, 4 relevant
    reco = _reco([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),
                  ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3),
                  ("u3", "x", 1), ("u3", "y", 2), ("u3", "z", 3)])
    test = _pairs([("u1", "a"), ("u1", "c"), ("u2", "d"), ("u3", "y"), ("u3", "p"), ("u3", "q"), ("u3", "r")])
    m = per_user_ranking(reco, test, k=3).sort("user_id")
    u1, u2, u3 = m.to_dicts()
    assert u1["precision"] == pytest.approx(2 / 3) and u1["recall"] == 1.0
    assert u1["ndcg"] == pytest.approx((1 + 1 / log2(4)) / (1 + 1 / log2(3)))
    assert u1["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert u1["mrr"] == 1.0 and u1["hitrate"] == 1.0
    assert u2 == {"user_id": "u2", "precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "mrr": 0.0, "hitrate": 0.0}
    assert u3["recall"] == pytest.approx(1 / 4)
    assert u3["ndcg"] == pytest.approx((1 / log2(3)) / (1 + 1 / log2(3) + 1 / log2(4)))  # ideal over min(4, 3)
    assert u3["map"] == pytest.approx((1 / 2) / 3) and u3["mrr"] == 0.5


def test_user_without_recommendations_counts_as_zero() -> None:
    reco = _reco([("u1", "a", 1)])
    test = _pairs([("u1", "a"), ("u2", "b")])
    m = calc_metrics(reco, test, test, k=1, n_catalogue=10)
    assert m["precision@1"] == 0.5 and m["n_test_users"] == 2


def test_beyond_accuracy_by_hand() -> None:
    reco = _reco([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "c", 2)])
    cats = pl.DataFrame({"item_id": ["a", "b", "c"], "category": ["X", "X", "Y"]})
    assert coverage(reco, 2, 10) == pytest.approx(0.3)
    assert intra_list_diversity(reco, 2, cats) == pytest.approx(0.5)  # u1 same category (0), u2 different (1)
    train = _pairs([("u1", "a"), ("u2", "a"), ("u3", "a"), ("u4", "b")])
    nov, pop = novelty_and_popularity(reco, 2, train)
    # a seen by 3 of 4 users, b by 1, c by nobody (counted as 1)
    assert nov == pytest.approx((2 * -log2(3 / 4) + -log2(1 / 4) + -log2(1 / 4)) / 4)
    assert pop == pytest.approx((3 + 1 + 3 + 0) / 4)


def test_segment_breakdown() -> None:
    reco = _reco([("u1", "a", 1), ("u2", "b", 1)])
    test = _pairs([("u1", "a"), ("u2", "c")])
    groups = pl.DataFrame({"user_id": ["u1", "u2"], "segment": ["active", "new"]})
    m = calc_metrics(reco, test, test, k=1, n_catalogue=3, user_groups=groups)
    assert m["ndcg@1/segment=active"] == 1.0 and m["ndcg@1/segment=new"] == 0.0


def _events(spec: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": [s[0] for s in spec], "item_id": [s[1] for s in spec], "timestamp": [T0 + timedelta(hours=s[2]) for s in spec]}
    )


def test_splitters() -> None:
    ev = _events([("u1", f"i{j}", j) for j in range(10)] + [("u2", "a", 1), ("u3", "b", 0), ("u3", "a", 0)])
    train, test = last_fraction_split(ev, 0.2)
    assert sorted(test.filter(pl.col("user_id") == "u1")["item_id"]) == ["i8", "i9"]
    assert "u2" not in test["user_id"].to_list()  # a single event stays in train
    assert test.filter(pl.col("user_id") == "u3")["item_id"].to_list() == ["b"]  # same time: ties by item_id
    assert train.height + test.height == ev.height
    train, test = last_n_split(ev, 3)
    assert sorted(test["item_id"]) == ["i7", "i8", "i9"]
    train, test = temporal_split(ev, T0 + timedelta(hours=5))
    assert test["timestamp"].min() >= T0 + timedelta(hours=5) and train["timestamp"].max() < T0 + timedelta(hours=5)
    with pytest.raises(ValueError):
        last_fraction_split(ev, 1.5)
