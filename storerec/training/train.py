"""``storerec train``: fit one model, evaluate it on the validation window, log and register it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import polars as pl

from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.core.tables import markdown_table
from storerec.models.base import ModelBase
from storerec.registry import tracking
from storerec.training.pipeline import Prepared, Split, Tables, make_split, refit_full, train_and_evaluate


@dataclass
class TrainSummary:
    model: str
    run_id: str
    version: str | None
    metrics: dict[str, float]
    seconds: dict[str, float]
    per_user: pl.DataFrame | None = None  # user_id, ndcg on the split (not logged; for the champion choice)
    params: dict[str, Any] | None = None  # the run's parameters as logged (typed), for a later register_version

    def render(self, k: int = 10) -> str:
        keys = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}", f"map@{k}", f"coverage@{k}", f"diversity@{k}"]
        head = " ".join(f"{key}={self.metrics[key]:.4f}" for key in keys if key in self.metrics)
        where = f"registered as version {self.version}" if self.version else "not registered"
        return f"{self.model}: {head}\n  run {self.run_id}, {where}; " + ", ".join(
            f"{k} {v:.1f}s" for k, v in self.seconds.items()
        )


def parse_params(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` strings to a dict; values parsed as JSON when possible (``factors=128``)."""
    from storerec.core.errors import UserError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--param {pair!r} is not key=value (e.g. --param factors=128)")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def train_one(
    settings: Settings,
    tables: Tables,
    split: Split,
    name: str,
    overrides: dict[str, Any] | None = None,
    *,
    register: bool = True,
    progress: Progress,
    run_name: str | None = None,
    nested: bool = False,
    release_split: bool = False,
) -> TrainSummary:
    """Train, evaluate and log one model in its own MLflow run (optionally registered).
    ``release_split``: the caller is done with ``split``; its frames leave memory after the
    evaluation (before the refit on all data)."""
    with progress.step(f"{name}: fit on the split and evaluate"):
        result = train_and_evaluate(settings, tables, split, name, overrides)
    params, metrics, per_user = result.params, result.metrics, result.per_user
    if release_split:
        split.release()
    # a failing store (locked past the retries, broken) is one error line, the run marked failed
    with tracking.store_access(mlflow.get_tracking_uri(), f"log the {name} run"), mlflow.start_run(run_name=run_name or name, nested=nested) as run:
        mlflow.set_tags(tracking.standard_tags(tables.fingerprint, tables.source))
        mlflow.log_params(params)
        mlflow.log_metrics({tracking.metric_key(k): v for k, v in metrics.items()})
        mlflow.log_dict({"metrics": metrics, "params": params}, "evaluation/report.json")
        mlflow.log_text(_report_markdown(name, metrics, params), "evaluation/report.md")
        seconds = dict(result.seconds)
        version = None
        if register:
            fitted = None if settings.training.refit_full else (result.model, result.prepared)
            del result  # with refit_full, the split's model and tables leave memory before the refit on all data
            version = register_version(settings, tables, name, overrides, params, metrics, progress=progress, seconds=seconds, fitted=fitted)
        mlflow.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})
    return TrainSummary(name, run.info.run_id, version, metrics, seconds, per_user, params)


def register_version(
    settings: Settings, tables: Tables, name: str, overrides: dict[str, Any] | None, params: dict[str, Any], metrics: dict[str, float], *,
    progress: Progress, seconds: dict[str, float], fitted: tuple[ModelBase, Prepared] | None = None,
) -> str:
    """Log and register a version of ``name`` in the active MLflow run: refit on all data
    (``training.refit_full``), else ``fitted`` (the split's model; fitted again on the split when
    not given). ``params`` and ``metrics`` are those of the split's evaluation; ``seconds`` gains
    the refit's time. Returns the version number."""
    if settings.training.refit_full:
        with progress.step(f"{name}: refit on all data for serving"):
            t0 = time.perf_counter()
            model, prepared = refit_full(settings, tables, name, overrides)
            seconds["refit_full"] = time.perf_counter() - t0
    elif fitted is not None:
        model, prepared = fitted
    else:
        raise ValueError("register_version needs the fitted model when training.refit_full is off")
    with progress.step(f"{name}: log and register"):
        data = tracking.data_tags(tables.fingerprint, tables.source)
        split = {key: v for key, v in params.items() if key == "split" or key.startswith("split.")}  # the evaluation's split (Split.params)
        info = {"model": name, "params": params, "metrics": metrics, "split": split, **data}
        profiles, as_of = serving_profiles(settings, tables, prepared)
        _, version = tracking.log_model_version(
            model=model, item_table=prepared.item_table, info=info, registered_model=settings.registered_model_name(), tags=data,
            profiles=profiles, events=tables.events, as_of=as_of, k=settings.training.k,
        )
    return version


def serving_profiles(settings: Settings, tables: Tables, prepared: Prepared) -> tuple[pl.DataFrame, datetime]:
    """The user profiles a registered version is served with (its serving snapshot) and their
    as-of time: as of the end of the data, as ``storerec features`` builds them by default. The
    refit on all data (``training.refit_full``) made them already; otherwise they are built."""
    from storerec.features.profiles import default_as_of, user_profiles

    as_of = default_as_of(tables.events)
    if prepared.dataset.as_of == as_of:
        return prepared.profiles, as_of
    return user_profiles(tables.events, tables.users, tables.items, settings, as_of), as_of


def _report_markdown(name: str, metrics: dict[str, float], params: dict[str, Any]) -> str:
    return "\n".join([
        f"# Evaluation of {name}",
        "",
        markdown_table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in sorted(metrics.items())], align="lr"),
        "",
        "## Parameters",
        "",
        markdown_table(["param", "value"], sorted(params.items())),
    ]) + "\n"


def run_training(settings: Settings, data_dir: Path, model: str, overrides: dict[str, Any] | None = None, *,
                 register: bool = True, progress: Progress) -> TrainSummary:
    """Entry point of ``storerec train``: its run goes to the ``<mlflow.experiment>/train`` experiment."""
    tracking.configure(settings.mlflow, kind="train")
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
        tables.release_events()  # read again for the refit on all data; not held through fit and evaluation
    return train_one(settings, tables, split, model, overrides, register=register, progress=progress, release_split=True)
