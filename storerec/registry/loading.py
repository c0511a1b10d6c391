"""Loading a registered version for ranking: from MLflow (or a folder baked into a Bento) with its
serving snapshot, into a :class:`Ranker`. The service (``storerec.serving.state``) and the
campaign lists (``storerec.training.campaign``) rank with the very same ranker this builds."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.errors import NotFoundError, UserError
from storerec.core.settings import Settings
from storerec.features import io
from storerec.features.forget import drop_forgotten, forgotten_hashes, forgotten_ids
from storerec.models.base import ModelBase
from storerec.ranking.ranker import Ranker
from storerec.registry import tracking
from storerec.registry.snapshot import Snapshot, read_snapshot

log = logging.getLogger("storerec.serving")


@dataclass(frozen=True)
class Loaded:
    ranker: Ranker
    model_name: str
    version: str
    as_of: datetime | None = None  # the serving snapshot's as-of time (None: no snapshot); the live overlay starts there
    profiles: pl.DataFrame | None = None  # the profile columns the explorer shows (PROFILE_COLUMNS; None: explorer off or no profiles)


# What the explorer (serving/explore.py) shows of a shopper's profile, kept with the version when serving.explorer is on
PROFILE_COLUMNS = (
    "user_id", "segment", "tier", "next_tier", "spend_to_next_tier", "cumulative_spend", "points_balance", "points_expiring_30d",
    "recency_days", "frequency", "monetary", "aov", "r_score", "f_score", "m_score", "rfm_score", "last_purchase_at",
    "top_categories", "top_brands", "price_band", "price_percentile", "region", "repurchase_rate", "avg_order_interval_days",
)


BAKED_INFO = "bento-version.json"  # in serving.model_dir: which version it holds (written by `storerec build --include-model`)


def load(settings: Settings, ref: str | None = None, cache: dict[str, Loaded] | None = None) -> Loaded:
    """Resolve ``ref`` (default ``serving.model``) in the registry and build a :class:`Ranker`
    (or take it from ``cache``, keyed by version number, when that version is loaded already).

    What is served with the model: the version's serving snapshot (profiles and events as of
    its training, :mod:`storerec.registry.snapshot`) when it has one, which is the truth for
    that version whatever the data folder holds now; the data folder's profiles and events only
    for versions registered before snapshots existed. Users forgotten since (``forget-user``,
    recorded in the data folder when there is one) are served as unknown users and their rows
    are left out of the snapshot's tables. With ``serving.model_dir`` set (a Bento built with
    ``--include-model``) the version comes from that folder and MLflow is never asked.

    Raises :class:`UserError` with a clear message when nothing is registered or files are missing.
    """
    ref = ref or settings.serving.model
    if settings.serving.model_dir is not None:
        return _load_baked(settings, ref, cache)
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.registered_model_name(), ref)
    key = f"{version.name}/{version.version}"  # refs may name other registered models (storerec/3)
    if cache is not None and key in cache:
        return cache[key]
    # Everything is read into memory (ModelBase.load copies the npz arrays, the parquet files are
    # read from bytes, so nothing maps or holds a file in the folder), then the folder goes.
    tmp = Path(tempfile.mkdtemp(prefix="storerec-serve-"))
    try:
        folder = tracking.download_version(client, version, tmp)
        model, items, snap = _read_artifacts(folder)
    except Exception as exc:  # a corrupt, partial or unreachable version
        raise UserError(f"model version {version.version} ({ref}) could not be loaded: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loaded = _build(settings, model, items, snap, version=str(version.version),
                    label=tracking.version_label(version, ref), data=tracking.version_data(client, version))
    if cache is not None:
        cache[key] = loaded
    return loaded


def _read_artifacts(folder: Path) -> tuple[ModelBase, pl.DataFrame, Snapshot | None]:
    model = ModelBase.load(folder / tracking.ARTIFACT_MODEL)
    items = pl.read_parquet(BytesIO((folder / "item_features.parquet").read_bytes()))
    return model, items, read_snapshot(folder)


def baked_info(settings: Settings) -> dict[str, Any]:
    """``serving.model_dir``'s :data:`BAKED_INFO`: ``registered_model``, ``version``, ``ref``, ``data``."""
    assert settings.serving.model_dir is not None
    path = Path(settings.serving.model_dir) / BAKED_INFO
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"serving.model_dir {settings.serving.model_dir}: cannot read {BAKED_INFO} ({exc}); "
                        "it must hold a version as `storerec build --include-model` bakes it") from None
    return info


