"""The real service in a subprocess: start ``storerec serve``, wait until it is ready, stop it.

One implementation for everything that runs the service as its users do (the serving benchmark,
the soak, the fuzzer, the recorded-request check and the end-to-end tests):

* :func:`start` runs ``storerec --config CFG serve --port PORT`` (a free port unless given) in a
  process group of its own, appending its output to a log file, and returns once ``GET /readyz``
  answers 200 (or raises with the end of the log); the admin token it printed, if it made one, is
  read back from the log;
* :func:`stop` signals the process group and waits for the arbiter **and every worker**: BentoML
  starts each worker in a session of its own, so they are found from ``/proc`` before the signal
  (a SIGKILL of the arbiter reaches them only through their watchdog, serving/watchdog.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from storerec.serving.launch import admin_token_from_log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...), from ``/proc``."""
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


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Served:
    """A running ``storerec serve``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    admin_token: str | None  # the one `storerec serve` made and printed (None when the config sets one)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client on the service, sending the printed admin token if there is one."""
        headers = {"x-admin-token": self.admin_token} if self.admin_token else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> list[int]:
        return stop(self.proc, sig, timeout)


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    """Poll ``GET /readyz`` on ``port`` until it answers 200 (True), ``proc`` exits or ``timeout``
    seconds pass (False; the caller stops it)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as probe:
        while time.monotonic() < deadline:
            try:
                if probe.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                return False
            time.sleep(0.3)
    return False


def start(cfg: Path, log_path: Path, *, port: int | None = None, env: dict[str, str] | None = None,
          timeout: float = 120.0, append: bool = True) -> Served:
    """``storerec --config cfg serve`` on ``port`` (default: a free one), with ``env`` added to
    the environment; returns once ``GET /readyz`` answers 200. Raises :class:`RuntimeError` with
    the end of the log if it exits or is not ready within ``timeout`` seconds (then it is stopped)."""
    port = port or free_port()
    log_path = Path(log_path)
    offset = log_path.stat().st_size if append and log_path.exists() else 0  # earlier starts may be in the log
    with open(log_path, "ab" if append else "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storerec.cli", "--config", str(cfg), "serve", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})},
        )
    if wait_ready(proc, port, timeout):
        with open(log_path, "rb") as f:
            f.seek(offset)
            token = admin_token_from_log(f.read().decode(errors="replace"))
        return Served(proc, port, log_path, token)
    stop(proc)
    raise RuntimeError(f"the service did not become ready (exit status {proc.poll()}); log {log_path}:\n"
                       + log_path.read_text(errors="replace")[-4000:])


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> list[int]:
    """Send ``sig`` to the service's process group (``storerec serve``, exec'd into the BentoML
    arbiter) and wait until the arbiter and every worker are gone. Returns the workers still
    running ``timeout`` seconds after the arbiter stopped (they are SIGKILLed; none is expected)."""
    tree = descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in tree if alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
