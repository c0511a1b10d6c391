"""The campaign ledger: who each loyalty campaign (``storerec campaign``) went to, in the event log.

One ``campaign_sends`` row per member of a campaign (schema revision 0003): the campaign id, its
kind, the member, when the campaign was generated, whether the member was held out (the holdout
receives nothing) and how many items their list had. It serves

* the frequency cap across campaigns: :func:`contacted_since` gives the members who were sent
  something (holdout rows do not count: those members received nothing) since a time, e.g.
  seven days before the new campaign;
* the sticky holdout and ``campaign-report``: :func:`campaign_members` gives a campaign's
  treated and held-out members.

:func:`record_campaign` writes a whole campaign in one transaction: all its rows or none, and a
campaign id already recorded is refused (:class:`CampaignExists`) without writing anything.
``storerec forget-user`` deletes a member's rows (:func:`storerec.events.eventlog.delete_users`).

Every function takes an engine (it opens and closes its own connection and transaction) or a
connection (the caller's; :func:`record_campaign` then writes within the caller's transaction, or
in one of its own when none is open).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from storerec.events.eventlog import _utc, campaign_sends

if TYPE_CHECKING:
    import polars as pl

INSERT_CHUNK = 1_000  # rows per INSERT statement (all in one transaction)
_PG_LEDGER_LOCK = 0x73726563  # pg_advisory_xact_lock(key, hashtext(campaign_id)) namespace: "srec"

MEMBER_COLUMNS = ("user_id", "holdout", "n_items", "ts", "kind", "holdout_share")


class CampaignExists(ValueError):
    """The campaign id is recorded already (nothing of the new campaign was written)."""

    def __init__(self, campaign_id: str) -> None:
        super().__init__(f"campaign id {campaign_id!r} is already recorded in the event log")
        self.campaign_id = campaign_id


Bind = sa.Engine | sa.Connection


@contextmanager
def _transaction(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Engine):
        with bind.begin() as conn:
            yield conn
    elif bind.in_transaction():
        yield bind  # the caller's transaction: an error raised here makes it roll back
    else:
        with bind.begin():
            yield bind


@contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Engine):
        with bind.connect() as conn:
            yield conn
    else:
        yield bind


def _db_ts(conn: sa.Connection, ts: datetime) -> datetime:
    """``ts`` as stored: an aware UTC instant (PostgreSQL), naive UTC (SQLite keeps text)."""
    if ts.tzinfo is None:
        raise ValueError("campaign timestamps must be timezone-aware")
    ts = ts.astimezone(UTC)
    return ts.replace(tzinfo=None) if conn.dialect.name == "sqlite" else ts


def _lock_campaign_id(conn: sa.Connection, campaign_id: str) -> None:
    """Serialise the writers of one campaign id until this transaction ends, so that checking
    "not recorded yet" and inserting cannot interleave with another process doing the same: a
    transaction-scoped advisory lock on PostgreSQL, SQLite's write lock (taken by a no-op
    delete) on SQLite."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:ns, hashtext(:cid))"), {"ns": _PG_LEDGER_LOCK, "cid": campaign_id})
    else:
        conn.exec_driver_sql(f"DELETE FROM {campaign_sends.name} WHERE 0")


