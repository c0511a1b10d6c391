"""Configuration in one place.

Settings come from, in increasing priority:

1. the defaults below;
2. a TOML file: ``--config FILE``, else ``$STOREREC_CONFIG``, else ``./configs/storerec.toml`` if present;
3. environment variables ``STOREREC__<SECTION>__<KEY>``, e.g. ``STOREREC__DATA__DIR=/srv/data``:
   text settings take the value as it is (``STOREREC__SERVING__MODEL=6`` is the string ``"6"``),
   others parse it as JSON when it is valid JSON (numbers, booleans, lists, tables), else as text.

Nothing is read at import time: call :func:`load_settings` when settings are needed. The file
is read and checked the way every configuration file is (:mod:`storerec.core.config`): unknown
keys and invalid values are errors that name the file or variable and the dotted key.
"""

from __future__ import annotations

import json
import os
import re
import types
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import Field, field_validator, model_validator

from storerec.core.config import ConfigError, ConfigModel, read_toml, validate_config
from storerec.core.formulas import DEFAULT_EVENT_STRENGTH, DEFAULT_EVENT_WEIGHTS
from storerec.core.schema import BEHAVIOUR_EVENT_TYPES, EventTypes

ENV_PREFIX = "STOREREC__"
CONFIG_ENV = "STOREREC_CONFIG"
DEFAULT_CONFIG_FILE = "configs/storerec.toml"

SETTINGS_HINT = f"see {DEFAULT_CONFIG_FILE} (every key with its default and meaning)"


# The error of an invalid config file or STOREREC__* variable (the one error of every configuration file).
SettingsError = ConfigError


class DataSettings(ConfigModel):
    dir: Path = Field(Path("data"), strict=False, description="Folder for imported/simulated tables and profiles.")


class EventStrength(ConfigModel):
    """How one event type's ``quantity`` or ``value`` scales its weight in interaction matrices
    (``[events.strength]``; formula: :func:`storerec.core.formulas.event_strength`)."""

    source: Literal["quantity", "value"] = Field("quantity", description="Column the strength comes from.")
    transform: Literal["none", "linear", "log1p", "rating"] = Field(
        "none",
        description="none: the type's weight only; linear: weight x source; log1p: weight x log1p(source); "
        "rating: weight if source >= threshold (x (source - threshold + 1) when scaled), nothing below. "
        "A missing source counts 1.",
    )
    threshold: float | None = Field(None, description="Lowest rating that counts (transform 'rating' only, required there).")
    scaled: bool = Field(False, description="rating: ratings above the threshold count more (source - threshold + 1).")

    @model_validator(mode="after")
    def _threshold(self) -> EventStrength:
        if self.transform == "rating" and self.threshold is None:
            raise ValueError("transform 'rating' needs a threshold (the lowest rating that counts, e.g. threshold = 4)")
        if self.transform != "rating" and (self.threshold is not None or self.scaled):
            raise ValueError(f"threshold and scaled apply to transform 'rating' only, not {self.transform!r}")
        return self


def default_event_strength() -> dict[str, EventStrength]:
    """``events.strength`` by default (:data:`storerec.core.formulas.DEFAULT_EVENT_STRENGTH`)."""
    return {k: EventStrength(**v) for k, v in DEFAULT_EVENT_STRENGTH.items()}


