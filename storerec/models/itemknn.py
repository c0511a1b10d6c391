"""Item-item neighbourhood model (implicit's cosine / BM25 / TF-IDF recommenders).

Powers "bought also bought" and similar-items lists: a user's score for an item is the sum of
the item's similarities to the user's history, weighted by the history.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from storerec.models._implicit import single_threaded_blas
from storerec.models.base import ModelBase, ModelConfig
from storerec.models.dataset import Dataset


class ItemKNNConfig(ModelConfig):
    similarity: Literal["cosine", "bm25", "tfidf"] = "bm25"
    neighbours: int = Field(50, ge=1, description="Neighbours kept per item (implicit's K).")
    bm25_k1: float = Field(1.2, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    num_threads: int = Field(0, ge=0)


class ItemKNNModel(ModelBase[ItemKNNConfig]):
    """Item-item k-nearest neighbours on the interaction matrix; hot users only.

    Similar items: an item's ``neighbours`` nearest items (the others are not similar at all).
    """

    name = "itemknn"
    config_class = ItemKNNConfig
    has_item_similarity = True
    state_keys = ("similarity",)

    def _fit(self, dataset: Dataset) -> None:
        model = self._recommender()
        with single_threaded_blas(), warnings.catch_warnings():
            # implicit's tf-idf/bm25 weighting converts to COO internally and then warns about it.
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model.fit(sp.csr_matrix(dataset.interactions), show_progress=False)
        self.similarity = sp.csr_matrix(model.similarity, dtype=np.float32)

    def _recommender(self) -> Any:
        """implicit's recommender for the configured similarity (imported here: importing the
        model stays cheap)."""
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

        cfg = self.config
        if cfg.similarity == "bm25":
            return BM25Recommender(K=cfg.neighbours, K1=cfg.bm25_k1, B=cfg.bm25_b, num_threads=cfg.num_threads)
        if cfg.similarity == "tfidf":
            return TFIDFRecommender(K=cfg.neighbours, num_threads=cfg.num_threads)
        return CosineRecommender(K=cfg.neighbours, num_threads=cfg.num_threads)

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        assert self.seen is not None
        return np.asarray((self.seen[user_idx] @ self.similarity).todense(), dtype=np.float32)

    def _item_similarity(self, item_idx: np.ndarray) -> np.ndarray:
        sim = np.asarray(self.similarity[item_idx].todense(), dtype=np.float32)
        sim[sim == 0] = -np.inf  # items that are not neighbours are not "similar"
        return sim

    def _set_state(self, state: dict[str, Any]) -> None:
        self.similarity = state["similarity"].astype(np.float32)
