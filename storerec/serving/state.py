"""Loading what the service serves: a registered version from MLflow plus profiles and events."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC
from io import BytesIO
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.errors import UserError
from storerec.core.settings import Settings
from storerec.events.experiments import ExperimentConfig, load_experiments
from storerec.features import io
from storerec.features.forget import forgotten_hashes, forgotten_ids
from storerec.models.base import ModelBase
from storerec.ranking.ranker import Ranker
from storerec.registry import tracking

log = logging.getLogger("storerec.serving")


@dataclass(frozen=True)
class Loaded:
    ranker: Ranker
    model_name: str
    version: str


def load(settings: Settings, ref: str | None = None, cache: dict[str, Loaded] | None = None) -> Loaded:
    """Resolve ``ref`` (default ``serving.model``) in the registry and build a :class:`Ranker`
    (or take it from ``cache``, keyed by version number, when that version is loaded already).

    Raises :class:`UserError` with a clear message when nothing is registered or files are missing.
    """
    ref = ref or settings.serving.model
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.registered_model_name(), ref)
    key = f"{version.name}/{version.version}"  # refs may name other registered models (storerec/3)
    if cache is not None and key in cache:
        return cache[key]
    # Everything is read into memory (ModelBase.load copies the npz arrays, the parquet file is
    # read from bytes, so nothing maps or holds a file in the folder), then the folder goes.
    tmp = Path(tempfile.mkdtemp(prefix="storerec-serve-"))
    try:
        folder = tracking.download_version(client, version, tmp)
        model = ModelBase.load(folder / tracking.ARTIFACT_MODEL)
        items = pl.read_parquet(BytesIO((folder / "item_features.parquet").read_bytes()))
    except Exception as exc:  # a corrupt, partial or unreachable version
        raise UserError(f"model version {version.version} ({ref}) could not be loaded: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data_dir = settings.data.dir
    # a version trained on another data set (its items are not this folder's) is refused: 409 on reload
    tracking.check_catalogue(model, data_dir, label=tracking.version_label(version, ref), data=tracking.version_data(client, version))
    profiles_path = Path(data_dir) / "profiles" / "users.parquet"
    profiles = pl.read_parquet(profiles_path) if profiles_path.exists() else None
    events = io.read_table(data_dir, "events") if io.has_table(data_dir, "events") else None
    if profiles is None:
        log.warning("no user profiles at %s: reasons that need a profile are off", profiles_path)
    hashes = forgotten_hashes(Path(data_dir))
    forgotten = frozenset(forgotten_ids(model.users.external.tolist(), hashes)) if hashes and model.users is not None else frozenset()
    if forgotten:
        log.info("%d forgotten user(s) in version %s are served as unknown users", len(forgotten), version.version)
    ranker = Ranker(model, items, profiles, events, context_weight=settings.serving.context_weight, forgotten=forgotten)  # type: ignore[arg-type]
    loaded = Loaded(ranker, model.name, str(version.version))
    if cache is not None:
        cache[key] = loaded
    return loaded


@dataclass(frozen=True)
class ServingState:
    """Everything one request needs, swapped as a whole by a reload."""

    default: Loaded
    by_ref: dict[str, Loaded]  # model reference in the experiments file -> loaded version
    experiments: list[ExperimentConfig]
    disabled: dict[str, str]  # experiment name -> why it is off (a variant failed to load)

    def experiment_status(self, now: Any = None) -> list[dict[str, Any]]:
        from datetime import datetime

        now = now or datetime.now(UTC)
        out = []
        for exp in self.experiments:
            status = "disabled" if exp.name in self.disabled else ("running" if exp.running(now) else "not running")
            out.append(
                {
                    "name": exp.name,
                    "status": status,
                    "error": self.disabled.get(exp.name),
                    "salt": exp.salt,
                    "start": exp.start.isoformat() if exp.start else None,
                    "stop": exp.stop.isoformat() if exp.stop else None,
                    "targeting": exp.targeting.model_dump(),
                    "control": exp.control.name,
                    "variants": [
                        {
                            **v.model_dump(),
                            "model_name": self.by_ref[v.model].model_name if v.model in self.by_ref else None,
                            "model_version": self.by_ref[v.model].version if v.model in self.by_ref else None,
                        }
                        for v in exp.variants
                    ],
                }
            )
        return out


def load_state(settings: Settings, ref: str | None = None) -> ServingState:
    """The default model plus every experiment variant's model, side by side. A variant that
    fails to load disables its experiment (logged, and shown by /readyz and /experiments); a
    default model that fails, or an invalid experiments file, is an error."""
    cache: dict[str, Loaded] = {}
    default = load(settings, ref, cache)
    experiments = load_experiments(settings.experiments.file)
    by_ref = {ref or settings.serving.model: default}
    disabled: dict[str, str] = {}
    for exp in experiments:
        for v in exp.variants:
            if v.model in by_ref:
                continue
            try:
                by_ref[v.model] = load(settings, v.model, cache)
            except UserError as exc:
                disabled[exp.name] = f"variant {v.name!r} (model {v.model!r}) failed to load: {exc}"
                log.error("experiment %s disabled: %s", exp.name, disabled[exp.name])
                break
    return ServingState(default, by_ref, experiments, disabled)
