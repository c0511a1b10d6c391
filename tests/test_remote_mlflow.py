"""Remote MLflow (issue #14 item 3): `mlflow server` with its backend store in PostgreSQL and served
artifacts (`--serve-artifacts`: clients get `mlflow-artifacts:/` URIs), and storerec trained,
promoted and served against it by MLFLOW_TRACKING_URI alone, from folders with no mlruns/.

The server is started here on a free port (its whole process group stopped afterwards), on a
database of its own (tests/_pg.py: dropped afterwards, and the session's end looks for leftovers);
skipped, with the reason, where no PostgreSQL answers at 127.0.0.1:5432."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from mlflow import MlflowClient

from storerec.cli import main
from storerec.registry import tracking
from tests._pg import pg_available, pg_skip_reason, temp_database
from tests._serve import free_port, small_store, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REGISTERED = "storerec-data"  # storerec-<data folder name>


def server_command(backend: str, artifacts: Path, port: int, workers: int = 2) -> list[str]:
    """The `mlflow server` of docs/deploy.md ("Remote MLflow")."""
    return [str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", backend,
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]


def _wait_health(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`mlflow server` on a new PostgreSQL database, artifacts served from a temporary folder."""
    if not pg_available():
        pytest.skip(pg_skip_reason())
    root = tmp_path_factory.mktemp("remote-mlflow")
    artifacts, cwd = root / "mlartifacts", root / "server"
    artifacts.mkdir()
    cwd.mkdir()
    with temp_database() as db_url:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = root / "mlflow-server.log"
        # no server-side job runner: storerec needs none, and it would start huey consumers and
        # leave a folder in /dev/shm behind
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "STOREREC__"))}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(log, "wb") as out:
            proc = subprocess.Popen(server_command(db_url, artifacts, port), cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not _wait_health(proc, url, 90):
                raise AssertionError(f"mlflow server did not answer /health (exit {proc.poll()}):\n"
                                     + log.read_text(errors="replace")[-4000:])
            yield {"url": url, "db": db_url, "artifacts": artifacts, "root": root, "log": log, "cwd": cwd}
        finally:
            stop(proc)  # the process group: `mlflow server`, uvicorn and its workers; fails if any is left
    assert sorted(p.name for p in cwd.iterdir()) == []  # the server wrote nothing where it was started
    shutil.rmtree(root, ignore_errors=True)


def _known_user(data: Path) -> str:
    ev = pl.read_parquet(data / "events.parquet")
    buyers = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return str(buyers["user_id"][0])


def _version_served(client: httpx.Client, user: str) -> str:
    r = client.post("/recommend", json={"user_id": user, "k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_kind"] == "hot" and len(body["items"]) == 5 and all(i["reasons"] for i in body["items"]), body
    return str(body["model_version"])


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """simulate, features, train (version 1) and promote against the server, from an empty
    folder with only MLFLOW_TRACKING_URI saying where the registry is."""
    root = tmp_path_factory.mktemp("remote-train")
    work, data = root / "work", root / "data"
    work.mkdir()
    cfg = root / "storerec.toml"
    cfg.write_text(  # no [mlflow] section: the registry is MLFLOW_TRACKING_URI
        f"""
{small_store(data)}
[serving]
control_url = "sqlite:///{root / 'control.db'}"
[eventlog]
enabled = false
"""
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # a folder with no mlruns/ (and none may appear)
        mp.setenv("MLFLOW_TRACKING_URI", server["url"])
        for args in (["simulate"], ["features"], ["train", "--model", "als", "--param", "factors=8"], ["promote", "--version", "1"]):
            assert main(["--config", str(cfg), "-q", *args]) == 0, args
    assert sorted(p.name for p in work.iterdir()) == []
    return {"root": root, "work": work, "data": data, "cfg": cfg, "user": _known_user(data)}


def test_the_registry_records_served_artifact_uris(server, trained) -> None:
    client = MlflowClient(tracking_uri=server["url"])
    version = client.get_model_version(REGISTERED, "1")
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "storerec/train"  # the job's experiment, made by the server
    uris = {
        "experiment": client.get_experiment_by_name("storerec/train").artifact_location,
        "run": run.info.artifact_uri,
        "version": client.get_model_version_download_uri(REGISTERED, "1"),
    }
    for what, uri in uris.items():
        assert uri.startswith("mlflow-artifacts:/") and str(trained["root"]) not in uri and str(server["artifacts"]) not in uri, (what, uri)
    assert not version.source.startswith(("file:", "/")), version.source
    # the files are where the server keeps them, the serving snapshot included
    stored = server["artifacts"] / uris["version"].removeprefix("mlflow-artifacts:/")
    assert (stored / "MLmodel").exists() and (stored / "artifacts" / "serving" / "manifest.json").exists()
    # the signature and input example travel through the server too
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", server["url"])
        mlflow.set_tracking_uri(server["url"])
        info = mlflow.models.get_model_info(f"models:/{REGISTERED}/1")
    assert info.signature.inputs.input_names() == ["user_id", "k"] and info.saved_input_example_info is not None
    assert version.tags["model"] == "als" and version.tags["split"] and version.description.startswith("als trained on data (")


def test_serve_and_promote_against_the_server(server, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real `storerec serve` from the empty folder with the data folder moved away (the replica
    has the registry and nothing else); a version promoted on the server reaches it."""
    cfg, data, work = trained["cfg"], trained["data"], trained["work"]
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    client = MlflowClient(tracking_uri=server["url"])
    champion = client.get_model_version_by_alias(REGISTERED, "champion").version
    hidden = data.with_name("data-hidden")
    data.rename(hidden)
    try:
        proc, http = start(cfg, tmp_path / "serve.log", env={"MLFLOW_TRACKING_URI": server["url"]})
    finally:
        hidden.rename(data)
    try:
        assert _version_served(http, trained["user"]) == champion
        assert main(["--config", str(cfg), "-q", "train", "--model", "als", "--param", "factors=8"]) == 0
        new = max(int(v.version) for v in client.search_model_versions(f"name='{REGISTERED}'"))
        assert main(["--config", str(cfg), "-q", "promote", "--version", str(new)]) == 0
        deadline = time.monotonic() + 30
        while (served := _version_served(http, trained["user"])) != str(new) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert served == str(new)
    finally:
        http.close()
        stop(proc)
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log and "serving snapshot" in log
    assert sorted(p.name for p in work.iterdir()) == []  # no mlruns/, nothing else
    assert client.get_model_version_download_uri(REGISTERED, str(new)).startswith("mlflow-artifacts:/")


def test_a_bento_pulls_its_version_from_the_server(server, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`storerec build` (no --include-model) and `bentoml serve TAG` in an empty folder, with
    MLFLOW_TRACKING_URI the only thing it is told."""
    from tests.test_bento import _build, _serve

    monkeypatch.chdir(trained["work"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    home = tmp_path / "bentoml"
    tag = _build({"cfg": trained["cfg"], "home": home}, monkeypatch, capsys)
    champion = MlflowClient(tracking_uri=server["url"]).get_model_version_by_alias(REGISTERED, "champion").version
    clean = tmp_path / "clean"
    clean.mkdir()
    proc, port = _serve(tag, home, clean, tmp_path / "bento.log", {"MLFLOW_TRACKING_URI": server["url"]})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            assert _version_served(http, trained["user"]) == champion
    finally:
        stop(proc)
    assert sorted(p.name for p in clean.iterdir()) == []
    assert "Traceback" not in (tmp_path / "bento.log").read_text(errors="replace")


def test_a_server_that_does_not_answer_is_a_clear_error_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MLflow's client retries a dead server for minutes; storerec says so within seconds."""
    cfg = tmp_path / "storerec.toml"
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n[mlflow]\ntracking_uri = "{url}"\n')
    t0 = time.monotonic()
    assert main(["--config", str(cfg), "models"]) == 2
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert f"MLflow server {url} does not answer" in err and "Remote MLflow" in err, err


def test_configure_leaves_artifacts_to_the_server(server, tmp_path: Path) -> None:
    """`mlflow.artifact_root` applies to local stores only: a new experiment on a server gets the
    server's served location, and nothing is made in the artifact root."""
    from storerec.core.settings import MlflowSettings

    settings = MlflowSettings(tracking_uri=server["url"], artifact_root=tmp_path / "never", experiment="storerec-other")
    client = tracking.configure(settings)  # a reader: opens the store, makes no experiment
    assert client.get_experiment_by_name("storerec-other") is None
    for kind in ("tune", "ab-report"):
        client = tracking.configure(settings, kind=kind)
        assert client.get_experiment_by_name(f"storerec-other/{kind}").artifact_location.startswith("mlflow-artifacts:/")
    import mlflow

    assert mlflow.get_experiment(mlflow.tracking.fluent._get_experiment_id()).name == "storerec-other/ab-report"  # the active one
    assert not (tmp_path / "never").exists()
