"""The MLflow registry across data sets and concurrent jobs: one registered model per data folder,
versions that record their data, serving that refuses another data set's version, and a SQLite
store that concurrent `storerec train` jobs create and share safely."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from mlflow.exceptions import MlflowException

from storerec.cli import main
from storerec.core.errors import UserError
from storerec.core.settings import load_settings
from storerec.models.dataset import IdMap
from storerec.registry import tracking

SMALL = ["--users", "300", "--items", "100", "--events", "5000"]


# ---- unit: the store lock, retries, the catalogue rule ------------------------------------------


def test_store_lock_is_beside_the_sqlite_file_and_exclusive(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    with tracking.store_lock(uri):
        lock = tmp_path / "store" / "mlflow.db.lock"
        assert lock.exists()
        with open(lock) as other, pytest.raises(BlockingIOError):  # another open file (as another process would have) cannot take it
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="held .*mlflow.db.lock"), tracking.store_lock(uri, timeout_s=0.2):
            pass
    with tracking.store_lock(uri, timeout_s=0.2):  # released
        pass
    for other_store in ("http://mlflow.internal:5000", "postgresql://h/db", "sqlite://", "sqlite:///:memory:"):
        with tracking.store_lock(other_store):  # nothing to lock
            pass
    assert tracking.sqlite_path("sqlite:////abs/m.db?mode=ro") == Path("/abs/m.db")


def test_server_uris_and_local_artifact_locations() -> None:
    """An MLflow server (http/https) owns its stores and artifacts (tests/test_remote_mlflow.py
    runs one); a server experiment whose artifacts are a local path gets a warning."""
    assert tracking.is_server("http://127.0.0.1:5000") and tracking.is_server("HTTPS://mlflow.internal")
    for local in ("sqlite:///mlruns/mlflow.db", "postgresql+psycopg://postgres@h/db", "file:///x/mlruns", "mlruns"):
        assert not tracking.is_server(local)
    assert tracking._local_location("file:///srv/mlruns/1") and tracking._local_location("/srv/mlruns/1")
    for served in ("mlflow-artifacts:/1", "s3://bucket/1", "gs://b/1", "", None):
        assert not tracking._local_location(served)
    err = tracking.store_error("http://127.0.0.1:5000", "open the tracking store", MlflowException("boom"))
    assert "curl http://127.0.0.1:5000/health" in str(err) and "mlflow db upgrade" not in str(err)


def test_locked_writes_are_retried_then_reported(tmp_path: Path) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert tracking.retry_locked(flaky, "sqlite:///x.db", "register") == "ok" and len(calls) == 3

    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(UserError, match=r"MLflow store sqlite:///x.db: could not register: database is locked; .*run again"):
        tracking.retry_locked(locked, "sqlite:///x.db", "register", budget_s=0.3)
    with pytest.raises(ValueError):  # anything else is not retried (nor hidden)
        tracking.retry_locked(lambda: (_ for _ in ()).throw(ValueError("bug")), "sqlite:///x.db", "register")


class _Model:
    def __init__(self, items: list[str]) -> None:
        self.items = IdMap.from_values(items)


def test_catalogue_rule(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store_items = [f"i{i:05d}" for i in range(100)]
    pl.DataFrame({"item_id": store_items, "category": ["A"] * 100}).write_parquet(data / "items.parquet")
    check = lambda items: tracking.check_catalogue(_Model(items), data, label="v", data={})
    check(store_items[:60])  # trained on an older, smaller store: all its items are still sold
    check(store_items + [f"gone{i}" for i in range(10)])  # 10 of 110 items dropped since: 91 % >= 90 %
    with pytest.raises(UserError, match=r"v was trained on another data set .*only 0 of its 1,682 items \(0%\)"):
        check([str(i) for i in range(1, 1683)])  # MovieLens ids against the store
    with pytest.raises(UserError, match="only 80 of its 100 items"):
        check(store_items[:80] + [f"x{i}" for i in range(20)])
    (data / "items.parquet").unlink()
    pl.DataFrame({"item_id": store_items[:50], "user_id": ["u"] * 50}).write_parquet(data / "events.parquet")
    with pytest.raises(UserError):  # no items table: the items with events are the catalogue
        check([str(i) for i in range(50)])
    (data / "events.parquet").unlink()
    check(["anything"])  # nothing to compare with
    assert tracking.describe_data({}) == "? (?)"
    assert tracking.describe_data({"data_folder": "data", "data_fingerprint": "0123456789abcdef"}) == "data (01234567)"


# ---- versions record their data; names per data folder; serving refuses another data set ------


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small stores sharing one MLflow store: ``shop`` (simulated, with profiles) and
    ``movies`` (simulated, item ids renamed: another data set with no item in common)."""
    root = tmp_path_factory.mktemp("registry")
    from tests._serve import write_config

    shop, movies = root / "shop", root / "movies"
    cfg = write_config(root, shop)
    for folder in (shop, movies):
        assert main(["--config", str(cfg), "-q", "simulate", *SMALL, "--data-dir", str(folder)]) == 0
    for table in ("items", "events"):
        path = movies / f"{table}.parquet"
        pl.read_parquet(path).with_columns((pl.lit("movie-") + pl.col("item_id")).alias("item_id")).write_parquet(path)
    assert main(["--config", str(cfg), "-q", "features"]) == 0
    return {"root": root, "cfg": cfg, "shop": shop, "movies": movies}


