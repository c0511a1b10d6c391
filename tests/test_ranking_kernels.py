"""The compiled ranking loops (storerec/ranking/kernels.py) against plain numpy/Python statements of the
same rules, on random inputs with ties, filtered items and items without a category."""

from __future__ import annotations

import numpy as np
import pytest

from storerec.ranking import kernels


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _scores(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.integers(0, 6, n).astype(np.float32) / 5  # many ties
    x[rng.random(n) < 0.1] = np.nan
    return x


@pytest.mark.parametrize("seed", range(20))
def test_minmax_matches_numpy(seed: int) -> None:
    rng = _rng(seed)
    x = _scores(rng, 300) * rng.uniform(0.5, 30)
    valid = rng.random(300) < 0.8
    ok = valid & np.isfinite(x)
    want = np.zeros(300, dtype=np.float32)
    lo, hi = float(x[ok].min()), float(x[ok].max())
    want[ok] = (x[ok] - lo) / (hi - lo) if hi > lo else 1.0
    want[~valid] = -np.inf
    np.testing.assert_array_equal(kernels.minmax(x, valid, -np.inf), want)
    np.testing.assert_array_equal(kernels.minmax(x, valid, 0.0), np.where(valid, want, 0.0))
    none = np.zeros(300, dtype=bool)
    assert (kernels.minmax(x, none, -np.inf) == -np.inf).all()


@pytest.mark.parametrize("seed", range(20))
def test_capped_top_matches_a_sort(seed: int) -> None:
    rng = _rng(seed)
    n, groups = 400, 7
    rel = _scores(rng, n)
    rel[rng.random(n) < 0.2] = -np.inf
    group = rng.integers(0, groups, n)
    for cap, want in ((1, 50), (3, 10), (3, 50), (20, 30), (200, 1000)):
        order = sorted((i for i in range(n) if np.isfinite(rel[i])), key=lambda i: (-rel[i], i))
        taken: dict[int, int] = {}
        kept = []
        for i in order:  # each group's cap best (ties: lower index), in global order
            if taken.get(group[i], 0) < cap:
                taken[group[i]] = taken.get(group[i], 0) + 1
                kept.append(i)
        assert kernels.capped_top(rel, group, groups, cap, want).tolist() == kept[:want], (cap, want)


def _mmr_reference(pool, rel, cats, l1, unit, k, lam, cap):
    penalty = 1.0 - lam
    if unit.shape[0]:
        vecs = unit[pool]
        sim = np.clip(vecs @ vecs.T, 0, 1)
        sim = ((cats[:, None] == cats[None, :]) + sim) * np.float32(0.5 * penalty)
    else:
        same = cats[:, None] == cats[None, :]
        sim = (same + 0.3 * ((l1[:, None] == l1[None, :]) & ~same)) * penalty
    score = lam * rel.astype(np.float64)
    max_sim = np.zeros(len(pool))
    per_cat: dict[int, int] = {}
    chosen = []
    for _ in range(min(k, len(pool))):
        j = int((score - max_sim).argmax())
        if score[j] == -np.inf:
            break
        chosen.append(int(pool[j]))
        per_cat[cats[j]] = per_cat.get(cats[j], 0) + 1
        score[j] = -np.inf
        if cap and per_cat[cats[j]] >= cap:
            score[cats == cats[j]] = -np.inf
        if penalty > 0:
            max_sim = np.maximum(max_sim, sim[j])
    return chosen


@pytest.mark.parametrize("seed", range(20))
def test_mmr_matches_the_greedy_rule(seed: int) -> None:
    rng = _rng(seed)
    n_items, dim = 200, 16
    vecs = rng.normal(size=(n_items, dim)).astype(np.float32)
    unit = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    pool = rng.choice(n_items, 40, replace=False).astype(np.int64)
    rel = np.sort(rng.random(40).astype(np.float32))[::-1].copy()
    cats = rng.integers(-1, 6, 40)  # -1: no category
    l1 = cats // 3
    for lam, cap, k in ((1.0, 0, 10), (0.7, 0, 10), (0.7, 2, 10), (0.0, 1, 20), (0.5, 3, 40)):
        for u in (unit, np.zeros((0, 0), np.float32)):
            got = kernels.mmr(pool, rel, cats, l1, u, k, lam, cap).tolist()
            assert got == _mmr_reference(pool, rel, cats, l1, u, k, lam, cap), (lam, cap, k, u.shape)
            if cap:
                assert max(np.unique(cats[np.isin(pool, got)], return_counts=True)[1]) <= cap


def test_first_neighbour_of() -> None:
    neighbours = np.array([[1, 2, -1], [2, 3, 4], [0, -1, -1], [4, 0, 1], [1, 2, 3]], dtype=np.int32)
    sources = np.array([3, 1, 0], dtype=np.int64)
    chosen = np.array([2, 4, 1, 0, 3], dtype=np.int64)
    # 2: in row 1 (position 1); 4: rows 3 and 1 -> first source (position 0); 1: row 3 (0); 0: row 3 (0); 3: row 1 (1)
    assert kernels.first_neighbour_of(sources, chosen, neighbours).tolist() == [1, 0, 0, 0, 1]
    assert kernels.first_neighbour_of(sources, np.array([99], dtype=np.int64), neighbours).tolist() == [-1]


def test_inject_adds_new_and_trending_items_at_the_boundary() -> None:
    rel = np.array([0.9, 0.8, 0.1, 0.05, 0.3, -np.inf, 0.2], dtype=np.float32)
    valid = np.isfinite(rel)
    pool = np.array([0, 1, 4], dtype=np.int64)
    new_idx = np.array([2, 3, 5], dtype=np.int64)  # 5 is filtered out
    group = np.array([0, 0, 1, 0, 1, 0, 1], dtype=np.int64)
    share = np.array([0.0, 0.6])  # the user buys group 1: item 2 first
    pop = np.array([0, 0, 5, 90, 0, 0, 0], dtype=np.float32)
    trending = np.array([5, 6, 1], dtype=np.int64)  # 5 filtered; 6 joins; 1 is in the pool already
    out, merged = kernels.inject(rel, pool, valid, new_idx, share, group, pop, trending, 1, 2, 0.3)
    assert merged.tolist() == [0, 1, 2, 4, 6]  # 2 and 6 lifted to 0.3: ties by index after 1 (0.8)
    assert out[2] == np.float32(0.3) and out[6] == np.float32(0.3) and out[0] == rel[0]
    assert rel[2] == np.float32(0.1)  # the input is not changed
    same, same_pool = kernels.inject(rel, pool, valid, new_idx, share, group, pop, trending, 0, 0, 0.3)
    assert same_pool.tolist() == pool.tolist()
