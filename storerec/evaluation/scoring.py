"""Top-k lists for offline evaluation, a batch of users at a time, fast on large catalogues.

:func:`recommend_batch` returns exactly what :meth:`storerec.models.base.ModelBase.recommend`
returns (default arguments: seen items excluded, every item a candidate), with the row-wise top
``k`` taken by :func:`fast_top_k` instead of a full ``argpartition`` of every row; for factor
models (:meth:`storerec.models.base.ModelBase.dot_factors`) given a :class:`FactorIndex`, the hot
users' lists come from :func:`factor_top_k`, which scores only the items whose vector norm can
still reach a user's k-th score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from storerec.core.schema import Columns
from storerec.models.base import ModelBase, top_k

C = Columns
CHUNKS = 1024  # column blocks whose maxima bound each row's k-th best score
MAX_CANDIDATE_BLOCKS = 64  # a row with more candidate blocks than this (ties, -inf, NaN) takes the full path
BYTES_PER_SCORE = 12  # memory per (user, item) cell of recommend_batch: the model's scores and their copy, with slack
# factor_top_k: item chunks of at least MIN_CHUNK items and products of at least 2 users keep
# OpenBLAS on its general sgemm kernel, whose every cell is the same float32 sum as in the full
# product (its small-matrix kernel and gemv sum in another order: the last bit can differ).
MIN_CHUNK = 2048
FIRST_CHUNK = 4096  # items scored before the first pruning test
CHUNK_CELLS = 8 << 20  # users x items of one chunk product (32 MiB of float32)
FACTOR_USERS = 1024  # users per recommend_batch call when a FactorIndex prunes
DENSE_CELLS = (256 << 20) // BYTES_PER_SCORE  # users x items scored densely at once next to the pruned path (warm, cold users)


def fast_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`storerec.models.base.top_k` (the same indices and scores, in the same order) in
    about one pass over the matrix instead of a full ``argpartition`` of every row.

    Each row is cut into :data:`CHUNKS` column blocks. The ``k``-th best of the block maxima
    bounds the row's ``k``-th best score from below, so only the blocks whose maximum reaches
    that bound hold candidates (about ``k`` blocks); their entries at or above the bound are
    sorted (score descending, then item index). Rows where that choice could differ from
    ``top_k`` -- a tie at the k-th place (``top_k`` picks among tied entries as
    ``argpartition`` does), a non-finite score in the top ``k``, a NaN, too many candidate blocks --
    go through ``top_k`` itself.
    """
    n_rows, n = scores.shape
    kk = min(k, n)
    if kk <= 0 or n_rows == 0 or n < 8 * CHUNKS or scores.dtype.kind != "f":
        return top_k(scores, k)
    width = n // CHUNKS
    body = scores[:, : width * CHUNKS].reshape(n_rows, CHUNKS, width)
    maxima = body.max(axis=2)
    if n > width * CHUNKS:  # the last n % CHUNKS columns: one more, narrower block
        maxima = np.concatenate([maxima, scores[:, width * CHUNKS :].max(axis=1, keepdims=True)], axis=1)
    bound = np.partition(maxima, maxima.shape[1] - kk, axis=1)[:, maxima.shape[1] - kk]
    block_rows, blocks = np.nonzero(maxima >= bound[:, None])
    fast = np.isfinite(bound) & (np.bincount(block_rows, minlength=n_rows) <= MAX_CANDIDATE_BLOCKS)
    fast &= ~np.isnan(maxima).any(axis=1)  # a NaN block maximum hides that block's scores
    keep = fast[block_rows]
    block_rows, blocks = block_rows[keep], blocks[keep]
    whole = blocks < CHUNKS
    r_body, b_body = block_rows[whole], blocks[whole]
    rows = np.repeat(r_body, width)
    cols = (b_body[:, None] * width + np.arange(width)).ravel()
    vals = body[r_body, b_body].ravel()
    r_tail = block_rows[~whole]
    if len(r_tail):
        tail = np.arange(width * CHUNKS, n)
        rows = np.concatenate([rows, np.repeat(r_tail, len(tail))])
        cols = np.concatenate([cols, np.tile(tail, len(r_tail))])
        vals = np.concatenate([vals, scores[r_tail][:, tail].ravel()])
    hit = vals >= bound[rows]
    rows, cols, vals = rows[hit], cols[hit], vals[hit]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n_rows)
    pos = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    idx = np.full((n_rows, kk), -1, dtype=np.int64)
    top = np.full((n_rows, kk), -np.inf, dtype=scores.dtype)
    head = pos < kk
    idx[rows[head], pos[head]] = cols[head]
    top[rows[head], pos[head]] = vals[head]
    # a tie at the k-th place: the (k+1)-th candidate scores as the k-th
    after = pos == kk
    tied = np.zeros(n_rows, dtype=bool)
    tied[rows[after]] = vals[after] == top[rows[after], kk - 1]
    slow = np.flatnonzero(~fast | (counts < kk) | tied | ~np.isfinite(top[:, kk - 1]))
    if len(slow):
        idx[slow], top[slow] = top_k(scores[slow], k)
    return idx, top


