"""MovieLens-100K import: every mapping rule on a tiny folder, plus the real data set when present."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import TABLES
from storerec.core.schema import Columns as C
from storerec.core.settings import Settings
from storerec.features.importer import ImportRejected, ImportSummary, import_movielens
from storerec.features.io import read_table

ML_100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def _write_ml(folder: Path, ratings: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    items = [
        "1|Toy Story (1995)|01-Jan-1995||http://x/1|" + _flags("Animation", "Children's", "Comedy"),
        f"2|Café Society (1997)|15-Aug-1997||http://x/2|{_flags('Drama', 'Romance')}",
        f"3|unknown|||http://x/3|{_flags()}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    users = ["1|17|M|student|85711", "2|18|F|writer|02139", "3|24|M|other|T8H1N", "4|25|F|artist|10003",
             "5|64|M|retired|55105", "6|65|F|retired|", "7|40|M|engineer|94043"]  # fmt: skip
    (folder / "u.user").write_text("\n".join(users) + "\n")
    ratings = ratings or [
        "1\t1\t5\t881250949",
        "1\t2\t3\t881250000",  # user 1's first rating
        "2\t3\t4\t891717742",
        "3\t1\t1\t878887116",
        "4\t2\t2\t880606923",
        "5\t1\t4\t886397596",
        "6\t3\t5\t884182806",
    ]  # user 7 has no ratings
    (folder / "u.data").write_text("\n".join(ratings) + "\n")
    return folder


def _import(ml: Path, out: Path, quarantine: bool = False, mode: str | None = None) -> ImportSummary:
    return import_movielens(
        Settings(), ml, out, quarantine=quarantine, max_report=20, progress=Progress("t", quiet=True), mode=mode  # type: ignore[arg-type]
    )


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def test_movielens_mapping_rules(tmp_path: Path) -> None:
    ml = _write_ml(tmp_path / "ml")
    out = tmp_path / "data"
    summary = _import(ml, out)
    assert {t: s.accepted for t, s in summary.tables.items()} == {"events": 7, "items": 3, "users": 7}
    for table, schema in TABLES.items():
        assert read_table(out, table).schema == pl.Schema(schema)

    ev = read_table(out, "events")
    assert ev[C.User].to_list() == ["1", "1", "2", "3", "4", "5", "6"]  # file order, ids as strings
    assert ev[C.Item].to_list() == ["1", "2", "3", "1", "2", "1", "3"]
    assert set(ev[C.EventType]) == {"rating"}
    assert set(ev[C.Quantity]) == {1}
    assert ev[C.Price].null_count() == ev.height and ev[C.Session].null_count() == ev.height
    assert ev[C.Value].to_list() == [5.0, 3.0, 4.0, 1.0, 2.0, 4.0, 5.0]
    assert ev[C.Timestamp][0] == _utc(881250949)

    it = read_table(out, "items")
    assert it[C.Item].to_list() == ["1", "2", "3"]
    assert it[C.Title].to_list() == ["Toy Story (1995)", "Café Society (1997)", "unknown"]  # latin-1 decoded
    assert it[C.Category].to_list() == ["Movies > Animation", "Movies > Drama", "Movies > unknown"]
    assert it[C.Tags].to_list() == [["Animation", "Children's", "Comedy"], ["Drama", "Romance"], []]
    assert it[C.CreatedAt].to_list() == [
        datetime(1995, 1, 1, tzinfo=UTC),
        datetime(1997, 8, 15, tzinfo=UTC),
        None,
    ]
    assert it[C.InStock].to_list() == [True] * 3
    assert it[C.Brand].null_count() == 3 and it[C.Price].null_count() == 3

    us = read_table(out, "users")
    assert us[C.User].to_list() == [str(i) for i in range(1, 8)]
    assert us[C.AgeBand].to_list() == ["<18", "18-24", "18-24", "25-34", "55-64", "65+", "35-44"]
    assert us[C.Gender].to_list() == ["M", "F", "M", "F", "M", "F", "M"]
    assert us[C.Occupation][0] == "student"
    assert us[C.Region].to_list() == ["US-8", "US-0", None, "US-1", "US-5", None, "US-9"]
    # signup_at is derived: MovieLens has none, so it is the user's first rating.
    assert us[C.SignupAt][0] == _utc(881250000)
    assert us[C.SignupAt][1] == _utc(891717742)
    assert us[C.SignupAt][6] is None  # no ratings

    record = json.loads((out / "import.json").read_text())
    assert record["kind"] == "movielens-100k" and record["tables"]["items"]["source"] == str(ml / "u.item")


def test_movielens_bad_rows_are_reported_like_any_file(tmp_path: Path) -> None:
    ratings = ["1\t1\t5\t881250949", "2\t9\t4\t891717742", "3\t1\tfive\t878887116", "4\t2\t2\tsoon"]
    ml = _write_ml(tmp_path / "ml", ratings=ratings)
    out = tmp_path / "data"
    with pytest.raises(ImportRejected) as exc:
        _import(ml, out)
    report = str(exc.value)
    assert f"events file {ml / 'u.data'}" in report
    assert f"row 2 (line 2), item_id: unknown item_id '9' (not in {ml / 'u.item'})" in report
    assert "row 3 (line 3), rating (value): not a number [value 'five']" in report
    assert "row 4 (line 4), unix_timestamp (timestamp): unparsable timestamp" in report
    assert not out.exists()

    summary = _import(ml, out, quarantine=True)
    t = summary.tables["events"]
    assert (t.read, t.accepted, t.quarantined) == (4, 1, 3)
    q = pl.read_csv(t.quarantine_file, infer_schema=False)
    assert q.columns == ["user_id", "item_id", "rating", "unix_timestamp", "row", "field", "reason"]


def test_movielens_bad_age_is_reported(tmp_path: Path) -> None:
    ml = _write_ml(tmp_path / "ml")
    (ml / "u.user").write_text("1|17|M|student|85711\n2|old|F|writer|02139\n")
    with pytest.raises(ImportRejected) as exc:
        _import(ml, tmp_path / "data")
    assert f"users file {ml / 'u.user'}" in str(exc.value) and "row 2 (line 2), age: not a number" in str(exc.value)


@pytest.mark.parametrize("name", ["u.data", "u.item", "u.user", "u.genre"])
def test_movielens_missing_file_is_named(tmp_path: Path, name: str) -> None:
    ml = _write_ml(tmp_path / "ml")
    (ml / name).unlink()
    with pytest.raises(UserError, match=name):
        _import(ml, tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_movielens_into_a_folder_with_tables_needs_append_or_replace(tmp_path: Path) -> None:
    from storerec.cli import main

    ml = _write_ml(tmp_path / "ml")
    out = tmp_path / "data"
    _import(ml, out)
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    with pytest.raises(UserError) as exc:
        _import(ml, out)
    msg = str(exc.value)
    for table, rows in (("events", 7), ("items", 3), ("users", 7)):
        assert f"{out / (table + '.parquet')} already holds the {table} table ({rows} rows)" in msg
    assert "--append" in msg and "--replace" in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    assert main(["-q", "import", "--movielens", str(ml), "--data-dir", str(out)]) == 2

    summary = _import(ml, out, mode="append")  # the same folder again: every row is already there
    assert {t: (s.before, s.after, s.appended, s.existing_duplicates) for t, s in summary.tables.items()} == {
        "events": (7, 7, 0, 7), "items": (3, 3, 0, 3), "users": (7, 7, 0, 7),
    }
    summary = _import(ml, out, mode="replace")
    assert "rows: 7 before, 7 after (table replaced)" in summary.render()


def test_movielens_drops_forgotten_users(tmp_path: Path) -> None:
    from storerec.features.forget import record_forgotten

    ml = _write_ml(tmp_path / "ml")
    out = tmp_path / "data"
    record_forgotten(out, ["1", "7"])
    summary = _import(ml, out)
    assert "1" not in read_table(out, "events")[C.User].to_list()
    assert read_table(out, "users")[C.User].to_list() == ["2", "3", "4", "5", "6"]
    assert summary.tables["events"].forgotten == 2 and summary.tables["users"].forgotten == 2
    assert "2 rows of forgotten users dropped" in summary.render()


@pytest.mark.data
def test_real_movielens_100k(tmp_path: Path) -> None:
    if not (ML_100K / "u.data").exists():
        pytest.skip(f"{ML_100K} not present")
    summary = _import(ML_100K, tmp_path / "data")
    counts = {t: s.accepted for t, s in summary.tables.items()}
    assert counts == {"events": 100_000, "items": 1_682, "users": 943}
    assert all(s.quarantined == 0 and s.deduplicated == 0 for s in summary.tables.values())
    users = read_table(tmp_path / "data", "users")
    assert users[C.SignupAt].null_count() == 0  # every MovieLens user has >= 20 ratings
    items = read_table(tmp_path / "data", "items")
    assert items.filter(pl.col(C.Title).str.contains("é")).height > 0  # latin-1 titles decoded


def test_movielens_ratings_count_by_their_stars_by_default(tmp_path: Path) -> None:
    """The default ``events.strength.rating`` (value, linear) makes the interaction matrix hold the stars."""
    import numpy as np

    from storerec.models.dataset import IdMap, InteractionConfig, interaction_matrix

    _import(_write_ml(tmp_path / "ml"), tmp_path / "d")
    events = read_table(tmp_path / "d", "events")
    settings = Settings()
    assert settings.events.strength["rating"].source == "value"
    users, items = IdMap.from_values(["1", "3", "6"]), IdMap.from_values(["1", "2", "3"])
    cfg = InteractionConfig(weights=settings.events.weights, strength=settings.events.strength)
    m = interaction_matrix(events, users, items, cfg).toarray()
    np.testing.assert_allclose(m, [[5.0, 3.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    liked = {"rating": {"source": "value", "transform": "rating", "threshold": 4}}  # only 4-5 stars count, 1 each
    m = interaction_matrix(events, users, items, InteractionConfig(weights=settings.events.weights, strength=liked)).toarray()
    np.testing.assert_allclose(m, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
