"""Shared fixtures: the built-in storefront, simulated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from storerec.settings import Settings


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default built-in store (5,000 users, 2,000 items, 300,000 events) with its profiles."""
    from features.profiles import build_profiles
    from features.simulate import simulate_store

    settings = Settings()
    data_dir = tmp_path_factory.mktemp("store")
    simulate_store(settings.simulate, settings.events, data_dir)
    build_profiles(settings, data_dir)
    return data_dir


# ---- the suite leaves nothing behind ------------------------------------------------------------
# At session start every process the tests start inherits a marker variable, and temporary
# folders go to a private TMPDIR. At session end any process still carrying the marker (other
# than pytest and its ancestors) is killed, and the session FAILS listing it; so does a new
# untracked file in the repository or a storerec-* folder left in the temporary directory. On
# a clean pass the private TMPDIR (with pytest's basetemp in it) is removed.

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
    }


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


def pytest_sessionstart(session: pytest.Session) -> None:
    import os
    import tempfile
    import uuid

    marker = uuid.uuid4().hex
    os.environ[SESSION_ENV] = marker
    root = Path(tempfile.gettempdir())
    _prune_failed_sessions(root)
    private = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
    lock = _lock(private)  # held while this session runs: no other session prunes the folder
    os.environ["TMPDIR"] = str(private)
    tempfile.tempdir = None  # re-read TMPDIR: this process, its children and pytest's basetemp use it
    _session.update(marker=marker, tmp=private, lock=lock, untracked=_untracked())


TMP_PREFIX = "pytest-storerec-"
KEEP_FAILED_SESSIONS = 3  # private TMPDIRs of failed sessions kept for a look, newest first


def _lock(folder: Path):
    import fcntl

    f = open(folder / ".session.lock", "w")
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


@pytest.fixture(params=["sqlite", "postgresql"])
def eventlog_url(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty event log database: a SQLite file under tmp_path, or a new PostgreSQL database
    dropped afterwards (skips when no server answers at 127.0.0.1:5432)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    from tests._pg import pg_available, pg_skip_reason, temp_database

    if not pg_available():
        pytest.skip(pg_skip_reason())
    with temp_database() as url:
        yield url
