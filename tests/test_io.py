"""Atomic writes: a failure part-way leaves every previous file untouched."""

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from storerec.core.schema import EVENTS_SCHEMA, check_schema, conform
from storerec.features import io


def _events(n: int) -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {
                "user_id": [f"u{i}" for i in range(n)],
                "item_id": ["i1"] * n,
                "event_type": ["view"] * n,
                "timestamp": [datetime(2026, 1, 1, tzinfo=UTC)] * n,
            }
        ),
        "events",
    )


def test_conform_adds_optional_columns_with_defaults() -> None:
    df = _events(3)
    check_schema(df, "events")
    assert df.schema == pl.Schema(EVENTS_SCHEMA)
    assert df["quantity"].to_list() == [1, 1, 1]
    assert df["price"].null_count() == 3


def test_failed_multi_file_write_leaves_old_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    io.write_atomic({a: _events(2), b: _events(2)})
    before = {p: p.read_bytes() for p in (a, b)}

    real = pl.DataFrame.write_parquet
    calls = {"n": 0}

    def flaky(self: pl.DataFrame, *args, **kwargs):  # second file fails mid-way
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", flaky)
    with pytest.raises(OSError, match="disk full"):
        io.write_atomic({a: _events(5), b: _events(5)})
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]  # no temporaries left


def test_read_missing_table_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(io.DataMissingError, match="storerec simulate"):
        io.read_table(tmp_path, "events")


def test_write_tables_rejects_wrong_schema(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="events table has columns"):
        io.write_tables(tmp_path, {"events": pl.DataFrame({"user_id": ["u"]})})
    assert not (tmp_path / "events.parquet").exists()
