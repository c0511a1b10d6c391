"""LightFM hybrid model: users and items are sums of their feature embeddings (Kula 2015).

With user features (tier, segment, demographics, top categories) and item features (category
path, brand, price band, tags), users without history and items nobody has touched yet still get
sensible scores. Representations are computed once after fitting, so scoring is plain numpy and
serving does not need LightFM itself.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from storerec.models.base import ModelBase, ModelConfig
from storerec.models.dataset import Dataset


class LightFMConfig(ModelConfig):
    no_components: int = Field(64, ge=1)
    loss: Literal["warp", "bpr", "logistic", "warp-kos"] = "warp"
    learning_rate: float = Field(0.05, gt=0)
    item_alpha: float = Field(0.0, ge=0)
    user_alpha: float = Field(0.0, ge=0)
    max_sampled: int = Field(10, ge=1)
    epochs: int = Field(30, ge=1)
    use_user_features: bool = True
    use_item_features: bool = True
    use_weights: bool = Field(False, description="Pass interaction weights as sample weights.")
    random_state: int = 42
    num_threads: int = Field(2, ge=1)


class LightFMModel(ModelBase[LightFMConfig]):
    """Hybrid matrix factorisation; recommends for hot, warm (features only) and cold users.

    Cold users (no features at all) get the item biases, LightFM's learned popularity.
    """

    name = "lightfm"
    config_class = LightFMConfig
    recommends_for_warm = True
    recommends_for_cold = True
    has_item_vectors = True
    has_item_similarity = True
    uses_features = True
    state_keys = ("user_emb", "user_bias", "item_emb", "item_bias")

    def _fit(self, dataset: Dataset) -> None:
        from lightfm import LightFM

        cfg = self.config
        uf = dataset.user_features.matrix if (cfg.use_user_features and dataset.user_features is not None) else None
        itf = dataset.item_features.matrix if (cfg.use_item_features and dataset.item_features is not None) else None
        if uf is None:
            self.user_features = None
        if itf is None:
            self.item_features = None
        inter = dataset.interactions.tocoo()
        binary = sp.coo_matrix((np.ones_like(inter.data), (inter.row, inter.col)), shape=inter.shape, dtype=np.float32)
        model = LightFM(
            no_components=cfg.no_components,
            loss=cfg.loss,
            learning_rate=cfg.learning_rate,
            item_alpha=cfg.item_alpha,
            user_alpha=cfg.user_alpha,
            max_sampled=cfg.max_sampled,
            random_state=cfg.random_state,
        )
        model.fit(
            binary,
            user_features=uf,
            item_features=itf,
            sample_weight=inter.astype(np.float32) if cfg.use_weights else None,
            epochs=cfg.epochs,
            num_threads=cfg.num_threads,
        )
        ub, ue = model.get_user_representations(uf)
        ib, ie = model.get_item_representations(itf)
        self.user_emb, self.user_bias = ue.astype(np.float32), ub.astype(np.float32)
        self.item_emb, self.item_bias = ie.astype(np.float32), ib.astype(np.float32)

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        return self.user_emb[user_idx] @ self.item_emb.T + self.item_bias[None, :]

    _score_warm = _score_hot  # warm users' representations come from their features

    def _score_cold(self, n_users: int) -> np.ndarray:
        return np.tile(self.item_bias, (n_users, 1))

    def _item_vectors(self) -> np.ndarray:
        return self.item_emb
