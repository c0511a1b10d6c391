"""Metrics and splitters, checked against values computed by hand."""

from datetime import UTC, datetime, timedelta
from math import log2
from typing import Any

import polars as pl
import pytest

from storerec.evaluation.beyond import coverage, intra_list_diversity, novelty_and_popularity
from storerec.evaluation.metrics import MetricsAccumulator, calc_metrics, calc_metrics_batched
from storerec.evaluation.ranking import RANKING_METRICS, per_user_ranking
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


# ---- batched evaluation (issue #13 item 5) ------------------------------------------------------


def _old_calc_metrics(reco: pl.DataFrame, test: pl.DataFrame, train: pl.DataFrame, *, k: int, n_catalogue: int,
                      item_categories: pl.DataFrame, user_groups: pl.DataFrame) -> dict[str, float]:
    """The whole-frame implementation before batching (kept verbatim as the reference)."""
    import numpy as np

    per_user = per_user_ranking(reco, test, k)
    means = per_user.select(pl.col(m).mean() for m in RANKING_METRICS).row(0, named=True) if per_user.height else {}
    out: dict[str, float] = {f"{m}@{k}": float(means.get(m) or 0.0) for m in RANKING_METRICS}
    out["n_test_users"] = float(per_user.height)
    top = reco.filter(pl.col("rank") <= k)
    out[f"coverage@{k}"] = top["item_id"].n_unique() / max(1, n_catalogue)
    joined = top.join(item_categories.select("item_id", "category"), on="item_id", how="left")
    per_cat = joined.group_by("user_id", "category").agg(pl.len().alias("c"))
    ild = per_cat.group_by("user_id").agg(pl.col("c").sum().alias("n"), (pl.col("c") * (pl.col("c") - 1)).sum().alias("same"))
    ild = ild.filter(pl.col("n") > 1).with_columns((1.0 - pl.col("same") / (pl.col("n") * (pl.col("n") - 1))).alias("ild"))
    out[f"diversity@{k}"] = float(ild.select(pl.col("ild").mean()).item()) if ild.height else 0.0
    n_users = max(1, train["user_id"].n_unique())
    popularity = train.group_by("item_id").agg(pl.col("user_id").n_unique().alias("pop"))
    pop = top.join(popularity, on="item_id", how="left")["pop"].fill_null(0).to_numpy().astype(np.float64)
    out[f"novelty@{k}"] = float(np.mean(-np.log2(np.maximum(pop, 1.0) / n_users))) if len(pop) else 0.0
    out[f"avg_popularity@{k}"] = float(pop.mean()) if len(pop) else 0.0
    grouped = per_user.join(user_groups.select("user_id", "segment"), on="user_id", how="left").with_columns(
        pl.col("segment").cast(pl.String).fill_null("unknown")
    )
    for row in grouped.group_by("segment").agg(pl.col("ndcg").mean(), pl.col("recall").mean(), pl.len().alias("n")).iter_rows(named=True):
        out[f"ndcg@{k}/segment={row['segment']}"] = float(row["ndcg"])
        out[f"recall@{k}/segment={row['segment']}"] = float(row["recall"])
        out[f"n_users/segment={row['segment']}"] = float(row["n"])
    return out


