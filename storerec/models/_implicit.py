"""Shared code of the models built on the `implicit` library."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from storerec.core.progress import FitReporter, fit_task
from storerec.models.base import ConfigT, ModelBase
from storerec.models.dataset import Dataset


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    # implicit parallelises itself; a multi-threaded BLAS underneath oversubscribes the cores
    # (implicit warns about exactly this), so BLAS is pinned to one thread while fitting.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def implicit_class(path: str) -> Any:
    """The implicit estimator class at ``"module:Class"``, imported when first needed (so that
    importing a model module stays cheap)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class ImplicitFactorModel(ModelBase[ConfigT]):
    """A matrix factorisation fitted by one of implicit's estimators; hot users only.

    The estimator (``estimator``, ``"module:Class"``) is built from the config's fields, which
    are named as its keyword arguments. Scores are ``user_factors @ item_factors.T``; the item
    vectors are the item factors, less the last column when ``item_bias_column`` (implicit's BPR
    keeps the item bias there, with a 1 in the user factors).

    ``fit_progress``, when set, reports each iteration through implicit's fit callback (it
    changes nothing in the computation).
    """

    estimator: ClassVar[str]
    item_bias_column: ClassVar[bool] = False
    has_item_vectors = True
    has_item_similarity = True
    state_keys = ("user_factors", "item_factors")
    fit_progress: FitReporter | None = None  # set by the caller before fit(); see storerec.core.progress

    user_factors: np.ndarray
    item_factors: np.ndarray

    def _fit(self, dataset: Dataset) -> None:
        estimator = implicit_class(self.estimator)  # imported first: the BLAS limit covers the libraries loaded by then
        with single_threaded_blas():
            model = estimator(**self.config.model_dump())
            with fit_task(self.fit_progress, model.iterations, "iteration") as task:
                # implicit calls back after each iteration with its 0-based index (and times, loss)
                model.fit(sp.csr_matrix(dataset.interactions), show_progress=False, callback=lambda i, *_: task.update(i + 1))
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        return self.user_factors[user_idx] @ self.item_factors.T

    def _dot_factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.user_factors, self.item_factors  # the bias column of BPR included: it is part of the product

    def _item_vectors(self) -> np.ndarray:
        return self.item_factors[:, :-1] if self.item_bias_column else self.item_factors
