"""EASE: embarrassingly shallow autoencoder (Steck 2019), closed form.

B = I - P / diag(P) with P = (X^T X + lambda I)^-1; score = x_u B. Strong on small catalogues;
memory is n_items^2, so a fit first estimates what it needs and refuses, with the estimate, the
limit and a sparse alternative, when that exceeds ``max_memory_gb`` (default: 80 % of the RAM
available at fit time) or the catalogue exceeds ``max_items``.

How it is computed (float32 throughout, one n x n buffer):

* the Gram matrix ``X^T X`` is accumulated into a dense float32 array from sparse products over
  blocks of users (bounded scratch memory);
* ``lambda`` is added to its diagonal and it is inverted in place by Cholesky (LAPACK
  ``spotrf`` + ``spotri``), then turned into ``B`` in place.

Tuning fits EASE many times on the same interaction matrix with different ``lambda``: inside
:func:`reuse_gram` the Gram matrix is computed once per matrix (keyed by a fingerprint of the
matrix) and each fit only copies it and factorises; a ``lambda`` already solved on that matrix
reuses its weights outright (trials that differ only in recency decay share the 0/1 matrix). An
eigendecomposition ``G = V diag(e) V^T`` would make each ``lambda`` a matrix product, but
``eigh`` costs about 20 Cholesky inversions here (docs/benchmarks.md, "EASE at scale").
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import psutil
import scipy.sparse as sp
from pydantic import Field
from scipy.linalg import lapack

from storerec.core.errors import UserError
from storerec.models.base import ModelBase, ModelConfig
from storerec.models.dataset import Dataset

GiB = 2**30
FLOAT = 4  # bytes of a float32
BLOCK_PAIRS = 8_000_000  # scratch of one sparse Gram block: at most this many (user, item, item) triples
SYM_BLOCK = 1024  # rows per block when mirroring a triangle
DEFAULT_MEMORY_SHARE = 0.8  # of the RAM available at fit time, when max_memory_gb is unset
MAX_CACHED_WEIGHTS = 8  # weights of this many lambdas kept under reuse_gram (memory permitting)


class EASEConfig(ModelConfig):
    regularization: float = Field(500.0, gt=0, description="lambda on the diagonal.")
    binary: bool = Field(True, description="Item-item weights from 0/1 interactions instead of weights.")
    weighted_history: bool = Field(
        True,
        description="Score with the user's weighted history (event weights, recency) rather than 0/1; "
        "the weights come from the interaction matrix config.",
    )
    max_items: int = Field(30_000, ge=1, description="Refuse catalogues larger than this (memory is n_items^2).")
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="Refuse a fit whose memory estimate exceeds this many GiB; "
        "default: 80 % of the RAM available when the fit starts.",
    )


class EASETooLargeError(UserError, ValueError):
    """The catalogue is too large for a dense n_items x n_items fit within the configured limits."""


# ---- numerical kernels -----------------------------------------------------------------------
def fingerprint(x: sp.spmatrix) -> str:
    """Content hash of a sparse matrix (shape, nnz, structure, values): equal for equal matrices."""
    c = sp.csr_matrix(x, copy=True)
    c.sum_duplicates()
    c.sort_indices()
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((c.shape, c.nnz, c.dtype.str)).encode())
    for a in (c.indptr.astype(np.int64), c.indices.astype(np.int64), c.data):
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _user_blocks(x: sp.csr_matrix) -> Iterator[tuple[int, int]]:
    """Row ranges whose Gram contribution (sum of squared row lengths) stays near BLOCK_PAIRS."""
    cost = np.cumsum(np.diff(x.indptr).astype(np.int64) ** 2)
    start = 0
    n = x.shape[0]
    while start < n:
        base = cost[start - 1] if start else 0
        end = int(np.searchsorted(cost, base + BLOCK_PAIRS, side="right"))
        end = min(n, max(end, start + 1))
        yield start, end
        start = end


def gram(x: sp.csr_matrix) -> np.ndarray:
    """Dense float32 ``X^T X``, accumulated from sparse products over blocks of users."""
    x = sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[1]
    g = np.zeros((n, n), dtype=np.float32)
    for u0, u1 in _user_blocks(x):
        xb = x[u0:u1]
        part = (xb.T @ xb).tocoo()
        g[part.row, part.col] += part.data  # one product has no duplicate (row, col)
    return g


def _mirror_upper(a: np.ndarray) -> None:
    """Copy the upper triangle of square ``a`` onto its lower triangle, in place, blockwise."""
    n = a.shape[0]
    for i0 in range(0, n, SYM_BLOCK):
        i1 = min(n, i0 + SYM_BLOCK)
        a[i0:i1, :i0] = a[:i0, i0:i1].T
        blk = a[i0:i1, i0:i1]
        blk[...] = np.triu(blk) + np.triu(blk, 1).T


def inv_spd_inplace(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float32 C-ordered matrix, overwriting ``a``
    (Cholesky ``spotrf`` + ``spotri``); returns ``a``."""
    # a.T is the Fortran-ordered view of the same (symmetric) matrix: LAPACK works on it in place.
    f = a.T
    c, info = lapack.spotrf(f, lower=1, clean=0, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Cholesky failed (leading minor {info} not positive definite)")
    c, info = lapack.spotri(c, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse from Cholesky failed (info={info})")
    if not np.shares_memory(c, a):  # LAPACK wrapper copied after all: keep the result
        a[...] = c.T
    # lower triangle of the Fortran view == upper triangle of the C-ordered array
    _mirror_upper(a)
    return a


def weights_from_gram(g: np.ndarray, regularization: float) -> np.ndarray:
    """EASE weights ``B`` from the Gram matrix; ``g`` is overwritten (it becomes ``B``)."""
    g[np.diag_indices_from(g)] += np.float32(regularization)
    p = inv_spd_inplace(g)
    p /= -np.diag(p).copy()  # column j divided by -P_jj
    p[np.diag_indices_from(p)] = 0.0
    return p


def estimate_bytes(n_items: int, n_users: int, nnz: int, *, reuse: bool) -> int:
    """Peak memory of one fit: the n x n float32 buffer (with ``reuse``, plus the cached Gram
    matrix and one cached weights: the least :func:`reuse_gram` keeps), a bounded sparse block,
    the matrix copies."""
    dense = n_items * n_items * FLOAT
    block = min(BLOCK_PAIRS, n_items * n_items) * (FLOAT + 2 * 8)  # coo data + int64 row/col
    copies = 3 * (nnz * (FLOAT + 4) + (n_users + 1) * 4)
    return dense * (3 if reuse else 1) + block + copies


# ---- Gram reuse across fits on the same matrix (tuning) ---------------------------------------
@dataclass
class _Reuse:
    key: str | None = None
    gram: np.ndarray | None = None
    weights: OrderedDict[float, np.ndarray] = field(default_factory=OrderedDict)  # lambda -> B, LRU
    grams_computed: int = 0
    solves: int = 0

    def clear(self) -> None:
        self.key, self.gram = None, None
        self.weights.clear()

    def held_bytes(self) -> int:
        return (self.gram.nbytes if self.gram is not None else 0) + sum(w.nbytes for w in self.weights.values())


_reuse: _Reuse | None = None


@contextmanager
def reuse_gram() -> Iterator[_Reuse]:
    """Within the block, EASE fits on the same interaction matrix share one Gram matrix.

    One matrix is kept (the last seen, keyed by :func:`fingerprint` of the matrix the Gram is
    computed from) with the weights of up to ``MAX_CACHED_WEIGHTS`` lambdas, as many as the memory
    limit allows (none: the fit runs as without the block); all of it is released when the block
    ends. Nested blocks share the outer cache.
    """
    global _reuse
    outer = _reuse
    state = outer if outer is not None else _Reuse()
    _reuse = state
    try:
        yield state
    finally:
        _reuse = outer


def _available_gib() -> float:
    return float(psutil.virtual_memory().available) / GiB


class EASEModel(ModelBase[EASEConfig]):
    """Item-item linear model with a closed-form solution; hot users only.

    Similar items: an item's row of the learned item-item weights.
    """

    name = "ease"
    config_class = EASEConfig
    has_item_similarity = True
    state_keys = ("weights",)

    def _memory_limit(self) -> tuple[float, str]:
        if self.config.max_memory_gb is not None:
            return self.config.max_memory_gb, "max_memory_gb"
        share = DEFAULT_MEMORY_SHARE
        held = _reuse.held_bytes() / GiB if _reuse is not None else 0.0  # ours, releasable: counts as available
        return share * (_available_gib() + held), f"{share:.0%} of the RAM available now; set max_memory_gb to change"

    def _check_size(self, n: int, n_users: int, nnz: int, reuse: bool) -> int:
        """Refuse a fit that does not fit; under :func:`reuse_gram`, return how many weights may be
        kept besides the Gram matrix within the limit (0: keep nothing, the fit goes on without)."""
        need = estimate_bytes(n, n_users, nnz, reuse=False) / GiB
        alternative = (
            "for a catalogue this size use itemknn (sparse neighbours) or als (factors), whose memory "
            "grows with the interactions, not with n_items^2"
        )
        if n > self.config.max_items:
            raise EASETooLargeError(
                f"EASE needs an n_items x n_items matrix: {n:,} items exceed max_items={self.config.max_items:,} "
                f"(estimated memory {need:.3g} GiB); {alternative}, or raise max_items"
            )
        limit, source = self._memory_limit()
        if need > limit:
            raise EASETooLargeError(
                f"EASE on {n:,} items needs about {need:.3g} GiB (dense n_items x n_items float32), "
                f"above the limit of {limit:.3g} GiB ({source}); {alternative}"
            )
        if not reuse:
            return 0
        dense = n * n * FLOAT / GiB  # the cached Gram matrix, then one per cached weights
        return max(0, min(MAX_CACHED_WEIGHTS, int((limit - need) / dense) - 1))

    def _fit(self, dataset: Dataset) -> None:
        x = sp.csr_matrix(dataset.interactions, dtype=np.float32)
        if self.config.binary:
            x = (x > 0).astype(np.float32)
        n_users, n = x.shape
        state = _reuse
        slots = self._check_size(n, n_users, x.nnz, reuse=state is not None)
        lam = float(self.config.regularization)
        if state is None or slots == 0:
            if state is not None:  # too large to keep copies: free what is cached
                state.clear()
            self.weights = weights_from_gram(gram(x), lam)
            return
        key = fingerprint(x)
        if key != state.key:
            state.clear()
            state.gram = gram(x)
            state.key = key
            state.grams_computed += 1
        elif lam in state.weights:
            state.weights.move_to_end(lam)
            self.weights = state.weights[lam]  # read-only, shared with the earlier fit
            return
        while len(state.weights) >= slots:
            state.weights.popitem(last=False)
        assert state.gram is not None
        w = weights_from_gram(state.gram.copy(), lam)
        state.solves += 1
        w.flags.writeable = False
        state.weights[lam] = w
        self.weights = w

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        assert self.seen is not None
        x = self.seen[user_idx]
        if not self.config.weighted_history:
            x = (x > 0).astype(np.float32)
        return np.asarray(x @ self.weights, dtype=np.float32)

    def _item_similarity(self, item_idx: np.ndarray) -> np.ndarray:
        return self.weights[item_idx].copy()
