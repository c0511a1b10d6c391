"""What every worker of one service should serve, shared between the worker processes.

BentoML runs ``serving.workers`` separate processes behind one port, so a reload, or anything a
worker decides, reaches only that worker. This small store (any SQLAlchemy URL,
``serving.control_url``; SQLite in WAL mode by default, ``eventlog/control.db``) keeps

* ``control``: one row per service (registered model @ host:port) with the model reference it
  follows (an alias such as ``champion``, or a pinned version number), the version that
  reference resolved to when the row was written, and a **generation** that every reload bumps;
* ``workers``: one row per worker process (``host:pid``) with the generation it applied, the
  version it serves, a heartbeat and its last sync error.

Each worker runs a :class:`ModelSync` thread: every ``serving.sync_ms`` it heartbeats and, when
the generation is newer than the one it applied, loads that reference and swaps it in; every
``serving.alias_poll_s`` it also resolves the aliases it follows in the registry and reloads when
one moved (``storerec promote``), so an alias move reaches every worker without a reload call.
``POST /admin/reload`` loads in its own worker, publishes a new generation and waits until every
live worker reports it (:meth:`ModelSync.wait_for`).

The tables are ephemeral runtime state, created with ``create_all`` (no migrations): deleting
the file while the service is stopped loses nothing. ``storerec serve`` resets its service's
row at start, so a restart serves what it was started with. Nothing here may break serving:
every statement is bounded (short busy/connect timeouts), and a failure is kept in ``error``
(shown by ``GET /readyz``), never raised to a request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("storerec.serving.control")

metadata = sa.MetaData()

control = sa.Table(
    "control",
    metadata,
    sa.Column("service", sa.String(300), primary_key=True),  # registered model @ host:port
    sa.Column("ref", sa.String(200), nullable=False),  # alias to follow, or a pinned version number
    sa.Column("version", sa.String(50)),  # what ref resolved to when the row was written
    sa.Column("generation", sa.Integer, nullable=False),  # bumped by every reload
    sa.Column("updated_at", sa.Float, nullable=False),  # unix seconds
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.String(300), primary_key=True),  # host:pid
    sa.Column("service", sa.String(300), nullable=False, index=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("follows", sa.String(200)),
    sa.Column("generation", sa.Integer, nullable=False),  # generation applied
    sa.Column("version", sa.String(50)),  # version served
    sa.Column("started_at", sa.Float, nullable=False),  # unix seconds
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("failed_generation", sa.Integer),  # the newest generation it could not load, if any
)

STALE_WORKER_S = 600.0  # worker rows without a heartbeat for this long are deleted


def service_key(registered_model: str, host: str, port: int) -> str:
    """The control row of one service: what it serves and where (two services on one machine
    sharing a control store do not steer each other)."""
    return f"{registered_model}@{host}:{port}"


def worker_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def absolute_url(url: str) -> str:
    """``url`` with a relative SQLite path made absolute (against the current directory), so
    worker processes started elsewhere open the same file."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and not path.startswith("/"):
            return "sqlite:///" + str(Path(path).resolve())
    return url


def is_alias(ref: str) -> bool:
    """True for a moving reference (``champion``, ``storerec@challenger``), False for a pinned
    version (``3``, ``storerec/3``)."""
    what = ref.partition("@")[2] or ref.partition("/")[2] or ref
    return not what.isdigit()


@dataclass(frozen=True)
class ControlRow:
    ref: str
    version: str | None
    generation: int
    updated_at: float


def live_workers(rows: list[dict[str, Any]], now: float, max_age_s: float) -> list[dict[str, Any]]:
    """Workers whose last heartbeat is at most ``max_age_s`` old."""
    return [r for r in rows if now - float(r["heartbeat_at"]) <= max_age_s]


def _make_engine(url: str, timeout_s: float) -> sa.Engine:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": timeout_s})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # runtime state: a lost last write is re-sent next tick
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith(("postgresql", "postgres")):
        ms = int(timeout_s * 1000)
        connect_args = {"connect_timeout": max(1, int(timeout_s)), "options": f"-c statement_timeout={ms} -c lock_timeout={ms}"}
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, pool_timeout=timeout_s, connect_args=connect_args)


