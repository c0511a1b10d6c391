"""`storerec sync-events`: the event log's new events appended to the data folder's events table.

Two tables of the log are synced, each with its own watermark: ``feedback`` (``POST /events``,
events on served lists, converted by :func:`storerec.events.export.to_events_table`) and
``behaviour`` (``POST /track``, storefront events not tied to a list, converted by
:func:`behaviour_to_events_table`: their quantity and unit price go to the events table's
``quantity`` and ``price``).

Flow: read ``<data>/sync-state.json`` (the watermarks) -> read each table's rows with an
``id`` above its watermark (plus any ids still owed, below) -> convert them to the events
table's columns -> drop rows of forgotten users -> set aside rows
already in the events table (:func:`storerec.features.importer.rows_already_in`, the rule of
``import --append``) -> write the table atomically (:func:`storerec.features.io.write_tables`)
-> only then write the new watermark, atomically.

The watermark is the log's own ``feedback.id`` (``behaviour.id``) (an integer primary key the database assigns),
not a timestamp: an event stored late with an older ``ts`` (a client retry, a delayed batch)
still gets a higher id, so it is not missed.

* **SQLite** assigns the id inside the single write transaction, so ids become visible in
  increasing order: ``id > watermark`` misses nothing.
* **PostgreSQL** takes ids from a sequence at insert time, and two writers (two replicas) can
  commit out of order: id 11 can be visible while id 10 is still in flight. So on PostgreSQL the
  ids below the new watermark not seen yet (within the last :data:`GAP_WINDOW` ids) are kept as
  *gaps* and asked for again on the next runs, for :data:`GAP_GRACE` (a writer's transaction is
  bounded by seconds; most gaps are ids a rolled-back batch or an ``ON CONFLICT`` skip burnt).

Crash safety: the table is written before the watermark, so a crash between the two leaves the
old watermark; the next run reads those events again and finds them already in the table. The
events table has no event id column, so "already in" means a row with every column equal (as
``import --append`` without an ``event_id``): two distinct log events identical in user, item,
type, time to the microsecond, session and price would be kept once on such a re-run.
Running twice appends nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from storerec.core.errors import UserError
from storerec.core.schema import EVENTS_SCHEMA
from storerec.core.schema import Columns as C
from storerec.events import eventlog as el
from storerec.events.export import to_events_table
from storerec.features.forget import drop_forgotten, forgotten_hashes
from storerec.features.importer import rows_already_in
from storerec.features.io import has_table, table_path, write_tables, write_text_atomic

STATE_FILE = "sync-state.json"
STATE_VERSION = 1
GAP_WINDOW = 10_000  # PostgreSQL: ids below the watermark still owed are looked for among the last this many
GAP_GRACE = timedelta(hours=1)  # ... and for this long after they were first missed


@dataclass
class SyncSummary:
    """What one sync did; :meth:`line` is what the CLI prints."""

    url: str
    read: int
    appended: int
    already_present: int
    forgotten: int
    before: int
    after: int
    watermark_before: int
    watermark: int
    gaps: int
    table: Path
    notes: list[str] = field(default_factory=list)
    read_behaviour: int = 0  # behaviour rows (POST /track); read/watermark above are feedback's
    behaviour_watermark_before: int = 0
    behaviour_watermark: int = 0

    def line(self) -> str:
        extra = f", {self.forgotten:,} of forgotten users dropped" if self.forgotten else ""
        owed = f", {self.gaps:,} id(s) below them still owed" if self.gaps else ""
        return (
            f"sync-events: read {self.read:,} new event(s) from {self.url} (id > {self.watermark_before:,}) "
            f"and {self.read_behaviour:,} behaviour event(s) (id > {self.behaviour_watermark_before:,}); "
            f"appended {self.appended:,}, already present {self.already_present:,}{extra} -> {self.table} "
            f"({self.before:,} -> {self.after:,} rows); watermark {self.watermark:,}, behaviour {self.behaviour_watermark:,}{owed}"
        )


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATE_FILE


def read_state(data_dir: Path) -> dict[str, Any]:
    path = state_path(data_dir)
    if not path.exists():
        return {"version": STATE_VERSION, "logs": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("logs"), dict):
            raise ValueError("no 'logs' object")
    except ValueError as exc:
        raise UserError(f"{path} is not a sync state ({exc}): move it away to sync from the start (rows already in the table are skipped)") from None
    return state


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Atomic: a crash leaves the previous watermark."""
    write_text_atomic(state_path(data_dir), json.dumps(state, indent=2, sort_keys=True) + "\n")


