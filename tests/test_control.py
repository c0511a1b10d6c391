"""The control store and the per-worker sync (serving/control.py), without a service: fake
loads and a fake registry; and the orphan watchdog (serving/watchdog.py) in real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storerec.serving.control import ControlStore, ModelSync, absolute_url, is_alias, live_workers, service_key


def store(tmp_path: Path | str, name: str = "storerec@127.0.0.1:3000") -> ControlStore:
    """A control store on SQLite in ``tmp_path``, or on the database URL given instead."""
    return ControlStore(tmp_path if isinstance(tmp_path, str) else f"sqlite:///{tmp_path / 'control.db'}", name)


@pytest.fixture
def url(eventlog_url: str) -> str:
    """The same tests on each backend: the event-log fixture's throwaway SQLite file or
    PostgreSQL database (tests/conftest.py; skipped without a server)."""
    return eventlog_url


def test_publish_bumps_the_generation_per_service(url: str) -> None:
    a, b = store(url), store(url, "storerec@127.0.0.1:3001")
    assert a.read() is None and a.error is None
    assert a.publish("champion", "2") == 1
    assert a.publish("3", "3") == 2
    row = a.read()
    assert row is not None and (row.ref, row.version, row.generation) == ("3", "3", 2)
    assert b.read() is None and b.publish("champion", "1") == 1  # another service: its own row
    assert a.reset("champion", "4") == 3 and a.read().ref == "champion"  # type: ignore[union-attr]
    a.close()
    b.close()


def test_concurrent_publishes_never_share_a_generation(url: str) -> None:
    # (a generous timeout: the claim is "never the same generation twice", not speed on a loaded machine)
    stores = [ControlStore(url, "storerec@127.0.0.1:3000", timeout_s=10.0) for _ in range(4)]
    got: list[int | None] = []

    def run(s: ControlStore) -> None:
        for _ in range(5):
            got.append(s.publish("champion", "1"))

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 21))  # type: ignore[type-var]
    for s in stores:
        s.close()


def test_live_workers_are_those_with_a_recent_heartbeat(url: str) -> None:
    rows = [{"worker_id": "h:1", "heartbeat_at": 100.0}, {"worker_id": "h:2", "heartbeat_at": 98.4}, {"worker_id": "h:3", "heartbeat_at": 90.0}]
    assert [r["worker_id"] for r in live_workers(rows, 100.0, 1.5)] == ["h:1"]
    assert [r["worker_id"] for r in live_workers(rows, 100.0, 2.0)] == ["h:1", "h:2"]
    s = store(url)
    for pid in (11, 12):
        assert s.heartbeat({"worker_id": f"h:{pid}", "pid": pid, "follows": "champion", "generation": 1, "version": "1",
                            "started_at": time.time(), "last_error": None})
    assert [w["pid"] for w in s.workers()] == [11, 12]  # type: ignore[union-attr]
    s.remove_worker("h:11")
    assert [w["pid"] for w in s.workers()] == [12]  # type: ignore[union-attr]
    s.reset("champion", "1")  # a new start forgets earlier workers
    assert s.workers() == []
    s.close()


@pytest.mark.parametrize("url", ["sqlite:////proc/no-such-dir/control.db", "postgresql://nobody@127.0.0.1:1/none"])
def test_a_failing_store_never_raises(url: str) -> None:
    s = ControlStore(url, "storerec@h:1", timeout_s=0.5)
    t0 = time.monotonic()
    assert s.read() is None and s.publish("champion", "1") is None and s.workers() is None
    assert not s.heartbeat({"worker_id": "h:1", "pid": 1, "follows": "c", "generation": 0, "version": "1", "started_at": 0.0, "last_error": None})
    s.remove_worker("h:1")
    assert s.error and "control store" in s.error
    assert time.monotonic() - t0 < 10


def test_helpers() -> None:
    assert is_alias("champion") and is_alias("storerec@challenger")
    assert not is_alias("3") and not is_alias("storerec/3")
    assert service_key("storerec", "0.0.0.0", 3000) == "storerec@0.0.0.0:3000"
    assert absolute_url("sqlite:///eventlog/control.db") == f"sqlite:///{Path.cwd() / 'eventlog' / 'control.db'}"
    assert absolute_url("sqlite:////srv/c.db") == "sqlite:////srv/c.db"
    assert absolute_url("postgresql://u@h/db") == "postgresql://u@h/db"


class FakeWorker:
    """What a service gives ModelSync: states are dicts {ref: version}; the registry is a dict."""

    def __init__(self, registry: dict[str, str], broken: set[str] | None = None) -> None:
        self.registry = registry
        self.broken = broken or set()
        self.state: dict[str, str] = {}
        self.loads = 0

    def load(self, ref: str) -> dict[str, str]:
        self.loads += 1
        version = self.registry.get(ref, ref)
        if version in self.broken:
            raise RuntimeError(f"version {version} is corrupt")
        return {ref: version}

    def swap(self, state: dict[str, str]) -> None:
        self.state = state

    def resolve(self, ref: str) -> str:
        return self.registry[ref]

    def sync(self, s: ControlStore, **kw) -> ModelSync:
        self.state = self.load("champion")
        kw = {"sync_s": 0.05, "alias_poll_s": 0.05, **kw}
        return ModelSync(s, lock=threading.Lock(), load=self.load, swap=self.swap, versions=dict, resolve=self.resolve,
                         state=self.state, follows="champion", generation=0, **kw)


def test_a_newer_generation_reaches_the_other_worker(tmp_path: Path) -> None:
    registry = {"champion": "1"}
    w1, w2 = FakeWorker(registry), FakeWorker(registry)
    s1, s2 = w1.sync(store(tmp_path)), w2.sync(store(tmp_path))
    s2.worker_id = "other:2"  # both live in this process
    s1.heartbeat()
    s2.heartbeat()
    state, previous, gen = s1.reload("3")
    assert (state, previous, gen) == ({"3": "3"}, "1", 1) and w1.state == {"3": "3"}
    complete, workers, lagging = s1.wait_for(gen, 0.2)  # nobody moved worker 2 yet
    assert not complete and lagging == ["other:2"]
    s2.tick()
    assert w2.state == {"3": "3"} and s2.generation == 1 and s2.follows == "3"
    complete, workers, lagging = s1.wait_for(gen, 1.0)
    assert complete and not lagging and {w["model_version"] for w in workers} == {"3"}
    s2.tick()
    assert w2.loads == 2  # the same generation is not loaded twice


def test_an_alias_move_is_followed_without_a_new_generation(tmp_path: Path) -> None:
    registry = {"champion": "1"}
    w = FakeWorker(registry)
    s = w.sync(store(tmp_path))
    s.store.publish("champion", "1")
    s.tick()  # generation 1: same reference, loaded again
    assert s.generation == 1 and w.state == {"champion": "1"}
    registry["champion"] = "2"
    time.sleep(0.06)
    s.tick()
    assert w.state == {"champion": "2"} and s.version == "2" and s.generation == 1
    assert s.store.read().version == "2"  # type: ignore[union-attr]
    s.reload("2")  # pinned: no alias to follow any more
    registry["champion"] = "5"
    time.sleep(0.06)
    s.tick()
    assert w.state == {"2": "2"}


def test_a_failed_load_keeps_the_old_model_and_backs_off(tmp_path: Path) -> None:
    registry = {"champion": "1"}
    w = FakeWorker(registry, broken={"7"})
    s = w.sync(store(tmp_path), sync_s=1.0)  # first retry 2 s later
    s.store.publish("7", "7")
    s.tick()
    assert w.state == {"champion": "1"} and s.generation == 0 and "corrupt" in (s.error or "")
    loads = w.loads
    for _ in range(3):
        s.tick()  # within the backoff: no new attempt
    assert w.loads == loads
    assert s.status()["sync_error"] and s.status()["model_version"] == "1"
    w.broken.clear()
    s._next_try = 0.0
    s.tick()
    assert w.state == {"7": "7"} and s.generation == 1 and s.error is None
    with pytest.raises(RuntimeError):  # the reload endpoint gets the error; nothing changes
        w.broken.add("8")
        s.reload("8")
    assert w.state == {"7": "7"} and s.store.read().generation == 1  # type: ignore[union-attr]


def test_a_reload_stops_waiting_for_a_worker_that_cannot_load_it(tmp_path: Path) -> None:
    registry = {"champion": "1"}
    w1, w2 = FakeWorker(registry), FakeWorker(registry, broken={"4"})
    s1, s2 = w1.sync(store(tmp_path)), w2.sync(store(tmp_path), sync_s=1.0)
    s2.worker_id = "other:2"
    s1.heartbeat()
    _, _, gen = s1.reload("4")
    s2.tick()  # fails, backs off
    assert s2.failed_generation == gen and w2.state == {"champion": "1"}
    t0 = time.monotonic()
    complete, _, lagging = s1.wait_for(gen, 10.0)
    assert not complete and lagging == ["other:2"] and time.monotonic() - t0 < 1
    _, _, gen = s1.reload("1")  # a newer generation is tried at once, backoff or not
    s2.tick()
    assert s2.generation == gen and w2.state == {"1": "1"}


def test_a_start_replaces_tables_of_another_layout(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "control.db") as conn:
        conn.execute("CREATE TABLE workers (worker_id VARCHAR PRIMARY KEY, pid INTEGER)")
    s = store(tmp_path)
    assert s.reset("champion", "1") == 1 and s.error is None
    assert s.heartbeat({"worker_id": "h:1", "pid": 1, "follows": "champion", "generation": 1, "version": "1",
                        "started_at": 0.0, "last_error": None, "failed_generation": None})


def test_a_worker_keeps_serving_when_the_store_fails(tmp_path: Path) -> None:
    w = FakeWorker({"champion": "1"})
    s = w.sync(ControlStore("sqlite:////proc/no-such-dir/control.db", "x", timeout_s=0.2))
    s.tick()
    st = s.status()
    assert st["model_version"] == "1" and st["sync_error"] and st["workers"] == []
    state, _, gen = s.reload("2")
    assert state == {"2": "2"} and gen is None and w.state == {"2": "2"}


WATCHED = """
import os, sys, time
from pathlib import Path
from storerec.serving.watchdog import watch_parent
mark = Path(sys.argv[1])
watch_parent(lambda: mark.write_text("cleaned"), interval_s=0.1, grace_s=2.0, signal_on_death=None)
Path(sys.argv[2]).write_text(str(os.getpid()))
time.sleep(60)
"""

PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], start_new_session=True)
time.sleep(60)
"""


@pytest.mark.parametrize("pdeathsig", [False, True])
def test_an_orphaned_worker_cleans_up_and_exits(tmp_path: Path, pdeathsig: bool) -> None:
    """The parent is SIGKILLed; the child (in a session of its own, like a BentoML worker)
    notices, runs its cleanup and exits within seconds."""
    code = WATCHED if not pdeathsig else WATCHED.replace("signal_on_death=None", "signal_on_death=15")
    mark, pidfile = tmp_path / "mark", tmp_path / "pid"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, code, str(mark), str(pidfile)], cwd=Path(__file__).parents[1])
    try:
        deadline = time.time() + 30
        while not pidfile.exists() or not pidfile.read_text():
            assert time.time() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pidfile.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        t0 = time.time()
        while _alive(child) and time.time() - t0 < 10:
            time.sleep(0.05)
        assert not _alive(child), "the orphaned child is still running"
        if not pdeathsig:  # SIGTERM (default action) ends it at once, before any cleanup
            assert mark.read_text() == "cleaned"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if pidfile.exists() and pidfile.read_text() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
