"""MLflow: runs, the model registry and the artifacts that serving loads.

A registered version holds a pyfunc model whose ``artifacts/`` folder has everything needed to
serve without the training code: ``model/`` (ModelBase.save: id maps, factors or weights,
feature matrices, config, format version), ``item_features.parquet`` (the catalogue as of
training) and ``training.json`` (model name, params, metrics, data fingerprint).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd  # MLflow's pyfunc interface speaks pandas; not used on hot paths
from mlflow.tracking import MlflowClient

from storerec import __version__
from storerec.errors import NotFoundError, UserError
from storerec.settings import MlflowSettings

ARTIFACT_MODEL = "model"
ALIASES = ("champion", "challenger")


def metric_key(name: str) -> str:
    """MLflow-safe metric name: ``ndcg@10/segment=new`` -> ``ndcg_at_10/segment_new``."""
    return name.replace("@", "_at_").replace("=", "_")


def configure(cfg: MlflowSettings) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists.

    The default store is ``sqlite:///mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``;
    ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` select any other server.
    """
    # MLflow's per-file download bars and start-up INFO lines drown our own progress output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = cfg.resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(cfg.experiment) is None:
        location = None
        if "://" not in uri or uri.startswith(("sqlite:", "file:")):
            root = Path(cfg.artifact_root).resolve()
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        client.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.experiment)
    return client


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StorerecPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper: ``predict`` takes a frame with ``user_id`` (and optional ``k``)."""

    def load_context(self, context: Any) -> None:
        from models.base import ModelBase

        self.model = ModelBase.load(context.artifacts[ARTIFACT_MODEL])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # ``k`` from the params (MLflow passes them only when the model has a signature) or
        # from a ``k`` column, else 10.
        k = int((params or {}).get("k", model_input["k"].iloc[0] if "k" in model_input.columns and len(model_input) else 10))
        reco = self.model.recommend(model_input["user_id"].astype(str).tolist(), k=k)
        return reco.to_pandas()


def log_model_version(
    *,
    model: Any,
    item_table: Any,
    info: dict[str, Any],
    registered_model: str,
) -> tuple[str, str]:
    """Log the model as a pyfunc in the active run and register it; returns (model_uri, version)."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save(Path(tmp) / ARTIFACT_MODEL)
        item_path = Path(tmp) / "item_features.parquet"
        item_table.write_parquet(item_path)
        info_path = Path(tmp) / "training.json"
        info_path.write_text(json.dumps(info, indent=2, default=str))
        # the pyfunc takes/returns pandas frames without a fixed signature, and the wrapper class is
        # importable: MLflow's warnings about both are expected, so keep them off the console
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)
        try:
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=StorerecPyfunc(),
                artifacts={ARTIFACT_MODEL: str(model_dir), "item_features": str(item_path), "training": str(info_path)},
                pip_requirements=[f"storerec=={__version__}"],
                registered_model_name=registered_model,
            )
        finally:
            pyfunc_log.setLevel(level)
    return logged.model_uri, str(logged.registered_model_version)


def standard_tags(fingerprint: str) -> dict[str, str]:
    return {"data_fingerprint": fingerprint, "git_commit": git_commit(), "storerec_version": __version__}


def resolve_version(client: MlflowClient, registered_model: str, ref: str) -> Any:
    """A model version from ``"3"``, ``"champion"``, ``"storerec@champion"`` or ``"storerec/3"``."""
    name, sep, what = ref.partition("@")
    if not sep:
        name, sep, what = ref.partition("/")
    if not sep:
        name, what = registered_model, ref
    try:
        if what.isdigit():
            return client.get_model_version(name, what)
        return client.get_model_version_by_alias(name, what)
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(
            f"no model version {ref!r} in the registry ({exc.message.splitlines()[0]}); "
            "list versions with `storerec models`, train one with `storerec train`"
        ) from None


def download_version(client: MlflowClient, version: Any, dst: Path | None = None) -> Path:
    """Download a version's artifacts; returns the folder holding ``model/`` and friends."""
    dst = Path(dst or tempfile.mkdtemp(prefix="storerec-model-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst))
    return Path(local) / "artifacts"


def set_alias(client: MlflowClient, registered_model: str, version: str, alias: str) -> None:
    try:
        client.get_model_version(registered_model, version)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"{registered_model} has no version {version}; see `storerec models`") from None
    client.set_registered_model_alias(registered_model, alias, version)


def list_versions(client: MlflowClient, registered_model: str) -> list[dict[str, Any]]:
    """Versions, newest first, with aliases and the headline metrics logged by their run."""
    try:
        versions = client.search_model_versions(f"name='{registered_model}'")
    except mlflow.exceptions.MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    try:
        for alias, ver in client.get_registered_model(registered_model).aliases.items():
            aliases.setdefault(str(ver), []).append(alias)
    except mlflow.exceptions.MlflowException:
        pass
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        run = client.get_run(v.run_id) if v.run_id else None
        metrics = run.data.metrics if run else {}
        rows.append(
            {
                "version": v.version,
                "aliases": ",".join(sorted(aliases.get(str(v.version), []))),
                "model": (run.data.params.get("model") if run else "") or "",
                "ndcg@10": metrics.get(metric_key("ndcg@10")),
                "recall@10": metrics.get(metric_key("recall@10")),
                "coverage@10": metrics.get(metric_key("coverage@10")),
                "run_id": v.run_id,
                "created": v.creation_timestamp,
            }
        )
    return rows