def record_campaign(bind: Bind, campaign_id: str, kind: str, ts: datetime, members: Sequence[tuple[str, bool, int]],
                    holdout_share: float | None = None) -> int:
    """Record a campaign: one row per ``(user_id, holdout, n_items)`` of ``members``, all at
    ``ts`` (when it was generated, timezone-aware), in one transaction; returns the rows written.

    All or nothing: a campaign id already recorded raises :class:`CampaignExists` (naming it),
    and any failure of the database midway leaves none of the rows. Members are checked first
    (a :class:`ValueError` naming the problem: an empty id, a member listed twice, a negative
    ``n_items``)."""
    if not campaign_id:
        raise ValueError("campaign id must not be empty")
    if not kind:
        raise ValueError("campaign kind must not be empty")
    if holdout_share is not None and not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"campaign {campaign_id!r}: holdout share {holdout_share} must be at least 0 and below 1")
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for user_id, holdout, n_items in members:
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"campaign {campaign_id!r}: member ids must be non-empty strings, not {user_id!r}")
        if user_id in seen:
            raise ValueError(f"campaign {campaign_id!r}: member {user_id!r} is listed twice")
        if int(n_items) < 0:
            raise ValueError(f"campaign {campaign_id!r}: member {user_id!r} has n_items {n_items} < 0")
        seen.add(user_id)
        rows.append({"campaign_id": campaign_id, "kind": kind, "user_id": user_id, "holdout": bool(holdout), "n_items": int(n_items),
                     "holdout_share": holdout_share})
    with _transaction(bind) as conn:
        stamp = _db_ts(conn, ts)
        _lock_campaign_id(conn, campaign_id)
        c = campaign_sends.c
        if conn.execute(sa.select(c.id).where(c.campaign_id == campaign_id).limit(1)).first() is not None:
            raise CampaignExists(campaign_id)
        for start in range(0, len(rows), INSERT_CHUNK):
            conn.execute(campaign_sends.insert(), [dict(r, ts=stamp) for r in rows[start:start + INSERT_CHUNK]])
    return len(rows)


def contacted_since(bind: Bind, since: datetime) -> set[str]:
    """Members sent something (a row that is not a holdout) at or after ``since``: the ones the
    frequency cap keeps out of a new campaign. Held-out members received nothing: not counted."""
    c = campaign_sends.c
    with _connection(bind) as conn:
        q = sa.select(c.user_id).where(c.ts >= _db_ts(conn, since), c.holdout.is_(False)).distinct()
        return set(conn.execute(q).scalars().all())


def campaign_members(bind: Bind, campaign_id: str) -> pl.DataFrame:
    """A campaign's members, treated and held out: ``user_id``, ``holdout``, ``n_items``, ``ts``
    (UTC), ``kind``, ``holdout_share`` (the share it held out, None when not recorded), by
    ``user_id``; an empty frame with those columns for an unknown id."""
    import polars as pl

    c = campaign_sends.c
    with _connection(bind) as conn:
        rows = conn.execute(sa.select(c.user_id, c.holdout, c.n_items, c.ts, c.kind, c.holdout_share)
                            .where(c.campaign_id == campaign_id).order_by(c.user_id)).all()
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "user_id": pl.String, "holdout": pl.Boolean, "n_items": pl.Int64, "ts": pl.Datetime("us", "UTC"), "kind": pl.String,
        "holdout_share": pl.Float64,
    }
    data = {
        "user_id": [r.user_id for r in rows],
        "holdout": [bool(r.holdout) for r in rows],
        "n_items": [int(r.n_items) for r in rows],
        "ts": [_utc(r.ts) for r in rows],
        "kind": [r.kind for r in rows],
        "holdout_share": [None if r.holdout_share is None else float(r.holdout_share) for r in rows],
    }
    return pl.DataFrame(data, schema=schema)


def campaign_ids(bind: Bind) -> list[dict[str, object]]:
    """The recorded campaigns, newest first: ``campaign_id``, ``kind``, ``ts`` (UTC), ``members``
    and ``held_out``; empty when none is recorded (or the log predates the ledger, schema 0003)."""
    c = campaign_sends.c
    with _connection(bind) as conn:
        if not sa.inspect(conn).has_table(campaign_sends.name):
            return []
        q = (sa.select(c.campaign_id, c.kind, sa.func.min(c.ts).label("ts"), sa.func.count().label("members"),
                       sa.func.sum(sa.case((c.holdout.is_(True), 1), else_=0)).label("held_out"))
             .group_by(c.campaign_id, c.kind).order_by(sa.func.min(c.ts).desc(), c.campaign_id))
        rows = conn.execute(q).all()
    return [{"campaign_id": r.campaign_id, "kind": r.kind, "ts": _utc(r.ts), "members": int(r.members), "held_out": int(r.held_out or 0)} for r in rows]
