"""Forgotten users: the record of erasure requests, kept so that their data never comes back.

``storerec forget-user ID`` removes a user's rows everywhere (see :func:`storerec.forget.forget_users`)
and appends the user's **hashed** id here, ``<data>/forgotten.parquet`` (``id_hash``,
``requested_at``). The record holds no id in clear: it can answer "was this id forgotten?" for
an id you already have, and nothing else. Every later import drops rows of a forgotten user
(counted in the import summary), and training and profiles read only tables that no longer
hold them.

The hash is SHA-256 of ``"storerec-user:" + id`` (a fixed prefix, so the value is not the plain
SHA-256 of the id that other systems may store); logs use its first 12 hex digits, see
:func:`redact`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

FORGOTTEN_FILE = "forgotten.parquet"
_PREFIX = "storerec-user:"


def user_hash(user_id: str) -> str:
    """The hashed id stored in the erasure record."""
    return hashlib.sha256((_PREFIX + str(user_id)).encode("utf-8")).hexdigest()


def redact(user_id: str | None) -> str:
    """How a user id appears in logs and reports: ``user#`` and 12 hex digits of its hash."""
    if user_id is None:
        return "user#none"
    return "user#" + user_hash(user_id)[:12]


def forgotten_path(data_dir: Path) -> Path:
    return Path(data_dir) / FORGOTTEN_FILE


def forgotten_hashes(data_dir: Path) -> set[str]:
    """Hashed ids of every user forgotten in this data folder (empty when none)."""
    path = forgotten_path(data_dir)
    if not path.exists():
        return set()
    return set(pl.read_parquet(path, columns=["id_hash"])["id_hash"].to_list())


def record_forgotten(data_dir: Path, user_ids: Iterable[str], now: datetime | None = None) -> int:
    """Append the hashed ids (once each) to the record, atomically; returns how many are new."""
    from storerec.features.io import write_atomic

    now = now or datetime.now(UTC)
    have = forgotten_hashes(data_dir)
    fresh = sorted({user_hash(u) for u in user_ids} - have)
    if not fresh:
        return 0
    new = pl.DataFrame({"id_hash": fresh, "requested_at": [now] * len(fresh)},
                       schema={"id_hash": pl.String, "requested_at": pl.Datetime("us", "UTC")})
    path = forgotten_path(data_dir)
    frame = pl.concat([pl.read_parquet(path), new]) if path.exists() else new
    write_atomic({path: frame})
    return len(fresh)


def drop_forgotten(df: pl.DataFrame, hashes: set[str], col: str = "user_id") -> tuple[pl.DataFrame, int]:
    """``df`` without the rows of forgotten users, and how many rows went."""
    if not hashes or col not in df.columns or df.height == 0:
        return df, 0
    # hash each distinct id once (166k users for 10M events), then filter by the ids found
    found = [u for u in df[col].drop_nulls().unique().to_list() if user_hash(str(u)) in hashes]
    if not found:
        return df, 0
    out = df.filter(~pl.col(col).is_in(found).fill_null(False))
    return out, df.height - out.height


def forgotten_ids(ids: Iterable[str], hashes: set[str]) -> set[str]:
    """Those of ``ids`` that were forgotten."""
    return {u for u in ids if u is not None and user_hash(str(u)) in hashes} if hashes else set()
