"""Bayesian personalised ranking (implicit's ``BayesianPersonalizedRanking``)."""

from __future__ import annotations

from pydantic import Field

from storerec.models._implicit import ImplicitFactorModel
from storerec.models.base import ModelConfig


class BPRConfig(ModelConfig):
    """Keyword arguments of implicit's ``BayesianPersonalizedRanking``."""

    factors: int = Field(64, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    regularization: float = Field(0.01, ge=0)
    iterations: int = Field(100, ge=1)
    random_state: int = 42
    num_threads: int = Field(0, ge=0)


class BPRModel(ImplicitFactorModel[BPRConfig]):
    """Pairwise ranking factorisation (Rendle et al. 2009); hot users only.

    implicit's factors carry the item bias as an extra column (users have a 1 there), so the
    dot product already includes it; the item vectors leave it out.
    """

    name = "bpr"
    config_class = BPRConfig
    estimator = "implicit.cpu.bpr:BayesianPersonalizedRanking"
    item_bias_column = True