class ControlStore:
    """The control tables of one service. No method raises: a failure returns ``None`` (or
    ``False``) and leaves its reason in :attr:`error` until the next call that succeeds."""

    def __init__(self, url: str, service: str, *, timeout_s: float = 1.0) -> None:
        self.url = url
        self.service = service
        self.timeout_s = timeout_s
        self.error: str | None = None
        self._engine: sa.Engine | None = None
        self._ready = False
        self._mutex = threading.Lock()

    def _get_engine(self) -> sa.Engine:
        with self._mutex:
            if self._engine is None:
                self._engine = _make_engine(self.url, self.timeout_s)
            for attempt in range(3):
                if self._ready:
                    break
                try:
                    metadata.create_all(self._engine)
                    self._ready = True
                except sa.exc.DBAPIError:
                    # another worker created them at the same moment ("already exists"): fine once they are there
                    if {"control", "workers"} <= set(sa.inspect(self._engine).get_table_names()):
                        self._ready = True
                    elif attempt == 2:
                        raise
                    else:
                        time.sleep(0.1)
            return self._engine

    def _run(self, what: str, fn: Callable[[sa.Connection], Any]) -> Any:
        try:
            with self._get_engine().begin() as conn:
                out = fn(conn)
        except Exception as exc:  # never let the control store break serving
            self.error = f"control store ({self.url}) {what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            return None
        self.error = None
        return out

    # ---- the control row --------------------------------------------------------------------

    def read(self) -> ControlRow | None:
        """This service's row (``None`` when there is none yet, or the store failed: see ``error``)."""

        def q(conn: sa.Connection) -> ControlRow | None:
            row = conn.execute(sa.select(control).where(control.c.service == self.service)).mappings().first()
            return None if row is None else ControlRow(row["ref"], row["version"], int(row["generation"]), float(row["updated_at"]))

        return self._run("read", q)

    def publish(self, ref: str, version: str | None) -> int | None:
        """Point the service at ``ref`` (resolved to ``version``) with the next generation;
        returns that generation, or ``None`` when the store failed."""

        def q(conn: sa.Connection) -> int:
            now = time.time()
            if not conn.execute(
                control.update().where(control.c.service == self.service)
                .values(ref=ref, version=version, generation=control.c.generation + 1, updated_at=now)
            ).rowcount:
                conn.execute(control.insert().values(service=self.service, ref=ref, version=version, generation=1, updated_at=now))
            return int(conn.execute(sa.select(control.c.generation).where(control.c.service == self.service)).scalar_one())

        for attempt in range(4):
            generation = self._run("publish", q)
            err = self.error or ""
            if generation is not None or not ("IntegrityError" in err or "locked" in err):
                return generation
            # another worker inserted the row at the same moment (the next attempt updates it), or
            # held the database a little longer than the busy timeout: try again shortly
            time.sleep(0.05 * (attempt + 1))
        return None

    def reset(self, ref: str, version: str | None) -> int | None:
        """At service start: follow ``ref`` (a new generation) and forget earlier workers.
        Tables of another layout (an older storerec) are dropped and made again: they only
        hold runtime state."""

        def layout(conn: sa.Connection) -> bool:
            inspector = sa.inspect(conn)
            return all({c["name"] for c in inspector.get_columns(t.name)} == {c.name for c in t.columns} for t in metadata.sorted_tables)

        def recreate(conn: sa.Connection) -> None:
            metadata.drop_all(conn)
            metadata.create_all(conn)

        if self._run("check", layout) is False:
            self._run("recreate", recreate)
        gen = self.publish(ref, version)
        if gen is not None:
            self._run("reset", lambda conn: conn.execute(workers.delete().where(workers.c.service == self.service)))
        return gen

    def note_version(self, generation: int, version: str) -> None:
        """Record that the followed alias now resolves to ``version`` (no new generation)."""
        self._run("update", lambda conn: conn.execute(
            control.update().where((control.c.service == self.service) & (control.c.generation == generation)
                                   & (control.c.version != version)).values(version=version, updated_at=time.time())))

    # ---- workers ----------------------------------------------------------------------------

    def heartbeat(self, row: dict[str, Any]) -> bool:
        """Insert or update this worker's row (``row`` has the ``workers`` columns but
        ``service`` and ``heartbeat_at``) and drop rows of workers silent for long."""

        def q(conn: sa.Connection) -> bool:
            now = time.time()
            values = {**row, "service": self.service, "heartbeat_at": now}
            if not conn.execute(workers.update().where(workers.c.worker_id == row["worker_id"]).values(**values)).rowcount:
                conn.execute(workers.insert().values(**values))
            conn.execute(workers.delete().where((workers.c.service == self.service) & (workers.c.heartbeat_at < now - STALE_WORKER_S)))
            return True

        return bool(self._run("heartbeat", q))

    def workers(self) -> list[dict[str, Any]] | None:
        def q(conn: sa.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(sa.select(workers).where(workers.c.service == self.service).order_by(workers.c.worker_id))
            return [dict(r) for r in rows.mappings()]

        return self._run("read workers", q)

    def remove_worker(self, wid: str) -> None:
        self._run("remove worker", lambda conn: conn.execute(workers.delete().where(workers.c.worker_id == wid)))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


class ModelSync:
    """Keeps one worker on what the control store says (two daemon threads, see the module
    doc and :meth:`start`).

    The service hands in how to ``load`` a reference (returns a new serving state, raises on
    failure), how to ``swap`` it in, which ``versions`` a state serves (reference -> version, the
    followed reference included) and how to ``resolve`` an alias in the registry. Loads and swaps
    happen under ``lock``, the same lock the reload endpoint holds, so a newer generation is
    never overtaken by an older one.
    """

    def __init__(
        self,
        store: ControlStore,
        *,
        lock: threading.Lock,
        load: Callable[[str], Any],
        swap: Callable[[Any], None],
        versions: Callable[[Any], dict[str, str]],
        resolve: Callable[[str], str],
        state: Any,
        follows: str,
        generation: int,
        sync_s: float = 0.5,
        alias_poll_s: float = 2.0,
        error: str | None = None,
    ) -> None:
        self.store = store
        self.lock = lock
        self._load, self._swap, self._versions, self._resolve = load, swap, versions, resolve
        self.sync_s = sync_s
        self.alias_poll_s = alias_poll_s
        self.live_s = max(3 * sync_s, 2.0)  # a worker is live while its heartbeat is this recent
        self.worker_id = worker_id()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.follows = follows
        self.generation = generation
        self.refs = versions(state)  # reference -> version served
        self.load_error = error  # the last failed load (None once one succeeds)
        self.failed_generation: int | None = None  # the newest generation whose load failed
        self.workers: list[dict[str, Any]] = []  # live workers at the last tick
        self._failures = 0
        self._next_try = 0.0
        self._next_poll = time.monotonic() + alias_poll_s
        self._logged: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- what this worker serves ------------------------------------------------------------

    @property
    def version(self) -> str | None:
        return self.refs.get(self.follows)

    @property
    def error(self) -> str | None:
        return self.load_error or self.store.error

    def status(self) -> dict[str, Any]:
        """For ``GET /readyz``: no I/O (the workers list is the one read at the last tick)."""
        now = time.time()
        return {
            "generation": self.generation,
            "model_version": self.version,
            "follows": self.follows,
            "worker_id": self.worker_id,
            "pid": self.pid,
            "workers": [_public(w, now) for w in self.workers],
            "sync_error": self.error,
        }

    # ---- the thread -------------------------------------------------------------------------

    def start(self) -> ModelSync:
        """Two daemon threads: heartbeats (never held up by a load or a slow registry, so a
        worker busy loading still counts as live and a reload waits for it) and the sync."""
        self.heartbeat()
        self._threads = [
            threading.Thread(target=self._loop, args=(self.heartbeat,), name="storerec-heartbeat", daemon=True),
            threading.Thread(target=self._loop, args=(self.step,), name="storerec-model-sync", daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads and take this worker off the list (a reload stops waiting for it)."""
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self.store.remove_worker(self.worker_id)

    def _loop(self, fn: Callable[[], None]) -> None:
        while not self._stop.wait(self.sync_s):
            try:
                fn()
            except Exception:  # a bug here must not end syncing for the life of the worker
                log.exception("model sync: %s failed", fn.__name__)

    def tick(self) -> None:
        """One round of both threads (tests drive the sync with it)."""
        self.heartbeat()
        self.step()

    def step(self) -> None:
        """Apply a newer generation, or (every ``alias_poll_s``) follow alias moves."""
        row = self.store.read()
        if row is not None and row.generation > self.generation:
            fresh = self.failed_generation is None or row.generation > self.failed_generation  # not backing off from it
            if fresh or time.monotonic() >= self._next_try:
                self._apply(row.ref, row.generation)
            return
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.alias_poll_s
            self.poll_aliases()

    def heartbeat(self) -> None:
        self.store.heartbeat({
            "worker_id": self.worker_id, "pid": self.pid, "follows": self.follows, "generation": self.generation,
            "version": self.version, "started_at": self.started_at, "last_error": self.error,
            "failed_generation": self.failed_generation,
        })
        rows = self.store.workers()
        if rows is not None:
            self.workers = live_workers(rows, time.time(), self.live_s)
        self._log_error_change()

    def poll_aliases(self) -> bool:
        """Reload when an alias this worker serves (the followed one, or an experiment
        variant's) resolves to another version than the one loaded. True if it reloaded."""
        if time.monotonic() < self._next_try:
            return False
        moved = []
        for ref, version in list(self.refs.items()):
            if not is_alias(ref):
                continue
            try:
                now = self._resolve(ref)
            except Exception as exc:
                self.load_error = f"could not resolve {ref!r} in the registry: {exc}"
                return False
            if now != version:
                moved.append(f"{ref}: {version} -> {now}")
        if not moved:
            if self.load_error and self.load_error.startswith("could not resolve"):
                self.load_error = None
            return False
        log.info("alias moved (%s): reloading %s", ", ".join(moved), self.follows)
        if self._apply(self.follows, None):
            if self.version is not None:
                self.store.note_version(self.generation, self.version)
            return True
        return False

    def _apply(self, ref: str, generation: int | None) -> bool:
        """Load ``ref`` and swap it in (``generation`` None: an alias move, same generation)."""
        with self.lock:
            if generation is not None and generation <= self.generation:
                return False  # applied meanwhile (by the reload endpoint of this worker)
            previous = self.version
            try:
                state = self._load(ref)
            except Exception as exc:
                self._failed(f"loading {ref!r}" + (f" (generation {generation})" if generation is not None else "") + f" failed: {exc}")
                if generation is not None:
                    self.failed_generation = generation
                state = None
            else:
                self._swap(state)
                self.follows = ref
                self.refs = self._versions(state)
                if generation is not None:
                    self.generation = generation  # last: a heartbeat never shows the new generation with the old version
                self._failures, self._next_try, self.load_error = 0, 0.0, None
        self.heartbeat()  # at once: a reload waiting for this worker learns of the new version, or of the failure
        if state is None:
            return False
        log.info("model sync: now serving version %s (%s, generation %d; was %s)", self.version, ref, self.generation, previous)
        return True

    def _failed(self, message: str) -> None:
        self.load_error = message
        self._failures += 1
        delay = min(self.sync_s * 2 ** self._failures, 60.0)
        self._next_try = time.monotonic() + delay

    def _log_error_change(self) -> None:
        err = self.error
        if err != self._logged:  # one line per change, not one per tick
            if err:
                log.warning("model sync: %s (still serving version %s)", err, self.version)
            elif self._logged:
                log.info("model sync: recovered, serving version %s", self.version)
            self._logged = err

    # ---- the reload endpoint ----------------------------------------------------------------

    def reload(self, ref: str) -> tuple[Any, str | None, int | None]:
        """Load ``ref`` here (an exception leaves everything as it was), publish it as the next
        generation and swap it in. Returns (new state, previous version, generation or ``None``
        when the control store is unavailable: then only this worker changed)."""
        with self.lock:
            state = self._load(ref)
            previous = self.version
            versions = self._versions(state)
            generation = self.store.publish(ref, versions.get(ref))
            self._swap(state)
            self.follows = ref
            self.refs = versions
            if generation is not None:
                self.generation = generation
            self._failures, self._next_try, self.load_error = 0, 0.0, None
        self.heartbeat()
        return state, previous, generation

    def wait_for(self, generation: int, timeout_s: float, poll_s: float = 0.1) -> tuple[bool, list[dict[str, Any]], list[str]]:
        """Wait until every live worker reports ``generation`` (or later), at most ``timeout_s``
        (less when every worker still behind reports that it failed to load it). Returns
        (complete, the live workers, the ids of those that did not get there)."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.store.workers()
            live = live_workers(rows, time.time(), self.live_s) if rows is not None else []
            behind = [w for w in live if int(w["generation"]) < generation]
            lagging = [w["worker_id"] for w in behind]
            if rows is not None and not lagging:
                return True, [_public(w, time.time()) for w in live], []
            failed = all((w.get("failed_generation") or 0) >= generation for w in behind)
            if time.monotonic() >= deadline or (rows is not None and failed):
                return False, [_public(w, time.time()) for w in live], lagging
            time.sleep(poll_s)


def _public(w: dict[str, Any], now: float) -> dict[str, Any]:
    """A worker row as shown by /readyz and the reload answer."""
    return {
        "worker_id": w["worker_id"], "pid": w["pid"], "generation": w["generation"], "model_version": w["version"],
        "follows": w.get("follows"), "heartbeat_age_s": round(max(0.0, now - float(w["heartbeat_at"])), 3),
        "last_error": w.get("last_error"),
    }
