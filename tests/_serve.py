"""The service for tests: in this process through its ASGI app (:func:`asgi_client`), or the real
``storerec serve`` in a subprocess (:func:`start`, :func:`stop`; storerec/tools/serve_proc.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from storerec.tools.bench_serve import with_control_store
from storerec.tools.serve_proc import alive, descendants, free_port, rss_mb
from storerec.tools.serve_proc import start as start_served
from storerec.tools.serve_proc import stop as stop_served

if TYPE_CHECKING:
    from starlette.testclient import TestClient

__all__ = ["alive", "asgi_client", "descendants", "free_port", "rss_mb", "start", "stop", "write_config"]


def small_store(data: Path) -> str:
    """The ``[data]`` and ``[simulate]`` settings of the small store the end-to-end tests train on
    (300 users, 200 items, 20,000 events in ``data``)."""
    return f'[data]\ndir = "{data}"\n[simulate]\nn_users = 300\nn_items = 200\nn_events = 20000\n'


def write_config(root: Path, store: Path, extra: str = "", eventlog: str = "") -> Path:
    """``root/storerec.toml`` on the store at ``store`` with a private MLflow store and event log
    under ``root``; ``eventlog`` adds lines to the ``[eventlog]`` section, ``extra`` more sections.
    The workers' control store (``serving.control_url``) goes under ``root`` too, added to the
    ``[serving]`` section of ``extra`` when it has one."""
    cfg = root / "storerec.toml"
    extra = with_control_store(extra, root)
    cfg.write_text(
        f"""
[data]
dir = "{store}"
[mlflow]
tracking_uri = "sqlite:///{root / 'mlflow.db'}"
artifact_root = "{root / 'artifacts'}"
[eventlog]
url = "sqlite:///{root / 'events.db'}"
{eventlog}
{extra}
"""
    )
    return cfg


def start(cfg: Path, log_path: Path, port: int | None = None, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, httpx.Client]:
    """``storerec --config cfg serve`` on a free port (``env``: extra environment variables);
    returns once /readyz answers 200, with a client that sends the printed admin token if any."""
    try:
        served = start_served(cfg, log_path, port=port, env=env)
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None
    return served.proc, served.client()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop the service's process group and wait for every worker; a worker still running
    ``timeout`` s after the arbiter stopped is killed and fails the test."""
    left = stop_served(proc, sig, timeout)
    assert not left, f"service processes still running {timeout:.0f} s after the arbiter stopped (killed now): {left}"


@contextmanager
def asgi_client(cfg: Path, env: dict[str, str] | None = None) -> Iterator[TestClient]:
    """The service in this process: BentoML's ASGI app of ``StoreRec`` (``to_asgi()``: the gate,
    the endpoints, the mounted status app, BentoML's routes) behind Starlette's test client,
    started (the lifespan runs the service's ``__init__``, which reads the settings from
    ``cfg``) and stopped around the block. Like ``storerec serve``, the event log schema is
    created first. ``env``: more variables (e.g. ``STOREREC__...`` settings), set only while it
    starts."""
    from starlette.testclient import TestClient

    from storerec.cli.eventlog import prepare_for_serving
    from storerec.core.settings import load_settings
    from storerec.serving.launch import OVERRIDES_VAR, SERVICE_NAME
    from storerec.serving.service import StoreRec

    # BentoML's metrics register in prometheus' process-wide registry: a second app in this
    # process would register them twice (GET /metrics is tested on the real service)
    no_metrics = {"services": {SERVICE_NAME: {"metrics": {"enabled": False}}}}
    variables = {"STOREREC_CONFIG": str(cfg), "OTEL_SDK_DISABLED": "true", OVERRIDES_VAR: json.dumps(no_metrics), **(env or {})}
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:  # the variables only while it starts: subprocesses started meanwhile (a real service) must not see them
        prepare_for_serving(load_settings())
        client = TestClient(StoreRec.to_asgi())
        client.__enter__()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


@contextmanager
def sqlite_locked(db: Path | str) -> Iterator[None]:
    """Another connection holds an exclusive lock on the SQLite database ``db`` for the body (a
    locked event log); released, and its thread joined, on the way out."""
    import sqlite3
    import threading

    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(60)
        conn.execute("COMMIT")
        conn.close()

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert locked.wait(30), f"could not lock {db}"
        yield
    finally:
        release.set()
        t.join(60)