def _read_new(url: str, after: int, owed: list[int], table: sa.Table = el.feedback) -> tuple[pl.DataFrame, int | None, bool]:
    """Rows of ``table`` (feedback or behaviour) with ``id > after`` or ``id`` in ``owed``, by id;
    the table's highest id; and whether it is PostgreSQL. A log at revision 0001 has no behaviour
    table: no rows."""
    engine = el.read_engine(url)
    try:
        with el._connected(engine, url) as conn:
            el._require_tables(conn, url)
            pg = conn.dialect.name == "postgresql"
            schema = el._schema(table)
            if table is not el.feedback and not sa.inspect(conn).has_table(table.name):
                return pl.DataFrame(schema=schema), None, pg
            fb = table
            cond = fb.c.id > after
            if owed:
                cond = sa.or_(cond, fb.c.id.in_(owed))
            rows = [dict(r) for r in conn.execute(sa.select(fb).where(cond).order_by(fb.c.id)).mappings().all()]
            top = conn.execute(sa.select(sa.func.max(fb.c.id))).scalar()
    except sa.exc.DBAPIError as exc:
        raise UserError(f"cannot read the event log at {el.safe_url(url)}: {el.error_line(exc)}") from None
    finally:
        engine.dispose()
    frame = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return frame, top, pg


def behaviour_to_events_table(rows: pl.DataFrame) -> pl.DataFrame:
    """Behaviour rows as the events table: same event type, ``quantity`` and unit ``price`` as
    sent (price only on purchases), ``value`` empty. Anonymous events keep their session as the
    shopper id ``anonymous:<session>`` (as :func:`~storerec.events.export.to_events_table`)."""
    df = rows.select(
        pl.coalesce(pl.col("user_id"), pl.lit("anonymous:") + pl.col("session_id").fill_null("unknown")).alias(C.User),
        pl.col("item_id").alias(C.Item),
        pl.col("event_type").alias(C.EventType),
        pl.col("ts").alias(C.Timestamp),
        pl.col("quantity").fill_null(1).alias(C.Quantity),
        pl.col("price").alias(C.Price),
        pl.col("session_id").alias(C.Session),
        pl.lit(None, dtype=pl.Float64).alias(C.Value),
    )
    return df.select(pl.col(c).cast(t) for c, t in EVENTS_SCHEMA.items()).sort(C.Timestamp)


@dataclass
class _Read:
    """One log table's new rows and its watermarks."""

    table: sa.Table
    after: int
    frame: pl.DataFrame
    watermark: int
    gaps: dict[str, str]
    notes: list[str]


def _read_table(url: str, table: sa.Table, mine: dict[str, Any], full: bool, now: datetime) -> _Read:
    after = 0 if full else int(mine.get("last_id", 0))
    old_gaps: dict[str, str] = {} if full else dict(mine.get("gaps", {}))
    notes: list[str] = []
    rows, top, pg = _read_new(url, after, sorted(int(k) for k in old_gaps), table)
    if after and (top or 0) < after:
        # The log's ids went back (it was emptied or recreated): ids restart below the watermark.
        notes.append(f"the log's highest {table.name} id ({top or 0}) is below the watermark ({after}): reading it from the start")
        after, old_gaps = 0, {}
        rows, top, pg = _read_new(url, 0, [], table)
    ids = rows["id"].to_list()
    watermark = max([after, *ids])
    gaps = _gaps(after, watermark, set(ids), old_gaps, now) if pg else {}
    return _Read(table, after, rows, watermark, gaps, notes)


