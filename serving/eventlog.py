"""The event log: impressions the service returned and what shoppers did with them.

Storage is any SQLAlchemy URL; the default is SQLite in WAL mode (``synchronous=FULL``, so a
committed row survives a crash of the process or the machine). Writes never happen on the
request path: a writer thread drains a queue in batches (group commit).

* Impressions are queued and the response goes out at once; they are committed within
  ``flush_ms`` (and on shutdown). A hard kill can lose at most the last ``flush_ms`` of them.
  One commit (an ``fsync`` on SQLite) costs about a millisecond of CPU here, so the interval
  sets what logging costs per request: measured 37 us per impression at 50 ms batches (1,000
  lists/s) and about a third of that at the default 200 ms.
* Feedback events (``POST /events``) wake the writer at once and are acknowledged only
  **after** their batch is committed, so an acknowledged event is never lost (and waits for no
  timer), and an ``event_id`` sent twice is stored once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("storerec.eventlog")

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

FEEDBACK_TYPES = ("click", "cart", "purchase")


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL, ``synchronous=FULL`` and a busy timeout so
    several workers can write to one file."""
    if url.startswith("sqlite:///"):
        from pathlib import Path

        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    metadata.create_all(engine)
    check_schema(engine, url)
    return engine


def check_schema(engine: sa.Engine, url: str) -> None:
    """Refuse an event log whose tables predate this version (``create_all`` never alters an
    existing table): every write would fail and the impressions would be lost."""
    from storerec.errors import UserError

    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise UserError(
                f"the event log at {url} has an older '{table.name}' table (no column {', '.join(missing)}): "
                "this version cannot write to it. Move that database away (it stays readable as it is) "
                "or set eventlog.url to a new one"
            )


@dataclass
class _Batch:
    impressions: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    futures: list[tuple[Future, int]] = field(default_factory=list)  # (future, rows it waits for)



class EventLog:
    """Batched, off-request-path writer over one SQLAlchemy engine."""

    def __init__(self, url: str, *, flush_ms: int = 200, batch_size: int = 5000) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.flush_s = flush_ms / 1000.0
        self.batch_size = batch_size
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()  # feedback is waiting for a commit
        self._thread = threading.Thread(target=self._run, name="storerec-eventlog", daemon=True)
        self._closed = False
        self._thread.start()

    # ---- producers (request path: no I/O) -------------------------------------------------------

    def log_impression(self, row: dict[str, Any], item_ids: list[str]) -> None:
        """Queue one returned list (``row`` has the ``impressions`` columns)."""
        self._q.put(("imp", row, item_ids))

    def log_feedback(self, rows: list[dict[str, Any]]) -> Future:
        """Queue feedback rows; the future resolves (to the number stored) once committed."""
        fut: Future = Future()
        self._q.put(("fb", rows, fut))
        self._wake.set()
        return fut

    # ---- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        # Wake every flush interval (or at once for feedback, or to stop) and take everything
        # queued: waking per impression would make this thread fight the request thread for the
        # GIL on every request, and each commit costs an fsync.
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            batch = _Batch()
            n = 0
            while True:
                try:
                    entry = self._q.get_nowait()
                except queue.Empty:
                    break
                self._add(batch, entry)
                n += 1
                if n >= self.batch_size:
                    self._write(batch)
                    batch, n = _Batch(), 0
            if n:
                self._write(batch)
            if stopping:
                return

    @staticmethod
    def _add(batch: _Batch, entry: tuple) -> None:
        if entry[0] == "imp":
            _, row, item_ids = entry
            row["items"] = json.dumps(item_ids)
            batch.impressions.append(row)
        else:
            _, rows, fut = entry
            batch.feedback.extend(rows)
            batch.futures.append((fut, len(rows)))

    def _write(self, batch: _Batch) -> None:
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    if batch.impressions:
                        self._insert_impressions(conn, batch.impressions)
                    if batch.feedback:
                        self._insert_feedback(conn, batch.feedback)
                break
            except sa.exc.OperationalError as exc:  # e.g. database is locked: retry
                log.warning("event log write failed (attempt %d): %s", attempt + 1, exc)
                time.sleep(0.05 * 2**attempt)
            except Exception as exc:
                log.error("event log write failed, %d impressions and %d events not stored: %s",
                          len(batch.impressions), len(batch.feedback), exc)
                for fut, _ in batch.futures:
                    fut.set_exception(exc)
                return
        else:
            exc = RuntimeError("the event log database stayed unavailable")
            log.error("%s: %d impressions and %d events not stored", exc, len(batch.impressions), len(batch.feedback))
            for fut, _ in batch.futures:
                fut.set_exception(exc)
            return
        for fut, n in batch.futures:
            fut.set_result(n)

    _SQLITE_ROWS_PER_INSERT = 500  # 5,000 parameters per statement (SQLite allows 32,766)
    _IMP_COLS = ("request_id", "ts", "user_id", "session_id", "experiment", "variant", "model", "model_version", "page", "items")

    def _insert_impressions(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """On SQLite a plain ``executemany`` of tuples (timestamps in SQLAlchemy's SQLite text
        format): most of the work stays in C, so the writer holds the GIL (which the request
        thread needs) as briefly as possible. Other databases go through SQLAlchemy Core."""
        if conn.dialect.name != "sqlite":
            conn.execute(impressions.insert(), rows)
            return
        data: list[Any] = []
        for r in rows:
            ts = r["ts"].astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")  # "%Y-%m-%d %H:%M:%S.%f"
            data += (r["request_id"], ts, r["user_id"], r["session_id"], r["experiment"], r["variant"], r["model"], r["model_version"], r["page"], r["items"])
        # Many rows per statement: each statement releases and retakes the GIL once, not per row.
        width = len(self._IMP_COLS)
        per = self._SQLITE_ROWS_PER_INSERT
        one = f"({', '.join('?' * width)})"
        for start in range(0, len(rows), per):
            n = min(per, len(rows) - start)
            sql = f"INSERT INTO impressions ({', '.join(self._IMP_COLS)}) VALUES {', '.join([one] * n)}"
            conn.exec_driver_sql(sql, tuple(data[start * width : (start + n) * width]))

    def _insert_feedback(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        with_id = [r for r in rows if r.get("event_id")]
        without = [r for r in rows if not r.get("event_id")]
        if without:
            conn.execute(feedback.insert(), without)
        if with_id:
            ids = [r["event_id"] for r in with_id]
            seen = {row[0] for row in conn.execute(sa.select(feedback.c.event_id).where(feedback.c.event_id.in_(ids)))}
            fresh, batch_ids = [], set()
            for r in with_id:
                if r["event_id"] not in seen and r["event_id"] not in batch_ids:
                    fresh.append(r)
                    batch_ids.add(r["event_id"])
            if fresh:
                conn.execute(feedback.insert(), fresh)

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued and stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.engine.dispose()


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def read_frames(url: str, experiment: str | None = None) -> dict[str, Any]:
    """Impressions, their items (one row per shown item, with its rank) and feedback as polars
    frames, optionally one experiment's."""
    import polars as pl

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
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


def recent_activity(engine: sa.Engine, since: datetime) -> tuple[list[tuple[str, str, datetime]], list[tuple[str, str, datetime]]]:
    """``(user, item, ts)`` of impressions and of interactions since ``since`` (to rebuild the
    frequency cap after a restart)."""
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


def _utc(ts: datetime) -> datetime:
    """SQLite gives naive datetimes back: they were stored as UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
