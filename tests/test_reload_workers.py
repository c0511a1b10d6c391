"""End to end with ``serving.workers = 2``: two workers start (`storerec serve` passes the count,
the access log and the metrics switch to BentoML, serving/launch.py), a reload and an alias move
reach every worker, a reload leaves no temporary folder, and a SIGKILL of the arbiter takes the
workers down with it and frees the port (serving/control.py, serving/watchdog.py). One service for the module; requests go over new
connections each, so both workers take some, and the test checks which worker answered each
one (the server end of the connection, found in /proc)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from storerec.cli import main
from storerec.core.settings import load_settings
from storerec.serving.control import ControlStore, service_key
from tests._serve import alive, descendants, start, stop, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = {"x-admin-token": "s3cret"}


@pytest.fixture(scope="module")
def svc(store: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("reload-workers")
    svc_tmp = root / "tmp"  # the service's TMPDIR: a reload that leaves a folder shows here
    svc_tmp.mkdir()
    cfg = write_config(root, store, extra='[serving]\nworkers = 2\naccess_log = true\nadmin_token = "s3cret"')
    for args in (["train", "--model", "popularity"], ["train", "--model", "popularity"], ["promote", "--version", "1"]):
        assert main(["--config", str(cfg), "-q", *args]) == 0
    proc, client = start(cfg, root / "serve.log", env={"TMPDIR": str(svc_tmp)})
    port = int(str(client.base_url).rstrip("/").rsplit(":", 1)[1])
    state = {"proc": proc, "client": client, "cfg": cfg, "root": root, "tmp": svc_tmp, "port": port,
             "settings": load_settings(cfg, environ={})}
    deadline = time.time() + 120
    while len(workers_seen(state)) < 2:  # /readyz answers as soon as one worker is up
        assert time.time() < deadline, (root / "serve.log").read_text()[-3000:]
        time.sleep(0.3)
    yield state
    stop(state["proc"])


def workers_seen(svc) -> list[dict]:
    return svc["client"].get("/readyz").json()["control"]["workers"]


def worker_pids(svc) -> set[int]:
    return set(descendants(svc["proc"].pid))


def _server_pid(port: int, client_port: int, pids: set[int]) -> int | None:
    """The worker holding the server end of the connection from ``client_port``."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            local, remote = cols[1].split(":"), cols[2].split(":")
            if int(local[1], 16) == port and int(remote[1], 16) == client_port:
                inode = cols[9]
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


def recommend_fresh(svc, n: int = 60) -> list[tuple[str, int | None]]:
    """``n`` /recommend calls, each on a new connection: (model_version, worker pid) per call."""
    pids = worker_pids(svc)
    out = []
    for i in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", svc["port"], timeout=30)
        try:
            conn.connect()
            client_port = conn.sock.getsockname()[1]
            conn.request("POST", "/recommend", json.dumps({"user_id": f"u{i + 1:05d}", "k": 3}), {"content-type": "application/json"})
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == 200, body
            out.append((body["model_version"], _server_pid(svc["port"], client_port, pids)))
        finally:
            conn.close()
    return out


def test_reload_reaches_every_worker(svc) -> None:
    pids = worker_pids(svc)
    assert len(pids) == 2 and {w["pid"] for w in workers_seen(svc)} == pids
    before = recommend_fresh(svc, 20)
    assert {v for v, _ in before} == {"1"}
    t0 = time.perf_counter()
    r = svc["client"].post("/admin/reload", json={"model": "2"}, headers=TOKEN)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    body = r.json()
    print(f"reload to version 2 on 2 workers answered (complete) in {took:.2f} s")
    assert body["model_version"] == "2" and body["previous_version"] == "1" and body["follows"] == "2"
    assert body["complete"] is True and body["lagging"] == [] and body["sync_error"] is None
    assert {w["pid"] for w in body["workers"]} == pids
    assert all(w["generation"] == body["generation"] and w["model_version"] == "2" for w in body["workers"])
    served = recommend_fresh(svc)
    assert {v for v, _ in served} == {"2"}, served
    assert {p for _, p in served} == pids, f"60 new connections did not reach both workers: {served}"
    ready = [svc["client"].get("/readyz").json()["control"] for _ in range(10)]
    assert all(c["generation"] == body["generation"] and c["model_version"] == "2" for c in ready)


def test_a_bad_version_changes_no_worker(svc) -> None:
    r = svc["client"].post("/admin/reload", json={"model": "99"}, headers=TOKEN)
    assert r.status_code == 404 and "still serving version 2" in r.text  # no such version (409: one that cannot be loaded)
    assert {v for v, _ in recommend_fresh(svc, 20)} == {"2"}


