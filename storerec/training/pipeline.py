"""From tables to a fitted, evaluated model: split -> profiles as of the cut -> dataset -> fit -> metrics.

Used by ``storerec train``, ``evaluate`` and ``tune``; no MLflow here (see storerec.registry.tracking).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict, Unpack

import numpy as np
import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import Progress, ReportsFitProgress
from storerec.core.schema import Columns
from storerec.core.settings import Settings, TrainingSettings
from storerec.evaluation.metrics import BATCH_USERS as METRIC_BATCH_USERS
from storerec.evaluation.metrics import MetricsAccumulator, user_batches
from storerec.evaluation.scoring import BYTES_PER_SCORE, FACTOR_USERS, FactorIndex, recommend_batch
from storerec.evaluation.splitters import last_fraction_split, temporal_split, time_orders_events
from storerec.features import io
from storerec.features.profiles import item_features as item_feature_table
from storerec.features.profiles import user_profiles
from storerec.models.base import BATCH_USERS, ModelBase
from storerec.models.dataset import Dataset, IdMap, InteractionConfig, interaction_matrix
from storerec.models.dataset import item_features as item_feature_matrix
from storerec.models.dataset import user_features as user_feature_matrix
from storerec.models.registry import get_model_class

C = Columns


class Tables:
    """The data folder's events, items and users, and a fingerprint of their files.

    Once a job has split the events it may :meth:`release_events`: the table leaves memory and is
    read again from the folder (its fingerprint checked) when :attr:`events` is next asked for, e.g.
    by the refit on all data. On a 200k users x 500k items x 5M events store this keeps
    `storerec train`'s fit and evaluation about 0.4 GiB lower (docs/benchmarks.md)."""

    def __init__(self, events: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame | None, fingerprint: str,
                 source: Path | None = None) -> None:
        self._events: pl.DataFrame | None = events
        self.items = items
        self.users = users
        self.fingerprint = fingerprint
        self.source = source  # the data folder read (recorded on runs and versions)

    @property
    def events(self) -> pl.DataFrame:
        if self._events is None:
            assert self.source is not None, "only tables read from a folder release their events"
            again = Tables.load(self.source)
            if again.fingerprint != self.fingerprint:
                raise UserError(f"the data folder {self.source} changed while this job ran (its files' fingerprint went "
                                f"from {self.fingerprint} to {again.fingerprint}); run the job again")
            self._events = again.events
        return self._events

    def release_events(self) -> None:
        """Drop the events table from memory when it can be read again from the data folder."""
        if self.source is not None:
            self._events = None

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


class Split:
    """Train events, the relevant validation interactions, and the cut they were split at.

    A job done with the split may :meth:`release` its frames (memory at scale); using them after
    that is an error, never an empty frame."""

    def __init__(self, train: pl.DataFrame, test: pl.DataFrame, as_of: datetime, params: dict[str, Any]) -> None:
        self._train: pl.DataFrame | None = train
        self._test: pl.DataFrame | None = test
        self.as_of = as_of
        self.params = params

    @property
    def train(self) -> pl.DataFrame:
        if self._train is None:
            raise RuntimeError("this split was released")
        return self._train

    @property
    def test(self) -> pl.DataFrame:
        if self._test is None:
            raise RuntimeError("this split was released")
        return self._test

    def release(self) -> None:
        self._train = self._test = None


def last_event_time(events: pl.DataFrame) -> datetime:
    """The time of the latest event (UTC)."""
    latest: datetime = events.select(pl.col(C.Timestamp).max()).item()
    return latest


