"""Compiled inner loops of the ranking pipeline (numba).

A request ranks a few thousand items but keeps only tens: the work is small, and in numpy it is
dominated by the fixed cost of many small array operations. These loops do the same arithmetic
in one pass each (:mod:`storerec.ranking.ranker` documents the rules; ``tests/test_ranking_kernels.py``
checks them against plain numpy versions). Compiled code is cached beside this file
(``cache=True``), so only the first process on a machine pays the compile time (a few seconds);
:func:`warm_up` triggers it at start-up instead of on the first request.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def minmax(x: np.ndarray, valid: np.ndarray, fill: float) -> np.ndarray:  # pragma: no cover - compiled
    """``x`` scaled to [0, 1] over its valid finite entries (float32 arithmetic, as numpy does
    for ``(x - lo) / (hi - lo)``), 0 at valid non-finite entries and ``fill`` at invalid ones;
    1 everywhere valid when all valid scores are equal."""
    n = x.shape[0]
    lo = np.inf
    hi = -np.inf
    for i in range(n):
        if valid[i] and np.isfinite(x[i]):
            v = np.float64(x[i])
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    out = np.empty(n, np.float32)
    found = lo <= hi
    lo32 = np.float32(lo) if found else np.float32(0.0)
    span32 = np.float32(hi - lo) if found else np.float32(1.0)
    for i in range(n):
        if not valid[i]:
            out[i] = fill
        elif not found or not np.isfinite(x[i]):
            out[i] = 0.0
        elif hi <= lo:
            out[i] = 1.0
        else:
            out[i] = np.float32(x[i] - lo32) / span32
    return out


@njit(cache=True)
def capped_top(rel: np.ndarray, group: np.ndarray, n_groups: int, cap: int, want: int) -> np.ndarray:  # pragma: no cover
    """Each group's ``cap`` best items by ``rel`` (finite only; equal scores: lower index first),
    then the ``want`` best of those, ordered by ``rel`` descending and item index."""
    best_v = np.full((n_groups, cap), -np.inf, np.float32)
    best_i = np.full((n_groups, cap), -1, np.int64)
    for i in range(rel.shape[0]):
        v = rel[i]
        if not np.isfinite(v):
            continue
        g = group[i]
        if best_i[g, cap - 1] >= 0 and v <= best_v[g, cap - 1]:
            continue  # the group's last kept item is at least as good and came first
        p = cap - 1
        while p > 0 and (best_i[g, p - 1] < 0 or v > best_v[g, p - 1]):
            best_v[g, p] = best_v[g, p - 1]
            best_i[g, p] = best_i[g, p - 1]
            p -= 1
        best_v[g, p] = v
        best_i[g, p] = i
    m = 0
    cand_v = np.empty(n_groups * cap, np.float32)
    cand_i = np.empty(n_groups * cap, np.int64)
    for g in range(n_groups):
        for p in range(cap):
            if best_i[g, p] >= 0:
                cand_v[m] = best_v[g, p]
                cand_i[m] = best_i[g, p]
                m += 1
    for a in range(1, m):  # insertion sort: rel descending, then index ascending
        v = cand_v[a]
        idx = cand_i[a]
        b = a - 1
        while b >= 0 and (cand_v[b] < v or (cand_v[b] == v and cand_i[b] > idx)):
            cand_v[b + 1] = cand_v[b]
            cand_i[b + 1] = cand_i[b]
            b -= 1
        cand_v[b + 1] = v
        cand_i[b + 1] = idx
    return cand_i[: min(want, m)].copy()


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(a: np.ndarray, b: np.ndarray) -> np.float32:  # pragma: no cover - compiled
    """float32 dot product; the compiler may reorder the sum (vectorised), like BLAS does."""
    d = np.float32(0.0)
    for t in range(a.shape[0]):
        d += a[t] * b[t]
    return d


@njit(cache=True)
def mmr(pool: np.ndarray, rel: np.ndarray, cats: np.ndarray, l1: np.ndarray, unit: np.ndarray, k: int, lam: float, cap: int) -> np.ndarray:  # pragma: no cover
    """Maximal marginal relevance over ``pool`` (best first): each pick maximises
    ``lam * rel - (1 - lam) * max similarity to the picks so far`` (the first such item on
    ties); a category that reached ``cap`` (0: no cap) is closed. Similarity is
    ``(same category + clip(cosine of the unit item vectors, 0, 1)) / 2`` when ``unit`` has a
    row per item, else ``same category + 0.3 * same top-level category (only)`` (pass a 0 x 0
    array). Returns the picked items in order."""
    n = pool.shape[0]
    use_unit = unit.shape[0] > 0
    penalty = 1.0 - lam
    half = np.float32(0.5 * penalty)
    base = np.empty(n, np.float64)
    for i in range(n):
        base[i] = lam * np.float64(rel[i])
    max_sim = np.zeros(n, np.float64)
    closed = np.zeros(n, np.bool_)
    lowest = 0
    highest = 0
    for i in range(n):
        lowest = min(lowest, cats[i])
        highest = max(highest, cats[i])
    per_cat = np.zeros(highest - lowest + 1, np.int64)
    picks = min(k, n)
    chosen = np.empty(picks, np.int64)
    m = 0
    for _ in range(picks):
        j = -1
        best = -np.inf
        for i in range(n):
            if not closed[i]:
                s = base[i] - max_sim[i]
                if s > best:
                    best = s
                    j = i
        if j < 0:
            break
        chosen[m] = pool[j]
        m += 1
        closed[j] = True
        c = cats[j]
        per_cat[c - lowest] += 1
        if cap > 0 and per_cat[c - lowest] >= cap:
            for i in range(n):
                if cats[i] == c:
                    closed[i] = True
        if penalty > 0:
            for i in range(n):
                if closed[i]:
                    continue
                same = cats[i] == c
                if use_unit:
                    d = min(max(_dot(unit[pool[j]], unit[pool[i]]), np.float32(0.0)), np.float32(1.0))
                    sim = np.float64((np.float32(1.0 if same else 0.0) + d) * half)
                else:
                    near = 0.3 if (l1[i] == l1[j] and not same) else 0.0
                    sim = np.float64(((1.0 if same else 0.0) + near) * penalty)
                if sim > max_sim[i]:
                    max_sim[i] = sim
    return chosen[:m]


@njit(cache=True)
def first_neighbour_of(sources: np.ndarray, chosen: np.ndarray, neighbours: np.ndarray) -> np.ndarray:  # pragma: no cover
    """For each chosen item, the position in ``sources`` of the first source that has it among
    its neighbours (a row of ``neighbours``, -1 padded), or -1."""
    out = np.full(chosen.shape[0], -1, np.int64)
    for a in range(chosen.shape[0]):
        c = chosen[a]
        for p in range(sources.shape[0]):
            row = neighbours[sources[p]]
            hit = False
            for t in range(row.shape[0]):
                if row[t] == c:
                    hit = True
                    break
            if hit:
                out[a] = p
                break
    return out


@njit(cache=True)
def inject(
    rel: np.ndarray, pool: np.ndarray, valid: np.ndarray, new_idx: np.ndarray, share: np.ndarray, group: np.ndarray,
    pop_7d: np.ndarray, trending_order: np.ndarray, n_new: int, n_trending: int, boundary: float,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Let new arrivals and trending items compete: the ``n_new`` valid new items the user is
    likeliest to want (their category's share in the user's purchases, then 7-day popularity
    / 1000; ties by index) and the first ``n_trending`` valid items of ``trending_order`` join
    ``pool`` with a score of at least ``boundary``. Returns (scores, pool ordered by score
    descending and item index); ``rel`` itself is left unchanged."""
    best_p = np.full(max(n_new, 1), -np.inf)
    best_i = np.full(max(n_new, 1), -1, np.int64)
    if n_new > 0:
        for i in new_idx:
            if not valid[i]:
                continue
            pref = share[group[i]] + np.float32(np.float32(1e-3) * pop_7d[i])
            if best_i[n_new - 1] >= 0 and pref <= best_p[n_new - 1]:
                continue
            p = n_new - 1
            while p > 0 and (best_i[p - 1] < 0 or pref > best_p[p - 1]):
                best_p[p] = best_p[p - 1]
                best_i[p] = best_i[p - 1]
                p -= 1
            best_p[p] = pref
            best_i[p] = i
    picks = np.empty(n_new + n_trending, np.int64)
    m = 0
    for p in range(n_new):
        if best_i[p] >= 0:
            picks[m] = best_i[p]
            m += 1
    taken = 0
    for i in trending_order:
        if taken >= n_trending:
            break
        if valid[i]:
            picks[m] = i
            m += 1
            taken += 1
    if m == 0:
        return rel, pool
    out = rel.copy()
    merged = np.empty(pool.shape[0] + m, np.int64)
    merged[: pool.shape[0]] = pool
    size = pool.shape[0]
    for a in range(m):
        i = picks[a]
        if out[i] < boundary:
            out[i] = boundary
        seen = False
        for b in range(size):
            if merged[b] == i:
                seen = True
                break
        if not seen:
            merged[size] = i
            size += 1
    merged = merged[:size]
    for a in range(1, size):  # insertion sort: score descending, then index ascending
        i = merged[a]
        v = out[i]
        b = a - 1
        while b >= 0 and (out[merged[b]] < v or (out[merged[b]] == v and merged[b] > i)):
            merged[b + 1] = merged[b]
            b -= 1
        merged[b + 1] = i
    return out, merged


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for the argument types the Ranker uses."""
    x = np.array([0.5, 1.0, np.nan], np.float32)
    valid = np.array([True, True, False])
    minmax(x, valid, -np.inf)
    group = np.zeros(3, np.int64)
    capped_top(minmax(x, valid, -np.inf), group, 1, 1, 2)
    pool = np.arange(2, dtype=np.int64)
    mmr(pool, x[:2], group[:2], group[:2], np.eye(2, dtype=np.float32), 2, 0.7, 1)
    mmr(pool, x[:2], group[:2], group[:2], np.zeros((0, 0), dtype=np.float32), 2, 0.7, 1)
    first_neighbour_of(pool, pool, np.zeros((3, 2), dtype=np.int32))
    inject(x, pool, valid, pool, np.zeros(1), group, x, pool, 1, 1, 0.5)
