"""LightFM hybrid model: users and items are sums of their feature embeddings (Kula 2015).

With user features (tier, segment, demographics, top categories) and item features (category
path, brand, price band, tags), users without history and items nobody has touched yet still get
sensible scores. Representations are computed once after fitting, so scoring is plain numpy and
serving does not need LightFM itself.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, field_validator

from storerec.core.progress import FitReporter, fit_task
from storerec.models.base import ModelBase, ModelConfig
from storerec.models.dataset import Dataset, Features

log = logging.getLogger(__name__)


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
    user_feature_groups: list[str] | None = Field(
        None,
        description="User feature groups to use (tier, segment, age, gender, region, occupation, price, likes); "
        "None: all. Identity features always stay. Uninformative columns are dropped when the features are built.",
    )
    item_feature_groups: list[str] | None = Field(
        None, description="Item feature groups to use (cat, brand, price, tag); None: all. Identity always stays."
    )
    use_weights: bool = Field(False, description="Pass interaction weights as sample weights.")
    random_state: int = 42
    num_threads: int = Field(2, ge=1)


    @field_validator("user_feature_groups", "item_feature_groups", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        """``--param user_feature_groups=tier,likes`` (a comma-separated string) as a list."""
        if isinstance(v, str):
            return [g.strip() for g in v.split(",") if g.strip()]
        return v


def _chosen(feats: Features | None, use: bool, groups: list[str] | None) -> Features | None:
    if feats is None or not use:
        return None
    return feats if groups is None else feats.select_groups(groups)


class LightFMModel(ModelBase[LightFMConfig]):
    """Hybrid matrix factorisation; recommends for hot, warm (features only) and cold users.

    Cold users (no features at all) get the item biases, LightFM's learned popularity.

    The fit runs one epoch at a time (``fit_partial``: the same computation as ``fit`` with all
    epochs at once, the same random stream) so that ``fit_progress``, when set, can report each
    epoch with an estimate of the time left.
    """

    fit_progress: FitReporter | None = None  # set by the caller before fit(); see storerec.core.progress

    name = "lightfm"
    config_class = LightFMConfig
    recommends_for_warm = True
    recommends_for_cold = True
    has_item_vectors = True
    has_item_similarity = True
    uses_features = True
    state_keys = ("user_emb", "user_bias", "item_emb", "item_bias", "features_dropped")

    def get_params(self, simple_types: bool = True) -> dict[str, Any]:
        """The config, plus (once fitted) the feature groups used and what was dropped as uninformative."""
        params = super().get_params(simple_types)
        if self.is_fitted:
            for i, (kind, feats) in enumerate((("user", self.user_features), ("item", self.item_features))):
                if feats is not None:
                    params[f"features.{kind}.groups"] = ",".join(g for g in feats.groups() if g != "id")
                    if self.features_dropped[i]:
                        params[f"features.{kind}.dropped"] = str(self.features_dropped[i])
        return params

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state({"features_dropped": np.array(["", ""]), **state})  # models saved before it was kept

    def _fit(self, dataset: Dataset) -> None:
        from lightfm import LightFM

        cfg = self.config
        self.user_features = _chosen(dataset.user_features, cfg.use_user_features, cfg.user_feature_groups)
        self.item_features = _chosen(dataset.item_features, cfg.use_item_features, cfg.item_feature_groups)
        for kind, feats in (("user", self.user_features), ("item", self.item_features)):
            if feats is not None and feats.dropped:
                log.info("lightfm: uninformative %s features dropped: %s", kind, feats.describe_dropped())
        self.features_dropped = np.array(
            [f.describe_dropped() if f is not None else "" for f in (self.user_features, self.item_features)], dtype=str
        )  # what the feature builders left out as uninformative: logged with the params, kept on save
        uf = self.user_features.matrix if self.user_features is not None else None
        itf = self.item_features.matrix if self.item_features is not None else None
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
        weights = inter.astype(np.float32) if cfg.use_weights else None
        with fit_task(self.fit_progress, cfg.epochs, "epoch") as task:
            for _ in range(cfg.epochs):  # a fresh LightFM: the first call initialises, the others resume
                model.fit_partial(binary, user_features=uf, item_features=itf, sample_weight=weights, epochs=1,
                                  num_threads=cfg.num_threads)
                task.advance()
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