def make_split(tables: Tables, cfg: TrainingSettings) -> Split:
    """Split events as configured; test keeps relevant event types on items new to the user.

    ``auto`` takes the temporal window when it holds enough validation users (``min_test_users``
    and ``min_test_user_share`` of the users), else the per-user split; the reason is recorded in
    the split's parameters (``split.reason``) and shown in reports."""
    events = tables.events
    if events.is_empty():
        raise UserError("the events table is empty: nothing to train on")
    if cfg.split == "auto" and not time_orders_events(events):
        n_times = events[C.Timestamp].n_unique()
        split = _per_user(tables, cfg, shuffle=True)
        split.params["split.reason"] = (f"auto: the timestamps do not order users' events ({n_times:,} distinct times); "
                                        f"per-user split of a random {cfg.test_fraction:.0%} instead")
        return _checked(split, cfg, tables.fingerprint)
    if cfg.split in ("auto", "temporal"):
        split = _temporal(tables, cfg)
        if cfg.split == "temporal":
            return _checked(split, cfg, tables.fingerprint)
        n_users = events[C.User].n_unique()
        n_test = split.test[C.User].n_unique() if not split.test.is_empty() else 0
        need = max(cfg.min_test_users, int(np.ceil(cfg.min_test_user_share * n_users)))
        if n_test >= need:
            split.params["split.reason"] = f"auto: the last {cfg.test_days} days hold {n_test:,} validation users (>= {need:,})"
            return _checked(split, cfg, tables.fingerprint)
        reason = (f"auto: the last {cfg.test_days} days hold {n_test:,} validation users of {n_users:,} (fewer than {need:,}); "
                  f"per-user split instead")
        split = _per_user(tables, cfg)
        split.params["split.reason"] = reason
        return _checked(split, cfg, tables.fingerprint)
    return _checked(_per_user(tables, cfg), cfg, tables.fingerprint)


def _temporal(tables: Tables, cfg: TrainingSettings) -> Split:
    cut = last_event_time(tables.events) - timedelta(days=cfg.test_days)
    train, test = temporal_split(tables.events, cut)
    params = {"split": "temporal", "split.test_days": cfg.test_days, "split.cut": cut.isoformat()}
    return Split(train, _relevant(train, test, cfg), cut, params)


def _per_user(tables: Tables, cfg: TrainingSettings, shuffle: bool = False) -> Split:
    train, test = last_fraction_split(tables.events, cfg.test_fraction, shuffle=shuffle)
    as_of = last_event_time(train) + timedelta(microseconds=1) if not train.is_empty() else last_event_time(tables.events)
    params: dict[str, Any] = {"split": "last_fraction", "split.test_fraction": cfg.test_fraction}
    if shuffle:
        params["split.order"] = "random"
    return Split(train, _relevant(train, test, cfg), as_of, params)


def _relevant(train: pl.DataFrame, test: pl.DataFrame, cfg: TrainingSettings) -> pl.DataFrame:
    return relevant_pairs(train, test, cfg.relevant_event_types)


def relevant_pairs(train: pl.DataFrame, test: pl.DataFrame, types: Sequence[str]) -> pl.DataFrame:
    """Validation pairs: ``test`` events of ``types`` on items new to the user (distinct pairs)."""
    candidates = test.filter(pl.col(C.EventType).is_in(list(types))).select(C.User, C.Item).unique(maintain_order=True)
    # only the validation users' train pairs: a hash table of those, not of every train pair
    seen = train.select(C.User, C.Item).join(candidates.select(C.User).unique(), on=C.User, how="semi")
    return candidates.join(seen, on=[C.User, C.Item], how="anti")


def _checked(split: Split, cfg: TrainingSettings, fingerprint: str) -> Split:
    if split.train.is_empty():
        raise UserError(f"the {split.params['split']} split left no training events; adjust training.test_days / test_fraction")
    if split.test.is_empty():
        raise UserError(
            f"the {split.params['split']} split left no relevant validation events (types {cfg.relevant_event_types} on items "
            "new to the user); adjust training.test_days / test_fraction / relevant_event_types"
        )
    split.params.update({"split.relevant": ",".join(cfg.relevant_event_types), "split.data_fingerprint": fingerprint})
    return split


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
    # settings-level strength per event type, a model's own entries over it type by type
    inter["strength"] = {**settings.events.strength, **(inter.get("strength") or {})}
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


def fit_model(model: ModelBase, dataset: Dataset, progress: Progress | None = None) -> ModelBase:
    """``model.fit(dataset)``; with ``progress``, a model that reports its fit (LightFM's epochs,
    implicit's iterations) shows how far it is with an estimate, under the model's name. The
    reporting changes nothing in the fit."""
    if progress is None or not isinstance(model, ReportsFitProgress):
        return model.fit(dataset)
    model.fit_progress = progress.fit_reporter(model.name)
    try:
        return model.fit(dataset)
    finally:
        model.fit_progress = None  # the model keeps no reference to the job's output


