"""Bayesian personalised ranking (implicit's ``BayesianPersonalizedRanking``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from models._implicit import single_threaded_blas
from models.base import ModelBase, ModelConfig
from models.dataset import Dataset


class BPRConfig(ModelConfig):
    factors: int = Field(64, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    regularization: float = Field(0.01, ge=0)
    iterations: int = Field(100, ge=1)
    random_state: int = 42
    num_threads: int = Field(0, ge=0)


class BPRModel(ModelBase):
    """Pairwise ranking factorisation (Rendle et al. 2009); hot users only.

    implicit's factors carry the item bias as an extra column (users have a 1 there), so the
    dot product already includes it.
    """

    name = "bpr"
    config_class = BPRConfig

    def _fit(self, dataset: Dataset) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        cfg = self.config
        with single_threaded_blas():
            model = BayesianPersonalizedRanking(
                factors=cfg.factors,
                learning_rate=cfg.learning_rate,
                regularization=cfg.regularization,
                iterations=cfg.iterations,
                random_state=cfg.random_state,
                num_threads=cfg.num_threads,
            )
            model.fit(sp.csr_matrix(dataset.interactions), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        return self.user_factors[user_idx] @ self.item_factors.T

    def _item_vectors(self) -> np.ndarray:
        return self.item_factors[:, :-1]  # without the bias column

    def _get_state(self) -> dict[str, Any]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.user_factors = state["user_factors"]
        self.item_factors = state["item_factors"]
