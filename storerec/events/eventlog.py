"""The event log: impressions the service returned and what shoppers did with them.

Storage is SQLite (the default: WAL mode, ``synchronous=FULL``, so a committed row survives a
crash of the process or the machine) or PostgreSQL (``postgresql+psycopg://user@host/db``). The
schema is versioned with Alembic (``storerec/events/migrations``, version table
``storerec_eventlog_version``): :func:`upgrade` creates or upgrades it, ``storerec serve`` runs it
(``eventlog.auto_upgrade``), and the service's :class:`EventLog` only checks it is current.

Writes never happen on the request path: one writer thread per process drains two in-memory
queues in batches (group commit).

* Impressions are queued and the response goes out at once; they are committed within
  ``flush_ms`` (and on shutdown). A hard kill can lose at most the last ``flush_ms`` of them.
  One commit (an ``fsync`` on SQLite) costs about a millisecond of CPU here, so the interval
  sets what logging costs per request: measured 37 us per impression at 50 ms batches (1,000
  lists/s) and about a third of that at the default 200 ms.
* Feedback (``POST /events``) and behaviour events (``POST /track``: views, carts, purchases,
  favourites not tied to a served list) wake the writer at once; :meth:`EventLog.store_feedback`
  and :meth:`EventLog.store_behaviour` return only **after** their rows are committed, so an
  acknowledged event is never lost. Rows carrying an
  ``event_id`` already stored are skipped (``INSERT ... ON CONFLICT (event_id) DO NOTHING``, also
  across processes), and the count returned is what this request really added.

Failures never stop the writer. Any error of a write (database locked, disk full, read-only, the
server gone, a bug) is logged in one line, the batch is kept and retried with backoff (50 ms
doubling to 2 s) until it commits, and :meth:`EventLog.status` reports ``ok = False`` with the
reason meanwhile (the service turns it into ``/readyz`` 503). Every database call is bounded
(SQLite busy timeout, PostgreSQL ``lock_timeout``/``statement_timeout``), so the writer keeps
cycling. Meanwhile impressions wait in memory, up to ``max_queued_impressions`` (then the oldest
are dropped, counted and logged); feedback waits at most its ``timeout_s``: a request that times
out (or is cancelled) abandons its rows, which are then never written, so a client retry cannot
duplicate them. Rows the database refuses by themselves (a value too long for its column, a
missing required value) are isolated from their batch and rejected instead of retried forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from storerec.core.errors import UserError

if TYPE_CHECKING:
    from storerec.core.settings import EventLogSettings

log = logging.getLogger("storerec.eventlog")

VERSION_TABLE = "storerec_eventlog_version"

metadata = sa.MetaData()

impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("user_id", sa.String(200), index=True),
    sa.Column("session_id", sa.String(200)),
    sa.Column("experiment", sa.String(100), index=True),
    sa.Column("variant", sa.String(100)),
    sa.Column("model", sa.String(100)),
    sa.Column("model_version", sa.String(50)),
    sa.Column("page", sa.String(20)),
    sa.Column("items", sa.Text, nullable=False),  # JSON list of item ids in rank order: one row per list keeps writes cheap
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(100), unique=True),  # optional client id: retries are stored once
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("request_id", sa.String(64), index=True),
    sa.Column("user_id", sa.String(200)),
    sa.Column("session_id", sa.String(200)),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("event_type", sa.String(20), nullable=False),
    sa.Column("revenue", sa.Float, nullable=False, default=0.0),
)

behaviour = sa.Table(
    "behaviour",  # storefront events not tied to a served list (POST /track); revision 0002
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # sync-events' watermark, as feedback.id
    sa.Column("event_id", sa.String(100), unique=True),  # optional client id: retries are stored once
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("user_id", sa.String(200), index=True),
    sa.Column("session_id", sa.String(200)),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("event_type", sa.String(20), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False, default=1),
    sa.Column("price", sa.Float),  # unit price paid; purchases only
)

campaign_sends = sa.Table(
    "campaign_sends",  # the campaign ledger (storerec/events/campaigns.py); revision 0003
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign_id", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),  # replenish, winback, points-expiring, new-arrivals
    sa.Column("user_id", sa.String(200), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),  # when the campaign was generated
    sa.Column("holdout", sa.Boolean, nullable=False),  # held out: received nothing (not frequency-capped)
    sa.Column("holdout_share", sa.Float, nullable=True),  # the campaign's --holdout (the sample-ratio check's expectation)
    sa.Column("n_items", sa.Integer, nullable=False),  # items in the member's list (0 for the holdout)
    sa.UniqueConstraint("campaign_id", "user_id", name="uq_campaign_sends_campaign_user"),
    sa.Index("ix_campaign_sends_user_ts", "user_id", "ts"),  # the frequency cap: who was contacted since
)

# The tables of revision 0001, i.e. what ``metadata.create_all`` made before migrations existed:
# an unversioned database holding exactly these is adopted (stamped 0001).
_REVISION_0001_COLUMNS = {
    "impressions": ("request_id", "ts", "user_id", "session_id", "experiment", "variant", "model", "model_version", "page", "items"),
    "feedback": ("id", "event_id", "ts", "request_id", "user_id", "session_id", "item_id", "event_type", "revenue"),
}

# Every database call of the writer is bounded, so that it keeps cycling (and reporting) while
# the database is unavailable. Migrations and reads are not (a migration may take its time).
SQLITE_BUSY_TIMEOUT_MS = 3_000
PG_LOCK_TIMEOUT_MS = 3_000
PG_STATEMENT_TIMEOUT_MS = 5_000
PG_CONNECT_TIMEOUT_S = 5
_PG_MIGRATION_LOCK = 0x73746F7265726563  # pg_advisory_lock key: "storerec" in ASCII

PRUNE_CHUNK = 5_000  # rows per delete transaction: pruning never holds a long lock
PRUNE_EVERY_S = 3600.0


class EventLogUnavailable(Exception):
    """Feedback was not committed within its timeout (or the event log is closed). The rows will
    never be written: the client can retry them, with or without ``event_id``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventLogRejected(EventLogUnavailable):
    """The database refused these rows themselves (e.g. a value too long for its column, a
    missing required value): nothing of the request was stored, and retrying it will not help."""


