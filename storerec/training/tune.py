"""Hyperparameter search: ``storerec tune`` and the automatic search of ``storerec run``.

The search is a coordinate descent from the configured defaults: one dimension at a time (in the
order of :data:`SEARCH_SPACES`, most influential first, the data's own dimensions before them), the
others held at the best so far. A numeric dimension is line-searched from its current value (up
while that gains, else down while that gains), so its range can be wide at the cost of a few fits;
a categorical one tries every value. Passes repeat until one brings no gain or the trial or time
budget is spent, and a parameter set is never fitted twice. ``--random`` draws ``trials`` sets at
random instead; ``--grid`` tries them all.

Both ``storerec tune`` and ``storerec run`` score trials on an *inner* split cut from the train
window the way the train window was cut from all events (:func:`inner_split`): the outer
validation window plays no part in choosing the parameters. ``storerec run`` then evaluates each
model on the outer window to crown a champion (:func:`search_inner`); ``storerec tune`` fits the
chosen setting on the whole train window and evaluates it *once* on the outer validation window,
the figure it reports as the estimate (:func:`run_tuning`; one MLflow parent run per search, one
nested run per trial, every figure labelled with its window). The best inner figure is a
selection score, optimistic by construction (it is the maximum over the trials); the outer figure
is not.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import TASK_DELAY, Progress
from storerec.core.schema import Columns as C
from storerec.core.schema import EventTypes
from storerec.core.settings import Settings
from storerec.evaluation.splitters import time_orders_events
from storerec.models.base import flatten
from storerec.models.ease import reuse_gram
from storerec.registry import tracking
from storerec.training.pipeline import Split, Tables, build_model, make_split, model_spec, train_and_evaluate
from storerec.training.train import TrainSummary, against_champion, train_one

DECAY = [None, 5, 10, 20, 50]
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    "als": {
        "regularization": [0.001, 0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0],
        "alpha": [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0],
        "interactions.weighting": ["none", "bm25"],
        "interactions.recency_half_life": DECAY,
        "factors": [32, 64, 128, 256],
        "iterations": [10, 15, 25],
    },
    "bpr": {
        "learning_rate": [0.005, 0.01, 0.05, 0.1],
        "regularization": [0.001, 0.01, 0.1],
        "factors": [32, 64, 128],
        "iterations": [50, 100, 200],
    },
    "lightfm": {
        "use_user_features": [True, False],  # uninformative user features dilute the identity embeddings (#13)
        "use_item_features": [True, False],
        "interactions.recency_half_life": DECAY,
        "epochs": [10, 20, 30, 50],
        "learning_rate": [0.01, 0.03, 0.05, 0.1],
        "no_components": [32, 64, 128],
        "item_alpha": [0.0, 1e-6, 1e-5],
        "use_weights": [False, True],
    },
    "ease": {
        "regularization": [10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0],
        "weighted_history": [True, False],  # repeat purchases summed into the scored history, or 0/1 (#13: Online Retail)
        "interactions.recency_half_life": [None, 2, 5, 10, 20, 50],
    },
    "itemknn": {
        "similarity": ["cosine", "bm25", "tfidf"],
        "neighbours": [10, 20, 50, 100, 200, 400, 800],
        "interactions.recency_half_life": DECAY,
    },
    "popularity": {"kind": ["global", "category", "trending"]},
}


def data_dimensions(settings: Settings, events: pl.DataFrame) -> dict[str, list[Any]]:
    """Search dimensions the data calls for: for each event type whose ``quantity`` varies (play
    counts, units bought), whether it counts by its type weight alone or by log1p(quantity); the
    configured transform comes first. Ratings keep their configured strength."""
    out: dict[str, list[Any]] = {}
    if C.Quantity not in events.columns:
        return out
    varying = (
        events.filter(pl.col(C.EventType) != EventTypes.Rating)
        .group_by(C.EventType)
        .agg(pl.col(C.Quantity).drop_nulls().n_unique().alias("n"))
        .filter(pl.col("n") > 1)
    )
    for etype in sorted(varying[C.EventType].to_list()):
        configured = settings.events.strength.get(etype)
        current = configured.transform if configured is not None and configured.source == C.Quantity else "none"
        if configured is not None and configured.source != C.Quantity:
            continue  # the store counts this type by its value: not ours to second-guess
        values = [current] + [v for v in ("none", "log1p") if v != current]
        out[f"interactions.strength.{etype}.transform"] = values
    return out


def candidates(model: str, trials: int, seed: int, grid: bool) -> list[dict[str, Any]]:
    """``trials`` distinct parameter sets drawn at random (all of them with ``grid``), deterministic for ``seed``."""
    space = _space(model)
    keys = list(space)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    if grid:
        return combos
    random.Random(seed).shuffle(combos)
    return combos[:trials]


TIME_KEYS = ("interactions.recency_half_life", "interactions.half_life_days")


def _space(model: str, extra: dict[str, list[Any]] | None = None, *, timed: bool = True) -> dict[str, list[Any]]:
    """The model's space, the data's dimensions (:func:`data_dimensions`) first: how strongly a
    play count or a quantity counts changes the matrix every other parameter is tuned on. Without
    ``timed`` (timestamps that do not order events) the recency dimensions are left out: they would
    decay events by an arbitrary order."""
    if model not in SEARCH_SPACES:
        raise UserError(f"no search space for model {model!r}; tunable: {', '.join(SEARCH_SPACES)}")
    if model == "popularity":
        return dict(SEARCH_SPACES[model])  # counts distinct users: the matrix's weights do not matter
    space = {**(extra or {}), **SEARCH_SPACES[model]}
    return space if timed else {k: v for k, v in space.items() if k not in TIME_KEYS}


@dataclass
class SearchResult:
    trials: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    stopped: str = ""

    @property
    def best(self) -> tuple[dict[str, Any], float]:
        return max(self.trials, key=lambda t: t[1])


def _ordered(values: list[Any]) -> list[Any] | None:
    """Numeric values in ascending order, ``None`` (no decay: an infinite half-life) last; ``None``
    for a categorical dimension."""
    nums = [v for v in values if v is not None]
    if not nums or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in nums):
        return None
    return sorted(nums) + ([None] if len(nums) < len(values) else [])


def _position(order: list[Any], value: Any) -> int:
    if value in order:
        return order.index(value)
    if value is None or not isinstance(value, (int, float)):
        return len(order) - 1 if order[-1] is None else 0
    nums = [(abs(v - value), n) for n, v in enumerate(order) if v is not None]
    return min(nums)[1]


def coordinate_search(
    score: Callable[[dict[str, Any]], float],
    space: dict[str, list[Any]],
    *,
    identity: Callable[[dict[str, Any]], Any],
    max_trials: int,
    budget_s: float | None = None,
    default_of: Callable[[str], Any] | None = None,
) -> SearchResult:
    """Coordinate descent from the defaults (``{}``) over ``space``; see the module docstring.

    A numeric dimension is line-searched: from the current value, step to the next larger value
    while that gains, else to the next smaller one while that gains (``default_of(key)`` gives the
    starting point when the best set does not name the key). A categorical dimension tries every
    value. ``identity`` maps a parameter set to what makes two sets the same model (so a value
    equal to the default is not fitted again). Stops after ``max_trials`` fits, or when
    ``budget_s`` seconds have passed (checked before each fit; the defaults are always fitted), or
    after a pass without gain."""
    result = SearchResult()
    seen: dict[Any, float] = {}
    t0 = time.perf_counter()

    def trial(params: dict[str, Any]) -> float | None:
        key = identity(params)
        if key in seen:
            return seen[key]
        if result.trials and len(result.trials) >= max_trials:
            result.stopped = result.stopped or f"trial budget ({max_trials}) spent"
            return None
        if result.trials and budget_s is not None and time.perf_counter() - t0 > budget_s:
            result.stopped = result.stopped or f"time budget ({budget_s:.0f} s) spent"
            return None
        value = score(params)
        seen[key] = value
        result.trials.append((params, value))
        return value

    best: dict[str, Any] = {}
    first = trial(best)
    assert first is not None
    best_score = first
    while True:
        improved = False
        for key, values in space.items():
            order = _ordered(values)
            if order is None:  # categorical: every value
                for value in values:
                    got = trial({**best, key: value})
                    if got is None:
                        return result
                    if got > best_score:
                        best, best_score, improved = {**best, key: value}, got, True
                continue
            start = best[key] if key in best else (default_of(key) if default_of else order[0])
            at = _position(order, start)
            for step in (1, -1):
                moved = False
                nxt = at + step
                while 0 <= nxt < len(order):
                    got = trial({**best, key: order[nxt]})
                    if got is None:
                        return result
                    if got <= best_score:
                        break
                    best, best_score, improved, moved = {**best, key: order[nxt]}, got, True, True
                    at, nxt = nxt, nxt + step
                if moved:
                    break
        if not improved:
            result.stopped = "a full pass brought no gain"
            return result


def defaults_of(settings: Settings, model: str) -> Callable[[str], Any]:
    """The configured value of a search key (model parameter or ``interactions.*``)."""
    p, inter = model_spec(settings, model, {})
    eff = {**build_model(model, p).get_params(), **flatten(inter.model_dump(), "interactions.")}
    return eff.get


def identity_of(settings: Settings, model: str) -> Callable[[dict[str, Any]], Any]:
    """The effective parameters of a trial (model config + interaction config), as a hashable key."""

    def key(params: dict[str, Any]) -> Any:
        p, inter = model_spec(settings, model, params)
        # a type counted by its weight alone (transform none) is the same matrix as a type not named
        inter.strength = {t: v for t, v in inter.strength.items() if v.transform != "none"}
        eff = {**build_model(model, p).get_params(), **flatten(inter.model_dump(), "interactions.")}
        return tuple(sorted((k, repr(v)) for k, v in eff.items()))

    return key


def inner_split(settings: Settings, tables: Tables, split: Split) -> tuple[Tables, Split]:
    """The inner split the searches score trials on: ``split.train`` cut again the way ``split``
    was cut from all events (``training.split``). Raises :class:`UserError` when the train window
    cannot be split again."""
    inner_tables = Tables(split.train, tables.items, tables.users, tables.fingerprint + "-inner")
    return inner_tables, make_split(inner_tables, settings.training)


def search_line(model: str, tried: int, max_trials: int, ndcg: float, k: int, elapsed: float, budget_s: float | None) -> str:
    """One line per setting the automatic search scored, with the most time it can still take:
    the trials left at the mean time per trial so far, capped by what is left of the budget (the
    search also stops earlier, when a full pass brings no gain)."""
    left = elapsed / tried * (max_trials - tried)
    if budget_s is not None:
        left = min(left, max(0.0, budget_s - elapsed))
    return f"{model}: setting {tried} (at most {max_trials}) scored ndcg@{k} {ndcg:.4f}; {elapsed:.0f} s, at most ~{left:.0f} s left"


def search_inner(
    settings: Settings, tables: Tables, split: Split, model: str, *, max_trials: int, budget_s: float | None, progress: Progress
) -> tuple[dict[str, Any], SearchResult | None, str]:
    """The automatic search of ``storerec run``: coordinate search scored on an inner split cut
    from ``split.train`` the same way ``split`` was cut from all events. Returns (best parameters,
    the search, a one-line account); the defaults when the inner split is impossible."""
    if max_trials <= 1 or model not in SEARCH_SPACES:
        return {}, None, "defaults (no search)"
    try:
        inner_tables, inner = inner_split(settings, tables, split)
    except UserError as exc:
        return {}, None, f"defaults (the train window cannot be split again for a search: {exc})"
    k = settings.training.k
    cached = None
    started, tried = time.perf_counter(), 0

    def score(params: dict[str, Any]) -> float:
        nonlocal cached, tried
        res = train_and_evaluate(settings, inner_tables, inner, model, params, cached, progress=progress)
        cached = res.prepared
        tried += 1
        elapsed = time.perf_counter() - started
        if elapsed >= TASK_DELAY:  # a quick search stays silent, as a quick fit does
            progress.info(search_line(model, tried, max_trials, res.metrics[f"ndcg@{k}"], k, elapsed, budget_s))
        return res.metrics[f"ndcg@{k}"]

    with _model_reuse(model):
        result = coordinate_search(
            score, _space(model, data_dimensions(settings, split.train), timed=time_orders_events(split.train)),
            identity=identity_of(settings, model), default_of=defaults_of(settings, model),
            max_trials=max_trials, budget_s=budget_s,
        )
    params, best = result.best
    default = result.trials[0][1]
    account = (f"searched {len(result.trials)} settings on an inner split ({inner.params['split']}; stopped: {result.stopped}): "
               f"ndcg@{k} {default:.4f} with defaults -> {best:.4f} with {params or 'defaults'}")
    return params, result, account


@dataclass
class TuneSummary:
    """What ``storerec tune`` found: trials scored on the inner window (selection), the chosen
    setting's metrics on the outer window (the estimate)."""

    model: str
    parent_run_id: str
    trials: list[tuple[dict[str, Any], float]]  # (parameters, inner-window score)
    best_params: dict[str, Any]
    best_score: float  # the best inner-window score: what selected the setting
    metric: str
    registered: TrainSummary | None
    outer: dict[str, float] = field(default_factory=dict)  # the chosen setting on the outer validation window
    inner_window: str = ""
    outer_window: str = ""

    def render(self) -> str:
        k = self.metric.split("@")[-1]
        lines = [f"{self.model}: {len(self.trials)} trials scored on the inner validation window ({self.inner_window}; selection), "
                 f"best {self.metric}={self.best_score:.4f} with {self.best_params or 'defaults'}"]
        keys = [f"{m}@{k}" for m in ("ndcg", "precision", "recall", "map", "coverage", "diversity")]
        figures = " ".join(f"{key}={self.outer[key]:.4f}" for key in keys if key in self.outer)
        lines.append(f"  estimate on the outer validation window ({self.outer_window}; the chosen setting fitted on the whole train "
                     f"window, evaluated once): {figures}")
        lines.append(f"  parent run {self.parent_run_id}")
        if self.registered:
            lines.append(f"  best registered as version {self.registered.version}")
            if self.registered.verdict:
                lines.append(f"  {self.registered.verdict}")
        else:
            lines.append("  (not registered; re-run with --register, or `storerec train --model ... --param key=value`)")
        return "\n".join(lines)


