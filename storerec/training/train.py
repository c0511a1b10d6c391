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

from storerec import __version__
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
    verdict: str | None = None  # the new version against the champion (:func:`against_champion`)

    def render(self, k: int = 10) -> str:
        keys = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}", f"map@{k}", f"coverage@{k}", f"diversity@{k}"]
        head = " ".join(f"{key}={self.metrics[key]:.4f}" for key in keys if key in self.metrics)
        where = f"registered as version {self.version}" if self.version else "not registered"
        text = f"{self.model}: {head}\n  run {self.run_id}, {where}; " + ", ".join(
            f"{k} {v:.1f}s" for k, v in self.seconds.items()
        )
        return text + (f"\n  {self.verdict}" if self.verdict else "")


def against_champion(settings: Settings, summary: TrainSummary, fingerprint: str) -> str:
    """One line: does the new version beat the champion on NDCG@k, and how to promote it. The
    numbers are compared only when the champion was evaluated on the same data and split;
    otherwise the line says how to compare them on one window (``storerec replay``)."""
    from mlflow import MlflowClient

    from storerec.core.errors import NotFoundError

    k = settings.training.k
    key = f"ndcg@{k}"
    new = summary.version
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    try:
        champ = tracking.resolve_version(client, settings.registered_model_name(), "champion")
    except NotFoundError:
        return f"no champion yet: serve this version with `make promote VERSION={new}` (storerec promote --version {new})"
    if str(champ.version) == str(new):
        return "this version is the champion"
    run = client.get_run(champ.run_id) if champ.run_id else None
    if run is None or tracking.metric_key(key) not in run.data.metrics:
        return f"the champion (version {champ.version}) has no {key} to compare with: `make replay A=champion B={new}` compares them"
    same_data = tracking.version_data(client, champ, run).get(tracking.TAG_FINGERPRINT) == fingerprint
    split_now = {p: str(v) for p, v in (summary.params or {}).items() if p == "split" or p.startswith("split.")}
    split_then = {p: v for p, v in run.data.params.items() if p == "split" or p.startswith("split.")}
    if not same_data or split_now != split_then:
        return (f"the champion (version {champ.version}) was evaluated on {'other data' if not same_data else 'another split'}, so the "
                f"numbers do not compare: `make replay A=champion B={new}` scores both on one window")
    theirs, ours = run.data.metrics[tracking.metric_key(key)], summary.metrics[key]
    change = f"{key} {ours:.4f} against {theirs:.4f} for the champion (version {champ.version}, {run.data.params.get('model', '?')}), same split"
    if ours > theirs:
        return (f"beats the champion: {change} (+{100 * (ours / theirs - 1) if theirs else float('inf'):.1f} %). Promote it with "
                f"`make promote VERSION={new}`; `make replay A=champion B={new}` checks it on another window first")
    return f"does not beat the champion: {change}; the champion stays (`make promote VERSION={new}` would serve it anyway)"


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
    reuse: bool = False,
) -> TrainSummary:
    """Train, evaluate and log one model in its own MLflow run (optionally registered).
    ``release_split``: the caller is done with ``split``; its frames leave memory after the
    evaluation (before the refit on all data). ``reuse``: a registered version of the same model,
    data, parameters and code commit (:func:`same_version`) is taken instead of registering
    another (``storerec run`` again on unchanged data adds no versions)."""
    with progress.step(f"{name}: fit on the split and evaluate"):
        result = train_and_evaluate(settings, tables, split, name, overrides, progress=progress)
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
        version = same_version(settings, name, params, tables.fingerprint) if register and reuse else None
        if version is not None:
            progress.info(f"{name}: same data, parameters and code as version {version}: reusing it (no new version)")
            mlflow.set_tag("reused_version", version)
        elif register:
            fitted = None if settings.training.refit_full else (result.model, result.prepared)
            del result  # with refit_full, the split's model and tables leave memory before the refit on all data
            version = register_version(settings, tables, name, overrides, params, metrics, progress=progress, seconds=seconds, fitted=fitted)
        mlflow.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})
    return TrainSummary(name, run.info.run_id, version, metrics, seconds, per_user, params)


def same_version(settings: Settings, name: str, params: dict[str, Any], fingerprint: str) -> str | None:
    """The registered version of ``name`` trained on data with this ``fingerprint``, with exactly
    these parameters (model, interactions, split, as logged) by the same code commit; None when
    there is none (the newest when several)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    want = {key: str(v) for key, v in params.items()}
    commit = tracking.git_commit()
    versions = client.search_model_versions(f"name='{settings.registered_model_name()}'")
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        if tags.get("model") != name or tags.get(tracking.TAG_FINGERPRINT) != fingerprint or not v.run_id:
            continue
        run = client.get_run(v.run_id)
        same_code = run.data.tags.get("git_commit") == commit and run.data.tags.get("storerec_version") == __version__
        if same_code and run.data.params == want:
            return str(v.version)
    return None


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
            model, prepared = refit_full(settings, tables, name, overrides, progress=progress)
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
    summary = train_one(settings, tables, split, model, overrides, register=register, progress=progress, release_split=True)
    if summary.version is not None:
        summary.verdict = against_champion(settings, summary, tables.fingerprint)
    return summary