def _gaps(prev: int, new: int, seen: set[int], old: dict[str, str], now: datetime) -> dict[str, str]:
    """Ids still owed (id -> first missed, ISO): new holes in (prev, new] near the top, plus old
    ones neither seen now nor past :data:`GAP_GRACE`."""
    stamp = now.isoformat().replace("+00:00", "Z")
    out = {k: v for k, v in old.items() if int(k) not in seen and now - datetime.fromisoformat(v.replace("Z", "+00:00")) < GAP_GRACE}
    for i in range(max(prev + 1, new + 1 - GAP_WINDOW), new + 1):
        if i not in seen and str(i) not in out:
            out[str(i)] = stamp
    return out


def sync_events(data_dir: Path, url: str, *, full: bool = False, now: datetime | None = None) -> SyncSummary:
    """Append the log's events newer than the watermark to ``data_dir``'s events table.

    Parameters
    ----------
    data_dir
        The data folder; it must hold an events table.
    url
        The event log (``eventlog.url``).
    full
        Ignore the watermark and read the whole log (rows already in the table are skipped).

    Raises
    ------
    UserError
        The folder or its events table is missing or unreadable, the event log cannot be read,
        or the state file is corrupt.
    """
    data_dir = Path(data_dir)
    now = now or datetime.now(UTC)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist: create it with `storerec simulate` or `storerec import`, or pass --data-dir")
    if not has_table(data_dir, "events"):
        raise UserError(
            f"{table_path(data_dir, 'events')} not found: sync-events appends to an events table; "
            "create it with `storerec simulate` or `storerec import` first"
        )
    state = read_state(data_dir)
    key = el.safe_url(url)
    logged = state["logs"].get(key, {})
    fb_read = _read_table(url, el.feedback, logged.get("feedback", {}), full, now)
    bh_read = _read_table(url, el.behaviour, logged.get("behaviour", {}), full, now)
    notes = fb_read.notes + bh_read.notes
    fb = fb_read.frame

    path = table_path(data_dir, "events")
    try:
        existing = pl.read_parquet(path)  # the file as stored (read_table would drop forgotten users: not for a rewrite)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    new = pl.concat([to_events_table(fb), behaviour_to_events_table(bh_read.frame)])
    new, n_forgotten = drop_forgotten(new, forgotten_hashes(data_dir))
    present = rows_already_in(existing, new) if new.height else pl.Series("already_in", [], dtype=pl.Boolean)
    fresh = new.filter(~present)
    after_rows = existing.height
    if fresh.height:
        try:
            write_tables(data_dir, {"events": pl.concat([existing, fresh])})
        except ValueError as exc:  # the table on disk does not have the events schema
            raise UserError(f"cannot append to {path}: {exc}") from None
        after_rows += fresh.height

    # Only after the table is in place: a crash before this line re-reads these events next time.
    state.setdefault("version", STATE_VERSION)
    state["logs"][key] = {
        "feedback": {"last_id": fb_read.watermark, "gaps": fb_read.gaps},
        "behaviour": {"last_id": bh_read.watermark, "gaps": bh_read.gaps},
        "synced_at": now.isoformat().replace("+00:00", "Z"),
    }
    write_state(data_dir, state)
    return SyncSummary(
        url=key, read=fb.height, appended=fresh.height, already_present=int(present.sum()), forgotten=n_forgotten,
        before=existing.height, after=after_rows, watermark_before=fb_read.after, watermark=fb_read.watermark,
        gaps=len(fb_read.gaps) + len(bh_read.gaps), table=path, notes=notes, read_behaviour=bh_read.frame.height,
        behaviour_watermark_before=bh_read.after, behaviour_watermark=bh_read.watermark,
    )
