"""PostgreSQL for the tests: is a server there, and a throwaway database per test.

The server is the one at 127.0.0.1:5432 (user postgres, trust authentication, maintenance
database ``test``); tests that need it skip, with the reason, when it does not answer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

HOST, PORT, USER, ADMIN_DB = "127.0.0.1", 5432, "postgres", "test"


def _admin():  # a psycopg.Connection (psycopg is imported lazily)
    import psycopg

    return psycopg.connect(host=HOST, port=PORT, user=USER, dbname=ADMIN_DB, autocommit=True, connect_timeout=3)


@lru_cache(maxsize=1)
def _probe() -> str | None:
    try:
        with _admin() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # not installed, refused, timed out, auth
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def pg_available() -> bool:
    """A PostgreSQL server answers at 127.0.0.1:5432 (asked once per session)."""
    return _probe() is None


def pg_skip_reason() -> str:
    return f"PostgreSQL not reachable at {HOST}:{PORT}: {_probe()}"


def url_of(dbname: str) -> str:
    return f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{dbname}"


PREFIX = "storerec_test_"
USED = "postgresql-used"  # a file in the session's private TMPDIR: the session's end looks for its databases


def session_prefix(marker: str) -> str:
    """The start of the name of every database a test session (``marker``: its id) creates."""
    return f"{PREFIX}{marker[:8]}_"


@contextmanager
def temp_database() -> Iterator[str]:
    """A new empty database ``storerec_test_<session>_<xdist worker>_<random hex>`` (unique per
    session, worker and call, so parallel workers and sessions never share one); yields its
    SQLAlchemy URL and drops it afterwards (``WITH (FORCE)``: connections a test left open do not
    keep it alive). The session's end drops, and reports, any of its databases still there."""
    import tempfile

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")  # gw0, gw1, ... under pytest-xdist
    name = f"{session_prefix(os.environ.get('STOREREC_TEST_SESSION', 'nosession'))}{worker}_{secrets.token_hex(6)}"
    (Path(tempfile.gettempdir()) / USED).touch()
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_of(name)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def leftover_databases(marker: str) -> list[str]:
    """Drop the databases the test session ``marker`` left behind; returns their names."""
    pattern = session_prefix(marker).replace("_", r"\_") + "%"
    with _admin() as conn:
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,))]
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return sorted(names)
