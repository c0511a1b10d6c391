"""EASE: embarrassingly shallow autoencoder (Steck 2019), closed form.

B = I - P / diag(P) with P = (X^T X + lambda I)^-1; score = x_u B. Strong on small catalogues;
memory is n_items^2, so large catalogues are refused with a clear error.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from storerec.models.base import ModelBase, ModelConfig
from storerec.models.dataset import Dataset


class EASEConfig(ModelConfig):
    regularization: float = Field(500.0, gt=0, description="lambda on the diagonal.")
    binary: bool = Field(True, description="Item-item weights from 0/1 interactions instead of weights.")
    weighted_history: bool = Field(
        True,
        description="Score with the user's weighted history (event weights, recency) rather than 0/1; "
        "the weights come from the interaction matrix config.",
    )
    max_items: int = Field(30_000, ge=1, description="Refuse catalogues larger than this (memory is n_items^2).")


class EASEModel(ModelBase[EASEConfig]):
    """Item-item linear model with a closed-form solution; hot users only.

    Similar items: an item's row of the learned item-item weights.
    """

    name = "ease"
    config_class = EASEConfig
    has_item_similarity = True
    state_keys = ("weights",)

    def _fit(self, dataset: Dataset) -> None:
        n = dataset.n_items
        if n > self.config.max_items:
            raise ValueError(
                f"EASE needs an n_items x n_items matrix: {n} items exceed max_items={self.config.max_items} "
                f"({n * n * 8 / 2**30:.1f} GiB); use ALS or item-item for this catalogue"
            )
        x = dataset.interactions.astype(np.float64)
        if self.config.binary:
            x = (x > 0).astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices(n)] += self.config.regularization
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        b[np.diag_indices(n)] = 0.0
        self.weights = b.astype(np.float32)

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        assert self.seen is not None
        x = self.seen[user_idx]
        if not self.config.weighted_history:
            x = (x > 0).astype(np.float32)
        return np.asarray(x @ self.weights, dtype=np.float32)

    def _item_similarity(self, item_idx: np.ndarray) -> np.ndarray:
        return self.weights[item_idx].copy()
