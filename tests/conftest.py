"""Shared fixtures: the built-in storefront, simulated once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default built-in store (5,000 users, 2,000 items, 300,000 events) with its profiles."""
    from storerec.core.settings import Settings  # imported here: an xdist controller never needs storerec
    from storerec.features.profiles import build_profiles
    from storerec.features.simulate import simulate_store

    settings = Settings()
    data_dir = tmp_path_factory.mktemp("store")
    simulate_store(settings.simulate, settings.events, data_dir)
    build_profiles(settings, data_dir)
    return data_dir


# ---- parallel runs (pytest-xdist: `make test` runs `-n 2 --dist loadgroup`) ---------------------
# Work units: a test that uses a module-, class- or package-scoped fixture (a trained model, a
# running service) goes with the rest of its module, so that fixture is built once, on one
# worker; a test marked xdist_group(name) goes with that group; every other test is a unit of
# its own. Units are handed out heaviest first (a slow or e2e test weighs 10, any other 1), so
# the many quick tests at the end fill the gaps and both workers finish together.
#
# xdist's own loadgroup (it appends "@group" to the node id) does nothing with pytest >= 9.2,
# whose node ids are structured (pytest-xdist issue #1386), so the grouping is done here: each
# worker writes {node id: unit} to the session's private TMPDIR (the controller passes its path
# in workerinput) before it reports its collection, and the controller's scheduler (xdist's
# loadscope with that unit per test) reads it.

_SHARED_SCOPES = {"module", "class", "package"}
_UNITS_FILE = "xdist-units-{}.json"
_UNITS_KEY = "storerec_units_folder"


def _unit_of(item: pytest.Item) -> str | None:
    for mark in item.iter_markers("xdist_group"):
        return "group:" + str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(fixturedefs[-1].scope in _SHARED_SCOPES for fixturedefs in defs if fixturedefs):
        return "module:" + item.nodeid.split("::", 1)[0]
    return None


@pytest.hookimpl(trylast=True)  # after deselection (-m, -k) and pytest's own reordering by fixture scope
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import json

    folder = getattr(config, "workerinput", {}).get(_UNITS_KEY)  # set by the controller (below) under loadgroup
    if folder is None:
        return
    unit = {item.nodeid: _unit_of(item) or item.nodeid for item in items}
    weight: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        heavy = item.get_closest_marker("slow") or item.get_closest_marker("e2e")
        weight[unit[item.nodeid]] = weight.get(unit[item.nodeid], 0) + (10 if heavy else 1)
        first.setdefault(unit[item.nodeid], i)
    # heaviest unit first, each unit's tests together in pytest's order (every worker sorts alike)
    items.sort(key=lambda item: (-weight[unit[item.nodeid]], first[unit[item.nodeid]]))
    path = Path(folder) / _UNITS_FILE.format(config.workerinput["workerid"])  # type: ignore[attr-defined]
    path.with_suffix(".tmp").write_text(json.dumps({item.nodeid: unit[item.nodeid] for item in items}))
    path.with_suffix(".tmp").replace(path)


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which makes `-n N` alone mean `--dist load`
def pytest_cmdline_main(config: pytest.Config) -> None:
    """`pytest -n N` without --dist schedules as `make test` does (units above)."""
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "no") == "no":
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)  # the xdist hooks: plain pytest without xdist never calls them
def pytest_configure_node(node: Any) -> None:  # node: an xdist WorkerController
    """Tell each worker where to write its units (the session's private TMPDIR)."""
    if node.config.getoption("dist") == "loadgroup" and _session:
        node.workerinput[_UNITS_KEY] = str(_session["tmp"])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:  # an xdist scheduler, or None: xdist's own
    if config.getoption("dist") != "loadgroup" or not _session:
        return None
    import json

    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the workers' order: heaviest unit first
    tmp: Path = _session["tmp"]

    class UnitScheduling(LoadScopeScheduling):
        units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # every worker has reported its collection (and so written its file) by now
                self.units = {}
                for path in sorted(tmp.glob(_UNITS_FILE.format("*"))):
                    self.units.update(json.loads(path.read_text()))
            return self.units.get(nodeid, nodeid)

    return UnitScheduling(config, log)


# ---- the suite leaves nothing behind ------------------------------------------------------------
# At session start every process the tests start inherits a marker variable, and temporary
# folders go to a private TMPDIR. At session end any process still carrying the marker (other
# than pytest and its ancestors) is killed, and the session FAILS listing it; so does a new
# untracked file in the repository, a storerec-* folder left in the temporary directory or a
# PostgreSQL database of this session's left on the server (tests/_pg.py). On a clean pass the
# private TMPDIR (with pytest's basetemp in it) is removed.
#
# Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) all of this happens in the
# controller only: it sets the marker and TMPDIR before it starts the workers, which inherit
# both (so everything a worker's tests start carries the controller's marker, and every worker's
# basetemp lies inside the private TMPDIR); a worker does none of it. The controller checks once
# every worker has finished and xdist has shut the workers down, so the check covers all
# workers' tests, including processes orphaned when their parent exited.

SESSION_ENV = "STOREREC_TEST_SESSION"
_REPO = Path(__file__).resolve().parents[1]
_session: dict = {}