def test_an_alias_move_reaches_every_worker(svc) -> None:
    r = svc["client"].post("/admin/reload", json={}, headers=TOKEN)  # follow champion (version 1) again
    assert r.status_code == 200 and r.json()["follows"] == "champion" and r.json()["complete"], r.text
    assert {v for v, _ in recommend_fresh(svc, 20)} == {"1"}
    settings = svc["settings"]
    control = ControlStore(settings.serving.control_url, service_key(settings.registered_model_name(), "127.0.0.1", svc["port"]))
    t_start = time.perf_counter()
    assert main(["--config", str(svc["cfg"]), "-q", "promote", "--version", "2"]) == 0
    t_moved = time.perf_counter()
    while True:
        rows = control.workers() or []
        if len(rows) == 2 and all(w["version"] == "2" for w in rows):
            break
        assert time.perf_counter() - t_moved < 30, rows
        time.sleep(0.05)
    took = time.perf_counter() - t_moved
    print(f"alias move reached both workers {took:.2f} s after `storerec promote` returned "
          f"(promote itself took {t_moved - t_start:.2f} s; alias_poll_s = {settings.serving.alias_poll_s})")
    assert took < 10
    served = recommend_fresh(svc)
    assert {v for v, _ in served} == {"2"} and {p for _, p in served} == worker_pids(svc), served
    control.close()


def test_reloads_leave_no_temporary_folder(svc) -> None:
    for ref in ("1", "2"):
        assert svc["client"].post("/admin/reload", json={"model": ref}, headers=TOKEN).json()["complete"]
    assert not list(svc["tmp"].glob("storerec-*")), list(svc["tmp"].iterdir())


def test_load_removes_its_download_folder(svc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storerec.serving.state import load

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for ref in ("1", "2", "champion", "1"):
        loaded = load(svc["settings"], ref)
        assert loaded.ranker.n > 0
    assert list(tmp_path.iterdir()) == []


def test_the_process_options_reach_bentoml(svc) -> None:
    """serving.access_log = true in this module's config: BentoML's access lines are in the log
    (test_http.py shows none with it off); serving.metrics is on by default: GET /metrics answers."""
    c = svc["client"]
    assert c.post("/recommend", json={"user_id": "u00001", "k": 3}).status_code == 200
    assert c.get("/metrics").status_code == 200
    log = svc["root"] / "serve.log"
    deadline = time.time() + 10
    while "(scheme=http,method=POST,path=/recommend" not in log.read_text():
        assert time.time() < deadline, "no access log line although serving.access_log = true:\n" + log.read_text()[-2000:]
        time.sleep(0.2)


def test_metrics_are_this_services_own(svc) -> None:
    """Another BentoML server starting on the machine empties BentoML's shared metrics folder;
    this service keeps its counters in a folder of its own (serving/arbiter.py)."""
    import re
    import subprocess
    import sys

    from storerec.serving.arbiter import prometheus_dir

    c = svc["client"]

    def served() -> float:
        text = c.get("/metrics").text
        return sum(float(m) for m in re.findall(r'^bentoml_service_request_total\{[^}]*endpoint="/recommend"[^}]*\} ([\d.e+]+)$', text, re.M))

    for _ in range(3):
        assert c.post("/recommend", json={"user_id": "u00001", "k": 3}).status_code == 200
    before = served()
    assert before >= 3
    folder = prometheus_dir("127.0.0.1", svc["port"])
    assert folder.is_dir() and any(folder.glob("*.db")), f"no metrics files in {folder}"
    wiped = subprocess.run([sys.executable, "-c", "from bentoml.serving import ensure_prometheus_dir; print(ensure_prometheus_dir())"],
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert Path(wiped) != folder  # what another `bentoml serve` empties at its start
    assert c.post("/recommend", json={"user_id": "u00001", "k": 3}).status_code == 200
    assert served() >= before + 1, "the counters were lost when another BentoML server started"


def test_a_hard_kill_of_the_arbiter_takes_the_workers_down(svc) -> None:
    """SIGKILL of `storerec serve` alone (not its process group): the workers notice and exit;
    the port is free for the next start."""
    proc = svc["proc"]
    tree = descendants(proc.pid)
    assert len(tree) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    t0 = time.perf_counter()
    while any(alive(p) for p in tree) and time.perf_counter() - t0 < 10:
        time.sleep(0.05)
    took = time.perf_counter() - t0
    left = [p for p in tree if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} still running 10 s after the arbiter was killed"
    print(f"both workers exited {took:.2f} s after the arbiter was SIGKILLed")
    with socket.socket() as s:  # the port is free for the next start (no "Address already in use")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does; a listener still refuses it
        s.bind(("127.0.0.1", svc["port"]))
    from storerec.serving.arbiter import prometheus_dir

    folder = prometheus_dir("127.0.0.1", svc["port"])  # a killed server leaves its metrics folder (the next start empties it)
    shutil.rmtree(folder, ignore_errors=True)