def recommend_batch(model: ModelBase, users: Sequence[str], k: int, index: FactorIndex | None = None) -> pl.DataFrame:
    """``model.recommend(users, k)`` (the same frame) with :func:`fast_top_k`, or with
    :func:`factor_top_k` for the hot users when ``index`` (``FactorIndex.of(model)``) is given;
    the caller sizes ``users`` (without ``index``, dense scores ``(len(users), n_items)`` are
    held at once)."""
    assert model.users is not None and model.items is not None and model.seen is not None
    users = list(users)
    idx = model.users.to_internal(users)
    pruned = None
    if index is not None:
        hot = model.route(idx)["hot"]
        pruned = factor_top_k(index, idx[hot], model.seen, k)
    if pruned is not None:
        kk = pruned[0].shape[1]
        top = np.full((len(users), kk), -1, dtype=np.int64)
        top_scores = np.full((len(users), kk), -np.inf, dtype=np.float32)
        ok = np.zeros(len(users), dtype=bool)
        top[hot], top_scores[hot], ok[hot] = pruned[0], pruned[1], True
        groups = model.route(idx)
        rest = np.sort(np.concatenate([groups["warm"], groups["cold"]]))  # users the model scores otherwise: the dense path
        step = max(1, DENSE_CELLS // max(1, len(model.items)))  # unsupported users get no rows, no scores
        for i in range(0, len(rest), step):
            part = rest[i : i + step]
            r_top, r_scores, r_ok = _dense_top_k(model, [users[j] for j in part], idx[part], k)
            top[part], top_scores[part], ok[part] = r_top, r_scores, r_ok
    else:
        top, top_scores, ok = _dense_top_k(model, users, idx, k)
    rows, cols = np.nonzero(top >= 0)
    rows_ok = ok[rows]
    rows, cols = rows[rows_ok], cols[rows_ok]
    return pl.DataFrame(
        {
            C.User: np.asarray(users, dtype=object)[rows].tolist(),
            C.Item: model.items.to_external(top[rows, cols]).tolist(),
            "score": top_scores[rows, cols].astype(np.float32),
            "rank": (cols + 1).astype(np.int32),
        },
        schema={C.User: pl.String, C.Item: pl.String, "score": pl.Float32, "rank": pl.Int32},
    )


def _dense_top_k(model: ModelBase, users: list[str], idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k of ``model.score`` with the seen items at ``-inf`` (as ``recommend``), and the mask of scored users."""
    assert model.seen is not None
    scores, ok = model.score(users)
    known = np.flatnonzero(idx >= 0)
    if len(known):
        sub = model.seen[idx[known]].tocoo()
        scores[known[sub.row], sub.col] = -np.inf
    top, top_scores = fast_top_k(scores, k)
    return top, top_scores, ok


@dataclass(frozen=True)
class FactorIndex:
    """The items of a factor model sorted by vector norm (descending), for :func:`factor_top_k`.

    Scores are ``user_factors @ item_factors.T`` (any bias is a column of both, e.g. BPR's item
    bias against a 1 in the user factors), so by Cauchy-Schwarz no item after position ``j``
    scores above ``|u| * norms[j]``; ``norms`` carry the rounding slack of a float32 dot product,
    so the bound holds for the computed scores too.
    """

    user_factors: np.ndarray  # (n_users, d) float32, as the model scores with them
    item_factors: np.ndarray  # (n_items, d) float32, the model's own (for full rows)
    user_norms: np.ndarray  # (n_users,) float64
    order: np.ndarray  # item indices, largest norm first
    vectors: np.ndarray  # item_factors[order] (C order, float32)
    norms: np.ndarray  # (n_items + 1,) float64, descending, with slack; a trailing 0
    floor: float  # added to every bound: float32 rounding near underflow

    @classmethod
    def of(cls, model: ModelBase) -> FactorIndex | None:
        """The index of ``model``, or ``None`` when it has no dot factors, too few items for
        chunks (:data:`MIN_CHUNK`) or factors that are not finite."""
        factors = model.dot_factors()
        if factors is None:
            return None
        users, items = factors
        if users.dtype != np.float32 or items.dtype != np.float32 or users.ndim != 2 or items.shape[0] < 2 * MIN_CHUNK:
            return None
        user_norms, item_norms = _norms(users), _norms(items)
        top_user, top_item = (float(user_norms.max(initial=0.0)), float(item_norms.max(initial=0.0)))
        if not (np.isfinite(top_user) and np.isfinite(top_item) and top_user * top_item < 1e30):
            return None  # NaN/inf factors, or products near float32 overflow: the dense path
        order = np.argsort(-item_norms, kind="stable")
        # |fl(u.v) - u.v| <= d * 2**-24 * |u||v| (a float32 sum of d products, with or without
        # FMA, away from underflow); twice that covers the computed score and the norms' own rounding
        d = users.shape[1]
        norms = np.append(item_norms[order] * (1.0 + 2.0 * d * 2.0**-24), 0.0)
        floor = 2.0 * (d + 1) * float(np.finfo(np.float32).tiny)
        return cls(users, items, user_norms, order, np.ascontiguousarray(items[order]), norms, floor)


def _norms(rows: np.ndarray, block: int = 1 << 15) -> np.ndarray:
    """Euclidean norms of the rows, in float64, a block of rows at a time (no float64 copy of the whole matrix)."""
    out = np.empty(len(rows), dtype=np.float64)
    for i in range(0, len(rows), block):
        part = rows[i : i + block].astype(np.float64)
        out[i : i + block] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return out


def factor_top_k(
    index: FactorIndex, user_idx: np.ndarray, seen: sp.csr_matrix, k: int, stats: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`storerec.models.base.top_k` of the users' dense scores with their seen items at
    ``-inf`` (exactly what ``model.recommend`` ranks), for internal user indices ``user_idx``,
    scoring item chunks in norm order only while an unscored item could still reach a user's
    k-th score; ``None`` when ``k`` is too large for chunks (the caller takes the dense path).

    Each user keeps a running top ``k + 1`` (score desc, then item index). A user stops when
    ``|u| * |v_next|`` (the bound on every item not scored yet, with rounding slack) is below
    their k-th score: the top ``k`` are then strictly above every other item, so they are
    ``top_k``'s, in its order. A user whose k-th score never clears the bound (k-th score <= 0,
    fewer unseen items than ``k``) goes through every chunk: the full product. A tie at the
    k-th place (``top_k`` picks among tied items as ``argpartition`` does) sends the user
    through ``top_k`` on the full row.

    ``stats``, if given, counts the ``cells`` (user, item) scored and the ``tied`` users.
    """
    n = len(index.order)
    kk = min(k, n)
    m = len(user_idx)
    if kk <= 0 or kk + 1 > MIN_CHUNK:
        return None
    keep = kk + 1
    best_s = np.full((m, keep), -np.inf, dtype=np.float32)
    best_i = np.full((m, keep), -1, dtype=np.int64)
    position = np.empty(n, dtype=np.int64)
    position[index.order] = np.arange(n)
    seen_rows = seen[user_idx].tocoo()
    seen_pos = position[seen_rows.col]
    by_pos = np.argsort(seen_pos, kind="stable")
    seen_pos, seen_row = seen_pos[by_pos], seen_rows.row[by_pos].astype(np.int64)
    slot = np.full(m, -1, dtype=np.int64)  # row of each user in the current chunk product (-1: done)
    active = np.arange(m)
    start = 0
    while start < n and len(active):
        width = FIRST_CHUNK if start == 0 else max(MIN_CHUNK, CHUNK_CELLS // len(active))
        end = min(n, start + width)
        if n - end < MIN_CHUNK:
            end = n
        rows = index.user_factors[user_idx[active]]
        # one user: a product of two (the same row twice), so that it is sgemm's, not gemv's
        scores = (rows if len(active) > 1 else np.repeat(rows, 2, axis=0)) @ index.vectors[start:end].T
        scores = scores[: len(active)]
        if stats is not None:
            stats["cells"] = stats.get("cells", 0) + scores.size
        slot[active] = np.arange(len(active))
        lo, hi = np.searchsorted(seen_pos, [start, end])
        at = slot[seen_row[lo:hi]]
        hit = at >= 0
        scores[at[hit], seen_pos[lo:hi][hit] - start] = -np.inf
        floor = best_s[active, kk]  # the (k+1)-th score so far: nothing below it can enter
        if start == 0:
            floor = np.partition(scores, scores.shape[1] - keep, axis=1)[:, scores.shape[1] - keep]
        cand_r, cand_c = np.nonzero((scores >= floor[:, None]) & (scores > -np.inf))
        old_r, old_c = np.nonzero(best_s[active] > -np.inf)
        r = np.concatenate([active[old_r], active[cand_r]])
        item = np.concatenate([best_i[active[old_r], old_c], index.order[start + cand_c]])
        val = np.concatenate([best_s[active[old_r], old_c], scores[cand_r, cand_c]])
        order = np.lexsort((item, -val, r))
        r, item, val = r[order], item[order], val[order]
        counts = np.bincount(r, minlength=m)
        pos = np.arange(len(r)) - (np.cumsum(counts) - counts)[r]
        head = pos < keep
        best_s[active], best_i[active] = -np.inf, -1
        best_s[r[head], pos[head]], best_i[r[head], pos[head]] = val[head], item[head]
        slot[active] = -1
        bound = index.user_norms[user_idx[active]] * index.norms[end] + index.floor
        active = active[~(bound < best_s[active, kk - 1])]
        start = end
    idx, top = best_i[:, :kk].copy(), best_s[:, :kk].copy()
    tied = np.flatnonzero((best_s[:, kk - 1] == best_s[:, kk]) & (best_s[:, kk - 1] > -np.inf))
    if stats is not None:
        stats["tied"] = stats.get("tied", 0) + len(tied)
        stats["cells"] = stats.get("cells", 0) + len(tied) * n
    if len(tied):
        n_rows = max(2, CHUNK_CELLS // n)
        for i in range(0, len(tied), n_rows):
            part = tied[i : i + n_rows]
            rows = index.user_factors[user_idx[part]]
            full = (rows if len(part) > 1 else np.repeat(rows, 2, axis=0)) @ index.item_factors.T
            full = full[: len(part)]
            sub = seen[user_idx[part]].tocoo()
            full[sub.row, sub.col] = -np.inf
            idx[part], top[part] = top_k(full, k)
    return idx, top