def _untracked() -> set[str] | None:
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=_REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {
        line[3:] for line in out.stdout.splitlines()
        if line.startswith("??") and ".pytest_cache/" not in line and "__pycache__/" not in line
    } | _outputs()


OUTPUT_DIRS = ("reports", "data", "mlruns", "eventlog", "bench-out")  # ignored by git: what the chain and benchmarks write


def _outputs() -> set[str]:
    """Entries two levels deep in the repository's ignored output folders (``reports/evaluation-*``,
    ``data-*/...``): git does not list them, and a test must not write there either."""
    found: set[str] = set()
    for top in _REPO.iterdir():
        if top.is_dir() and (top.name in OUTPUT_DIRS or top.name.startswith("data-")):
            found.add(f"{top.name}/")
            for entry in top.iterdir():
                found.add(f"{top.name}/{entry.name}")
    return found


def _ancestors() -> set[int]:
    import os

    pids, pid = {os.getpid()}, os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        pids.add(pid)
    return pids


def _marked_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose environment carries this session's marker."""
    import os

    needle = f"{SESSION_ENV}={marker}".encode()
    found = []
    mine = _ancestors()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone, or not ours to read
        found.append((int(entry), cmd))
    return found


def _xdist_worker(config: pytest.Config) -> bool:
    """This process is a pytest-xdist worker (the controller made the session's marker and TMPDIR)."""
    return hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    import os
    import tempfile
    import uuid

    if _xdist_worker(session.config):
        if not os.environ.get(SESSION_ENV):
            raise pytest.UsageError(f"xdist worker without {SESSION_ENV}: the controller did not load tests/conftest.py")
        return
    marker = uuid.uuid4().hex
    os.environ[SESSION_ENV] = marker
    root = Path(tempfile.gettempdir())
    _prune_failed_sessions(root)
    private = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    lock = _lock(private)  # held while this session runs: no other session prunes the folder
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = None  # re-read TMPDIR: this process, its children and pytest's basetemp use it
    # BentoML's home (Bentos built by the tests, each served port's metrics folder, which a killed
    # server leaves behind) goes with the session's folder, not into ~/bentoml
    os.environ["BENTOML_HOME"] = str(private / "bentoml")
    _session.update(marker=marker, tmp=private, lock=lock, untracked=_untracked())


TMP_PREFIX = "pytest-storerec-"
KEEP_FAILED_SESSIONS = 3  # private TMPDIRs of failed sessions kept for a look, newest first


def _lock(folder: Path):
    import fcntl

    f = open(folder / ".session.lock", "w")  # noqa: SIM115 - left open: the lock is held as long as the file is
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def _prune_failed_sessions(root: Path) -> None:
    """Remove the private TMPDIRs of earlier failed sessions but the newest few (a folder whose
    session still runs is locked and left alone)."""
    import shutil
    import time

    old = sorted(root.glob(TMP_PREFIX + "*"), key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    for folder in old[KEEP_FAILED_SESSIONS:]:
        try:
            if not (folder / ".session.lock").exists() and time.time() - folder.stat().st_mtime < 6 * 3600:
                continue  # no lock file to tell whether its session still runs: left alone for a while
            lock = _lock(folder)
        except OSError:
            continue  # a session running now (or not ours to touch)
        shutil.rmtree(folder, ignore_errors=True)
        lock.close()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os
    import shutil
    import signal
    import time

    if not _session:
        return
    problems: list[str] = []
    if os.path.isdir("/proc"):
        left = _marked_processes(_session["marker"])
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        problems += [f"process left running (killed now): pid {pid}: {cmd}" for pid, cmd in left]
        if left:
            time.sleep(0.5)
    before, after = _session["untracked"], _untracked()
    if before is not None and after is not None:
        problems += [f"new untracked file in the repository: {path}" for path in sorted(after - before)]
    tmp: Path = _session["tmp"]
    problems += [f"temporary folder left behind: {p}" for p in sorted(tmp.glob("storerec-*"))]
    if (tmp / "postgresql-used").exists():  # tests._pg.USED: a test made a PostgreSQL database
        from tests._pg import leftover_databases

        try:
            problems += [f"PostgreSQL database left behind (dropped now): {name}" for name in leftover_databases(_session["marker"])]
        except Exception as exc:  # the server went away: say so, the session cannot be called clean
            problems.append(f"PostgreSQL databases not checked: {type(exc).__name__}: {exc}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        lines = ["the test session left things behind (session FAILED):", *problems, f"(temporary files kept in {tmp})"]
        if reporter is not None:
            reporter.section("leftovers", sep="=", red=True, bold=True)
            for line in lines:
                reporter.write_line(line, red=True)
        else:
            print("\n".join(lines))
    elif session.exitstatus == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _session["lock"].close()


# ---- the event log's backends (one suite, SQLite and PostgreSQL; helpers in tests/_pg.py) -------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def eventlog_url(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty event log database: a SQLite file under tmp_path, or a new PostgreSQL database
    dropped afterwards (skips when no server answers at 127.0.0.1:5432). The PostgreSQL runs are
    marked slow: the fast tier checks the event log on SQLite, `make test` on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    from tests._pg import pg_available, pg_skip_reason, temp_database

    if not pg_available():
        pytest.skip(pg_skip_reason())
    with temp_database() as url:
        yield url
