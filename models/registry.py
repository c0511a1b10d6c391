"""Model names -> classes, imported lazily so that ``import models`` stays cheap."""

from __future__ import annotations

import importlib

from storerec.errors import UserError

MODEL_CLASSES = {
    "popularity": "models.popularity:PopularityModel",
    "itemknn": "models.itemknn:ItemKNNModel",
    "als": "models.als:ALSModel",
    "bpr": "models.bpr:BPRModel",
    "lightfm": "models.lightfm:LightFMModel",
    "ease": "models.ease:EASEModel",
}


def get_model_class(name: str) -> type:
    """The model class registered as ``name``; a clear error lists the known names."""
    try:
        module, attr = MODEL_CLASSES[name].split(":")
    except KeyError:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CLASSES)}") from None
    return getattr(importlib.import_module(module), attr)