def baked_version(settings: Settings, ref: str) -> str:
    """The version number ``ref`` names in ``serving.model_dir``: the baked version's number,
    its alias at build time, or those with the registered model's name; anything else is
    :class:`NotFoundError` (only that version can be served from the folder)."""
    info = baked_info(settings)
    name, number, built_ref = str(info.get("registered_model")), str(info.get("version")), str(info.get("ref"))
    names = {number, built_ref, f"{name}/{number}", f"{name}@{built_ref}"}
    if ref not in names:
        raise NotFoundError(
            f"this service serves only {name} version {number} ({built_ref}), baked into its Bento ({settings.serving.model_dir}); "
            f"{ref!r} is another: build a Bento of it (`storerec build --include-model --model {ref}`), or one without "
            "--include-model that loads versions from the registry"
        )
    return number


def _load_baked(settings: Settings, ref: str, cache: dict[str, Loaded] | None) -> Loaded:
    folder = Path(settings.serving.model_dir)  # type: ignore[arg-type]
    number = baked_version(settings, ref)
    key = f"baked/{number}"
    if cache is not None and key in cache:
        return cache[key]
    info = baked_info(settings)
    try:
        model, items, snap = _read_artifacts(folder)
    except Exception as exc:
        raise UserError(f"the version baked into {folder} could not be loaded: {exc}") from exc
    label = f"{info.get('registered_model')} version {number} (baked into {folder})"
    loaded = _build(settings, model, items, snap, version=number, label=label, data=dict(info.get("data") or {}))
    if cache is not None:
        cache[key] = loaded
    return loaded


def _build(settings: Settings, model: ModelBase, items: pl.DataFrame, snap: Snapshot | None, *, version: str, label: str,
           data: dict[str, str]) -> Loaded:
    data_dir = Path(settings.data.dir)
    # a version trained on another data set (its items are not this folder's) is refused: 409 on
    # reload; without a data folder there is nothing to compare with and nothing to refuse
    tracking.check_catalogue(model, data_dir, label=label, data=data)
    hashes = forgotten_hashes(data_dir)  # users forgotten in the data folder, when there is one
    if snap is not None:
        profiles, events = snap.profiles, snap.events
        if hashes:  # forgotten after the version was registered: their rows go from its snapshot too
            if profiles is not None:
                profiles, _ = drop_forgotten(profiles, hashes)
            if events is not None:
                events, _ = drop_forgotten(events, hashes)
        log.info("version %s: profiles and events from its serving snapshot (as of %s, %s events)", version,
                 snap.manifest.get("as_of"), (snap.manifest.get("rows") or {}).get("events"))
    else:  # registered before serving snapshots: the data folder's tables, as they are now
        profiles_path = data_dir / "profiles" / "users.parquet"
        profiles = pl.read_parquet(profiles_path) if profiles_path.exists() else None
        events = io.read_table(data_dir, "events") if io.has_table(data_dir, "events") else None  # type: ignore[assignment]
        if profiles is None:
            log.warning("version %s has no serving snapshot and there are no user profiles at %s: reasons that need a profile are off",
                        version, profiles_path)
    forgotten = frozenset(forgotten_ids(model.users.external.tolist(), hashes)) if hashes and model.users is not None else frozenset()
    if forgotten:
        log.info("%d forgotten user(s) in version %s are served as unknown users", len(forgotten), version)
    ranker = Ranker(model, items, profiles, events, context_weight=settings.serving.context_weight, forgotten=forgotten,
                    neighbours=snap.neighbours if snap is not None else None)
    shown = None
    if settings.serving.explorer and profiles is not None:
        shown = profiles.select([c for c in PROFILE_COLUMNS if c in profiles.columns])
    return Loaded(ranker, model.name, version, _as_of(snap), shown)


def _as_of(snap: Snapshot | None) -> datetime | None:
    raw = (snap.manifest.get("as_of") if snap is not None else None) or None
    if raw is None:
        return None
    try:
        ts = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
