"""Top-k lists for offline evaluation, a batch of users at a time, fast on large catalogues.

:func:`recommend_batch` returns exactly what :meth:`storerec.models.base.ModelBase.recommend`
returns (default arguments: seen items excluded, every item a candidate), with the row-wise top
``k`` taken by :func:`fast_top_k` instead of a full ``argpartition`` of every row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from storerec.core.schema import Columns
from storerec.models.base import ModelBase, top_k

C = Columns
CHUNKS = 1024  # column blocks whose maxima bound each row's k-th best score
MAX_CANDIDATE_BLOCKS = 64  # a row with more candidate blocks than this (ties, -inf, NaN) takes the full path
BYTES_PER_SCORE = 12  # memory per (user, item) cell of recommend_batch: the model's scores and their copy, with slack


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


def recommend_batch(model: ModelBase, users: Sequence[str], k: int) -> pl.DataFrame:
    """``model.recommend(users, k)`` (the same frame) with :func:`fast_top_k`; the caller
    sizes ``users`` (dense scores ``(len(users), n_items)`` are held at once)."""
    assert model.users is not None and model.items is not None and model.seen is not None
    users = list(users)
    scores, ok = model.score(users)
    idx = model.users.to_internal(users)
    known = np.flatnonzero(idx >= 0)
    if len(known):
        sub = model.seen[idx[known]].tocoo()
        scores[known[sub.row], sub.col] = -np.inf
    top, top_scores = fast_top_k(scores, k)
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
