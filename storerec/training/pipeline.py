"""From tables to a fitted, evaluated model: split -> profiles as of the cut -> dataset -> fit -> metrics.

Used by ``storerec train``, ``evaluate`` and ``tune``; no MLflow here (see storerec.registry.tracking).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.core.errors import UserError
from storerec.core.schema import Columns
from storerec.core.settings import Settings, TrainingSettings
from storerec.evaluation.metrics import calc_metrics
from storerec.evaluation.splitters import last_fraction_split, temporal_split
from storerec.features import io
from storerec.features.profiles import item_features as item_feature_table
from storerec.features.profiles import user_profiles
from storerec.models.base import ModelBase
from storerec.models.dataset import Dataset, IdMap, InteractionConfig, interaction_matrix
from storerec.models.dataset import item_features as item_feature_matrix
from storerec.models.dataset import user_features as user_feature_matrix
from storerec.models.registry import get_model_class

C = Columns


@dataclass(frozen=True)
class Tables:
    events: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame | None
    fingerprint: str
    source: Path | None = None  # the data folder read (recorded on runs and versions)

    @classmethod
    def load(cls, data_dir: Path) -> Tables:
        """Read the data folder; the fingerprint hashes the three Parquet files' bytes."""
        events = io.read_table(data_dir, "events")
        items = io.read_table(data_dir, "items")
        users = io.read_table(data_dir, "users") if io.has_table(data_dir, "users") else None
        h = hashlib.sha256()
        for name in ("events", "items", "users"):
            path = io.table_path(data_dir, name)
            if path.exists():
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        assert isinstance(events, pl.DataFrame) and isinstance(items, pl.DataFrame)
        return cls(events, items, users if isinstance(users, pl.DataFrame) else None, h.hexdigest()[:16], Path(data_dir).resolve())


@dataclass(frozen=True)
class Split:
    """Train events, the relevant validation interactions, and the cut they were split at."""

    train: pl.DataFrame
    test: pl.DataFrame
    as_of: datetime
    params: dict[str, Any]


def last_event_time(events: pl.DataFrame) -> datetime:
    """The time of the latest event (UTC)."""
    latest: datetime = events.select(pl.col(C.Timestamp).max()).item()
    return latest


def make_split(tables: Tables, cfg: TrainingSettings) -> Split:
    """Split events as configured; test keeps relevant event types on items new to the user."""
    events = tables.events
    if events.is_empty():
        raise UserError("the events table is empty: nothing to train on")
    if cfg.split == "temporal":
        cut = last_event_time(events) - timedelta(days=cfg.test_days)
        train, test = temporal_split(events, cut)
        params = {"split": "temporal", "split.test_days": cfg.test_days, "split.cut": cut.isoformat()}
        as_of = cut
    else:
        train, test = last_fraction_split(events, cfg.test_fraction)
        as_of = last_event_time(train) + timedelta(microseconds=1)
        params = {"split": "last_fraction", "split.test_fraction": cfg.test_fraction}
    if train.is_empty() or test.is_empty():
        raise UserError(f"the {params['split']} split left an empty train or test set; adjust training.test_days / test_fraction")
    seen = train.select(C.User, C.Item).unique()
    relevant = (
        test.filter(pl.col(C.EventType).is_in(cfg.relevant_event_types))
        .select(C.User, C.Item)
        .unique(maintain_order=True)
        .join(seen, on=[C.User, C.Item], how="anti")
    )
    if relevant.is_empty():
        raise UserError(
            f"no relevant validation events (types {cfg.relevant_event_types} on items new to the user); "
            "adjust training.relevant_event_types"
        )
    params.update({"split.relevant": ",".join(cfg.relevant_event_types), "split.data_fingerprint": tables.fingerprint})
    return Split(train, relevant, as_of, params)


@dataclass
class Prepared:
    """A Dataset plus the tables it was built from (profiles and item features as of the cut)."""

    dataset: Dataset
    profiles: pl.DataFrame
    item_table: pl.DataFrame