class EventSettings(ConfigModel):
    types: list[str] = Field(
        default_factory=lambda: list(BEHAVIOUR_EVENT_TYPES),
        description="Accepted event types; extend to accept more (e.g. 'share').",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Strength of each event type in affinities and interaction matrices.",
    )
    strength: dict[str, EventStrength] = Field(
        default_factory=default_event_strength,
        description="Per event type, how quantity or value scales its weight in interaction matrices, e.g. "
        "purchase = {source = \"quantity\", transform = \"log1p\"}; types not named use their weight only.",
    )
    max_future_seconds: float = Field(
        300.0, ge=0, description="Timestamps later than now + this are rejected as 'in the future'."
    )

    @field_validator("strength", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        """Types named replace their default; the others keep it (``rating = {transform = "none"}``
        turns the rating default off)."""
        if isinstance(value, dict):
            return {**{k: dict(v) for k, v in DEFAULT_EVENT_STRENGTH.items()}, **value}
        return value

    @model_validator(mode="after")
    def _weights_known(self) -> EventSettings:
        unknown = sorted(set(self.weights) - set(self.types))
        if unknown:
            raise ValueError(f"events.weights names event types not in events.types: {unknown}")
        for k in [k for k in self.strength if k not in self.types and k in DEFAULT_EVENT_STRENGTH]:
            if self.strength[k] == EventStrength(**DEFAULT_EVENT_STRENGTH[k]):
                del self.strength[k]  # a built-in default for a type this store does not accept
        unknown = sorted(set(self.strength) - set(self.types))
        if unknown:
            raise ValueError(f"events.strength names event types not in events.types: {unknown}")
        return self


class SimulateSettings(ConfigModel):
    seed: int = 42
    n_users: int = Field(5_000, ge=10)
    n_items: int = Field(2_000, ge=40)
    n_events: int = Field(300_000, ge=1_000, description="Target number of events (actual is within a few %).")
    days: int = Field(180, ge=30, description="Length of the event history in days.")
    end: datetime = Field(
        datetime(2026, 10, 31, tzinfo=UTC),
        strict=False,
        description="End of the simulated history (fixed so that a seed always gives the same files).",
    )
    new_arrival_days: int = Field(14, ge=1)
    new_user_days: int = Field(14, ge=1, description="New users sign up within this many days of the end.")
    share_new_items: float = Field(0.05, ge=0, le=0.5)
    share_new_users: float = Field(0.05, ge=0, le=0.5)
    share_dormant: float = Field(0.12, ge=0, le=0.5)
    share_churned: float = Field(0.12, ge=0, le=0.5)
    share_complementary: float = Field(0.15, ge=0, le=0.5, description="Share of items with a planted partner.")

    @field_validator("end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class ProfileSettings(ConfigModel):
    new_user_days: int = Field(30, ge=0, description="Signed up or first purchase within this many days -> 'new'.")
    repurchase_cycle_days: int = Field(60, gt=0, description="No purchase for longer than this -> 'dormant'.")
    churn_days: int = Field(180, gt=0, description="No purchase for longer than this -> 'churned'.")
    tiers: dict[str, float] = Field(
        default_factory=lambda: {"bronze": 0.0, "silver": 300.0, "gold": 3_000.0, "platinum": 10_000.0, "diamond": 30_000.0},
        description="Membership tier -> minimum cumulative spend (inclusive), lowest first.",
    )
    points_per_unit: float = Field(1.0, gt=0, description="Points earned per currency unit spent.")
    points_expiry_days: int = Field(365, gt=0)
    new_arrival_days: int = Field(14, gt=0, description="Items created within this many days are new arrivals.")
    price_band_cuts: list[float] = Field(
        default_factory=lambda: [1 / 3, 2 / 3],
        description="Within-category price percentiles that separate the price bands low/mid/high.",
    )
    top_n: int = Field(3, ge=1, description="How many top categories/brands a profile keeps.")
    last_items_n: int = Field(10, ge=1)
    co_purchase_n: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ProfileSettings:
        if self.churn_days <= self.repurchase_cycle_days:
            raise ValueError("profiles.churn_days must be greater than profiles.repurchase_cycle_days")
        values = list(self.tiers.values())
        if not values or values[0] != 0 or any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError("profiles.tiers must start at 0 and increase strictly, lowest tier first")
        if len(self.price_band_cuts) != 2 or not 0 < self.price_band_cuts[0] < self.price_band_cuts[1] < 1:
            raise ValueError("profiles.price_band_cuts must be two increasing fractions in (0, 1)")
        return self


class MlflowSettings(ConfigModel):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db."
    )
    artifact_root: Path = Field(
        Path("mlruns/artifacts"), strict=False,
        description="Artifacts of a new experiment on a local store (SQLite, file, a database URI used directly); "
        "an MLflow server (http/https) keeps artifacts where it is told (mlflow server --serve-artifacts).",
    )
    registered_model: str | None = Field(
        None,
        description="Registered model name; default storerec-<data folder name> (one per data folder, "
        "see Settings.registered_model_name). Set it to share one name across folders (e.g. \"storerec\" for a store "
        "made before names per folder).",
    )
    experiment: str = Field(
        "storerec",
        description="Base name of the MLflow experiments: each job logs its runs to <experiment>/<kind>, kind one of "
        "train (train, run), tune, evaluate (evaluate, replay), ab-report, retrain. A store made before that "
        "keeps its runs in the experiment of this name.",
    )

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns/mlflow.db"


class TrainingSettings(ConfigModel):
    split: Literal["auto", "temporal", "last_fraction"] = Field(
        "auto",
        description="temporal: the last test_days form the validation window; last_fraction: per user, the latest "
        "test_fraction of each user's events; auto: temporal when its window holds at least min_test_users users "
        "and min_test_user_share of the users, else last_fraction (a window of a handful of users picks champions on noise).",
    )
    test_days: int = Field(14, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    min_test_users: int = Field(100, ge=1, description="auto split: the fewest validation users a temporal window may hold.")
    min_test_user_share: float = Field(
        0.05, ge=0, le=1, description="auto split: the smallest share of all users with events a temporal window must hold."
    )
    relevant_event_types: list[str] = Field(
        default_factory=lambda: [EventTypes.Favorite, EventTypes.Cart, EventTypes.Purchase, EventTypes.Rating],
        description="Validation events that count as relevant (views are too noisy to be a target).",
    )
    k: int = Field(10, ge=1, description="Cut-off for offline metrics.")
    refit_full: bool = Field(
        True, description="After evaluating on the split, refit on all data for the registered version."
    )
    tie_windows: int = Field(
        3, ge=0, le=8,
        description="When the validation window cannot separate the best candidates (95% CI of the per-user NDCG "
        "difference includes 0) and the previous champion's model is not among them, `storerec run` scores the tied "
        "candidates on up to this many older windows (cut before the searches' inner window, so no choice was made on "
        "them), one at a time until all windows' users pooled separate them. 0: no extra fits.",
    )
    tie_break: Literal["prior", "mean"] = Field(
        "prior",
        description="Still tied (after tie_windows): keep the previous champion's model if it is among them, else crown "
        "'prior' the first tied model in model_prior, or 'mean' the tied personalised model with the best mean (popularity "
        "only when no personalised model is tied with it). On UCI Online Retail 'mean' crowned a LightFM that scored 0.074 "
        "on the held-out month against ALS's 0.097 (docs/benchmarks.md): a lead inside the noise is noise.",
    )
    model_prior: list[str] = Field(
        default_factory=lambda: ["als", "ease", "lightfm", "itemknn", "bpr", "popularity"],
        description="Model names, strongest first: the order tie_break = 'prior' crowns tied candidates in.",
    )
    run_models: list[str] = Field(
        default_factory=lambda: ["popularity", "als", "lightfm", "ease"],
        description="Models `storerec run` trains; the best by NDCG@k becomes champion.",
    )
    search_trials: int = Field(
        30, ge=0, description="`storerec run`: most settings each model's automatic search fits on an inner split of the "
        "train window (coordinate search from the defaults; 0 or 1 = defaults only).",
    )
    search_seconds: float = Field(
        60.0, gt=0, description="`storerec run`: time budget of each model's automatic search (the defaults are always fitted).",
    )
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-model parameters, e.g. [training.models.als] factors = 128; a nested "
        "'interactions' table sets that model's interaction matrix (weights, recency_half_life...).",
    )


class ServingSettings(ConfigModel):
    model: str = Field("champion", description="Registered version the service loads: an alias (champion) or a number.")
    model_dir: Path | None = Field(
        None, strict=False,
        description="A folder holding one version's artifacts (model/, item_features.parquet, serving/ and bento-version.json, "
        "as `storerec build --include-model` bakes them into a Bento) to serve instead of looking serving.model up in MLflow; "
        "relative to the directory the service starts in.",
    )
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="BentoML worker processes.")
    context_weight: float = Field(0.5, ge=0, le=1, description="Weight of session context against the model's scores.")
    diversity_strength: float = Field(0.3, ge=0, le=1, description="Default MMR strength (0 = relevance only).")
    admin_token: str | None = Field(
        None,
        description="Token for the admin endpoints (POST /admin/reload, header x-admin-token). Unset: `storerec serve` makes "
        "one per start and prints it; a service started otherwise keeps its admin endpoints off (403).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Level of storerec's own log lines in the service (refused requests are INFO, one line each)."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Storefront origins (e.g. https://shop.example.com) allowed to call the public endpoints from a browser; "
        "none by default. Admin endpoints are never open to other origins.",
    )
    max_body_bytes: int = Field(65_536, ge=1024, description="Larger request bodies get 413.")
    access_log: bool = Field(True, description="BentoML's per-request access log lines.")
    metrics: bool = Field(True, description="Prometheus metrics at GET /metrics.")
    tracing: bool = Field(
        False, description="OpenTelemetry spans per request (BentoML's tracing); off, the SDK is disabled, which saves CPU per request."
    )
    blas_threads: int = Field(1, ge=1, description="BLAS threads per worker; one request's matrix work is small, so 1 avoids spinning threads.")
    direct_dispatch: bool = Field(
        True,
        description="The gate hands the request it validated straight to the endpoint's handler and writes the answer itself, "
        "instead of passing the body on through BentoML's router, context middleware and request parsing (which parse and "
        "validate it a second time). Same answers either way; off only to measure what it saves (make bench-serve).",
    )
    explorer: bool = Field(
        True,
        description="The explorer pages at GET /explore (shopper, version comparison, experiments, item page; read-only, a reload "
        "needs the admin token). On, each loaded version keeps its shoppers' profile columns for them.",
    )
    control_url: str = Field(
        "sqlite:///eventlog/control.db",
        description="SQLAlchemy URL of the store the workers share to serve the same version (ephemeral runtime state; "
        "a relative SQLite path is taken from the directory `storerec serve` starts in).",
    )
    sync_ms: int = Field(500, ge=50, le=60_000, description="Each worker checks the control store (and heartbeats) this often.")
    alias_poll_s: float = Field(
        2.0, gt=0, le=3600, description="Each worker resolves the aliases it follows in MLflow this often (picks up `storerec promote`)."
    )
    reload_wait_s: float = Field(30.0, ge=0, le=600, description="POST /admin/reload waits this long for every live worker to serve the new version.")


class ExperimentSettings(ConfigModel):
    file: Path | None = Field(
        None, strict=False, description="Experiments file (TOML, see configs/experiments.example.toml); none = no experiments."
    )


class EventLogSettings(ConfigModel):
    enabled: bool = Field(True, description="Log impressions and accept POST /events.")
    url: str = Field("sqlite:///eventlog/events.db", description="SQLAlchemy URL of the event log (SQLite in WAL mode by default).")
    max_event_age_days: float = Field(
        30.0, gt=0, description="POST /events and POST /track refuse events older than this (import old history with `storerec import`)."
    )
    flush_ms: int = Field(
        200, ge=1, le=10_000,
        description="Impressions are committed at least this often (group commit; a hard kill can lose the last interval). POST /events commits at once.",
    )
    ack_timeout_ms: int = Field(
        5000, ge=50, le=25_000,
        description="POST /events waits this long for its commit; past it the events are dropped (never written later) and the "
        "request gets 503, so a retry cannot duplicate them. Below BentoML's 30 s request timeout.",
    )
    max_queued_impressions: int = Field(
        200_000, ge=1,
        description="Impressions kept in memory while the database is unavailable (written once it is back); beyond, the oldest "
        "are dropped (counted in /readyz, logged).",
    )
    retention_days: int | None = Field(
        90,
        ge=0,
        description="The service deletes impressions and events older than this, at start and hourly (`storerec eventlog prune` "
        "too); 0 keeps everything.",
    )
    auto_upgrade: bool = Field(
        True, description="`storerec serve` creates or upgrades the event log schema; off, it refuses an outdated one (run `storerec eventlog upgrade`)."
    )


class LiveSettings(ConfigModel):
    """The service's live overlay: behaviour events (POST /track) since the serving snapshot change
    a shopper's next list without retraining (serving/live.py, docs/live.md)."""

    enabled: bool = Field(True, description="Apply tracked events to the next lists (purchases left out, views and carts as session context).")
    context_items: int = Field(5, ge=0, le=50, description="Latest viewed/carted/favourited items used as session context (0: none).")
    context_hours: float = Field(
        24.0, gt=0, description="Only events within this many hours of the shopper's latest tracked event are session context."
    )
    session_items_eligible: bool = Field(
        True,
        description="Items the shopper viewed, carted or favourited in the current session (within context_hours of their latest "
        "tracked event, not bought since) stay in their lists under filters.exclude_seen, with an in_your_session reason: the "
        "session is their current interest, not their history (about half of next carts are of an item just viewed, docs/live.md). "
        "Older tracked items count as seen either way; false: every tracked item counts as seen.",
    )
    max_users: int = Field(200_000, ge=1, description="Shoppers kept in memory per worker (least recently active go first).")
    max_events_per_user: int = Field(100, ge=1, description="Latest tracked events kept per shopper.")
    rebuild_max_rows: int = Field(1_000_000, ge=0, description="At start, at most this many of the newest behaviour rows since the snapshot are read back.")
    poll_ms: int = Field(
        500, ge=0, le=60_000,
        description="Each worker reads the behaviour rows other workers and replicas stored this often (0: only its own POST /track).",
    )


class FrequencyCapSettings(ConfigModel):
    enabled: bool = Field(False, description="Hold back items shown too often without interaction (off by default).")
    max_impressions: int = Field(3, ge=1, description="Impressions of one item to one user within the window ...")
    window_hours: float = Field(24.0, gt=0, description="... without a click, cart or purchase ...")
    hold_hours: float = Field(72.0, gt=0, description="... hold the item back this long after the last of them.")


class RetrainSettings(ConfigModel):
    """`storerec retrain` (docs/retrain.md): sync -> features -> train -> gate -> promote -> reload."""

    sync: bool = Field(True, description="Append the event log's new events first (as `storerec sync-events`); skipped with a note "
                       "when eventlog.enabled is off or a SQLite log does not exist yet.")
    bootstrap_samples: int = Field(2000, ge=100, le=100_000, description="Resamples of the validation users for the gate's confidence intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Two-sided confidence level of the gate's bootstrap intervals.")
    seed: int = Field(0, description="Seed of the bootstrap resampling (the same data and seed give the same intervals).")
    coverage_tolerance: float = Field(
        0.10, ge=0, le=1,
        description="Most relative drop of catalogue coverage@k a candidate may have against the champion (0.10: at least 90 % of it).",
    )
    diversity_tolerance: float = Field(
        0.05, ge=0, le=1,
        description="Most relative drop of intra-list diversity@k a candidate may have against the champion (0.05: at least 95 % of it).",
    )
    reload_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of running services (e.g. http://127.0.0.1:3000) sent POST /admin/reload with serving.admin_token "
        "after a promotion; services also pick the new champion up within serving.alias_poll_s.",
    )
    reload_timeout_s: float = Field(
        90.0, gt=0, le=3600, description="How long one reload call may take (the service waits up to serving.reload_wait_s for its workers)."
    )


class Settings(ConfigModel):
    data: DataSettings = Field(default_factory=DataSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    simulate: SimulateSettings = Field(default_factory=SimulateSettings)
    profiles: ProfileSettings = Field(default_factory=ProfileSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)
    eventlog: EventLogSettings = Field(default_factory=EventLogSettings)
    frequency_cap: FrequencyCapSettings = Field(default_factory=FrequencyCapSettings)
    live: LiveSettings = Field(default_factory=LiveSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)

    def registered_model_name(self) -> str:
        """The MLflow registered model in force: ``mlflow.registered_model`` when set, else
        ``storerec-<data folder name>`` (see :func:`derived_model_name`), so versions trained on
        different data folders never share version numbers or aliases."""
        return self.mlflow.registered_model or derived_model_name(self.data.dir)


def derived_model_name(data_dir: str | Path) -> str:
    """``storerec-<name of the data folder>``, reduced to letters, digits, ``_.-`` (MLflow-safe,
    and free of the ``@`` and ``/`` that version references use): ``./data`` -> ``storerec-data``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(data_dir).resolve().name).strip("-.")
    return f"storerec-{name or 'data'}"


def _is_text(annotation: Any) -> bool:
    """A field holding text (str, Path, a Literal of strings, optionally None)."""
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
    else:
        options = [annotation]
    return bool(options) and all(
        a in (str, Path) or (get_origin(a) is Literal and all(isinstance(v, str) for v in get_args(a))) for a in options
    )


def _field_annotation(path: list[str]) -> Any:
    """The annotation of the settings field at ``path`` (None when no such field)."""
    node: Any = Settings
    annotation = None
    for part in path:
        fields = getattr(node, "model_fields", None)
        if not isinstance(fields, dict) or part not in fields:
            return None
        annotation = node = fields[part].annotation
    return annotation


def _parse_env_value(raw: str, path: list[str] | None = None) -> Any:
    """A variable's value for the field at ``path``: text fields take it as it is (``6`` stays
    ``"6"``), other fields parse it as JSON when it is JSON (numbers, lists, tables)."""
    if path is not None and _is_text(_field_annotation(path)):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _env_overrides(environ: dict[str, str], sources: dict[tuple[str, ...], str] | None = None) -> dict[str, Any]:
    """``STOREREC__*`` variables as nested settings; ``sources`` collects dotted path -> variable."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{key} sets a key inside {'.'.join(path[:-1])}, which another {ENV_PREFIX}* variable sets as a whole")
        node[path[-1]] = _parse_env_value(raw, path)
        if sources is not None:
            sources[tuple(path)] = key
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def config_path(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file in force: explicit > $STOREREC_CONFIG > ./configs/storerec.toml (if it exists)."""
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read settings from defaults, a TOML file and ``STOREREC__*`` variables.

    Raises
    ------
    SettingsError
        If the file is missing or unreadable, or a value is invalid; the message names the file
        (or variable) and the dotted field.
    """
    environ = dict(os.environ if environ is None else environ)
    file = config_path(path, environ)
    raw = read_toml(file, "config file", f"--config or ${CONFIG_ENV}") if file is not None else {}
    sources: dict[tuple[str, ...], str] = {}
    raw = _merge(raw, _env_overrides(environ, sources))
    source = f"config file {file}" if file else "defaults"
    return validate_config(
        Settings, raw, header=f"invalid settings (from {source} and {ENV_PREFIX}* variables):", hint=SETTINGS_HINT, sources=sources
    )
