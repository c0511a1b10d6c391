"""Start and stop the real service (``storerec serve``) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def write_config(root: Path, store: Path, extra: str = "", eventlog: str = "") -> Path:
    """``root/storerec.toml`` on the store at ``store`` with a private MLflow store and event log
    under ``root``; ``eventlog`` adds lines to the ``[eventlog]`` section, ``extra`` more sections."""
    cfg = root / "storerec.toml"
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cfg: Path, log_path: Path, port: int | None = None) -> tuple[subprocess.Popen, httpx.Client]:
    """``storerec --config cfg serve`` on a free port; returns once /readyz answers 200."""
    port = port or free_port()
    log = open(log_path, "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "storerec.cli", "--config", str(cfg), "serve", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return proc, client
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise AssertionError("service did not become ready:\n" + log_path.read_text()[-4000:])


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
