"""Start and stop the real service (``storerec serve``) for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def write_config(root: Path, store: Path, extra: str = "", eventlog: str = "") -> Path:
    """``root/storerec.toml`` on the store at ``store`` with a private MLflow store and event log
    under ``root``; ``eventlog`` adds lines to the ``[eventlog]`` section, ``extra`` more sections.
    The workers' control store (``serving.control_url``) goes under ``root`` too, added to the
    ``[serving]`` section of ``extra`` when it has one."""
    cfg = root / "storerec.toml"
    control = f'control_url = "sqlite:///{root / "control.db"}"'
    if re.search(r"^\[serving\][ \t]*$", extra, flags=re.M):
        extra = re.sub(r"^\[serving\][ \t]*$", lambda m: f"[serving]\n{control}", extra, count=1, flags=re.M)
    else:
        extra = f"{extra}\n[serving]\n{control}\n"
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


def start(cfg: Path, log_path: Path, port: int | None = None, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, httpx.Client]:
    """``storerec --config cfg serve`` on a free port (``env``: extra environment variables);
    returns once /readyz answers 200."""
    port = port or free_port()
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storerec.cli", "--config", str(cfg), "serve", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                tokens = re.findall(r"admin token for this start .*: (\S+)", log_path.read_text())
                if tokens:  # made by `storerec serve` when the config sets none (the log may hold earlier starts)
                    client.headers["x-admin-token"] = tokens[-1]
                return proc, client
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    stop(proc)
    raise AssertionError("service did not become ready:\n" + log_path.read_text()[-4000:])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send ``sig`` to the service's process group (``storerec serve``, exec'd into the BentoML
    arbiter) and wait until the arbiter **and every worker** are gone. The workers run in
    sessions of their own, so a SIGKILL of the arbiter reaches them only through their
    watchdog (serving/watchdog.py): one still running after ``timeout`` s is killed and fails
    the test."""
    tree = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.time() + timeout
    while any(alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in tree if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"service processes still running {timeout:.0f} s after the arbiter stopped (killed now): {left}"
