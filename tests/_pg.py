"""PostgreSQL for the tests: is a server there, and a throwaway database per test.

The server is the one at 127.0.0.1:5432 (user postgres, trust authentication, maintenance
database ``test``); tests that need it skip, with the reason, when it does not answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

HOST, PORT, USER, ADMIN_DB = "127.0.0.1", 5432, "postgres", "test"


def _admin():  # noqa: ANN202 - psycopg.Connection, imported lazily
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


@contextmanager
def temp_database() -> Iterator[str]:
    """A new empty database ``storerec_test_<random hex>``; yields its SQLAlchemy URL and drops
    it afterwards (``WITH (FORCE)``: connections a test left open do not keep it alive)."""
    name = f"storerec_test_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_of(name)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
