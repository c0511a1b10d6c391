"""Alternating least squares on implicit feedback (implicit's ``AlternatingLeastSquares``)."""

from __future__ import annotations

from pydantic import Field

from storerec.models._implicit import ImplicitFactorModel
from storerec.models.base import ModelConfig


class ALSConfig(ModelConfig):
    """Keyword arguments of implicit's ``AlternatingLeastSquares``."""

    factors: int = Field(64, ge=1)
    regularization: float = Field(0.01, ge=0)
    alpha: float = Field(1.0, gt=0, description="Confidence = 1 + alpha * weight.")
    iterations: int = Field(15, ge=1)
    random_state: int = 42
    num_threads: int = Field(0, ge=0, description="0 = all cores.")


class ALSModel(ImplicitFactorModel[ALSConfig]):
    """Matrix factorisation by ALS (Hu, Koren, Volinsky 2008); hot users only."""

    name = "als"
    config_class = ALSConfig
    estimator = "implicit.cpu.als:AlternatingLeastSquares"