def run(stores: dict[str, Path], *args: str) -> int:
    return main(["--config", str(stores["cfg"]), *args])


@pytest.fixture(autouse=True)
def _no_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    """`storerec serve` execs BentoML once its checks pass: here that must not happen."""

    def refuse(*args: object) -> None:
        raise AssertionError(f"storerec serve got past its checks: {args[:2]}")

    monkeypatch.setattr(os, "execvpe", refuse)


@pytest.mark.slow
def test_one_registered_model_per_data_folder(stores, capsys) -> None:
    cfg, shop, movies = stores["cfg"], stores["shop"], stores["movies"]
    assert run(stores, "-q", "train", "--model", "popularity") == 0
    assert run(stores, "-q", "train", "--model", "popularity", "--data-dir", str(movies)) == 0
    last = capsys.readouterr().out.splitlines()[-2:]  # the summary of the second train, then its verdict
    assert "registered as version 1" in last[0] and "no champion yet" in last[1]  # its own numbering, its own champion
    client = tracking.configure(load_settings(cfg, environ={}).mlflow)
    v = client.get_model_version("storerec-shop", "1")
    assert v.tags["data_dir"] == str(shop.resolve()) and v.tags["data_folder"] == "shop" and len(v.tags["data_fingerprint"]) == 16
    assert client.get_run(v.run_id).data.tags["data_dir"] == str(shop.resolve())
    assert client.get_model_version("storerec-movies", "1").tags["data_folder"] == "movies"
    # promote, models, serve and recommend-batch all resolve in the folder's registered model
    assert run(stores, "-q", "promote", "--version", "1", "--data-dir", str(movies)) == 0
    assert str(client.get_model_version_by_alias("storerec-movies", "champion").version) == "1"
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("storerec-shop", "champion")
    capsys.readouterr()
    assert run(stores, "models") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"registered model storerec-shop (data folder {shop.resolve()})"
    row = out.splitlines()[2].split()
    assert row[0] == "1" and row[2] == "popularity" and row[6:8] == ["shop", f"({v.tags['data_fingerprint'][:8]})"]
    assert "other registered models in this store: storerec-movies (1 version)" in out
    assert run(stores, "recommend-batch", "--model", "champion", "--out", str(stores["root"] / "r.parquet")) == 2
    assert "no model version 'champion'" in capsys.readouterr().err


