"""Loading what the service serves: a registered version from MLflow plus profiles and events."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import io
from models.base import ModelBase
from serving.ranking import Ranker
from storerec.errors import UserError
from storerec.settings import Settings
from training import tracking

log = logging.getLogger("storerec.serving")


@dataclass(frozen=True)
class Loaded:
    ranker: Ranker
    model_name: str
    version: str


def load(settings: Settings, ref: str | None = None) -> Loaded:
    """Resolve ``ref`` (default ``serving.model``) in the registry and build a :class:`Ranker`.

    Raises :class:`UserError` with a clear message when nothing is registered or files are missing.
    """
    ref = ref or settings.serving.model
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.mlflow.registered_model, ref)
    folder = tracking.download_version(client, version, Path(tempfile.mkdtemp(prefix="storerec-serve-")))
    try:
        model = ModelBase.load(folder / tracking.ARTIFACT_MODEL)
        items = pl.read_parquet(folder / "item_features.parquet")
    except Exception as exc:  # a corrupt or partial version
        raise UserError(f"model version {version.version} ({ref}) could not be loaded: {exc}") from exc
    data_dir = settings.data.dir
    profiles_path = Path(data_dir) / "profiles" / "users.parquet"
    profiles = pl.read_parquet(profiles_path) if profiles_path.exists() else None
    events = io.read_table(data_dir, "events") if io.has_table(data_dir, "events") else None
    if profiles is None:
        log.warning("no user profiles at %s: reasons that need a profile are off", profiles_path)
    ranker = Ranker(model, items, profiles, events, context_weight=settings.serving.context_weight)  # type: ignore[arg-type]
    return Loaded(ranker, model.name, str(version.version))