def test_accumulator_batches_equal_one_frame() -> None:
    """Any split of the users into batches gives the very same numbers as one frame."""
    import random

    rng = random.Random(3)
    users = [f"u{i}" for i in range(60)]
    items = [f"i{j}" for j in range(40)]
    reco = _reco([(u, it, r + 1) for u in users[:55] for r, it in enumerate(rng.sample(items, 12))])
    test = _pairs([(u, rng.choice(items)) for u in users for _ in range(rng.randint(1, 4))])
    train = _pairs([(rng.choice(users), rng.choice(items)) for _ in range(400)])
    cats = pl.DataFrame({"item_id": items, "category": [f"c{j % 5}" for j in range(40)]})
    groups = pl.DataFrame({"user_id": users[:50], "segment": [("a", "b", "c")[i % 3] for i in range(50)]})
    kw = dict(k=10, n_catalogue=50, item_categories=cats, user_groups=groups, cold_items=items[:7])
    whole = calc_metrics(reco, test, train, **kw)  # type: ignore[arg-type]
    for batch in (1, 7, 60):
        batched = calc_metrics_batched(lambda us: reco.filter(pl.col("user_id").is_in(us)), test, train, batch_users=batch, **kw)  # type: ignore[arg-type]
        assert batched == whole, batch
    old = _old_calc_metrics(reco, test, train, k=10, n_catalogue=50, item_categories=cats, user_groups=groups)
    assert set(old) | {"cold_item_share@10", "cold_item_recall@10"} == set(whole)
    for key, value in old.items():
        assert whole[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_accumulator_refuses_a_user_split_across_batches() -> None:
    acc = MetricsAccumulator(_pairs([("u1", "a")]), k=2, n_catalogue=3)
    acc.add(_reco([("u1", "a", 1)]), _pairs([("u1", "b")]))
    with pytest.raises(ValueError, match="earlier batch"):
        acc.add(_reco([("u1", "c", 2)]), _pairs([("u2", "b")]))


@pytest.fixture(scope="module")
def small_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    from storerec.core.settings import Settings
    from storerec.features.simulate import simulate_store
    from storerec.training.pipeline import Tables, make_split, model_spec, prepare

    settings = Settings()
    folder = tmp_path_factory.mktemp("eval-store")
    sim = settings.simulate.model_copy(update=dict(n_users=600, n_items=300, n_events=30_000))
    simulate_store(sim, settings.events, folder)
    tables = Tables.load(folder)
    split = make_split(tables, settings.training)
    _, inter = model_spec(settings, "als")
    return settings, split, prepare(split.train, tables, settings, split.as_of, inter)


@pytest.mark.parametrize("name", ["popularity", "als", "itemknn"])
def test_batched_evaluation_equals_the_whole_frame(small_split: tuple[Any, Any, Any], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streamed evaluation (a few users per batch, a few scored at once, the fast top-k on 8
    column blocks) gives exactly the numbers of one ``model.recommend`` frame for every test
    user, and the pre-batching code's up to the rounding of its sums."""
    from storerec.evaluation import scoring
    from storerec.training.pipeline import build_model, evaluate, metrics_of, model_spec

    monkeypatch.setattr(scoring, "CHUNKS", 8)

    settings, split, prepared = small_split
    params, _ = model_spec(settings, name)
    model = build_model(name, {**params, "iterations": 3} if name == "als" else params).fit(prepared.dataset)
    users = split.test["user_id"].unique(maintain_order=True).to_list()
    reco = model.recommend(users, k=10)
    whole = metrics_of(reco, model, split, prepared, 10)
    assert scoring.recommend_batch(model, users, 10).equals(reco)
    batched = evaluate(model, split, prepared, 10, batch_users=37, scoring_bytes=5 * 300 * scoring.BYTES_PER_SCORE)
    assert batched == whole
    assert whole["n_test_users"] == len(users) and whole["coverage@10"] > 0 and "diversity@10" in whole
    groups = prepared.profiles.select("user_id", pl.col("segment").cast(pl.String))
    groups = pl.concat([groups, pl.DataFrame({"user_id": [u for u in users if u not in model.users], "segment": "cold"})])
    old = _old_calc_metrics(reco, split.test, split.train, k=10, n_catalogue=prepared.dataset.n_items,
                            item_categories=prepared.item_table, user_groups=groups)
    for key, value in old.items():
        assert whole[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_scoring_chunk_is_bounded() -> None:
    from storerec.evaluation.scoring import BYTES_PER_SCORE
    from storerec.training.pipeline import scoring_users

    assert scoring_users(500_000, 256 << 20) * 500_000 * BYTES_PER_SCORE <= 256 << 20
    assert scoring_users(10_000_000, 1) == 1 and scoring_users(10, 1 << 30) == 1024


def test_fast_top_k_equals_top_k() -> None:
    """The same indices, scores and order as ``top_k``, ties, -inf, NaN and a ragged last block
    included."""
    import numpy as np

    from storerec.evaluation.scoring import fast_top_k
    from storerec.models.base import top_k

    rng = np.random.default_rng(0)
    for trial, n in enumerate([10, 8192, 9000, 20_011, 8192, 9000, 20_011]):
        s = rng.standard_normal((12, n)).astype(np.float64 if trial == 2 else np.float32)
        if trial >= 4:
            s = np.round(s, 1)  # many ties
        s[0] = -np.inf
        s[1, : n - 3] = -np.inf
        s[2] = 0.0
        s[3, ::2] = -np.inf
        s[4, 5] = np.nan
        s[5] = np.where(rng.random(n) < 0.9, 0.0, s[5])
        s[6, -1], s[7, -3:] = 100.0, 50.0  # the best items in the last, narrower block
        for k in (1, 10, 50):
            (ia, sa), (ib, sb) = top_k(s, k), fast_top_k(s, k)
            assert np.array_equal(ia, ib) and ia.dtype == ib.dtype, (n, k)
            assert np.array_equal(sa, sb, equal_nan=True) and sa.dtype == sb.dtype, (n, k)