def _model_reuse(model: str) -> AbstractContextManager[object]:
    """Work shared by the trials of one search: EASE computes its Gram matrix once per
    interaction matrix and only re-factorises it for each ``regularization``."""
    return reuse_gram() if model == "ease" else nullcontext()


def _window(split: Split) -> str:
    """A split in a few words, for reports: ``temporal, last 14 days`` / ``last_fraction 20% per user``."""
    p = split.params
    if p.get("split") == "temporal":
        return f"temporal: the last {p['split.test_days']} days"
    return f"last_fraction: each user's last {p['split.test_fraction']:.0%}" + (" (random order)" if p.get("split.order") else "")


def run_tuning(
    settings: Settings,
    data_dir: Path,
    model: str,
    *,
    trials: int,
    seed: int = 0,
    method: str = "coordinate",
    register: bool = False,
    progress: Progress,
) -> TuneSummary:
    """``storerec tune``: ``method`` is ``coordinate`` (the default, see the module docstring),
    ``random`` (``trials`` sets drawn with ``seed``) or ``grid`` (every set).

    Trials are fitted on the inner train window and scored on the inner validation window
    (:func:`inner_split`); the best setting is fitted on the whole (outer) train window and
    evaluated once on the outer validation window, the reported estimate. With ``register`` that
    fit is a registered version (refit on all data for serving, as ``storerec train``). The runs
    (parent, trials, the tuned fit) go to the ``<mlflow.experiment>/tune`` experiment."""
    tracking.configure(settings.mlflow, kind="tune")
    k = settings.training.k
    metric = f"ndcg@{k}"
    with progress.step("load data and split (outer, then inner from the train window)"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
        tables.release_events()  # the trials need the split only
        try:
            inner_tables, inner = inner_split(settings, tables, split)
        except UserError as exc:
            raise UserError(f"tune selects on an inner validation window cut from the train window, and it cannot be cut: {exc}") from None
    inner_window, outer_window = f"{_window(inner)} of the train window", _window(split)
    extra = data_dimensions(settings, split.train)
    results: list[tuple[dict[str, Any], float]] = []
    cached = None
    with mlflow.start_run(run_name=f"tune-{model}") as parent, _model_reuse(model):
        mlflow.set_tags({**tracking.standard_tags(tables.fingerprint, tables.source), "tune_model": model, "tune_method": method,
                         "tune.selection_window": f"inner: {inner_window}", "tune.estimate_window": f"outer: {outer_window}"})
        mlflow.log_params({f"inner.{key}": str(v)[:500] for key, v in inner.params.items()})

        def score(params: dict[str, Any]) -> float:
            nonlocal cached
            res = train_and_evaluate(settings, inner_tables, inner, model, params, cached, progress=progress)
            cached = res.prepared
            value = res.metrics[metric]
            results.append((params, value))
            with mlflow.start_run(run_name=f"trial-{len(results)}", nested=True):
                mlflow.set_tag("window", "inner (selection)")
                mlflow.log_params(res.params)
                mlflow.log_metrics({tracking.metric_key(m): v for m, v in res.metrics.items()})
            best = max(s for _, s in results)
            progress.info(f"trial {len(results)}{'' if method == 'coordinate' else '/' + str(trials)}: "
                          f"inner {metric}={value:.4f} (best {best:.4f}) {params or 'defaults'}")
            return value

        if method == "coordinate":
            space = _space(model, extra, timed=time_orders_events(split.train))
            coordinate_search(score, space, identity=identity_of(settings, model), default_of=defaults_of(settings, model),
                              max_trials=trials)
        elif method in ("random", "grid"):
            for params in candidates(model, trials, seed, grid=method == "grid"):
                score(params)
        else:
            raise UserError(f"unknown search method {method!r}: coordinate, random or grid")
        cached = None
        best_params, best_score = max(results, key=lambda r: r[1])
        mlflow.log_params({f"best.{key}": v for key, v in best_params.items()})
        mlflow.log_metric(tracking.metric_key(f"inner_best_{metric}"), best_score)
        registered = None
        if register:
            registered = train_one(
                settings, tables, split, model, best_params, register=True, progress=progress, run_name=f"{model}-tuned", nested=True
            )
            registered.verdict = against_champion(settings, registered, tables.fingerprint)
            outer = registered.metrics
        else:
            with progress.step(f"{model}: the chosen setting on the whole train window, evaluated on the outer window"):
                outer = train_and_evaluate(settings, tables, split, model, best_params, progress=progress).metrics
        mlflow.log_metrics({f"outer_{tracking.metric_key(m)}": v for m, v in outer.items()})
    return TuneSummary(model, parent.info.run_id, results, best_params, best_score, metric, registered, outer, inner_window, outer_window)
