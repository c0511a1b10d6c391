"""Alembic migrations of the event log (``storerec/events/eventlog.py``).

Run them through :func:`storerec.events.eventlog.upgrade` or ``storerec eventlog upgrade``; there is no
``alembic.ini``: the configuration is built in code, and the version table is
``storerec_eventlog_version`` so it never meets another tool's ``alembic_version``.

A new revision: ``versions/NNNN_what.py`` with ``revision = "NNNN"`` and ``down_revision`` the
previous one (``script.py.mako`` is the template), the matching change to the ``sa.Table``
definitions in ``storerec/events/eventlog.py``, and ``tests/test_eventlog.py`` checks that the migrated
schema and the tables agree.
"""
