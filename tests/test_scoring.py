"""The exact pruned top-k of factor models (``storerec.evaluation.scoring.factor_top_k``): the
same lists, scores and order as the dense ``top_k`` / ``model.recommend``, ties included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from storerec.evaluation.scoring import MIN_CHUNK, FactorIndex, factor_top_k, recommend_batch
from storerec.models.base import top_k


class _Factors:
    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        self.users, self.items = users, items

    def dot_factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.users, self.items


def _brute(users: np.ndarray, items: np.ndarray, seen: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = users @ items.T  # the model's product (2+ users, every item: the sgemm kernel)
    sub = seen.tocoo()
    scores[sub.row, sub.col] = -np.inf
    return top_k(scores, k)


def _model(rng: np.random.Generator, n_users: int, n_items: int, d: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    users = rng.standard_normal((n_users, d)).astype(np.float32)
    items = (rng.standard_normal((n_items, d)) * rng.exponential(1.0, (n_items, 1)) ** 3).astype(np.float32)
    if kind == "ties":  # small integers: many exactly equal scores, at the k-th place too
        users, items = np.round(users).astype(np.float32), np.round(items).astype(np.float32)
        items[: n_items // 3] = items[n_items // 3 : 2 * (n_items // 3)]  # duplicated item vectors
    elif kind == "zeros":
        users[::5] = 0.0  # every score 0: no pruning, the k-th place is a tie
        items[rng.random(n_items) < 0.7] = 0.0
    elif kind == "bias":  # BPR's layout: a 1 in the user factors against the item bias
        users[:, -1] = 1.0
        items[:, -1] = rng.standard_normal(n_items).astype(np.float32) * 3
    elif kind == "negative":  # every user's best scores below 0: the bound never prunes
        users = np.abs(users)
        items = -np.abs(items)
    return users, items


@pytest.mark.parametrize("kind", ["plain", "ties", "zeros", "bias", "negative"])
def test_factor_top_k_equals_brute_force(kind: str) -> None:
    rng = np.random.default_rng(["plain", "ties", "zeros", "bias", "negative"].index(kind))
    n_users, n_items = 60, 5 * MIN_CHUNK + 1500
    users, items = _model(rng, n_users, n_items, 17 if kind != "bias" else 9, kind)
    density = rng.random(n_users)[:, None] * 0.02
    seen = sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))
    seen = sp.lil_matrix(seen)
    seen[3, :] = 1.0  # every item seen: no list
    seen[4, : n_items - 5] = 1.0  # 5 unseen items, fewer than k
    seen[5, ::2] = 1.0  # half the catalogue seen
    seen = sp.csr_matrix(seen)
    index = FactorIndex.of(_Factors(users, items))
    assert index is not None
    pruned_somewhere = tied_somewhere = False
    for k in (1, 10, 37):
        for rows in (np.arange(n_users), np.array([7]), np.array([4, 3]), rng.permutation(n_users)[:13]):
            stats: dict[str, int] = {}
            got = factor_top_k(index, rows, seen, k, stats)
            assert got is not None
            want = _brute(users[np.repeat(rows, 2)] if len(rows) == 1 else users[rows], items, seen[np.repeat(rows, 2)] if len(rows) == 1 else seen[rows], k)
            if len(rows) == 1:
                want = (want[0][:1], want[1][:1])
            assert np.array_equal(got[0], want[0]) and got[0].dtype == want[0].dtype, (kind, k, rows)
            # the same scores up to float32 rounding: BLAS sums a chunk's products in another order than the whole
            # matrix's on some CPUs (seen here: 3543.3174 against 3543.3179 on an AMD EPYC)
            assert np.allclose(got[1], want[1], rtol=2e-6, atol=0) and got[1].dtype == want[1].dtype, (kind, k, rows)
            pruned_somewhere |= stats["cells"] < len(rows) * n_items
            tied_somewhere |= stats["tied"] > 0
    assert pruned_somewhere or kind in ("zeros", "negative")
    assert tied_somewhere or kind not in ("zeros", "ties")  # the full-row fallback was taken
    assert factor_top_k(index, np.arange(3), seen, MIN_CHUNK) is None  # k too large for chunks: the caller's dense path


def test_factor_index_refuses_what_it_cannot_bound() -> None:
    rng = np.random.default_rng(0)
    users, items = _model(rng, 5, 2 * MIN_CHUNK, 4, "plain")
    assert FactorIndex.of(_Factors(users, items[: 2 * MIN_CHUNK - 1])) is None  # too few items for chunks
    items[3, 1] = np.nan
    assert FactorIndex.of(_Factors(users, items)) is None


def _fitted_als(rng: np.random.Generator, n_users: int, n_items: int) -> Any:
    """An ALS model with random factors (no fit): hot, warm (no interactions) and unknown users."""
    from storerec.models.als import ALSModel
    from storerec.models.dataset import IdMap

    model = ALSModel()
    model.users = IdMap.from_values([f"u{i}" for i in range(n_users)])
    model.items = IdMap.from_values([f"i{j}" for j in range(n_items)])
    seen = (rng.random((n_users, n_items)) < 0.01).astype(np.float32)
    seen[: n_users // 10] = 0.0  # warm users: not scored by ALS
    seen[-1, : n_items - 3] = 1.0
    model.seen = sp.csr_matrix(seen)
    model.user_factors, model.item_factors = _model(rng, n_users, n_items, 8, "ties")
    model.is_fitted = True
    return model


def test_recommend_batch_with_index_equals_recommend() -> None:
    rng = np.random.default_rng(5)
    model = _fitted_als(rng, 200, 2 * MIN_CHUNK + 10)
    index = FactorIndex.of(model)
    assert index is not None
    users = [f"u{i}" for i in rng.permutation(200)] + ["nobody", "u0"][:1]
    for k in (1, 10):
        assert recommend_batch(model, users, k, index).equals(model.recommend(users, k)), k


@pytest.fixture(scope="module")
def prune_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    from storerec.core.settings import Settings
    from storerec.features.simulate import simulate_store
    from storerec.training.pipeline import Tables, make_split, model_spec, prepare

    settings = Settings()
    folder = tmp_path_factory.mktemp("prune-store")
    sim = settings.simulate.model_copy(update=dict(n_users=500, n_items=4 * MIN_CHUNK + 200, n_events=25_000))
    simulate_store(sim, settings.events, folder)
    tables = Tables.load(folder)
    split = make_split(tables, settings.training)
    _, inter = model_spec(settings, "als")
    return settings, split, prepare(split.train, tables, settings, split.as_of, inter)


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_pruned_evaluation_equals_dense(prune_store: tuple[Any, Any, Any], name: str) -> None:
    """A small fitted ALS / BPR (item bias column) on a simulated store: every metric and every
    user's NDCG the same with and without pruning, bit for bit, and the pruned path scores
    fewer cells."""
    from storerec.training.pipeline import build_model, evaluate_per_user, model_spec

    settings, split, prepared = prune_store
    params, _ = model_spec(settings, name)
    model = build_model(name, {**params, "iterations": 3}).fit(prepared.dataset)
    index = FactorIndex.of(model)
    assert index is not None
    stats: dict[str, int] = {}
    test_idx = model.users.to_internal(split.test["user_id"].unique().to_list())
    users_idx = test_idx[model.route(test_idx)["hot"]]
    assert factor_top_k(index, users_idx, model.seen, 10, stats) is not None
    assert stats["cells"] < len(users_idx) * len(model.items)  # it does prune
    pruned, pruned_users = evaluate_per_user(model, split, prepared, 10, batch_users=97)
    dense, dense_users = evaluate_per_user(model, split, prepared, 10, batch_users=97, pruned=False)
    assert pruned == dense
    assert pruned_users.equals(dense_users)