@pytest.mark.slow
def test_another_data_sets_version_is_marked_and_refused(stores, capsys, monkeypatch) -> None:
    # One name shared by both folders (an explicit mlflow.registered_model, as every store had
    # before): the movies version sits beside the shop's, so it must be marked and refused.
    monkeypatch.setenv("STOREREC__MLFLOW__REGISTERED_MODEL", "shared")
    assert run(stores, "-q", "train", "--model", "popularity") == 0
    assert run(stores, "-q", "train", "--model", "popularity", "--data-dir", str(stores["movies"])) == 0
    capsys.readouterr()
    assert run(stores, "models") == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert "movies (" in rows["2"] and rows["2"].split("*")[0].rstrip().endswith(")") and "*" in rows["2"]
    assert "shop (" in rows["1"] and "*" not in rows["1"]
    assert any(line.startswith(f"* trained on another data folder than {stores['shop'].resolve()}") for line in lines)
    # serve refuses it before starting anything: one error line, exit 2
    assert run(stores, "serve", "--model", "2", "--port", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: shared version 2 was trained on another data set (movies (")
    assert "only 0 of its 100 items (0%)" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # ... and refuses it when the version's tags do not tell (the items decide)
    client = tracking.configure(load_settings(stores["cfg"], environ={}).mlflow)
    for key in ("data_dir", "data_folder"):
        client.delete_model_version_tag("shared", "2", key)
        client.delete_tag(client.get_model_version("shared", "2").run_id, key)
    assert run(stores, "serve", "--model", "2", "--port", "1") == 2
    assert "shared version 2 was trained on another data set (? (" in capsys.readouterr().err


@pytest.mark.slow
def test_versions_of_an_older_store_are_still_listed(stores, capsys, monkeypatch) -> None:
    with monkeypatch.context() as m:  # a store made before names per folder: everything under "storerec"
        m.setenv("STOREREC__MLFLOW__REGISTERED_MODEL", "storerec")
        assert run(stores, "-q", "train", "--model", "popularity") == 0
        assert run(stores, "-q", "promote", "--version", "1") == 0
    capsys.readouterr()
    assert run(stores, "models") == 0
    out = capsys.readouterr().out
    assert "versions under 'storerec', the name every data folder shared before" in out
    assert 'set mlflow.registered_model = "storerec"' in out
    legacy = out.split("versions under 'storerec'")[1].splitlines()
    assert legacy[2].split()[:3] == ["1", "champion", "popularity"]
    # serving names the way to them
    assert run(stores, "serve", "--port", "1") == 2
    err = capsys.readouterr().err
    assert "no model version 'champion'" in err and "storerec@champion" in err


@pytest.mark.slow
@pytest.mark.e2e
def test_reload_refuses_another_data_sets_version(stores, tmp_path: Path, monkeypatch) -> None:
    from tests._serve import start, stop

    env = {"STOREREC__MLFLOW__REGISTERED_MODEL": "reload"}
    with monkeypatch.context() as m:
        m.setenv("STOREREC__MLFLOW__REGISTERED_MODEL", "reload")
        assert run(stores, "-q", "train", "--model", "popularity") == 0
        assert run(stores, "-q", "train", "--model", "popularity", "--data-dir", str(stores["movies"])) == 0
        assert run(stores, "-q", "promote", "--version", "1") == 0
    proc, client = start(stores["cfg"], tmp_path / "serve.log", env=env)
    try:
        r = client.post("/admin/reload", json={"model": "2"})
        assert r.status_code == 409, r.text
        msg = r.json()["error"]
        assert msg.startswith("reload failed, still serving version 1: reload version 2 was trained on another data set (movies (")
        assert "only 0 of its 100 items" in msg
        body = client.post("/recommend", json={"user_id": "u00001", "k": 3}).json()
        assert body["model_version"] == "1" and len(body["items"]) == 3
        assert client.post("/admin/reload", json={"model": "1"}).status_code == 200
    finally:
        stop(proc)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


# ---- concurrent jobs on a fresh default store ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_concurrent_training_jobs_share_a_fresh_store(tmp_path: Path) -> None:
    # Two `storerec train` at once on a new sqlite:///mlruns/mlflow.db crashed at least one of
    # them every time (tables created twice, migrations interleaved), and could leave the store
    # half-migrated for good. Four at once must all register, with distinct numbers.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREREC", "MLFLOW_"))}
    env["STOREREC_TEST_SESSION"] = os.environ.get("STOREREC_TEST_SESSION", "")
    cli = [sys.executable, "-m", "storerec.cli", "-q"]
    subprocess.run([*cli, "simulate", *SMALL], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    jobs = [subprocess.Popen([*cli, "train", "--model", "popularity"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(*job.communicate(timeout=600),) for job in jobs]
    results = [(job.returncode, out, err) for job, (out, err) in zip(jobs, results)]
    for code, _out, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err
    numbers = sorted(int(out.split("registered as version ")[1].split(";")[0]) for _, out, _ in results)
    assert numbers == [1, 2, 3, 4]
    assert (tmp_path / "mlruns" / "mlflow.db.lock").exists()
    # later commands work on the store
    models = subprocess.run([*cli, "models"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert models.returncode == 0, models.stderr
    assert [line.split()[0] for line in models.stdout.splitlines()[2:6]] == ["4", "3", "2", "1"]
    promote = subprocess.run([*cli, "promote", "--version", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert promote.returncode == 0 and "storerec-data@champion -> version 3" in promote.stdout, promote.stderr
