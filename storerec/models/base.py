"""The model interface, after RecTools' ``ModelBase``: shared work once, small hooks per model.

``fit`` keeps the id maps and the seen-items matrix; ``recommend`` routes each user once:

* **hot** - known with interactions: ``_score_hot``;
* **warm** - known (has features) but no interactions: ``_score_warm`` if the model declares
  ``recommends_for_warm``, else treated as cold;
* **cold** - unknown id: ``_score_cold`` if the model declares ``recommends_for_cold``, else the
  user gets no rows (the serving layer falls back to trending lists).

Scores are computed batch-first as dense ``(batch, n_items)`` arrays, then masked (seen items,
candidate items) and cut to the top ``k`` with ``argpartition``.

What a model can do is declared on its class, as RecTools does (``recommends_for_warm``,
``recommends_for_cold``, ``has_item_vectors``, ``has_item_similarity``); callers check these
flags, and the public :meth:`ModelBase.item_vectors` / :meth:`ModelBase.item_similarity` refuse
a capability the model does not declare (``tests/test_model_contract.py`` checks that every
registered model's declarations are true).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from storerec.core.formulas import unit_rows
from storerec.core.schema import Columns
from storerec.models.dataset import Dataset, Features, IdMap

FORMAT_VERSION = 1
BATCH_USERS = 1024
C = Columns


class ModelConfig(BaseModel):
    """Base for model configs: unknown keys are errors (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class NotFittedError(RuntimeError):
    pass


class CapabilityError(RuntimeError):
    """A capability the model does not declare was asked for (e.g. item vectors of item-kNN)."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` (indices, scores), best first; ``-inf`` entries are never returned
    (their index is -1)."""
    n = scores.shape[1]
    k = min(k, n)
    if k <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64), np.empty((scores.shape[0], 0), dtype=np.float32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (scores.shape[0], 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    # stable order: score desc, then item index asc (deterministic ties)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    sc = np.take_along_axis(part_scores, order, axis=1)
    idx = np.where(np.isneginf(sc), -1, idx)
    return idx, sc


def top_k_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of one row (the same order: score desc, then item index), without the
    ``-inf`` entries; the one-user path for serving."""
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=scores.dtype)
    part = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    part_scores = scores[part]
    order = np.lexsort((part, -part_scores))
    idx, sc = part[order], part_scores[order]
    keep = sc > -np.inf
    return idx[keep], sc[keep]


def _owned_scores(out: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``out`` as a float32 array of ``shape`` that the caller may write into: ``out`` itself
    when it already is one (a fresh product), else a float32 copy (never a view of model state)."""
    if isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape and out.flags.owndata and out.flags.writeable:
        return out
    return np.array(np.broadcast_to(out, shape), dtype=np.float32)


ConfigT = TypeVar("ConfigT", bound=ModelConfig)


class ModelBase(ABC, Generic[ConfigT]):
    """Base class of every storerec model.

    Subclasses set ``name``, ``config_class``, ``state_keys`` and the capability flags, and
    implement ``_fit`` and ``_score_hot``. Each declared capability has its hook:

    ========================  ==========================================================
    ``recommends_for_warm``   ``_score_warm`` (known users without interactions)
    ``recommends_for_cold``   ``_score_cold`` (unknown users)
    ``has_item_vectors``      ``_item_vectors`` (one row per item; also gives a cosine
                              ``_item_similarity`` unless the model overrides it)
    ``has_item_similarity``   ``_item_similarity`` (needed by :meth:`similar_items`)
    ========================  ==========================================================

    ``state_keys`` name the attributes that, with the config, restore a fitted model
    (:meth:`save` / :meth:`load`); override ``_get_state`` / ``_set_state`` only to convert.

    Example
    -------
    >>> model = PopularityModel().fit(dataset)            # doctest: +SKIP
    >>> model.recommend(["u1", "u2"], k=10)               # doctest: +SKIP
    shape: (20, 4) user_id, item_id, score, rank
    """

    name: ClassVar[str] = "base"
    config_class: type[ConfigT]
    recommends_for_warm: ClassVar[bool] = False
    recommends_for_cold: ClassVar[bool] = False
    has_item_vectors: ClassVar[bool] = False
    has_item_similarity: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False
    state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ConfigT | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if isinstance(config, dict):
            config = self.config_class(**config, **kwargs)
        self.config: ConfigT = config if config is not None else self.config_class(**kwargs)
        self.is_fitted = False
        self.users: IdMap | None = None
        self.items: IdMap | None = None
        self.seen: sp.csr_matrix | None = None
        self.user_features: Features | None = None
        self.item_features: Features | None = None
        self._unit_cache: tuple[Any, np.ndarray, np.ndarray] | None = None  # see _unit_item_vectors

    # ---- public API ---------------------------------------------------------------------
    def get_params(self, simple_types: bool = True) -> dict[str, Any]:
        """Flat dict with dotted keys, ready for ``mlflow.log_params``."""
        params = {"model": self.name, **self.config.model_dump()}
        return flatten(params) if simple_types else params

    def fit(self, dataset: Dataset) -> Self:
        """Fit on ``dataset``; returns ``self``."""
        self.users, self.items = dataset.users, dataset.items
        self.seen = dataset.interactions.tocsr().astype(np.float32)
        self.user_features = dataset.user_features if self.uses_features else None
        self.item_features = dataset.item_features if self.uses_features else None
        self._fit(dataset)
        self.is_fitted = True
        return self

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    def route(self, user_idx: np.ndarray) -> dict[str, np.ndarray]:
        """Positions (into ``user_idx``) of hot, warm and cold users, after the model's support."""
        assert self.seen is not None
        known = user_idx >= 0
        nnz = np.zeros(len(user_idx), dtype=np.int64)
        indptr = self.seen.indptr
        nnz[known] = indptr[user_idx[known] + 1] - indptr[user_idx[known]]
        hot = np.flatnonzero(known & (nnz > 0))
        warm = np.flatnonzero(known & (nnz == 0))
        cold = np.flatnonzero(~known)
        if not self.recommends_for_warm:
            cold, warm = np.sort(np.concatenate([cold, warm])), warm[:0]
        if not self.recommends_for_cold:
            cold = cold[:0]
        return {"hot": hot, "warm": warm, "cold": cold}

    def group_of(self, user_idx: int) -> str | None:
        """``"hot"``, ``"warm"`` or ``"cold"`` for one internal user index (-1: unknown), as
        :meth:`route` would place it; ``None`` when the model cannot score that user."""
        assert self.seen is not None
        if user_idx >= 0:
            if self.seen.indptr[user_idx + 1] > self.seen.indptr[user_idx]:
                return "hot"
            if self.recommends_for_warm:
                return "warm"
        return "cold" if self.recommends_for_cold else None

    def score_user(self, user_idx: int) -> np.ndarray | None:
        """Raw float32 scores of one user (internal index, -1: unknown) over all items, or
        ``None`` when the model cannot score them: the one-user path of :meth:`score` (the same
        numbers) without its batch bookkeeping, for serving."""
        self._check_fitted()
        group = self.group_of(user_idx)
        if group == "hot":
            row = self._score_hot(np.array([user_idx]))
        elif group == "warm":
            row = self._score_warm(np.array([user_idx]))
        elif group == "cold":
            row = self._score_cold(1)
        else:
            return None
        return np.asarray(row, dtype=np.float32).reshape(-1)

    def score(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``(len(users), n_items)`` and a boolean mask of users the model can score.

        Rows of users the model does not support are ``-inf``.
        """
        self._check_fitted()
        assert self.users is not None and self.items is not None
        idx = self.users.to_internal(list(user_ids))
        groups = self.route(idx)
        ok = np.zeros(len(idx), dtype=bool)
        for g in groups.values():
            ok[g] = True
        shape = (len(idx), len(self.items))
        if len(groups["hot"]) == len(idx) and len(idx):  # every user hot (the usual batch): no -inf fill, no copy
            return _owned_scores(self._score_hot(idx), shape), ok
        scores = np.full(shape, -np.inf, dtype=np.float32)
        if len(groups["hot"]):
            scores[groups["hot"]] = self._score_hot(idx[groups["hot"]])
        if len(groups["warm"]):
            scores[groups["warm"]] = self._score_warm(idx[groups["warm"]])
        if len(groups["cold"]):
            scores[groups["cold"]] = self._score_cold(len(groups["cold"]))
        return scores, ok

    def recommend(
        self,
        users: Sequence[str] | str,
        k: int,
        exclude_seen: bool = True,
        candidate_items: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """Top-``k`` items per user, batch-first.

        Parameters
        ----------
        users
            External user id(s). Unknown users are served only if the model declares
            ``recommends_for_cold``; otherwise they get no rows.
        k
            Items per user (fewer when the catalogue or candidates run out).
        exclude_seen
            Leave out items the user interacted with in the training data.
        candidate_items
            Only rank these items (external ids; unknown ids are ignored).

        Returns
        -------
        polars.DataFrame
            ``user_id, item_id, score, rank`` (rank 1 = best), users in the order given.
        """
        self._check_fitted()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        users = [users] if isinstance(users, str) else list(users)
        assert self.users is not None and self.items is not None and self.seen is not None
        allowed = None
        if candidate_items is not None:
            cand = self.items.to_internal(list(candidate_items))
            allowed = np.zeros(len(self.items), dtype=bool)
            allowed[cand[cand >= 0]] = True
        out_u, out_i, out_s, out_r = [], [], [], []
        for start in range(0, len(users), BATCH_USERS):
            batch = users[start : start + BATCH_USERS]
            scores, ok = self.score(batch)
            idx = self.users.to_internal(batch)
            if exclude_seen:
                known = np.flatnonzero(idx >= 0)
                if len(known):
                    sub = self.seen[idx[known]].tocoo()
                    scores[known[sub.row], sub.col] = -np.inf
            if allowed is not None:
                scores[:, ~allowed] = -np.inf
            top, top_scores = top_k(scores, k)
            rows, cols = np.nonzero(top >= 0)
            rows_ok = ok[rows]
            rows, cols = rows[rows_ok], cols[rows_ok]
            out_u.append(np.asarray(batch, dtype=object)[rows])
            out_i.append(self.items.to_external(top[rows, cols]))
            out_s.append(top_scores[rows, cols])
            out_r.append(cols + 1)
        return pl.DataFrame(
            {
                C.User: np.concatenate(out_u).tolist() if out_u else [],
                C.Item: np.concatenate(out_i).tolist() if out_i else [],
                "score": np.concatenate(out_s).astype(np.float32) if out_s else np.empty(0, np.float32),
                "rank": np.concatenate(out_r).astype(np.int32) if out_r else np.empty(0, np.int32),
            },
            schema={C.User: pl.String, C.Item: pl.String, "score": pl.Float32, "rank": pl.Int32},
        )

    def dot_factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(user_factors, item_factors)`` when a hot user's scores are exactly
        ``user_factors[user_idx] @ item_factors.T`` (the same float32 product), else ``None``.

        Evaluation uses them for an exact top-k that skips items whose vector norm cannot reach
        a user's k-th score (:mod:`storerec.evaluation.scoring`)."""
        self._check_fitted()
        return self._dot_factors()

    def item_vectors(self) -> np.ndarray:
        """One vector per item ``(n_items, dim)`` (models that declare ``has_item_vectors``)."""
        self._check_fitted()
        if not self.has_item_vectors:
            raise CapabilityError(f"the {self.name} model has no item vectors (has_item_vectors is False)")
        return self._item_vectors()

    def item_similarity(self, item_idx: np.ndarray) -> np.ndarray:
        """Similarities ``(len(item_idx), n_items)`` of the items at internal indices ``item_idx``
        to every item (models that declare ``has_item_similarity``); ``-inf`` marks items the
        model does not consider similar at all."""
        self._check_fitted()
        if not self.has_item_similarity:
            raise CapabilityError(f"the {self.name} model has no item similarity (has_item_similarity is False)")
        return self._item_similarity(item_idx)

    def similar_items(self, items: Sequence[str] | str, k: int) -> pl.DataFrame:
        """Top-``k`` most similar items per item (the item itself excluded); models that declare
        ``has_item_similarity``.

        Returns ``item_id, similar_item_id, score, rank``; unknown items get no rows.
        """
        self._check_fitted()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        items = [items] if isinstance(items, str) else list(items)
        assert self.items is not None
        idx = self.items.to_internal(items)
        known = np.flatnonzero(idx >= 0)
        scores = np.full((len(items), len(self.items)), -np.inf, dtype=np.float32)
        if len(known):
            scores[known] = self.item_similarity(idx[known])
            scores[known, idx[known]] = -np.inf
        top, top_scores = top_k(scores, k)
        rows, cols = np.nonzero(top >= 0)
        return pl.DataFrame(
            {
                C.Item: np.asarray(items, dtype=object)[rows].tolist(),
                "similar_item_id": self.items.to_external(top[rows, cols]).tolist(),
                "score": top_scores[rows, cols].astype(np.float32),
                "rank": (cols + 1).astype(np.int32),
            },
            schema={C.Item: pl.String, "similar_item_id": pl.String, "score": pl.Float32, "rank": pl.Int32},
        )

    # ---- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted model to folder ``path`` (numpy/scipy files + meta.json; no pickle)."""
        self._check_fitted()
        assert self.users is not None and self.items is not None and self.seen is not None
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "users": self.users.external.astype(str),
            "items": self.items.external.astype(str),
        }
        sparse: dict[str, sp.spmatrix] = {"seen": self.seen}
        for kind, feats in (("user_features", self.user_features), ("item_features", self.item_features)):
            if feats is not None:
                sparse[kind] = feats.matrix
                arrays[f"{kind}_names"] = np.asarray(feats.names, dtype=str)
        for key, value in self._get_state().items():
            if sp.issparse(value):
                sparse[key] = value
            else:
                arrays[key] = np.asarray(value)
        np.savez(path / "arrays.npz", **cast(dict[str, Any], arrays))  # (numpy's stub reads ** as allow_pickle)
        for key, mat in sparse.items():
            sp.save_npz(path / f"{key}.sparse.npz", sp.csr_matrix(mat))
        meta = {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "config": self.config.model_dump(mode="json"),
            "sparse": sorted(sparse),
        }
        (path / "meta.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelBase:
        """Load a model saved by :meth:`save` (any model class when called on ``ModelBase``)."""
        from storerec.models.registry import get_model_class

        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{meta_file} not found: {path} is not a saved storerec model")
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: model format {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
        klass = get_model_class(meta["model"]) if cls is ModelBase else cls
        model = klass(klass.config_class(**meta["config"]))
        with np.load(path / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        sparse = {k: sp.load_npz(path / f"{k}.sparse.npz").tocsr() for k in meta["sparse"]}
        model.users = IdMap.from_values(arrays.pop("users").astype(object))
        model.items = IdMap.from_values(arrays.pop("items").astype(object))
        model.seen = sparse.pop("seen").astype(np.float32)
        for kind in ("user_features", "item_features"):
            if kind in sparse:
                setattr(model, kind, Features(arrays.pop(f"{kind}_names").tolist(), sparse.pop(kind)))
        model._set_state({**arrays, **sparse})
        model.is_fitted = True
        return model

    # ---- hooks --------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, dataset: Dataset) -> None: ...

    @abstractmethod
    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        """Dense scores ``(len(user_idx), n_items)`` for known users with interactions."""

    def _score_warm(self, user_idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not recommend for warm users")

    def _score_cold(self, n_users: int) -> np.ndarray:
        raise NotImplementedError(f"{self.name} does not recommend for cold users")

    def _item_similarity(self, item_idx: np.ndarray) -> np.ndarray:
        """Dense similarities ``(len(item_idx), n_items)``; default: cosine of item vectors."""
        unit = self._unit_item_vectors()
        return (unit[item_idx] @ unit.T).astype(np.float32)

    def _unit_item_vectors(self) -> np.ndarray:
        """``unit_rows(self._item_vectors())``, computed once per set of item vectors (read-only).

        Normalising every item per call made each ``similar_items`` call O(items x dim) in
        temporaries (hundreds of MB at 500k items). The cache is keyed on the vectors' buffer
        (address, shape, strides, dtype) and holds the vectors themselves, so a refit or a load
        (new arrays) is seen; writing into the item vectors in place is not, and no model does."""
        vectors = self._item_vectors()
        key = (vectors.__array_interface__["data"][0], vectors.shape, vectors.strides, vectors.dtype.str)
        cached = getattr(self, "_unit_cache", None)
        if cached is not None and cached[0] == key:
            return cast(np.ndarray, cached[2])
        unit = unit_rows(vectors)
        unit.setflags(write=False)
        self._unit_cache = (key, vectors, unit)
        return unit

    def _item_vectors(self) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no item vectors")

    def _dot_factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None

    def _get_state(self) -> dict[str, Any]:
        """Arrays (numpy or scipy.sparse) that, with the config, restore the fitted model."""
        return {key: getattr(self, key) for key in self.state_keys}

    def _set_state(self, state: dict[str, Any]) -> None:
        for key in self.state_keys:
            setattr(self, key, state[key])
