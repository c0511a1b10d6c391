"""Each item's nearest neighbours for the model, found once per registered version.

"X is similar to Y" (the reasons "similar to what you are viewing", "because you bought X")
means Y is among X's ``k`` most similar items for the model. By brute force that is
O(items²): about a second at 2,000 items, but some 1,900 CPU-seconds of BLAS and
``argpartition`` at 500,000 (docs/benchmarks.md, "Start-up at 500k items"). So the lists are
found when a version is registered and stored in its serving snapshot
(:mod:`storerec.registry.snapshot`, ``serving/neighbours.npy``); the service loads them, and
finds them itself only for versions registered before (or when the stored lists are for
another item order).

How, by the model's similarity (:func:`storerec.ranking.facts.find_neighbours`):

* the cosine of the model's item vectors (ALS, BPR, LightFM): exact (blocks of
  ``CHUNK`` items against all, matmul + ``argpartition``) up to ``EXACT_MAX_ITEMS`` items;
  above that an HNSW graph (faiss, inner product of the unit vectors): recall@50 0.965 against
  exact on the 500k-item built-in store, in 150 CPU-seconds where exact takes about 1,900;
* a category bonus plus a per-item score (the popularity model, and "same category" ordered
  by 30-day popularity for models without a similarity): exact in O(items x k), from each
  category's and the catalogue's best items by score;
* a sparse similarity (item-kNN): exact, each row's best stored entries;
* anything else (EASE's dense weights): exact, by blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

CHUNK = 512  # items per block of the exact search (bounds memory: CHUNK x n_items float32)
EXACT_MAX_ITEMS = 50_000  # above this, the fast methods below (exact by blocks: ~40 CPU-s at 50k items, O(n²))
# HNSW parameters (faiss IndexHNSWFlat), measured on the 500k-item store (docs/benchmarks.md):
# M 32 / 80 / 128 gave recall@50 0.965 in 150 CPU-s; M 16 / 64 / 128 0.942 in 127 CPU-s
HNSW_M = 32  # graph degree
HNSW_EF_CONSTRUCTION = 80  # candidate list while building the graph
HNSW_EF_SEARCH = 128  # candidate list per query
BLOCK = 16_384  # items added to / queried in the graph at a time (bounds the temporary arrays)


@dataclass(frozen=True)
class Neighbours:
    """``table[i]``: item ``i``'s ``k`` most similar other items (int32, best first, only those
    with a positive similarity, -1 padded), for the items whose ids hash to ``items_digest``
    (:func:`items_digest`), found by ``method``."""

    table: np.ndarray
    items_digest: str
    method: str

    @property
    def k(self) -> int:
        return int(self.table.shape[1])

    def mismatch(self, item_ids: Sequence[str] | np.ndarray, k: int) -> str | None:
        """Why these lists cannot serve the items ``item_ids`` (in the model's order) with ``k``
        neighbours each, or None when they can."""
        if self.table.ndim != 2 or self.table.shape[0] != len(item_ids):
            return f"they are for {self.table.shape[0] if self.table.ndim else 0} items, the model has {len(item_ids)}"
        if self.k != k:
            return f"they hold {self.k} neighbours per item, {k} are needed"
        if self.items_digest != items_digest(item_ids):
            return "they are for another item order (item id digest differs)"
        return None


def items_digest(item_ids: Sequence[str] | np.ndarray) -> str:
    """sha256 of the item ids in order: stored neighbour lists are only used for the same order."""
    h = hashlib.sha256()
    for start in range(0, len(item_ids), 65_536):
        h.update("\x1f".join(map(str, item_ids[start : start + 65_536])).encode())
        h.update(b"\x1e")
    return f"{len(item_ids)}:{h.hexdigest()}"


def top_k_rows(sim: np.ndarray, k: int, cols: np.ndarray | None = None) -> np.ndarray:
    """Each row's ``k`` best columns (best first; ``cols`` maps column -> item) with a finite,
    positive similarity, -1 padded. Rows must already have their own item at -inf."""
    k_eff = min(k, sim.shape[1])
    out = np.full((sim.shape[0], k), -1, dtype=np.int32)
    if k_eff <= 0:
        return out
    top = np.argpartition(-sim, k_eff - 1, axis=1)[:, :k_eff] if k_eff < sim.shape[1] else np.tile(np.arange(sim.shape[1]), (len(sim), 1))
    top_sim = np.take_along_axis(sim, top, axis=1)
    order = np.argsort(-top_sim, axis=1, kind="stable")
    top, top_sim = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sim, order, axis=1)
    items = top if cols is None else cols[top]
    out[:, :k_eff] = np.where(np.isfinite(top_sim) & (top_sim > 0), items, -1)
    return _pack_left(out)


def _pack_left(table: np.ndarray) -> np.ndarray:
    """Move each row's -1 entries to its end, keeping the order of the others."""
    order = np.argsort(table < 0, axis=1, kind="stable")
    return np.take_along_axis(table, order, axis=1)


def exact(rows: Callable[[np.ndarray], np.ndarray], n: int, k: int) -> np.ndarray:
    """Brute force: ``rows(idx)`` gives the similarities (float32) of the items ``idx`` to every
    item; blocks of ``CHUNK`` rows."""
    out = np.full((n, max(k, 0)), -1, dtype=np.int32)
    if k <= 0:
        return out
    for start in range(0, n, CHUNK):
        idx = np.arange(start, min(n, start + CHUNK))
        sim = rows(idx)
        sim[np.arange(len(idx)), idx] = -np.inf
        out[idx] = top_k_rows(sim, k)
    return out


def by_group(group: np.ndarray, score: np.ndarray, bonus: float | np.ndarray, k: int) -> np.ndarray:
    """Exact neighbours for ``sim(i, j) = bonus[j] * (group[i] == group[j]) + score[j]`` with a
    non-negative ``bonus`` (a scalar or per item), in O(items x k): the ``k`` best of item ``i``
    are among the ``k + 1`` best of its group by that sum and the ``k + 1`` best of the
    catalogue by ``score`` (any other item is beaten by ``k`` of those, ``i`` itself aside)."""
    n = len(group)
    out = np.full((n, max(k, 0)), -1, dtype=np.int32)
    if k <= 0 or n == 0:
        return out
    score = np.asarray(score, dtype=np.float32)
    in_group = (np.broadcast_to(np.asarray(bonus, dtype=np.float32), (n,)) + score).astype(np.float32)
    best = np.argsort(-score, kind="stable")[: k + 1]
    order = np.lexsort((-in_group, group))  # by group, best first within each
    codes, starts = np.unique(group[order], return_index=True)
    ends = np.append(starts[1:], n)
    for code, s, e in zip(codes.tolist(), starts.tolist(), ends.tolist()):
        members = order[s:e]
        cand = np.union1d(members[: k + 1], best)
        same = group[cand] == code
        cand_sim = np.where(same, in_group[cand], score[cand])
        sim = np.broadcast_to(cand_sim, (len(members), len(cand))).copy()
        pos = np.searchsorted(cand, members)  # each member's column, where it is a candidate
        hit = (pos < len(cand)) & (cand[np.minimum(pos, len(cand) - 1)] == members)
        sim[np.flatnonzero(hit), pos[hit]] = -np.inf
        out[members] = top_k_rows(sim, k, cols=cand)
    return out


def sparse_rows(similarity: sp.csr_matrix, k: int) -> np.ndarray:
    """Exact neighbours from a sparse similarity (absent entries: not similar): each row's ``k``
    largest positive entries, the item itself aside."""
    sim = sp.csr_matrix(similarity)
    n = sim.shape[0]
    out = np.full((n, max(k, 0)), -1, dtype=np.int32)
    if k <= 0 or sim.nnz == 0:
        return out
    rows = np.repeat(np.arange(n), np.diff(sim.indptr))
    keep = (sim.indices != rows) & (sim.data > 0) & np.isfinite(sim.data)
    rows, cols, vals = rows[keep], sim.indices[keep], sim.data[keep]
    order = np.lexsort((cols, -vals, rows))  # by row, best first (ties: lower item first)
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - first[rows]
    take = rank < k
    out[rows[take], rank[take]] = cols[take]
    return out


def cosine_hnsw(vectors: np.ndarray, k: int) -> np.ndarray:
    """Approximate neighbours by cosine: an HNSW graph over the rows of ``vectors`` scaled to unit
    length (faiss, inner product), every item queried for ``k + 1`` (itself is among them).
    Items whose vector is zero (no interactions) are left out: their similarity to everything is
    0, not positive. The unit rows exist only in the index (added and read back in blocks), so
    the search holds no full copy of the vectors: it runs at registration, beside the training
    data (docs/benchmarks.md, "Start-up at 500k items")."""
    import faiss

    n, dim = vectors.shape
    out = np.full((n, max(k, 0)), -1, dtype=np.int32)
    norms = np.linalg.norm(vectors, axis=1)
    live = np.flatnonzero(norms > 0)
    if k <= 0 or len(live) < 2:
        return out
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for start in range(0, len(live), BLOCK):
        rows = live[start : start + BLOCK]
        index.add(np.ascontiguousarray(vectors[rows] / norms[rows, None], dtype=np.float32))
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k + 1)
    for start in range(0, len(live), BLOCK):
        stop = min(len(live), start + BLOCK)
        sims, labels = index.search(index.reconstruct_n(start, stop - start), k + 1)
        keep = (labels >= 0) & (labels != np.arange(start, stop)[:, None]) & (sims > 0) & np.isfinite(sims)
        table = np.where(keep, live[np.maximum(labels, 0)], -1).astype(np.int32)
        out[live[start:stop]] = _pack_left(table)[:, :k]
    return out