# ---- URLs and engines ----------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _parse_url(url: str) -> sa.engine.URL:
    try:
        u = sa.engine.make_url(url)
    except Exception:
        raise UserError(f"eventlog.url {url!r} is not a database URL: use sqlite:///path/events.db or postgresql+psycopg://user@host/db") from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise UserError(f"eventlog.url {safe_url(url)}: the event log supports SQLite and PostgreSQL (postgresql+psycopg://user@host/db), not {backend}")
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    return u


def _sqlite_file(u: sa.engine.URL) -> Path | None:
    db = u.database
    if u.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def require_existing(url: str) -> None:
    """Refuse a SQLite file that is not there (connecting would create an empty one)."""
    path = _sqlite_file(_parse_url(url))
    if path is not None and not path.exists():
        raise UserError(
            f"no event log at {safe_url(url)}: nothing was logged there yet (`storerec serve` or `storerec eventlog upgrade` "
            "creates it), or eventlog.url points elsewhere"
        )


def make_engine(url: str, *, bounded: bool = True) -> sa.Engine:
    """An engine for writing to ``url``; creates the folder of a SQLite file, nothing else.

    SQLite gets WAL, ``synchronous=FULL`` and a busy timeout (so several workers can write to one
    file); PostgreSQL a connect timeout and, when ``bounded`` (the writer), ``lock_timeout`` and
    ``statement_timeout`` of a few seconds. Parameters never appear in SQLAlchemy's messages."""
    u = _parse_url(url)
    path = _sqlite_file(u)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if u.get_backend_name() == "sqlite":
        engine = sa.create_engine(u, hide_parameters=True)
        busy = SQLITE_BUSY_TIMEOUT_MS if bounded else 30_000
        _on_connect(engine, ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", f"PRAGMA busy_timeout={busy}"))
        return engine
    _quiet_psycopg_pipeline()
    connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    if bounded:
        options = f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
        connect_args["options"] = f"{u.query['options']} {options}" if "options" in u.query else options
    return sa.create_engine(u, hide_parameters=True, pool_pre_ping=True, connect_args=connect_args)


class _PipelineNoise(logging.Filter):
    """psycopg warns once more about every failed pipelined ``executemany`` ("error ignored
    terminating ... pipeline aborted"); the writer already reports the error, rate-limited."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pipeline aborted" not in record.getMessage()


def _quiet_psycopg_pipeline() -> None:
    logger = logging.getLogger("psycopg")
    if not any(isinstance(f, _PipelineNoise) for f in logger.filters):
        logger.addFilter(_PipelineNoise())


def read_engine(url: str) -> sa.Engine:
    """An engine for reading: creates and changes nothing (a missing SQLite file is a
    :class:`UserError`)."""
    require_existing(url)
    u = _parse_url(url)
    if u.get_backend_name() == "sqlite":
        engine = sa.create_engine(u, hide_parameters=True)
        _on_connect(engine, (f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",))
        return engine
    return sa.create_engine(u, hide_parameters=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})


def _on_connect(engine: sa.Engine, statements: Sequence[str]) -> None:
    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            for s in statements:
                cur.execute(s)
        finally:
            cur.close()


@contextmanager
def _connected(engine: sa.Engine, url: str) -> Iterator[sa.Connection]:
    """A connection, with "cannot connect" turned into a :class:`UserError`."""
    try:
        conn = engine.connect()
    except sa.exc.DBAPIError as exc:
        raise UserError(f"cannot open the event log at {safe_url(url)}: {error_line(exc)}") from None
    with conn:
        yield conn


# ---- schema (Alembic) ----------------------------------------------------------------------------


def _alembic_config(connection: sa.Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The revision this code writes (the newest migration)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("storerec/events/migrations holds no revision")
    return head


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except Exception:
        return False


def _revision(conn: sa.Connection) -> str | None:
    """The stamped revision (read directly: the check at every worker's start needs no Alembic)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    revs = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(revs) > 1:
        raise UserError(f"the event log has several schema heads ({', '.join(sorted(revs))}) in {VERSION_TABLE}: resolve them with Alembic")
    return revs[0] if revs else None


def current_revision(url: str) -> str | None:
    """The schema revision of the event log at ``url`` (None: unversioned or empty)."""
    engine = read_engine(url)
    try:
        with _connected(engine, url) as conn:
            return _revision(conn)
    finally:
        engine.dispose()


def _unversioned(conn: sa.Connection, url: str) -> str:
    """What an unversioned database holds: ``"empty"`` (none of our tables) or ``"adoptable"``
    (exactly revision 0001's tables, as ``create_all`` made them); anything else is refused with
    what to do."""
    insp = sa.inspect(conn)
    present = [t for t in _REVISION_0001_COLUMNS if insp.has_table(t)]
    if not present:
        return "empty"
    move = "Move that database away (it stays readable as it is) or set eventlog.url to a new one"
    for name in present:
        expected = _REVISION_0001_COLUMNS[name]
        have = [c["name"] for c in insp.get_columns(name)]
        missing = [c for c in expected if c not in have]
        if missing:
            raise UserError(
                f"the event log at {safe_url(url)} has an older '{name}' table (no column {', '.join(missing)}): "
                f"this version cannot write to it. {move}"
            )
        extra = [c for c in have if c not in expected]
        if extra:
            raise UserError(
                f"the event log at {safe_url(url)} has a different '{name}' table (unknown column {', '.join(extra)}) "
                f"and no schema version: this version cannot adopt it. {move}"
            )
    absent = [t for t in _REVISION_0001_COLUMNS if t not in present]
    if absent:
        raise UserError(
            f"the event log at {safe_url(url)} has a '{present[0]}' table but no '{absent[0]}' table, and no schema version: "
            f"this version cannot adopt it. {move}"
        )
    unique: set[tuple[str | None, ...]] = {tuple(u["column_names"]) for u in insp.get_unique_constraints("feedback")}
    unique |= {tuple(i["column_names"]) for i in insp.get_indexes("feedback") if i.get("unique")}
    if ("event_id",) not in unique:
        raise UserError(
            f"the event log at {safe_url(url)} has a 'feedback' table without a unique event_id, and no schema version: "
            f"this version cannot adopt it. {move}"
        )
    return "adoptable"


@contextmanager
def _migration_lock(engine: sa.Engine, url: str) -> Iterator[None]:
    """One migration at a time per database, across processes: a PostgreSQL advisory lock, or an
    exclusive ``flock`` on ``<file>.migrate-lock`` next to a SQLite file."""
    if engine.dialect.name == "postgresql":
        with _connected(engine, url) as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
        return
    path = _sqlite_file(engine.url)
    if path is None:
        yield
        return
    import fcntl

    with open(path.with_name(path.name + ".migrate-lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade(url: str) -> tuple[str | None, str]:
    """Create or upgrade the event log at ``url`` to the newest revision; returns ``(before,
    after)`` (``before`` is None for a new or unversioned database).

    An unversioned database holding exactly revision 0001's tables (made by an earlier version
    with ``create_all``) is adopted, its rows kept; one with other tables of those names is
    refused (:class:`UserError`, naming the table and its missing columns). Concurrent upgrades
    of one database wait for each other (:func:`_migration_lock`); on PostgreSQL the whole
    upgrade is one transaction."""
    from alembic import command

    engine = make_engine(url, bounded=False)
    try:
        with _migration_lock(engine, url), _connected(engine, url) as conn:
            try:
                before = _revision(conn)
                if before is not None and not _known(before):
                    raise UserError(
                        f"the event log at {safe_url(url)} is at schema revision {before}, which this version does not know "
                        "(upgraded by a newer storerec?): run that version, or set eventlog.url to another database"
                    )
                cfg = _alembic_config(conn)
                if before is None and _unversioned(conn, url) == "adoptable":
                    command.stamp(cfg, "0001")
                    log.info("event log %s: adopted the tables made before schema versions (revision 0001)", safe_url(url))
                command.upgrade(cfg, "head")
                conn.commit()
                after = _revision(conn)
            except sa.exc.DBAPIError as exc:
                raise UserError(f"could not upgrade the event log at {safe_url(url)}: {error_line(exc)}") from None
    finally:
        engine.dispose()
    assert after is not None
    if after != before:
        log.info("event log %s: schema %s -> %s", safe_url(url), before or "empty", after)
    return before, after


def check_schema(engine: sa.Engine, url: str) -> None:
    """Refuse (:class:`UserError`, saying what to do) an event log that is not at the newest
    revision: every write would fail and the impressions would be lost."""
    head = head_revision()
    with _connected(engine, url) as conn:
        try:
            rev = _revision(conn)
            if rev == head:
                return
            state = _unversioned(conn, url) if rev is None else None
        except sa.exc.DBAPIError as exc:
            raise UserError(f"cannot read the schema of the event log at {safe_url(url)}: {error_line(exc)}") from None
    where = safe_url(url)
    if state == "empty":
        raise UserError(
            f"the event log at {where} has no tables yet: run `storerec eventlog upgrade` "
            "(`storerec serve` does it when eventlog.auto_upgrade is on)"
        )
    if state == "adoptable":
        raise UserError(f"the event log at {where} predates schema versions: run `storerec eventlog upgrade` to adopt it (rows are kept)")
    if rev is not None and not _known(rev):
        raise UserError(
            f"the event log at {where} is at schema revision {rev}, which this version does not know (upgraded by a newer "
            "storerec?): run that version, or set eventlog.url to another database"
        )
    raise UserError(f"the event log at {where} is at schema revision {rev}, this version needs {head}: run `storerec eventlog upgrade`")


# ---- the writer ----------------------------------------------------------------------------------

PENDING, WRITING, DONE, FAILED, ABANDONED = "pending", "writing", "done", "failed", "abandoned"


class _Ticket:
    """One request's feedback (or behaviour) rows on their way to the database.

    ``pending`` -> ``writing`` (claimed by the writer) -> ``done`` | ``failed`` (rows rejected);
    ``pending`` -> ``abandoned`` (the request gave up: never written). A failed write attempt puts
    ``writing`` tickets back to ``pending``, or to ``abandoned`` when the request gave up
    meanwhile (``give_up``). Transitions happen under :attr:`EventLog._lock`."""

    __slots__ = ("rows", "table", "state", "stored", "error", "give_up", "notify")

    def __init__(self, rows: list[dict[str, Any]], notify: Callable[[], None], table: sa.Table | None = None) -> None:
        self.rows = rows
        self.table = feedback if table is None else table  # feedback or behaviour
        self.state = PENDING
        self.stored = 0
        self.error: EventLogUnavailable | None = None
        self.give_up = False
        self.notify = notify  # called (by any thread) once the state is final


class _RowError(Exception):
    """A row that cannot be turned into column values (the writer rejects it, nothing else)."""


class EventLog:
    """Batched, off-request-path writer over one SQLAlchemy engine; checks at start that the
    schema is current (:func:`check_schema`; it never creates or migrates anything).

    Parameters
    ----------
    url
        SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
    flush_ms
        Impressions are committed at least this often (group commit).
    batch_size
        Most impressions (and feedback rows) per transaction.
    max_queued_impressions
        Impressions kept in memory while the database is unavailable; beyond, the oldest go.
    retention_days
        Delete rows older than this, at start and about hourly (None or 0: keep everything).
    engine
        An engine made by :func:`make_engine` to use instead of one for ``url`` (tests inject
        faults through its events); closed with the log.
    """

    def __init__(
        self,
        url: str,
        *,
        flush_ms: int = 200,
        batch_size: int = 5000,
        max_queued_impressions: int = 200_000,
        retention_days: float | None = None,
        engine: sa.Engine | None = None,
    ) -> None:
        self.url = url
        if engine is None:
            require_existing(url)
            engine = make_engine(url)
        self.engine = engine
        try:
            check_schema(engine, url)
        except BaseException:
            engine.dispose()
            raise
        self.flush_s = flush_ms / 1000.0
        self.batch_size = batch_size
        self.max_queued_impressions = max_queued_impressions
        self.retention_days = retention_days or None
        self._lock = threading.Lock()
        self._imps: deque[tuple[dict[str, Any], list[str]]] = deque()
        self._tickets: deque[_Ticket] = deque()
        self._inflight = 0  # impressions claimed by the current write attempt
        self._wake = threading.Event()  # feedback is waiting for a commit
        self._stop = threading.Event()
        self._closed = False
        self._close_deadline = float("inf")
        # health (under _lock)
        self._last_commit_at: datetime | None = None
        self._failing_since: datetime | None = None
        self._failures = 0
        self._cause: str | None = None
        self._backoff = 0.0
        self._dropped = 0
        self._rejected_impressions = 0
        self._rejected_events = 0
        # writer-only bookkeeping
        self._logged_failure_at = 0.0
        self._logged_cause: str | None = None
        self._logged_dropped = 0
        self._logged_dropped_at = 0.0
        self._claimed: tuple[list, list[_Ticket]] = ([], [])  # what the current attempt holds
        self._prune_at = time.monotonic() if self.retention_days else float("inf")
        self._prune_cutoff: datetime | None = None
        self._pruned = [0, 0]
        self._thread = threading.Thread(target=self._run, name="storerec-eventlog", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: EventLogSettings) -> EventLog:
        """The service's event log, from ``[eventlog]``."""
        return cls(
            settings.url,
            flush_ms=settings.flush_ms,
            max_queued_impressions=settings.max_queued_impressions,
            retention_days=settings.retention_days,
        )

    # ---- producers (request path: no I/O) -------------------------------------------------------

    def log_impression(self, row: dict[str, Any], item_ids: list[str]) -> None:
        """Queue one returned list (``row`` has the ``impressions`` columns but ``items``)."""
        with self._lock:
            if self._closed:
                self._dropped += 1
                return
            self._imps.append((row, item_ids))
            if len(self._imps) > self.max_queued_impressions:
                self._imps.popleft()
                self._dropped += 1

    async def store_feedback(self, rows: list[dict[str, Any]], timeout_s: float) -> int:
        """Store feedback rows (:meth:`_store`)."""
        return await self._store(rows, timeout_s, feedback)

    async def store_behaviour(self, rows: list[dict[str, Any]], timeout_s: float) -> int:
        """Store behaviour rows (``behaviour`` columns but ``id``: ``event_id``, ``ts``,
        ``user_id``, ``session_id``, ``item_id``, ``event_type``, ``quantity``, ``price``) with
        the guarantees of :meth:`store_feedback`: same writer, same transactions, same answers."""
        return await self._store(rows, timeout_s, behaviour)

    def store_behaviour_sync(self, rows: list[dict[str, Any]], timeout_s: float) -> int:
        """:meth:`store_behaviour` for threads (tests, command line): blocks the caller."""
        return self.store_feedback_sync(rows, timeout_s, table=behaviour)

    async def _store(self, rows: list[dict[str, Any]], timeout_s: float, table: sa.Table) -> int:
        """Store feedback rows (``feedback`` columns but ``id``); returns how many were newly
        stored (rows whose ``event_id`` is already stored, or earlier in this batch, are not).

        Returns only after the commit. Raises :class:`EventLogUnavailable` when they were not
        committed within ``timeout_s`` (they will then never be written: retrying is safe), or
        :class:`EventLogRejected` when the database refused the rows themselves. If the writer is
        in the middle of writing them at the deadline, waits for that attempt (bounded by the
        database timeouts) and answers by its outcome. Cancelling the caller abandons the rows
        the same way."""
        if not rows:
            return 0
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def notify() -> None:
            loop.call_soon_threadsafe(_resolve, done)

        ticket = self._submit(_Ticket(rows, notify, table))
        try:
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout_s)
            except TimeoutError:
                if self._give_up(ticket, timeout_s) == WRITING:
                    await asyncio.shield(done)
        except asyncio.CancelledError:
            self._give_up(ticket, None)
            raise
        return self._outcome(ticket)

    def store_feedback_sync(self, rows: list[dict[str, Any]], timeout_s: float, *, table: sa.Table | None = None) -> int:
        """:meth:`store_feedback` for threads (tests, command line): blocks the caller."""
        if not rows:
            return 0
        done = threading.Event()
        ticket = self._submit(_Ticket(rows, done.set, table))
        if not done.wait(timeout_s) and self._give_up(ticket, timeout_s) == WRITING:
            done.wait()
        return self._outcome(ticket)

    def _submit(self, ticket: _Ticket) -> _Ticket:
        with self._lock:
            if self._closed:
                raise EventLogUnavailable("the event log is closed")
            self._tickets.append(ticket)
        self._wake.set()
        return ticket

    def _give_up(self, ticket: _Ticket, timeout_s: float | None) -> str:
        """The request stops waiting: a pending ticket is abandoned at once; one being written is
        abandoned if that attempt fails. Returns the state found."""
        with self._lock:
            state = ticket.state
            why = self._cause
            if state == PENDING:
                ticket.state = ABANDONED
            elif state == WRITING:
                ticket.give_up = True
            if state in (PENDING, WRITING):
                wait = f"within {timeout_s:g} s" if timeout_s is not None else "before the request was cancelled"
                ticket.error = EventLogUnavailable(
                    f"the event log did not commit these events {wait}" + (f" ({why})" if why else "") + "; they were not stored"
                )
        return state

    @staticmethod
    def _outcome(ticket: _Ticket) -> int:
        if ticket.state == DONE:
            return ticket.stored
        assert ticket.error is not None, ticket.state
        raise ticket.error

    # ---- health ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Health of the writer: ``ok`` is False from a failed write attempt until the next
        commit (``reason`` says why, since when, how many attempts), or once closed."""
        with self._lock:
            ok = self._failing_since is None
            reason = None
            if not ok:
                reason = f"{self._cause} since {self._failing_since:%H:%M:%S} UTC ({self._failures} attempt{'s' * (self._failures > 1)})"
            if self._closed:
                ok, reason = False, "the event log is closed"
            elif not self._thread.is_alive():
                ok, reason = False, "the event log writer thread stopped"
            return {
                "ok": ok,
                "reason": reason,
                "queued_impressions": len(self._imps) + self._inflight,
                "pending_feedback": sum(1 for t in self._tickets if t.state == PENDING),
                "dropped_impressions": self._dropped,
                "rejected_impressions": self._rejected_impressions,
                "rejected_events": self._rejected_events,
                "last_commit_at": self._last_commit_at.isoformat() if self._last_commit_at else None,
                "failing_since": self._failing_since.isoformat() if self._failing_since else None,
                "failed_attempts": self._failures,
            }

    # ---- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        # Wake every flush interval (or at once for feedback, or to stop) and take everything
        # queued: waking per impression would make this thread fight the request thread for the
        # GIL on every request, and each commit costs an fsync. Nothing may end this loop but
        # close(): every error is caught, logged and retried.
        while True:
            try:
                if self._cycle():
                    return
            except Exception as exc:  # a bug of the loop itself: queue again what it held, back off, carry on
                imps, tickets = self._claimed
                self._claimed = ([], [])
                try:
                    self._failed(exc, imps, [t for t in tickets if t.state == WRITING])  # re-inserted impressions are skipped
                except Exception:
                    time.sleep(1.0)

    def _cycle(self) -> bool:
        """One wait and drain; True when the writer is done (closed)."""
        if self._failing_since is not None:
            if self._stop.is_set():
                time.sleep(max(0.0, min(self._backoff, self._close_deadline - time.monotonic())))
            else:
                self._stop.wait(self._backoff)
        else:
            self._wake.wait(0.02 if self._prune_cutoff is not None else self.flush_s)
        self._wake.clear()
        stopping = self._stop.is_set()
        written = self._drain(everything=stopping)
        self._log_drops()
        if written and not stopping:
            self._prune_step()
        if stopping and (written or time.monotonic() >= self._close_deadline):
            self._shut()
            return True
        return False

    def _drain(self, *, everything: bool) -> bool:
        """Write what is queued (the impressions queued now, the feedback queued until the last
        claim); False when an attempt failed (what it held is queued again)."""
        budget = float("inf") if everything else len(self._imps)
        first = True
        while True:
            imps, tickets = self._claim(budget)
            if not imps and not tickets:
                return self._probe() if first and self._failing_since is not None else True
            first = False
            budget -= len(imps)
            self._claimed = (imps, tickets)
            ok = self._attempt(imps, tickets)
            self._claimed = ([], [])
            if not ok:
                return False

    def _claim(self, budget: float) -> tuple[list[tuple[dict[str, Any], list[str]]], list[_Ticket]]:
        with self._lock:
            n = int(min(budget, len(self._imps), self.batch_size))
            imps = [self._imps.popleft() for _ in range(n)]
            self._inflight = n
            tickets: list[_Ticket] = []
            rows = 0
            while self._tickets and rows < self.batch_size:
                t = self._tickets.popleft()
                if t.state != PENDING:  # abandoned while queued
                    continue
                t.state = WRITING
                tickets.append(t)
                rows += len(t.rows)
        return imps, tickets

    def _attempt(self, imps: list, tickets: list[_Ticket]) -> bool:
        """Commit ``imps`` and ``tickets``; rows the database refuses by themselves are isolated
        by halving the batch and rejected alone. False (all not yet committed queued again) on
        any other error."""
        parts: list[tuple[list, list[_Ticket]]] = [(imps, tickets)]
        while parts:
            p_imps, p_tickets = parts.pop()
            try:
                with self.engine.begin() as conn:
                    if p_imps:
                        self._insert_impressions(conn, p_imps)
                    counts = self._insert_feedback(conn, p_tickets) if p_tickets else []
            except Exception as exc:
                if _is_row_error(exc):
                    units: list[Any] = [("i", x) for x in p_imps] + [("t", t) for t in p_tickets]
                    if len(units) == 1:
                        self._reject(p_imps, p_tickets, exc)
                        continue
                    half = len(units) // 2
                    for chunk in (units[half:], units[:half]):  # the first half is written first
                        parts.append(([x for k, x in chunk if k == "i"], [x for k, x in chunk if k == "t"]))
                    continue
                self._failed(exc, p_imps + [x for p in reversed(parts) for x in p[0]], p_tickets + [t for p in reversed(parts) for t in p[1]])
                return False
            self._committed(len(p_imps), p_tickets, counts)
        return True

    def _probe(self) -> bool:
        """After a failure that left nothing to retry (its requests gave up): an empty write, so
        that the status recovers (or keeps saying why not) without waiting for new traffic."""
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(feedback).where(sa.false()))
        except Exception as exc:
            self._failed(exc, [], [])
            return False
        self._committed(0, [], [], wrote=False)
        return True

    def _committed(self, n_imps: int, tickets: list[_Ticket], counts: list[int], *, wrote: bool = True) -> None:
        now = datetime.now(UTC)
        with self._lock:
            self._inflight = max(0, self._inflight - n_imps)
            for t, n in zip(tickets, counts):
                t.state, t.stored = DONE, n
            if wrote:
                self._last_commit_at = now
            failing_since, failures = self._failing_since, self._failures
            self._failing_since, self._failures, self._cause, self._backoff = None, 0, None, 0.0
        if failing_since is not None:
            log.warning("event log: writing again after %d failed attempts since %s UTC", failures, f"{failing_since:%H:%M:%S}")
            self._logged_cause = None
        _notify(tickets)

    def _failed(self, exc: BaseException, imps: list, tickets: list[_Ticket]) -> None:
        cause = error_line(exc)
        now = datetime.now(UTC)
        final: list[_Ticket] = []
        with self._lock:
            if self._failing_since is None:
                self._failing_since, self._failures = now, 0
            self._failures += 1
            self._cause = cause
            self._backoff = 0.05 if self._failures == 1 else min(2.0, self._backoff * 2)
            self._imps.extendleft(reversed(imps))
            self._inflight = 0
            while len(self._imps) > self.max_queued_impressions:
                self._imps.popleft()
                self._dropped += 1
            for t in reversed(tickets):
                if t.give_up:
                    t.state = ABANDONED
                    final.append(t)
                else:
                    t.state = PENDING
                    self._tickets.appendleft(t)
            failures, since, queued = self._failures, self._failing_since, len(self._imps)
            waiting = sum(1 for t in self._tickets if t.state == PENDING)
        _notify(final)
        mono = time.monotonic()
        if cause != self._logged_cause or mono - self._logged_failure_at >= 30.0:
            log.warning(
                "event log: write failed (%s); attempt %d since %s UTC, %d impressions and %d feedback requests waiting, retrying",
                cause, failures, f"{since:%H:%M:%S}", queued, waiting,
            )
            self._logged_cause, self._logged_failure_at = cause, mono

    def _reject(self, imps: list, tickets: list[_Ticket], exc: BaseException) -> None:
        cause = error_line(exc)
        with self._lock:
            self._inflight = max(0, self._inflight - len(imps))
            self._rejected_impressions += len(imps)
            for t in tickets:
                self._rejected_events += len(t.rows)
                t.state = FAILED
                t.error = EventLogRejected(f"the event log refused these events: {cause}")
        what = f"{len(imps)} impression" if imps else f"a feedback request of {sum(len(t.rows) for t in tickets)} events"
        log.error("event log: the database refused %s (%s); not stored", what, cause)
        _notify(tickets)

    def _log_drops(self) -> None:
        dropped = self._dropped
        if dropped > self._logged_dropped and time.monotonic() - self._logged_dropped_at >= 10.0:
            log.warning(
                "event log: %d impressions dropped so far (the oldest first: more than %d waited for the database)",
                dropped, self.max_queued_impressions,
            )
            self._logged_dropped, self._logged_dropped_at = dropped, time.monotonic()

    def _prune_step(self) -> None:
        """Retention, one chunk per table per cycle (writes go first)."""
        if self.retention_days is None:
            return
        if self._prune_cutoff is None:
            if time.monotonic() < self._prune_at:
                return
            self._prune_cutoff = now_utc() - timedelta(days=self.retention_days)
            self._pruned = [0, 0]
        try:
            with self.engine.begin() as conn:
                n_imp = _delete_chunk(conn, impressions, impressions.c.request_id, self._prune_cutoff)
            with self.engine.begin() as conn:
                n_fb = _delete_chunk(conn, feedback, feedback.c.id, self._prune_cutoff)
            with self.engine.begin() as conn:
                n_fb += _delete_chunk(conn, behaviour, behaviour.c.id, self._prune_cutoff)
        except Exception as exc:
            log.warning("event log: pruning rows older than %g days failed (%s); trying again in a minute", self.retention_days, error_line(exc))
            self._prune_cutoff, self._prune_at = None, time.monotonic() + 60.0
            return
        self._pruned[0] += n_imp
        self._pruned[1] += n_fb
        if n_imp < PRUNE_CHUNK and n_fb < PRUNE_CHUNK:  # (n_fb: feedback + behaviour; 2 chunks at most)
            if any(self._pruned):
                log.info("event log: pruned %d impressions and %d events older than %g days", *self._pruned, self.retention_days)
            self._prune_cutoff, self._prune_at = None, time.monotonic() + PRUNE_EVERY_S

    def _shut(self) -> None:
        with self._lock:
            left_imps = len(self._imps)
            left = [t for t in self._tickets if t.state == PENDING]
            for t in left:
                t.state = ABANDONED
                t.error = EventLogUnavailable("the event log closed before these events were stored")
            self._tickets.clear()
            cause = self._cause
        if left_imps or left:
            log.error("event log: closed with %d impressions and %d feedback requests not written (%s)", left_imps, len(left), cause)
        _notify(left)

    _SQLITE_ROWS_PER_INSERT = 500  # 5,000 parameters per statement (SQLite allows 32,766)
    _IMP_COLS = ("request_id", "ts", "user_id", "session_id", "experiment", "variant", "model", "model_version", "page", "items")

    def _insert_impressions(self, conn: sa.Connection, entries: list[tuple[dict[str, Any], list[str]]]) -> None:
        """On SQLite a plain multi-row ``INSERT`` of tuples (timestamps in SQLAlchemy's SQLite
        text format): most of the work stays in C, so the writer holds the GIL (which the request
        thread needs) as briefly as possible. PostgreSQL goes through SQLAlchemy Core
        (psycopg's pipelined ``executemany``). A request id already there (a retry after a
        commit whose answer got lost) is skipped."""
        if conn.dialect.name != "sqlite":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            rows = [dict(zip(self._IMP_COLS, _impression_values(row, items, sqlite=False))) for row, items in entries]
            conn.execute(pg_insert(impressions).on_conflict_do_nothing(index_elements=["request_id"]), rows)
            return
        data: list[Any] = []
        for row, items in entries:
            data += _impression_values(row, items, sqlite=True)
        # Many rows per statement: each statement releases and retakes the GIL once, not per row.
        width = len(self._IMP_COLS)
        per = self._SQLITE_ROWS_PER_INSERT
        one = f"({', '.join('?' * width)})"
        for start in range(0, len(entries), per):
            n = min(per, len(entries) - start)
            sql = f"INSERT INTO impressions ({', '.join(self._IMP_COLS)}) VALUES {', '.join([one] * n)} ON CONFLICT (request_id) DO NOTHING"
            conn.exec_driver_sql(sql, tuple(data[start * width : (start + n) * width]))

    @staticmethod
    def _insert_feedback(conn: sa.Connection, tickets: list[_Ticket]) -> list[int]:
        """Insert the tickets' rows, each into its table (feedback or behaviour); returns how
        many each newly stored. An ``event_id`` goes in once per table: skipped when already
        stored (``ON CONFLICT DO NOTHING`` with ``RETURNING``, which also settles two processes
        inserting it at once) and counted for the first ticket of the batch that has it."""
        counts = [0] * len(tickets)
        for table in (feedback, behaviour):
            mine = [k for k, t in enumerate(tickets) if t.table is table]
            if mine:
                for k, n in zip(mine, EventLog._insert_rows(conn, table, [tickets[k] for k in mine])):
                    counts[k] = n
        return counts

    @staticmethod
    def _insert_rows(conn: sa.Connection, table: sa.Table, tickets: list[_Ticket]) -> list[int]:
        from sqlalchemy.dialects import postgresql, sqlite

        dialect_insert: Callable[..., Any] = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
        values = _feedback_values if table is feedback else _behaviour_values
        counts = [0] * len(tickets)
        owner: dict[str, int] = {}
        plain, keyed = [], []
        for k, t in enumerate(tickets):
            for r in t.rows:
                v = values(r)
                eid = v["event_id"]
                if eid is None:
                    plain.append(v)
                    counts[k] += 1
                elif eid not in owner:
                    owner[eid] = k
                    keyed.append(v)
        if plain:
            conn.execute(table.insert(), plain)
        if keyed:
            keyed.sort(key=lambda v: v["event_id"])  # one lock order for every writer: no deadlocks on PostgreSQL
            stmt = dialect_insert(table).on_conflict_do_nothing(index_elements=["event_id"]).returning(table.c.event_id)
            for eid in conn.execute(stmt, keyed).scalars():
                counts[owner[eid]] += 1
        return counts

    # ---- maintenance ----------------------------------------------------------------------------

    def prune(self, older_than: datetime) -> tuple[int, int]:
        """Delete impressions and feedback with ``ts`` before ``older_than``, in chunks; returns
        ``(impressions_deleted, feedback_deleted)``."""
        return prune_before(self.engine, older_than)

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued (retrying for up to ``timeout`` seconds if the database is
        unavailable) and stop the writer. Feedback still waiting then is abandoned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close_deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 10.0)
        self.engine.dispose()


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():  # the waiter may have been cancelled
        fut.set_result(None)


def _notify(tickets: list[_Ticket]) -> None:
    for t in tickets:
        try:
            t.notify()
        except Exception:  # a closed event loop, a waiter gone: nothing the writer must care about
            pass


def _is_row_error(exc: BaseException) -> bool:
    """Errors caused by the rows themselves (retrying them can only fail again)."""
    if isinstance(exc, (_RowError, sa.exc.IntegrityError, sa.exc.DataError)):
        return True
    return isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)  # a value SQLAlchemy cannot bind


def error_line(exc: BaseException) -> str:
    """One line about ``exc``: the driver's message without SQL, parameters or detail lines
    (PostgreSQL's DETAIL can quote row values)."""
    orig = getattr(exc, "orig", None)
    if isinstance(exc, sa.exc.DBAPIError) and orig is not None:
        text = str(orig)
    elif isinstance(exc, sa.exc.StatementError) and orig is not None:
        text = f"{type(orig).__name__}: {orig}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line[:200]


def _as_utc(ts: Any) -> datetime:
    if not isinstance(ts, datetime):
        raise _RowError(f"ts must be a datetime, not {type(ts).__name__}")
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _impression_values(row: dict[str, Any], items: list[str], *, sqlite: bool) -> tuple:
    try:
        ts = _as_utc(row["ts"])
        return (
            row["request_id"],
            ts.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite else ts,  # "%Y-%m-%d %H:%M:%S.%f" on SQLite
            row.get("user_id"), row.get("session_id"), row.get("experiment"), row.get("variant"),
            row.get("model"), row.get("model_version"), row.get("page"), json.dumps(items),
        )
    except _RowError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise _RowError(f"impression row: {type(exc).__name__}") from None


def _feedback_values(r: dict[str, Any]) -> dict[str, Any]:
    try:
        return {
            "event_id": r.get("event_id") or None,
            "ts": _as_utc(r["ts"]),
            "request_id": r.get("request_id"),
            "user_id": r.get("user_id"),
            "session_id": r.get("session_id"),
            "item_id": r["item_id"],
            "event_type": r["event_type"],
            "revenue": 0.0 if r.get("revenue") is None else float(r["revenue"]),
        }
    except _RowError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise _RowError(f"feedback row: {type(exc).__name__}") from None


def _behaviour_values(r: dict[str, Any]) -> dict[str, Any]:
    try:
        price = r.get("price")
        return {
            "event_id": r.get("event_id") or None,
            "ts": _as_utc(r["ts"]),
            "user_id": r.get("user_id"),
            "session_id": r.get("session_id"),
            "item_id": r["item_id"],
            "event_type": r["event_type"],
            "quantity": 1 if r.get("quantity") is None else int(r["quantity"]),
            "price": None if price is None else float(price),
        }
    except _RowError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise _RowError(f"behaviour row: {type(exc).__name__}") from None


def _delete_chunk(conn: sa.Connection, table: sa.Table, key: sa.Column, cutoff: datetime) -> int:
    cutoff = cutoff.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        cutoff = cutoff.replace(tzinfo=None)  # stored as naive UTC text
    old = sa.select(key).where(table.c.ts < cutoff).limit(PRUNE_CHUNK).scalar_subquery()
    return conn.execute(sa.delete(table).where(key.in_(old))).rowcount


def prune_before(engine: sa.Engine, older_than: datetime) -> tuple[int, int]:
    """Delete rows with ``ts`` before ``older_than`` in transactions of :data:`PRUNE_CHUNK` rows
    (so writers are never held up long); returns ``(impressions, events)`` deleted (events:
    feedback and behaviour rows)."""
    deleted = [0, 0]
    for k, (table, key) in enumerate(((impressions, impressions.c.request_id), (feedback, feedback.c.id), (behaviour, behaviour.c.id))):
        k = min(k, 1)
        while True:
            with engine.begin() as conn:
                n = _delete_chunk(conn, table, key, older_than)
            deleted[k] += n
            if n < PRUNE_CHUNK:
                break
    return deleted[0], deleted[1]


def now_utc() -> datetime:
    return datetime.now(UTC)


# ---- reading -------------------------------------------------------------------------------------


def _require_tables(conn: sa.Connection, url: str) -> None:
    """The tables this code reads exist with their columns (whatever the schema revision)."""
    insp = sa.inspect(conn)
    tables = (impressions, feedback)
    for table in tables:
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise UserError(
                f"the event log at {safe_url(url)} has an older '{table.name}' table (no column {', '.join(missing)}): "
                "run `storerec eventlog upgrade`, or read it with the version that wrote it"
            )
    for table in tables:
        if not insp.has_table(table.name):
            raise UserError(
                f"the event log at {safe_url(url)} has no '{table.name}' table: nothing was logged there yet "
                "(`storerec eventlog upgrade` creates the tables), or eventlog.url points elsewhere"
            )


def read_frames(url: str, experiment: str | None = None) -> dict[str, Any]:
    """Impressions, their items (one row per shown item, with its rank) and feedback as polars
    frames, optionally one experiment's. Reads only: a missing database is a :class:`UserError`."""
    import polars as pl

    engine = read_engine(url)
    try:
        with _connected(engine, url) as conn:
            _require_tables(conn, url)
            q = sa.select(impressions)
            fb_q = sa.select(feedback)
            if experiment is not None:
                q = q.where(impressions.c.experiment == experiment)
                sub = sa.select(impressions.c.request_id).where(impressions.c.experiment == experiment)
                fb_q = fb_q.where(feedback.c.request_id.in_(sub))
            imp_rows = [dict(r) for r in conn.execute(q).mappings().all()]
            fb_rows = [dict(r) for r in conn.execute(fb_q).mappings().all()]
    finally:
        engine.dispose()
    imp = pl.DataFrame(imp_rows, schema=_schema(impressions)) if imp_rows else pl.DataFrame(schema=_schema(impressions))
    items = (
        imp.select("request_id", pl.col("items").str.json_decode(pl.List(pl.String)).alias("item_id"))
        .with_columns(pl.int_ranges(1, pl.col("item_id").list.len() + 1).alias("rank"))
        .explode("item_id", "rank")
        .drop_nulls("item_id")
        .select("request_id", pl.col("rank").cast(pl.Int64), "item_id")
    )
    fb = pl.DataFrame(fb_rows, schema=_schema(feedback)) if fb_rows else pl.DataFrame(schema=_schema(feedback))
    return {"impressions": imp.drop("items"), "items": items, "feedback": fb}


def _schema(table: sa.Table) -> dict[str, Any]:
    import polars as pl

    out: dict[str, Any] = {}
    for col in table.columns:
        if isinstance(col.type, sa.DateTime):
            out[col.name] = pl.Datetime("us", "UTC")
        elif isinstance(col.type, sa.Integer):
            out[col.name] = pl.Int64
        elif isinstance(col.type, sa.Float):
            out[col.name] = pl.Float64
        else:
            out[col.name] = pl.String
    return out


def summary(url: str) -> dict[str, Any]:
    """What ``storerec eventlog status`` prints: schema revision (and the newest), and per table
    rows, oldest and newest ``ts``. Reads only."""
    engine = read_engine(url)
    try:
        with _connected(engine, url) as conn:
            rev = _revision(conn)
            out: dict[str, Any] = {"url": safe_url(url), "revision": rev, "head": head_revision(), "tables": {}}
            if rev is None:
                try:
                    out["unversioned"] = _unversioned(conn, url)
                except UserError as exc:
                    out["unversioned"] = "refused"
                    out["problem"] = str(exc)
                    return out
                if out["unversioned"] == "empty":
                    return out
            for table in (impressions, feedback, behaviour):
                if table is behaviour and not sa.inspect(conn).has_table(table.name):
                    continue  # revision 0001
                n, lo, hi = conn.execute(sa.select(sa.func.count(), sa.func.min(table.c.ts), sa.func.max(table.c.ts)).select_from(table)).one()
                out["tables"][table.name] = {"rows": n, "oldest": _utc(lo) if lo is not None else None, "newest": _utc(hi) if hi is not None else None}
    finally:
        engine.dispose()
    return out


def delete_users(conn: sa.Connection, ids: Sequence[str]) -> tuple[int, int, int, int]:
    """Delete these users' impressions, their feedback and feedback sent against their lists,
    their tracked behaviour and their campaign ledger rows, treated or held out (``storerec
    forget-user``); returns ``(impressions, feedback, behaviour, campaign_sends)`` deleted. A log
    from before the behaviour table (schema 0001) or the campaign ledger (0002) has none there."""
    insp = sa.inspect(conn)
    tracked = insp.has_table(behaviour.name)
    ledger = insp.has_table(campaign_sends.name)
    n_imp = n_fb = n_beh = n_camp = 0
    for start in range(0, len(ids), 500):
        chunk = list(ids[start:start + 500])
        theirs = sa.select(impressions.c.request_id).where(impressions.c.user_id.in_(chunk))
        n_fb += conn.execute(sa.delete(feedback).where(sa.or_(feedback.c.user_id.in_(chunk), feedback.c.request_id.in_(theirs)))).rowcount
        n_imp += conn.execute(sa.delete(impressions).where(impressions.c.user_id.in_(chunk))).rowcount
        if tracked:
            n_beh += conn.execute(sa.delete(behaviour).where(behaviour.c.user_id.in_(chunk))).rowcount
        if ledger:
            n_camp += conn.execute(sa.delete(campaign_sends).where(campaign_sends.c.user_id.in_(chunk))).rowcount
    return n_imp, n_fb, n_beh, n_camp


def recent_activity(engine: sa.Engine, since: datetime) -> tuple[list[tuple[str, str, datetime]], list[tuple[str, str, datetime]]]:
    """``(user, item, ts)`` of impressions and of interactions since ``since`` (to rebuild the
    frequency cap after a restart)."""
    since = since.astimezone(UTC)
    if engine.dialect.name == "sqlite":
        since = since.replace(tzinfo=None)  # stored as naive UTC text
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(impressions.c.user_id, impressions.c["items"], impressions.c.ts)
            .where(impressions.c.ts >= since, impressions.c.user_id.is_not(None))
        ).all()
        shown = [(u, i, t) for u, items, t in rows for i in json.loads(items)]
        touched = conn.execute(
            sa.select(feedback.c.user_id, feedback.c.item_id, feedback.c.ts).where(feedback.c.ts >= since, feedback.c.user_id.is_not(None))
        ).all()
    return [(u, i, _utc(t)) for u, i, t in shown], [(u, i, _utc(t)) for u, i, t in touched]


def behaviour_since(engine: sa.Engine, since: datetime | None, limit: int = 1_000_000) -> list[dict[str, Any]]:
    """Behaviour rows (``POST /track``) with ``ts`` at or after ``since`` (all when None), oldest
    first, at most the newest ``limit``: what the service's live overlay is rebuilt from at
    start (serving/live.py). An event log at revision 0001 (no behaviour table) gives none."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(behaviour.name):
            return []
        b = behaviour
        q = sa.select(b.c.id, b.c.ts, b.c.user_id, b.c.session_id, b.c.item_id, b.c.event_type, b.c.quantity, b.c.price)
        if since is not None:
            since = since.astimezone(UTC)
            q = q.where(b.c.ts >= (since.replace(tzinfo=None) if engine.dialect.name == "sqlite" else since))
        rows = conn.execute(q.order_by(b.c.ts.desc(), b.c.id.desc()).limit(limit)).mappings().all()
    out = [dict(r) for r in reversed(rows)]
    for r in out:
        r["ts"] = _utc(r["ts"])
    return out


def behaviour_max_id(engine: sa.Engine) -> int:
    """The highest behaviour id stored (0: none, or no behaviour table)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(behaviour.name):
            return 0
        return int(conn.execute(sa.select(sa.func.max(behaviour.c.id))).scalar() or 0)


def behaviour_after(engine: sa.Engine, after_id: int, limit: int = 10_000) -> tuple[list[dict[str, Any]], int]:
    """Behaviour rows with ``id > after_id`` (at most ``limit``, by id) and the highest id seen
    (``after_id`` when none): how each worker's live overlay follows the events other workers
    and replicas stored (serving/live.py: LiveTail)."""
    b = behaviour
    q = (sa.select(b.c.id, b.c.ts, b.c.user_id, b.c.session_id, b.c.item_id, b.c.event_type)
         .where(b.c.id > after_id).order_by(b.c.id).limit(limit))
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings().all()]
    for r in rows:
        r["ts"] = _utc(r["ts"])
    return rows, max([after_id, *(r["id"] for r in rows)])


def _utc(ts: Any) -> datetime:
    """SQLite gives naive datetimes back (they were stored as UTC); min/max give text."""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