def prepare(
    events: pl.DataFrame,
    tables: Tables,
    settings: Settings,
    as_of: datetime,
    interactions: InteractionConfig,
    cached: Prepared | None = None,
) -> Prepared:
    """Profiles and item features as of ``as_of`` (no leakage), then the model Dataset.

    ``cached`` reuses the profiles and item features of an earlier call on the same events
    (tuning trials differ only in the interaction matrix and the model).
    """
    if cached is not None:
        profiles, items = cached.profiles, cached.item_table
    else:
        profiles = user_profiles(events, tables.users, tables.items, settings, as_of)
        items = item_feature_table(events, tables.items, settings, as_of)
    item_ids = IdMap.from_values(items[C.Item].to_list())
    user_ids = IdMap.from_values(profiles[C.User].to_list())
    matrix = interaction_matrix(events, user_ids, item_ids, interactions, as_of=as_of)
    dataset = Dataset(
        users=user_ids,
        items=item_ids,
        interactions=matrix,
        user_features=user_feature_matrix(user_ids, profiles),
        item_features=item_feature_matrix(item_ids, items),
        item_table=items,
        as_of=as_of,
    )
    return Prepared(dataset, profiles, items)


def model_spec(settings: Settings, name: str, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], InteractionConfig]:
    """Model params and interaction config: settings.training.models[name], then ``overrides``.

    Keys of ``overrides`` starting with ``interactions.`` set the interaction config.
    """
    params = dict(settings.training.models.get(name, {}))
    inter = dict(params.pop("interactions", {}) or {})
    inter.setdefault("weights", settings.events.weights)
    for key, value in (overrides or {}).items():
        if key.startswith("interactions."):
            inter[key.split(".", 1)[1]] = value
        else:
            params[key] = value
    get_model_class(name)  # unknown names fail here with the list of known ones
    try:
        return params, InteractionConfig(**inter)
    except Exception as exc:  # pydantic error -> name the field
        raise UserError(f"invalid interactions settings for model {name!r}: {exc}") from exc


def build_model(name: str, params: dict[str, Any]) -> ModelBase:
    klass = get_model_class(name)
    try:
        return klass(**params)
    except Exception as exc:
        raise UserError(f"invalid parameters for model {name!r}: {exc}") from exc


@dataclass
class TrainResult:
    """A model fitted on the split's train window and its metrics on the validation window."""

    model: ModelBase
    prepared: Prepared
    metrics: dict[str, float]
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def evaluate(model: ModelBase, split: Split, prepared: Prepared, k: int) -> dict[str, float]:
    """Metrics of ``model`` on the split's validation interactions, with segment breakdown.

    Users without a train profile count as segment ``cold``; ``cold_items_*`` report how the
    model handles items without train interactions.
    """
    test_users = split.test[C.User].unique(maintain_order=True).to_list()
    return metrics_of(model.recommend(test_users, k=k), model, split, prepared, k)


def metrics_of(reco: pl.DataFrame, model: ModelBase, split: Split, prepared: Prepared, k: int) -> dict[str, float]:
    """Every metric of ``reco`` (``user_id, item_id, rank``) on the split, as in :func:`evaluate`."""
    test_users = split.test[C.User].unique(maintain_order=True).to_list()
    groups = prepared.profiles.select(C.User, pl.col("segment").cast(pl.String))
    groups = pl.concat(
        [groups, pl.DataFrame({C.User: [u for u in test_users if u not in model.users], "segment": "cold"})],  # type: ignore[operator]
        how="vertical_relaxed",
    )
    metrics = calc_metrics(
        reco,
        split.test,
        split.train,
        k=k,
        n_catalogue=prepared.dataset.n_items,
        item_categories=prepared.item_table.select(C.Item, C.Category),
        user_groups=groups,
        group_column="segment",
    )
    no_history = np.diff(prepared.dataset.interactions.tocsc().indptr) == 0
    cold_items = set(prepared.dataset.items.to_external(np.flatnonzero(no_history)).tolist())
    top = reco.filter(pl.col("rank") <= k)
    metrics[f"cold_item_share@{k}"] = float(top.select(pl.col(C.Item).is_in(list(cold_items)).mean()).item() or 0.0) if top.height else 0.0
    cold_test = split.test.filter(pl.col(C.Item).is_in(list(cold_items)))
    if cold_test.height:
        hits = top.join(cold_test, on=[C.User, C.Item], how="inner").height
        metrics[f"cold_item_recall@{k}"] = hits / cold_test.height
    return metrics


