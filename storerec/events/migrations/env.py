"""Alembic environment of the event log: runs on the connection that
:func:`storerec.events.eventlog.upgrade` hands over (its transaction is committed by the caller)."""

from __future__ import annotations

from alembic import context

from storerec.events.eventlog import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the event log migrations through storerec.events.eventlog.upgrade() or `storerec eventlog upgrade`")

context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
