"""The Bento (issue #14 items 1-2): a registered version carries its serving snapshot, `storerec
build` makes a Bento, and `bentoml serve <tag>` answers /recommend from a folder with no data/
and no mlruns/ (the model baked in, or pulled from the registry at start)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from storerec.cli import main
from storerec.core.settings import load_settings
from storerec.registry import tracking
from storerec.registry.snapshot import EVENT_COLUMNS, read_snapshot
from storerec.tools.serve_proc import wait_ready
from tests._serve import free_port, small_store, stop

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small store with one registered ALS version (champion) in a private SQLite registry, and
    a private BentoML home."""
    root = tmp_path_factory.mktemp("bento")
    cfg = root / "storerec.toml"
    cfg.write_text(
        f"""
{small_store(root / 'data')}
[mlflow]
tracking_uri = "sqlite:///{root / 'mlflow.db'}"
artifact_root = "{root / 'artifacts'}"
"""
    )
    for args in (["simulate"], ["features"], ["train", "--model", "als", "--param", "factors=8"], ["promote", "--version", "1"]):
        assert main(["--config", str(cfg), "-q", *args]) == 0, args
    return {"root": root, "cfg": cfg, "data": root / "data", "home": root / "bentoml"}


def _known_user(data: Path) -> str:
    """A user with purchases (a hot user: the model knows them, reasons like because_bought)."""
    ev = pl.read_parquet(data / "events.parquet")
    buyers = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return str(buyers["user_id"][0])


def test_a_registered_version_carries_its_serving_snapshot(env) -> None:
    settings = load_settings(env["cfg"], environ={})
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.registered_model_name(), "1")
    folder = tracking.download_version(client, version, env["root"] / "dl")
    try:
        snap = read_snapshot(folder)
        assert snap is not None and snap.profiles is not None and snap.events is not None
        events = pl.read_parquet(env["data"] / "events.parquet")
        assert tuple(snap.events.columns) == EVENT_COLUMNS and snap.events.height == events.height
        assert snap.profiles.height == pl.read_parquet(env["data"] / "profiles" / "users.parquet").height
        m = snap.manifest
        assert m["rows"]["events"] == events.height and m["rows"]["profiles"] == snap.profiles.height
        assert m["data_fingerprint"] == version.tags["data_fingerprint"] and m["as_of"] > str(events["timestamp"].max())[:10]
        meta = pq_compression(folder / "serving" / "events.parquet")
        assert meta == {"ZSTD"}
    finally:
        shutil.rmtree(env["root"] / "dl", ignore_errors=True)


def pq_compression(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    return {md.row_group(r).column(c).compression for r in range(md.num_row_groups) for c in range(md.num_columns)}


def _build(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    monkeypatch.setenv("BENTOML_HOME", str(env["home"]))
    capsys.readouterr()
    assert main(["--config", str(env["cfg"]), "build", *extra]) == 0
    out = capsys.readouterr()
    tag = out.out.strip().splitlines()[-1]
    assert tag.startswith("storerec:"), out
    return tag


def _serve(tag: str, home: Path, cwd: Path, log: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """``bentoml serve TAG`` in ``cwd`` with nothing of storerec's settings in the environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOREREC__", "STOREREC_CONFIG", "MLFLOW_"))}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "OTEL_SDK_DISABLED": "true", **(extra_env or {})})
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", tag, "--port", str(port)],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if wait_ready(proc, port, 120):
        return proc, port
    stop(proc)
    raise AssertionError(f"the Bento did not become ready (exit {proc.poll()}):\n{log.read_text(errors='replace')[-4000:]}")


def _recommend_with_reasons(port: int, user: str, version: str) -> None:
    r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == version and body["model"] == "als" and body["user_kind"] == "hot", body
    assert len(body["items"]) == 5 and all(item["reasons"] for item in body["items"]), body
    codes = {reason["code"] for item in body["items"] for reason in item["reasons"]}
    assert codes & {"because_bought", "because_viewed", "popular_in_your_category", "tier_also_bought"}, codes


def _clean_folder(tmp_path: Path) -> Path:
    clean = tmp_path / "clean"
    clean.mkdir()
    return clean


def test_bento_with_the_model_baked_in_serves_without_data_or_registry(env, tmp_path: Path, monkeypatch, capsys) -> None:
    tag = _build(env, monkeypatch, capsys, "--include-model")
    clean = _clean_folder(tmp_path)
    # nothing of the training side is reachable: the data folder and the registry are moved away
    hidden = env["root"].with_name(env["root"].name + "-hidden")
    env["root"].rename(hidden)
    try:
        proc, port = _serve(tag, hidden / "bentoml", clean, tmp_path / "serve.log")
        try:
            _recommend_with_reasons(port, _known_user(hidden / "data"), "1")
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
            assert ready["model_version"] == "1" and ready["event_log"] == {"enabled": False}
            time.sleep(2.5)  # an alias poll (serving.alias_poll_s): it must not ask MLflow
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["control"]["sync_error"] is None
        finally:
            stop(proc)
    finally:
        hidden.rename(env["root"])
    assert sorted(p.name for p in clean.iterdir()) == []  # nothing written where it was started
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log and "serving snapshot" in log


def test_bento_without_the_model_pulls_it_from_the_registry(env, tmp_path: Path, monkeypatch, capsys) -> None:
    tag = _build(env, monkeypatch, capsys)
    clean = _clean_folder(tmp_path)
    settings = load_settings(env["cfg"], environ={})
    proc, port = _serve(tag, env["home"], clean, tmp_path / "serve.log",
                        {"MLFLOW_TRACKING_URI": settings.mlflow.resolved_tracking_uri()})
    try:
        _recommend_with_reasons(port, _known_user(env["data"]), "1")
    finally:
        stop(proc)
    assert sorted(p.name for p in clean.iterdir()) == []
    assert "Traceback" not in (tmp_path / "serve.log").read_text(errors="replace")


def test_bento_labels_name_the_version(env, monkeypatch, capsys) -> None:
    tag = _build(env, monkeypatch, capsys, "--include-model", "--model", "champion")
    out = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "get", tag, "-o", "json"], capture_output=True, text=True,
                         env={**os.environ, "BENTOML_HOME": str(env["home"])}, timeout=60)
    assert out.returncode == 0, out.stderr
    labels = json.loads(out.stdout)["labels"]
    assert labels["storerec_baked_version"] == "1" and labels["storerec_model"] == "champion"


def test_containerize_needs_a_docker_daemon(env, monkeypatch, capsys) -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker daemon answers here (`docker info` fails: no /var/run/docker.sock); "
                    "`bentoml containerize` is documented in docs/deploy.md")
    tag = _build(env, monkeypatch, capsys, "--include-model")
    out = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "containerize", tag], capture_output=True, text=True,
                         env={**os.environ, "BENTOML_HOME": str(env["home"])}, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
