"""Model names -> classes, imported lazily so that ``import models`` stays cheap."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from storerec.core.errors import UserError

if TYPE_CHECKING:
    from storerec.models.base import ModelBase

MODEL_CLASSES = {
    "popularity": "storerec.models.popularity:PopularityModel",
    "itemknn": "storerec.models.itemknn:ItemKNNModel",
    "als": "storerec.models.als:ALSModel",
    "bpr": "storerec.models.bpr:BPRModel",
    "lightfm": "storerec.models.lightfm:LightFMModel",
    "ease": "storerec.models.ease:EASEModel",
}


def get_model_class(name: str) -> type[ModelBase]:
    """The model class registered as ``name``; a clear error lists the known names."""
    try:
        module, attr = MODEL_CLASSES[name].split(":")
    except KeyError:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CLASSES)}") from None
    return getattr(importlib.import_module(module), attr)
