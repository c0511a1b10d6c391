"""Reading and writing the data folder: Parquet, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl

from storerec.core.errors import UserError
from storerec.core.schema import check_schema

TABLE_FILES = {"events": "events.parquet", "items": "items.parquet", "users": "users.parquet"}


class DataMissingError(UserError, FileNotFoundError):
    """A table the step needs is not in the data folder; the message says how to create it."""


def _temp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; give the result the usual 0644 so a service running as
    # another user can read the data after the rename.
    os.fchmod(fd, 0o644)
    os.close(fd)
    return Path(tmp)


def write_atomic(frames: dict[Path, pl.DataFrame]) -> None:
    """Write several Parquet files so that readers see all old or (nearly) all new files.

    Every file is first written in full to a temporary file beside its target; only when all of
    them are written are they renamed into place (``os.replace`` is atomic per file). If any
    write fails, the temporaries are removed and the previous files are untouched.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for path, df in frames.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(path)
            temps.append((tmp, path))
            df.write_parquet(tmp, compression="zstd", statistics=True)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def table_path(data_dir: Path, table: str) -> Path:
    return Path(data_dir) / TABLE_FILES[table]


def write_tables(data_dir: Path, tables: dict[str, pl.DataFrame]) -> dict[str, Path]:
    """Check each table against its schema, then write them atomically into ``data_dir``."""
    for name, df in tables.items():
        check_schema(df, name)
    paths = {name: table_path(data_dir, name) for name in tables}
    write_atomic({paths[name]: df for name, df in tables.items()})
    return paths


def read_table(data_dir: Path, table: str, *, lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
    """Read one table from the data folder, with an error that says how to create it."""
    path = table_path(data_dir, table)
    if not path.exists():
        raise DataMissingError(
            f"{path} not found: create it with `storerec simulate` (built-in store) or "
            f"`storerec import` (your data), or point --data-dir / STOREREC__DATA__DIR at it"
        )
    frame: pl.DataFrame | pl.LazyFrame = pl.scan_parquet(path) if lazy else pl.read_parquet(path)
    return _without_forgotten(Path(data_dir), frame)


def _without_forgotten(data_dir: Path, frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """Rows of users erased with `storerec forget-user` never reach profiles, training or
    serving, even from a table restored from an old backup (a cheap check: nothing to do unless
    the erasure record exists)."""
    from storerec.features.forget import forgotten_hashes, forgotten_ids

    if not (data_dir / "forgotten.parquet").exists():
        return frame
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    if "user_id" not in names:
        return frame
    hashes = forgotten_hashes(data_dir)
    users = frame.select(pl.col("user_id").unique()).collect() if isinstance(frame, pl.LazyFrame) else frame.select(pl.col("user_id").unique())
    found = forgotten_ids(users["user_id"].drop_nulls().to_list(), hashes)
    if not found:
        return frame
    return frame.filter(~pl.col("user_id").is_in(sorted(found)).fill_null(False))


def has_table(data_dir: Path, table: str) -> bool:
    return table_path(data_dir, table).exists()
