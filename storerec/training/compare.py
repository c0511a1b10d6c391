"""``storerec evaluate``: compare models (fitted on one split) or logged runs, and write a report."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.evaluation.report import write_report
from storerec.registry import tracking
from storerec.training.fitcache import FitCache, cache_dir
from storerec.training.pipeline import Split, Tables, evaluate_served, fit_model, make_split, train_and_evaluate


def default_report_dir(settings: Settings) -> Path:
    """``reports/evaluation-<UTC time>`` beside the data folder (``./reports`` for ``./data``): the
    report goes with the data it describes, not into whatever folder the command ran in."""
    return Path(settings.data.dir).resolve().parent / "reports" / f"evaluation-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def publish(results: dict[str, dict[str, float]], k: int, out: Path, context: dict[str, Any]) -> Path:
    """Write the report and log it (and each model's headline metrics) as an MLflow run, in the
    active experiment: the caller's job's (``evaluate``; ``train`` for ``storerec run``)."""
    path = write_report(results, k, out, context)
    with mlflow.start_run(run_name="evaluate"):
        mlflow.set_tag("kind", "evaluation")
        mlflow.log_params({key: str(v)[:500] for key, v in context.items()})
        for name, metrics in results.items():
            safe = re.sub(r"[^\w\-. :/]", "_", name)  # MLflow metric names allow few characters
            mlflow.log_metrics({f"{safe}/{tracking.metric_key(m)}": v for m, v in metrics.items()})
        mlflow.log_artifacts(str(out), artifact_path="report")
    return path


def compare_models(
    settings: Settings, data_dir: Path, models: list[str], out: Path | None, progress: Progress, *, pipeline: bool = False,
    use_cache: bool = True,
) -> Path:
    """Fit every model on the same split, evaluate, and publish one report.

    With ``pipeline``, each model is also evaluated through the serving pipeline (filters,
    extra candidates, diversity re-ranking): rows ``<model> · served, ...``.

    Fits are kept in the data folder's fit cache (:mod:`storerec.training.fitcache`) and reused
    when the data and parameters are the same; ``use_cache=False`` fits every model again."""
    tracking.configure(settings.mlflow, kind="evaluate")
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
    fits = FitCache(cache_dir(data_dir), tables.fingerprint, enabled=use_cache, progress=progress)
    results: dict[str, dict[str, float]] = {}
    cached = None
    for name in models:
        with progress.step(f"{name}: fit and evaluate"):
            res = train_and_evaluate(settings, tables, split, name, None, cached,
                                     fit=lambda model, dataset: fits.fit(model, dataset, split.params, lambda m, d: fit_model(m, d, progress)))
            cached = res.prepared
            results[name] = res.metrics
        if pipeline:
            with progress.step(f"{name}: the serving pipeline, with and without diversity"):
                for label, metrics in evaluate_served(res.model, split, res.prepared, settings).items():
                    results[f"{name} · {label}"] = metrics
    return publish(results, settings.training.k, out or default_report_dir(settings), _context(split))


def compare_runs(settings: Settings, run_ids: list[str], out: Path | None) -> Path:
    """Report on logged training runs; refuses runs evaluated on different splits."""
    client = tracking.configure(settings.mlflow, kind="evaluate")
    results: dict[str, dict[str, float]] = {}
    splits = {}
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise UserError(f"no MLflow run {run_id!r}; find run ids with `storerec models` or `make mlflow-ui`") from None
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/report.json")
        report = json.loads(Path(local).read_text())
        name = f"{run.data.params.get('model', '?')}-{run_id[:8]}"
        results[name] = report["metrics"]
        splits[name] = {k: v for k, v in run.data.params.items() if k.startswith("split")}
    distinct = {json.dumps(s, sort_keys=True) for s in splits.values()}
    if len(distinct) > 1:
        detail = "; ".join(f"{n}: {s}" for n, s in splits.items())
        raise UserError(f"these runs were evaluated on different splits and cannot be compared: {detail}")
    return publish(results, settings.training.k, out or default_report_dir(settings), next(iter(splits.values()), {}))


def _context(split: Split) -> dict[str, Any]:
    return {
        **split.params,
        "train_events": split.train.height,
        "test_pairs": split.test.height,
        "as_of": split.as_of.isoformat(),
    }


def version_spec(settings: Settings, ref: str) -> tuple[str, str, dict[str, Any]]:
    """(version number, model name, parameter overrides) of a registered version, from its
    ``training.json``: model params as logged, interaction settings nested again."""
    import tempfile

    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.registered_model_name(), ref)
    with tempfile.TemporaryDirectory(prefix="storerec-replay-") as tmp:
        folder = tracking.download_version(client, version, Path(tmp))
        info = json.loads((folder / "storerec.training.json").read_text())
    overrides: dict[str, Any] = {}
    for key, value in info["params"].items():
        if key == "model" or key.startswith("split"):
            continue
        if key.startswith("interactions."):
            parts = key.split(".")
            if len(parts) == 3:  # interactions.weights.view -> interactions.weights = {view: ...}
                overrides.setdefault(f"{parts[0]}.{parts[1]}", {})[parts[2]] = value
                continue
        overrides[key] = value
    return str(version.version), info["model"], overrides


def replay_versions(settings: Settings, data_dir: Path, ref_a: str, ref_b: str, out: Path | None, progress: Progress) -> Path:
    """Refit two registered versions' models on the same split and compare them, raw and served."""
    from storerec.training.pipeline import evaluate_served

    tracking.configure(settings.mlflow, kind="evaluate")
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
    results: dict[str, dict[str, float]] = {}
    for ref in (ref_a, ref_b):
        number, name, overrides = version_spec(settings, ref)
        label = f"{ref} (v{number} {name})"
        with progress.step(f"{label}: refit on the train window and evaluate"):
            res = train_and_evaluate(settings, tables, split, name, overrides, progress=progress)
            results[label] = res.metrics
            for variant, metrics in evaluate_served(res.model, split, res.prepared, settings).items():
                results[f"{label} · {variant}"] = metrics
    return publish(results, settings.training.k, out or default_report_dir(settings), {**_context(split), "replay": f"{ref_a} vs {ref_b}"})