FitFunction = Callable[[ModelBase, Dataset], ModelBase]
"""How :func:`train_and_evaluate` fits a built model on a dataset (default: :func:`fit_model`)."""


@dataclass
class TrainResult:
    """A model fitted on the split's train window and its metrics on the validation window."""

    model: ModelBase
    prepared: Prepared
    metrics: dict[str, float]
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    per_user: pl.DataFrame | None = None  # user_id, ndcg: each validation user's NDCG@k (for paired comparisons)


SCORING_BYTES = 256 << 20  # memory for the dense scores of one batch of users during evaluation


def scoring_users(n_items: int, budget: int = SCORING_BYTES) -> int:
    """Users scored at once so that the dense ``(users, n_items)`` work of
    :func:`storerec.evaluation.scoring.recommend_batch` stays within ``budget`` bytes (at most
    the model's own batch, at least one user)."""
    return int(max(1, min(BATCH_USERS, budget // (BYTES_PER_SCORE * max(1, n_items)))))


def recommend_in_chunks(model: ModelBase, users: list[str], k: int, chunk: int, index: FactorIndex | None = None) -> pl.DataFrame:
    """``model.recommend(users, k)`` (the same rows), ``chunk`` users scored at a time (pruned
    top-k of factor models with ``index``)."""
    frames = [recommend_batch(model, users[i : i + chunk], k, index) for i in range(0, len(users), chunk)]
    return pl.concat(frames) if frames else model.recommend([], k=k)


def metric_accumulator(model: ModelBase, split: Split, prepared: Prepared, k: int) -> MetricsAccumulator:
    """A :class:`MetricsAccumulator` for the split: segment breakdown (users without a train
    profile count as segment ``cold``) and ``cold_item_*`` for items without train interactions."""
    test_users = split.test[C.User].unique(maintain_order=True).to_list()
    groups = prepared.profiles.select(C.User, pl.col("segment").cast(pl.String))
    groups = pl.concat(
        [groups, pl.DataFrame({C.User: [u for u in test_users if u not in model.users], "segment": "cold"})],  # type: ignore[operator]
        how="vertical_relaxed",
    )
    no_history = np.diff(prepared.dataset.interactions.tocsc().indptr) == 0
    return MetricsAccumulator(
        split.train,
        k=k,
        n_catalogue=prepared.dataset.n_items,
        item_categories=prepared.item_table.select(C.Item, C.Category),
        user_groups=groups,
        group_column="segment",
        cold_items=prepared.dataset.items.to_external(np.flatnonzero(no_history)).tolist(),
    )


class EvalOptions(TypedDict, total=False):
    """Keyword options of :func:`evaluate` / :func:`evaluate_per_user`."""

    batch_users: int
    scoring_bytes: int
    pruned: bool


def evaluate(model: ModelBase, split: Split, prepared: Prepared, k: int, **options: Unpack[EvalOptions]) -> dict[str, float]:
    """Metrics of ``model`` on the split's validation interactions, with segment breakdown.

    Users without a train profile count as segment ``cold``; ``cold_items_*`` report how the
    model handles items without train interactions. Test users are evaluated ``batch_users`` at
    a time, and scored in ``recommend`` calls sized to ``scoring_bytes``: memory is bounded
    whatever the number of users and items (the numbers equal :func:`metrics_of` on one frame
    of every test user's list). Factor models skip the items that cannot reach a user's top k
    (``pruned``; the same lists, see :func:`evaluate_per_user`).
    """
    return evaluate_per_user(model, split, prepared, k, **options)[0]


def evaluate_per_user(
    model: ModelBase,
    split: Split,
    prepared: Prepared,
    k: int,
    *,
    batch_users: int = METRIC_BATCH_USERS,
    scoring_bytes: int = SCORING_BYTES,
    pruned: bool = True,
) -> tuple[dict[str, float], pl.DataFrame]:
    """:func:`evaluate`, and each validation user's NDCG@k (``user_id, ndcg``, sorted by user).

    Factor models (``model.dot_factors()``) are ranked by the exact pruned top-k of
    :func:`storerec.evaluation.scoring.factor_top_k` unless ``pruned`` is false (the same lists)."""
    assert model.items is not None
    index = FactorIndex.of(model) if pruned else None  # factor models: exact top-k that skips low-norm items
    chunk = FACTOR_USERS if index is not None else scoring_users(len(model.items), scoring_bytes)
    acc = metric_accumulator(model, split, prepared, k)
    for users, test_part in user_batches(split.test, batch_users):
        acc.add(recommend_in_chunks(model, users, k, chunk, index), test_part)
    return acc.result(), acc.per_user("ndcg")


def metrics_of(reco: pl.DataFrame, model: ModelBase, split: Split, prepared: Prepared, k: int) -> dict[str, float]:
    """Every metric of ``reco`` (``user_id, item_id, rank``) on the split, as in :func:`evaluate`."""
    acc = metric_accumulator(model, split, prepared, k)
    acc.add(reco, split.test)
    return acc.result()


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
    :data:`SERVED_VARIANTS` entry, so the report shows what diversity costs and gains.
    Test users go through in batches, as in :func:`evaluate`."""
    from storerec.ranking.ranker import Context, Diversity, Filters, Ranker

    k = settings.training.k
    ranker = Ranker(model, prepared.item_table, prepared.profiles, split.train, context_weight=settings.serving.context_weight)
    variants = {}
    for name, (strength, cap) in SERVED_VARIANTS.items():
        diversity = Diversity(settings.serving.diversity_strength if strength is None else strength, cap)
        label = name.replace("diversity", f"diversity {diversity.strength:g}", 1) if strength is None else name
        variants[label] = (diversity, metric_accumulator(model, split, prepared, k))
    schema = {C.User: pl.String, C.Item: pl.String, "rank": pl.Int64}
    for users, test_part in user_batches(split.test, METRIC_BATCH_USERS):
        for diversity, acc in variants.values():
            rows_u, rows_i, rows_r = [], [], []
            for user in users:
                for item in ranker.rank(user, k, Context(), Filters(), diversity).items:
                    rows_u.append(user)
                    rows_i.append(item.item_id)
                    rows_r.append(item.rank)
            acc.add(pl.DataFrame({C.User: rows_u, C.Item: rows_i, "rank": rows_r}, schema=schema), test_part)
    return {label: acc.result() for label, (_, acc) in variants.items()}


def train_and_evaluate(
    settings: Settings,
    tables: Tables,
    split: Split,
    name: str,
    overrides: dict[str, Any] | None = None,
    cached: Prepared | None = None,
    progress: Progress | None = None,
    fit: FitFunction | None = None,
) -> TrainResult:
    """Fit ``name`` on the split's train events and evaluate it on the validation window.

    ``progress``: long fits report on it (:func:`fit_model`). ``fit`` replaces the fit itself,
    e.g. by a fit cache (:mod:`storerec.training.fitcache`); it returns the fitted model."""
    params, inter = model_spec(settings, name, overrides)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    prepared = prepare(split.train, tables, settings, split.as_of, inter, cached)
    seconds["prepare"] = time.perf_counter() - t0
    model = build_model(name, params)
    t0 = time.perf_counter()
    model = fit(model, prepared.dataset) if fit is not None else fit_model(model, prepared.dataset, progress)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, per_user = evaluate_per_user(model, split, prepared, settings.training.k)
    seconds["evaluate"] = time.perf_counter() - t0
    all_params = {**model.get_params(), **{f"interactions.{k}": v for k, v in _flat(inter.model_dump()).items()}, **split.params}
    return TrainResult(model, prepared, metrics, all_params, seconds, per_user)


def refit_full(settings: Settings, tables: Tables, name: str, overrides: dict[str, Any] | None = None,
               progress: Progress | None = None) -> tuple[ModelBase, Prepared]:
    """Fit on every event (profiles as of the end of data) for the version that gets served."""
    params, inter = model_spec(settings, name, overrides)
    as_of = last_event_time(tables.events) + timedelta(microseconds=1)
    prepared = prepare(tables.events, tables, settings, as_of, inter)
    return fit_model(build_model(name, params), prepared.dataset, progress), prepared


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    from storerec.models.base import flatten

    return flatten(d, prefix)
