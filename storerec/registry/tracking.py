"""MLflow: runs, the model registry and the artifacts that serving loads.

A registered version holds a pyfunc model whose ``artifacts/`` folder has everything needed to
serve without the training code: ``model/`` (ModelBase.save: id maps, factors or weights,
feature matrices, config, format version), ``item_features.parquet`` (the catalogue as of
training), ``training.json`` (model name, params, metrics, data fingerprint) and ``serving/``,
the serving snapshot (user profiles, the events' four columns the pipeline reads, a manifest:
:mod:`storerec.registry.snapshot`), so that a replica needs the registry and nothing else.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import pandas as pd  # MLflow's pyfunc interface speaks pandas; not used on hot paths
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from storerec import __version__
from storerec.core.errors import NotFoundError, UserError
from storerec.core.settings import MlflowSettings

ARTIFACT_MODEL = "model"
# Where a version's data came from: tags on the version and on its run (see data_tags).
TAG_DATA_DIR, TAG_DATA_FOLDER, TAG_FINGERPRINT = "data_dir", "data_folder", "data_fingerprint"
LEGACY_REGISTERED_MODEL = "storerec"  # the one name every data folder shared before names per folder
STORE_LOCK_TIMEOUT_S = 300.0  # waiting longer for another process to create/upgrade the store is an error
LOCKED_RETRY_S = 60.0  # registry writes retried this long on "database is locked" (beyond SQLite's own 20 s busy wait)
T = TypeVar("T")


def metric_key(name: str) -> str:
    """MLflow-safe metric name: ``ndcg@10/segment=new`` -> ``ndcg_at_10/segment_new``."""
    return name.replace("@", "_at_").replace("=", "_")


SERVER_SCHEMES = ("http://", "https://")
SERVER_PROBE_TIMEOUT_S = 5.0  # GET <server>/health before the first request: MLflow's own client retries ~4 min on a dead server


def is_server(uri: str) -> bool:
    """An MLflow tracking server (``http(s)://``): the server owns its stores and decides where
    artifacts go (``mlflow server --serve-artifacts``: ``mlflow-artifacts:/`` URIs); a client
    neither locks, creates nor migrates anything, and ``mlflow.artifact_root`` does not apply."""
    return uri.lower().startswith(SERVER_SCHEMES)


def check_server(uri: str, timeout_s: float = SERVER_PROBE_TIMEOUT_S) -> None:
    """Raise a :class:`UserError` at once when nothing answers at the server ``uri`` (refused,
    unknown host, timeout); any HTTP answer, even an error status (a proxy, an auth layer),
    counts as an answer and is left to MLflow's client."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"MLflow server {uri} does not answer ({reason}); start it (docs/deploy.md, \"Remote MLflow\") or point "
            "MLFLOW_TRACKING_URI / mlflow.tracking_uri at a running one"
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for in-memory or other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def store_lock(uri: str, timeout_s: float = STORE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``<db>.lock`` beside a SQLite store's file, so that
    one process at a time creates or migrates it (MLflow's own table creation and Alembic
    migrations race: two fresh ``storerec train`` crashed, or left the store half-migrated).
    Nothing to lock for other stores (a server serialises its own database); a folder we cannot
    write in is only read, so it goes unlocked too. The kernel drops the lock when its process
    dies, so a crash never leaves it stuck."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 - closed by the `with handle` below; failing to open is not an error
    except OSError:
        yield
        return
    with handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(
                        f"another process has held {lock_path} for {timeout_s:.0f} s while creating or upgrading the MLflow "
                        f"store {uri}; let it finish (see `ps`), then try again"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "temporarily_unavailable" in text


def store_error(uri: str, action: str, exc: BaseException) -> UserError:
    """One clear :class:`UserError` for a failure of the MLflow store, saying what to do."""
    first = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip().splitlines()[0][:300]
    if _is_locked(exc):
        hint = ("other jobs kept the SQLite database locked too long; run again when they finish, or use an MLflow server "
                "(mlflow.tracking_uri) for many concurrent jobs")
    elif is_server(uri):
        hint = (f"check that the MLflow server answers (`curl {uri.rstrip('/')}/health`) and that its backend store is "
                "reachable (the server's log says why it failed)")
    else:
        hint = (f"check that mlflow.tracking_uri points at an MLflow store; if a crashed job left it half-created, move it aside "
                f"(the next command makes a new one) or run `mlflow db upgrade {uri}` after a backup")
    return UserError(f"MLflow store {uri}: could not {action}: {first}; {hint}")


@contextmanager
def store_access(uri: str, action: str) -> Iterator[None]:
    """Turn MLflow/database failures inside the block into :func:`store_error` (exit 2, one line)."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # MlflowException, SQLAlchemy/Alembic errors, OSError of a file store
        if isinstance(exc, mlflow.exceptions.MlflowException) or type(exc).__module__.split(".")[0] in ("sqlalchemy", "alembic", "sqlite3"):
            raise store_error(uri, action, exc) from exc
        raise


def retry_locked(fn: Callable[[], T], uri: str, action: str, budget_s: float = LOCKED_RETRY_S) -> T:
    """Call ``fn``, again with backoff while SQLite answers "database is locked" (a failed write
    is rolled back, so retrying cannot duplicate it), up to ``budget_s``; then a UserError."""
    deadline, delay = time.monotonic() + budget_s, 0.1
    while True:
        try:
            return fn()
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() + delay > deadline:
                if isinstance(exc, mlflow.exceptions.MlflowException) or _is_locked(exc):
                    raise store_error(uri, action, exc) from exc
                raise
            logging.getLogger("storerec.tracking").info("%s: database is locked, retrying in %.1f s", action, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


# The experiment of each job kind, ``<mlflow.experiment>/<kind>`` (experiment_name); a job's
# nested runs stay in its experiment (`storerec run` and `tune --register` train inside theirs).
EXPERIMENT_KINDS = {
    "train": "storerec train and storerec run (their training runs and run's evaluation report)",
    "tune": "storerec tune: the parent run, its trials and the tuned fit",
    "evaluate": "storerec evaluate / compare-runs / replay: the evaluation reports",
    "ab-report": "storerec ab-report: the A/B reports",
    "retrain": "storerec retrain: the parent run, its candidates and the champion's refit",
}


def experiment_name(cfg: MlflowSettings, kind: str) -> str:
    """``storerec/train`` for ``kind="train"`` (base ``mlflow.experiment``). The base experiment
    itself held every run before experiments per job; its runs stay there, and nothing reads runs
    by experiment (versions are found by registered model name, runs by id)."""
    if kind not in EXPERIMENT_KINDS:
        raise ValueError(f"unknown experiment kind {kind!r}: one of {', '.join(EXPERIMENT_KINDS)}")
    return f"{cfg.experiment}/{kind}"


def configure(cfg: MlflowSettings, kind: str | None = None) -> MlflowClient:
    """Point MLflow at the configured store; with ``kind`` (a job that logs runs:
    :data:`EXPERIMENT_KINDS`), make sure the job's experiment (:func:`experiment_name`) exists and
    make it the active one. Without ``kind`` (commands that only read the registry: serve,
    models, promote; or a helper inside a job) no experiment is created and the active one is
    left alone, so a job's nested runs stay in its experiment.

    The default store is ``sqlite:///mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``;
    ``MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri`` select any other store. A SQLite store
    is opened (created, migrated) under :func:`store_lock`, so concurrent jobs are safe; any
    failure is a :class:`UserError` that says what to do.

    A local store (SQLite, a file store, or a database URI used directly) gets its experiment's
    artifacts in ``mlflow.artifact_root``. An MLflow server (``http(s)://``, :func:`is_server`)
    is asked once whether it answers, and creates the experiment where it keeps artifacts
    (``--serve-artifacts``: ``mlflow-artifacts:/``, so every client and replica reads the
    same artifacts through it); ``mlflow.artifact_root`` is not used, because a client's
    local folder would be recorded as an absolute ``file://`` path no other machine can read.
    A server experiment whose artifact location is such a local path (a server run with
    ``--no-serve-artifacts --default-artifact-root /some/dir``) gets a warning.
    """
    # MLflow's per-file download bars and start-up INFO lines drown our own progress output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = cfg.resolved_tracking_uri()
    if is_server(uri):
        check_server(uri)
    with store_lock(uri), store_access(uri, "open the tracking store"):
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # the first read creates and migrates a new local store
        client.search_registered_models(max_results=1)  # the registry's store opens here too, under the lock
        if kind is not None:
            name = experiment_name(cfg, kind)
            _ensure_experiment(client, cfg, name, uri)
            mlflow.set_experiment(name)
    return client


def _ensure_experiment(client: MlflowClient, cfg: MlflowSettings, name: str, uri: str) -> Any:
    """The experiment ``name``, created when missing: on a local store with its artifacts in
    ``mlflow.artifact_root``, on a server where the server keeps artifacts (see :func:`configure`)."""
    server = is_server(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None  # a server's default: where it keeps artifacts
        if not server:
            root = Path(cfg.artifact_root).resolve()
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        try:
            client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another job (on a server store) made it first
                raise
        experiment = client.get_experiment_by_name(name)
    if server and experiment is not None and _local_location(experiment.artifact_location):
        logging.getLogger("storerec.tracking").warning(
            "MLflow server %s keeps the artifacts of experiment %r at %s, a path on the machine that writes them: "
            "replicas elsewhere cannot read them unless it is a shared mount; run the server with --serve-artifacts "
            "(docs/deploy.md, \"Remote MLflow\")", uri, name, experiment.artifact_location)
    return experiment


def _local_location(location: str | None) -> bool:
    """An artifact location on a local file system (``file:``, a bare path), not one a server resolves."""
    return bool(location) and str(location).startswith(("file:", "/"))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StorerecPyfunc(PythonModel):
    """MLflow pyfunc wrapper: ``predict`` takes a frame with ``user_id`` (and optional ``k``)."""

    def load_context(self, context: Any) -> None:
        from storerec.models.base import ModelBase

        self.model = ModelBase.load(context.artifacts[ARTIFACT_MODEL])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # ``k`` from the params (MLflow passes them only when the model's signature declares
        # them: none of ours do) or from a ``k`` column, else 10.
        k = int((params or {}).get("k", model_input["k"].iloc[0] if "k" in model_input.columns and len(model_input) else 10))
        reco = self.model.recommend(model_input["user_id"].astype(str).tolist(), k=k)
        return reco.to_pandas()


def pyfunc_signature() -> Any:
    """What :meth:`StorerecPyfunc.predict` takes and returns: a frame of ``user_id`` (strings)
    with an optional ``k`` column (items per user, the first row's counts), and a frame of
    ``user_id, item_id, score, rank`` (:meth:`ModelBase.recommend`). ``k`` is a column, not an
    MLflow param: a declared param would be passed with its default on every call and override
    the column."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)])
    outputs = Schema([ColSpec("string", "user_id"), ColSpec("string", "item_id"), ColSpec("float", "score"),
                      ColSpec("integer", "rank")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def pyfunc_input_example(model: Any, k: int = 10) -> pd.DataFrame:
    """One row: the model's first known user (an id its artifacts hold already, so nothing
    leaks; an unknown id would get no rows) and ``k``; a placeholder id for a model without users."""
    users = getattr(model, "users", None)
    user = str(users.external[0]) if users is not None and len(users.external) else "example-user"
    return pd.DataFrame({"user_id": [user], "k": [int(k)]})


def version_description(info: dict[str, Any], k: int = 10) -> str:
    """The registered version's description: model, data set, split and headline metrics."""
    metrics = info.get("metrics") or {}
    split = info.get("split") or {}
    head = ", ".join(f"{m}={metrics[m]:.4f}" for m in (f"ndcg@{k}", f"recall@{k}", f"coverage@{k}", f"diversity@{k}") if m in metrics)
    where = ", ".join(f"{key}={value}" for key, value in split.items() if key != "split.reason")
    data = describe_data({key: str(v) for key, v in info.items() if key in (TAG_DATA_FOLDER, TAG_FINGERPRINT)})
    return "\n".join([
        f"{info.get('model', '?')} trained on {data}" + (f" at {info[TAG_DATA_DIR]}" if info.get(TAG_DATA_DIR) else ""),
        f"validation split: {where or 'not recorded'}",
        f"validation metrics: {head or 'not recorded'}",
    ])


def version_tags(info: dict[str, Any], k: int = 10) -> dict[str, str]:
    """Version tags beyond the data set's (:func:`data_tags`): the model, the split's parameters
    (``split``, ``split.*``) and the headline metrics (``ndcg_at_10``, ``coverage_at_10``,
    ``diversity_at_10``, ``recall_at_10``), so that versions can be searched and compared
    without opening their runs."""
    tags = {"model": str(info.get("model", ""))} if info.get("model") else {}
    tags.update({key: str(value)[:5000] for key, value in (info.get("split") or {}).items()})
    metrics = info.get("metrics") or {}
    for name in (f"ndcg@{k}", f"recall@{k}", f"coverage@{k}", f"diversity@{k}"):
        if name in metrics:
            tags[metric_key(name)] = f"{float(metrics[name]):.6g}"
    return tags


def log_model_version(
    *,
    model: Any,
    item_table: Any,
    info: dict[str, Any],
    registered_model: str,
    tags: dict[str, str] | None = None,
    profiles: Any = None,
    events: Any = None,
    as_of: Any = None,
    k: int = 10,
) -> tuple[str, str]:
    """Log the model as a pyfunc in the active run and register it with version ``tags`` (the
    data it was trained on, :func:`data_tags`) and those of ``info`` (:func:`version_tags`:
    model, split, headline metrics at ``k``) and a description (:func:`version_description`);
    returns (model_uri, version). The pyfunc has a signature (:func:`pyfunc_signature`) and a
    one-row input example (:func:`pyfunc_input_example`).

    ``profiles`` and ``events`` (polars frames; the events' four columns are kept) become the
    version's serving snapshot (``artifacts/serving/``, with a manifest: row counts, ``as_of``,
    the data fingerprint of ``tags``); without both, the version has none (served with the data
    folder's tables, as versions registered before snapshots are).

    Registration is retried while SQLite is locked by concurrent jobs; a registered model that
    another job creates at the same moment is used as it is, and each job gets its own number."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model.save(Path(tmp) / ARTIFACT_MODEL)
        item_path = Path(tmp) / "item_features.parquet"
        item_table.write_parquet(item_path)
        info_path = Path(tmp) / "storerec.training.json"
        info_path.write_text(json.dumps(info, indent=2, default=str))
        artifacts = {ARTIFACT_MODEL: str(model_dir), "item_features": str(item_path), "training": str(info_path)}
        if profiles is not None and events is not None:
            from storerec.registry.snapshot import SNAPSHOT_DIR, write_snapshot

            write_snapshot(Path(tmp), profiles=profiles, events=events, as_of=as_of, fingerprint=(tags or {}).get(TAG_FINGERPRINT),
                           model=model, item_table=item_table)  # with the items' neighbour lists (found once, not at every start)
            artifacts[SNAPSHOT_DIR] = str(Path(tmp) / SNAPSHOT_DIR)
        # the wrapper's predict has no type hints (the signature is given) and the class is
        # importable: MLflow's warnings about both are expected, so keep them off the console.
        # MLflow checks the input example by loading the logged model once and predicting it (one
        # user: the model's load, no scoring of the catalogue); a failure there is its warning.
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.ERROR)
        try:
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=StorerecPyfunc(),
                artifacts=artifacts,
                pip_requirements=[f"storerec=={__version__}"],
                signature=pyfunc_signature(),
                input_example=pyfunc_input_example(model, k),
            )
        finally:
            pyfunc_log.setLevel(level)
    uri = mlflow.get_tracking_uri()
    all_tags = {**version_tags(info, k), **(tags or {})}
    version = retry_locked(
        lambda: mlflow.register_model(logged.model_uri, registered_model, tags=all_tags or None),
        uri, f"register a version of {registered_model}",
    )
    client = MlflowClient(tracking_uri=uri)
    retry_locked(lambda: client.update_model_version(registered_model, str(version.version), description=version_description(info, k)),
                 uri, f"describe version {version.version} of {registered_model}")
    return logged.model_uri, str(version.version)


def annotate_version(client: MlflowClient, registered_model: str, version: str, tags: dict[str, str], note: str | None = None) -> None:
    """Add ``tags`` to a registered version and ``note`` as a last line of its description
    (e.g. the retrain gate's decision, known only after registration)."""
    uri = mlflow.get_tracking_uri()
    def tag(key: str, value: str) -> Callable[[], None]:
        return lambda: client.set_model_version_tag(registered_model, version, key, value)

    for key, value in tags.items():
        retry_locked(tag(key, value), uri, f"tag version {version} of {registered_model}")
    if note:
        current = client.get_model_version(registered_model, version).description or ""
        text = f"{current}\n{note}" if current else note
        retry_locked(lambda: client.update_model_version(registered_model, version, description=text[:5000]),
                     uri, f"describe version {version} of {registered_model}")


def data_tags(fingerprint: str, data_dir: Path | str | None) -> dict[str, str]:
    """Where a run/version's data came from: the data folder (absolute path and name) and the
    fingerprint of its tables."""
    tags = {TAG_FINGERPRINT: fingerprint}
    if data_dir is not None:
        folder = Path(data_dir).resolve()
        tags.update({TAG_DATA_DIR: str(folder), TAG_DATA_FOLDER: folder.name})
    return tags


def standard_tags(fingerprint: str, data_dir: Path | str | None = None) -> dict[str, str]:
    return {**data_tags(fingerprint, data_dir), "git_commit": git_commit(), "storerec_version": __version__}


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
        if _is_locked(exc):
            raise store_error(mlflow.get_tracking_uri(), f"look up model version {ref!r}", exc) from None
        hint = ""
        if not sep and name != LEGACY_REGISTERED_MODEL and _has_versions(client, LEGACY_REGISTERED_MODEL):
            hint = (f"; versions registered before one registered model per data folder are under {LEGACY_REGISTERED_MODEL!r}: "
                    f"name it ({LEGACY_REGISTERED_MODEL}@{what} or {LEGACY_REGISTERED_MODEL}/N), or set mlflow.registered_model = "
                    f"\"{LEGACY_REGISTERED_MODEL}\" to keep using that name")
        raise NotFoundError(
            f"no model version {ref!r} in the registry ({exc.message.splitlines()[0]}); "
            f"list versions with `storerec models`, train one with `storerec train`{hint}"
        ) from None


def _has_versions(client: MlflowClient, registered_model: str) -> bool:
    try:
        return bool(client.search_model_versions(f"name='{registered_model}'", max_results=1))
    except mlflow.exceptions.MlflowException:
        return False


def download_version(client: MlflowClient, version: Any, dst: Path | None = None) -> Path:
    """Download a version's artifacts; returns the folder holding ``model/`` and friends."""
    dst = Path(dst or tempfile.mkdtemp(prefix="storerec-model-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst))
    return Path(local) / "artifacts"


def set_alias(client: MlflowClient, registered_model: str, version: str, alias: str) -> None:
    try:
        client.get_model_version(registered_model, version)
    except mlflow.exceptions.MlflowException as exc:
        if _is_locked(exc):
            raise store_error(mlflow.get_tracking_uri(), f"look up {registered_model} version {version}", exc) from None
        raise UserError(f"{registered_model} has no version {version}; see `storerec models`") from None
    retry_locked(lambda: client.set_registered_model_alias(registered_model, alias, version),
                 mlflow.get_tracking_uri(), f"point {registered_model}@{alias} at version {version}")


# ---- which data a version belongs to ----------------------------------------------------------

MIN_CATALOGUE_SHARE = 0.9


def version_data(client: MlflowClient, version: Any, run: Any = None) -> dict[str, str]:
    """The data a version was trained on, from its tags (``data_dir``, ``data_folder``,
    ``data_fingerprint``), else its run's tags (``run``, fetched when not given; versions from
    before the version tags carry only the fingerprint); missing keys are absent."""
    tags = {k: v for k, v in (version.tags or {}).items() if k in (TAG_DATA_DIR, TAG_DATA_FOLDER, TAG_FINGERPRINT)}
    if len(tags) < 3 and (run is not None or version.run_id):
        try:
            run_tags = (run or client.get_run(version.run_id)).data.tags
        except mlflow.exceptions.MlflowException:
            run_tags = {}
        for key in (TAG_DATA_DIR, TAG_DATA_FOLDER, TAG_FINGERPRINT):
            if key not in tags and run_tags.get(key):
                tags[key] = run_tags[key]
    return tags


def describe_data(data: dict[str, str]) -> str:
    """``data (3f2a9c1b)``: folder name and short fingerprint; ``?`` for what is not recorded."""
    return f"{data.get(TAG_DATA_FOLDER, '?')} ({data.get(TAG_FINGERPRINT, '?')[:8]})"


def same_folder(data: dict[str, str], data_dir: Path | str) -> bool | None:
    """Whether the version's recorded data folder is ``data_dir`` (None: not recorded)."""
    recorded = data.get(TAG_DATA_DIR)
    return None if not recorded else Path(recorded) == Path(data_dir).resolve()


def served_item_ids(data_dir: Path | str) -> set[str] | None:
    """The catalogue a service on ``data_dir`` serves: the items table, else the items with
    events; None when the folder has neither."""
    import polars as pl

    from storerec.core.schema import Columns
    from storerec.features import io

    for table in ("items", "events"):
        if io.has_table(Path(data_dir), table):
            ids = pl.read_parquet(io.table_path(Path(data_dir), table), columns=[Columns.Item])[Columns.Item]
            return set(ids.cast(pl.String).unique().drop_nulls().to_list())
    return None


def check_catalogue(model: Any, data_dir: Path | str, *, label: str, data: dict[str, str]) -> None:
    """Refuse to serve a model trained on another data set: at least ``MIN_CATALOGUE_SHARE``
    (90 %) of the items the model can recommend must be in ``data_dir``'s catalogue
    (:func:`served_item_ids`). A version retrained on a store that grew, or whose store has
    since dropped a few items, passes; MovieLens against the built-in store (no item in common)
    does not. Raises :class:`UserError` (``storerec serve`` exit 2, ``/admin/reload`` 409)."""
    served = served_item_ids(data_dir)
    items = [] if model.items is None else model.items.external.tolist()
    if served is None or not items:
        return
    known = sum(1 for item in items if item in served)
    share = known / len(items)
    if share >= MIN_CATALOGUE_SHARE:
        return
    folder = Path(data_dir).resolve()
    raise UserError(
        f"{label} was trained on another data set ({describe_data(data)}"
        f"{', ' + data[TAG_DATA_DIR] if data.get(TAG_DATA_DIR) else ''}): only {known:,} of its {len(items):,} items "
        f"({share:.0%}) are in the catalogue of {folder} ({MIN_CATALOGUE_SHARE:.0%} needed); serve a version trained on "
        f"this folder (`storerec models --data-dir {folder}`) or train one (`storerec train --data-dir {folder}`)"
    )


def version_label(version: Any, ref: str) -> str:
    """``storerec-data version 3 (champion)`` for messages."""
    return f"{version.name} version {version.version}" + (f" ({ref})" if ref != str(version.version) else "")


def check_version_for_folder(client: MlflowClient, version: Any, data_dir: Path | str, ref: str) -> None:
    """:func:`check_catalogue` before starting a service: a version whose recorded data folder
    is ``data_dir`` passes at once; any other is downloaded and its items compared."""
    data = version_data(client, version)
    if same_folder(data, data_dir):
        return
    from storerec.models.base import ModelBase

    with tempfile.TemporaryDirectory(prefix="storerec-check-") as tmp:
        model = ModelBase.load(download_version(client, version, Path(tmp)) / ARTIFACT_MODEL)
    check_catalogue(model, data_dir, label=version_label(version, ref), data=data)


def list_versions(client: MlflowClient, registered_model: str, data_dir: Path | str | None = None) -> list[dict[str, Any]]:
    """Versions, newest first, with aliases, the headline metrics logged by their run and the
    data set they were trained on (``data``; ``other_data``: True when recorded for another
    folder than ``data_dir``, None when not recorded)."""
    try:
        versions = client.search_model_versions(f"name='{registered_model}'")
    except mlflow.exceptions.MlflowException as exc:
        if _is_locked(exc):
            raise store_error(mlflow.get_tracking_uri(), f"list the versions of {registered_model}", exc) from None
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
        data = version_data(client, v, run)
        same = same_folder(data, data_dir) if data_dir is not None else None
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
                "data": describe_data(data),
                "data_dir": data.get(TAG_DATA_DIR),
                "other_data": None if same is None else not same,
            }
        )
    return rows


def other_registered_models(client: MlflowClient, registered_model: str) -> list[tuple[str, int]]:
    """(name, number of versions) of the other registered models in the store."""
    try:
        models = client.search_registered_models(max_results=1000)
    except mlflow.exceptions.MlflowException:
        return []
    return [(m.name, len(client.search_model_versions(f"name='{m.name}'"))) for m in models if m.name != registered_model]


def render_versions(client: MlflowClient, registered_model: str, data_dir: Path | str) -> str:
    """The ``storerec models`` listing: the versions of ``registered_model`` with the data set
    of each (``*``: recorded for another folder than ``data_dir``), then versions still under
    the shared name of older stores (``storerec``) and the other registered models."""
    folder = Path(data_dir).resolve()
    fmt = "{:>7}  {:<20} {:<11} {:>8} {:>9} {:>11}  {:<28} {}"
    num = lambda v: "-" if v is None else f"{v:.4f}"

    def table(rows: list[dict[str, Any]]) -> list[str]:
        out = [fmt.format("version", "aliases", "model", "ndcg@10", "recall@10", "coverage@10", "data set", "run_id")]
        for r in rows:
            data = r["data"] + (" *" if r["other_data"] else "")
            out.append(fmt.format(r["version"], r["aliases"] or "-", r["model"], num(r["ndcg@10"]), num(r["recall@10"]),
                                  num(r["coverage@10"]), data, r["run_id"]))
        return out

    rows = list_versions(client, registered_model, folder)
    lines = [f"registered model {registered_model} (data folder {folder})"]
    lines += table(rows) if rows else ["no registered versions yet: run `storerec train --model als` (or `make run`)"]
    legacy = list_versions(client, LEGACY_REGISTERED_MODEL, folder) if registered_model != LEGACY_REGISTERED_MODEL else []
    if legacy:
        lines += ["", f"versions under {LEGACY_REGISTERED_MODEL!r}, the name every data folder shared before one registered model per "
                      f"data folder: name them {LEGACY_REGISTERED_MODEL}/N or {LEGACY_REGISTERED_MODEL}@alias, or set "
                      f"mlflow.registered_model = \"{LEGACY_REGISTERED_MODEL}\" to keep using that name"]
        lines += table(legacy)
    if any(r["other_data"] for r in rows + legacy):
        lines += [f"* trained on another data folder than {folder}: serving refuses it unless {MIN_CATALOGUE_SHARE:.0%} of "
                  "its items are in this folder's catalogue"]
    others = [(n, c) for n, c in other_registered_models(client, registered_model) if n != LEGACY_REGISTERED_MODEL]
    if others:
        listed = ", ".join(f"{n} ({c} version{'s' if c != 1 else ''})" for n, c in others)
        lines += [f"other registered models in this store: {listed}; list one with `storerec models --data-dir <its data folder>`"]
    return "\n".join(lines)