SERVED_VARIANTS = {  # name suffix -> (diversity strength or None for the configured default, category cap)
    "served, no diversity": (0.0, None),
    "served, diversity": (None, None),
    "served, diversity + max 3 per category": (None, 3),
}


def evaluate_served(
    model: ModelBase, split: Split, prepared: Prepared, settings: Settings, progress: Any = None
) -> dict[str, dict[str, float]]:
    """Metrics of the lists the service would return: the same :class:`storerec.ranking.ranker.Ranker`
    (default business filters, trending/new-arrival candidates, MMR diversity) built on the
    split's train events, profiles and item features as of the cut. One row per
    :data:`SERVED_VARIANTS` entry, so the report shows what diversity costs and gains."""
    from storerec.ranking.ranker import Context, Diversity, Filters, Ranker

    k = settings.training.k
    ranker = Ranker(model, prepared.item_table, prepared.profiles, split.train, context_weight=settings.serving.context_weight)
    users = split.test[C.User].unique(maintain_order=True).to_list()
    out = {}
    for name, (strength, cap) in SERVED_VARIANTS.items():
        diversity = Diversity(settings.serving.diversity_strength if strength is None else strength, cap)
        label = name.replace("diversity", f"diversity {diversity.strength:g}", 1) if strength is None else name
        rows_u, rows_i, rows_r = [], [], []
        for user in users:
            for item in ranker.rank(user, k, Context(), Filters(), diversity).items:
                rows_u.append(user)
                rows_i.append(item.item_id)
                rows_r.append(item.rank)
        reco = pl.DataFrame({C.User: rows_u, C.Item: rows_i, "rank": rows_r}, schema={C.User: pl.String, C.Item: pl.String, "rank": pl.Int64})
        out[label] = metrics_of(reco, model, split, prepared, k)
    return out


def train_and_evaluate(
    settings: Settings,
    tables: Tables,
    split: Split,
    name: str,
    overrides: dict[str, Any] | None = None,
    cached: Prepared | None = None,
) -> TrainResult:
    """Fit ``name`` on the split's train events and evaluate it on the validation window."""
    params, inter = model_spec(settings, name, overrides)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = prepare(split.train, tables, settings, split.as_of, inter, cached)
    seconds["prepare"] = time.perf_counter() - t0
    model = build_model(name, params)
    t0 = time.perf_counter()
    model.fit(prepared.dataset)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = evaluate(model, split, prepared, settings.training.k)
    seconds["evaluate"] = time.perf_counter() - t0
    all_params = {**model.get_params(), **{f"interactions.{k}": v for k, v in _flat(inter.model_dump()).items()}, **split.params}
    return TrainResult(model, prepared, metrics, all_params, seconds)


def refit_full(settings: Settings, tables: Tables, name: str, overrides: dict[str, Any] | None = None) -> tuple[ModelBase, Prepared]:
    """Fit on every event (profiles as of the end of data) for the version that gets served."""
    params, inter = model_spec(settings, name, overrides)
    as_of = last_event_time(tables.events) + timedelta(microseconds=1)
    prepared = prepare(tables.events, tables, settings, as_of, inter)
    return build_model(name, params).fit(prepared.dataset), prepared


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    from storerec.models.base import flatten

    return flatten(d, prefix)
