"""`storerec import`: reading, mapping, row validation, refusal, quarantine, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import TABLES
from storerec.core.schema import Columns as C
from storerec.core.settings import Settings
from storerec.features.importer import HINT, ImportRejected, ImportSummary, import_files
from storerec.features.io import read_table
from storerec.features.validate import parse_datetime

EVENTS_HEADER = "user_id,item_id,event_type,timestamp,quantity,price,session_id,value"
GOOD_EVENTS = [
    "u2,i1,view,2024-03-01T10:00:00Z,,,s1,",
    "u1,i2,purchase,2024-03-01 11:30:00+02:00,2,9.99,s1,",
    "u1,i1,cart,2024-03-01T11:00:00+01:00,1,,,",
    "u3,i2,rating,2024-03-02,,,,4.5",
]
ITEMS_HEADER = "item_id,title,category,brand,price,tags,created_at,in_stock"
GOOD_ITEMS = [
    "i2,Mug,Home > Kitchen,Acme,4.5,blue|ceramic,2024-01-01,yes",
    "i1,Pan,Home > Kitchen,,20,,,",
]
USERS_HEADER = "user_id,signup_at,age_band,gender,region,occupation"
GOOD_USERS = ["u1,2023-01-01T00:00:00,25-34,F,US-9,writer", "u2,,,,,"]


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _import(tmp_path: Path, out: str = "data", **kw: object) -> ImportSummary:
    args: dict = dict(events=None, items=None, users=None, mapping=None, quarantine=False, max_report=20)
    args.update(kw)
    return import_files(Settings(), tmp_path / out, progress=Progress("test", quiet=True), **args)  # type: ignore[arg-type]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Good imports


def test_good_import_has_exact_dtypes_order_and_values(tmp_path: Path) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    items = _csv(tmp_path / "items.csv", ITEMS_HEADER, GOOD_ITEMS)
    users = _csv(tmp_path / "users.csv", USERS_HEADER, GOOD_USERS)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "simulation.json").write_text("{}")

    summary = _import(tmp_path, events=events, items=items, users=users)

    data = tmp_path / "data"
    for table, schema in TABLES.items():
        df = read_table(data, table)
        assert df.schema == pl.Schema(schema), table  # dtypes exactly as in storerec.core.schema
    ev = read_table(data, "events")
    assert ev[C.User].to_list() == ["u2", "u1", "u1", "u3"]  # file order kept
    assert ev[C.Timestamp].to_list() == [
        datetime(2024, 3, 1, 10, tzinfo=UTC),
        datetime(2024, 3, 1, 9, 30, tzinfo=UTC),  # +02:00 converted to UTC
        datetime(2024, 3, 1, 10, tzinfo=UTC),  # +01:00
        datetime(2024, 3, 2, tzinfo=UTC),
    ]
    assert ev[C.Quantity].to_list() == [1, 2, 1, 1]  # empty -> default 1
    assert ev[C.Price].to_list() == [None, 9.99, None, None]
    assert ev[C.Value].to_list() == [None, None, None, 4.5]
    it = read_table(data, "items")
    assert it[C.Item].to_list() == ["i2", "i1"]
    assert it[C.Tags].to_list() == [["blue", "ceramic"], None]
    assert it[C.InStock].to_list() == [True, True]
    assert it[C.Brand].to_list() == ["Acme", None]
    us = read_table(data, "users")
    assert us[C.SignupAt].to_list() == [datetime(2023, 1, 1, tzinfo=UTC), None]

    assert all(t.read == t.accepted for t in summary.tables.values())
    assert summary.tables["events"].output == data / "events.parquet"
    assert not (data / "simulation.json").exists()  # the folder holds imported data now
    record = json.loads((data / "import.json").read_text())
    assert record["tables"]["events"]["accepted"] == 4 and record["tables"]["events"]["source"] == str(events)
    assert not (data / "quarantine").exists()
    text = summary.render()
    assert "events" in text and "accepted 4" in text and str(data / "events.parquet") in text


def test_values_are_not_coerced_on_read(tmp_path: Path) -> None:
    rows = ["007,0042,view,2024-01-01", "1e3,TRUE,view,2024-01-01"]
    events = _csv(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp", rows)
    _import(tmp_path, events=events)
    ev = read_table(tmp_path / "data", "events")
    assert ev[C.User].to_list() == ["007", "1e3"] and ev[C.Item].to_list() == ["0042", "TRUE"]


def test_parse_datetime_formats() -> None:
    values = pl.Series(
        [
            "2024-05-01",
            "2024-05-01T10:00:00",
            "2024-05-01 10:00:00.250Z",
            "2024-05-01T12:00:00+0200",
            "1714557600",  # a number is not a date without a unit
            "01/05/2024",
            None,
        ]
    )
    got = parse_datetime(values).to_list()
    utc = UTC
    assert got[:4] == [
        datetime(2024, 5, 1, tzinfo=utc),
        datetime(2024, 5, 1, 10, tzinfo=utc),
        datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=utc),
        datetime(2024, 5, 1, 10, tzinfo=utc),
    ]
    assert got[4:] == [None, None, None]
    paris = parse_datetime(pl.Series(["2024-07-01 12:00"]), tz="Europe/Paris").to_list()
    assert paris == [datetime(2024, 7, 1, 10, tzinfo=utc)]  # naive times are local to the zone
    assert parse_datetime(pl.Series(["01/05/2024"]), "%d/%m/%Y").to_list() == [datetime(2024, 5, 1, tzinfo=utc)]


# ---------------------------------------------------------------------------------------------
# One test per validation error: the report names the file, row (line) and field.

FUTURE = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
E_OK = "u1,i1,view,2024-01-01T00:00:00Z,1,1.0,,"  # row 1 of every events case

EVENT_CASES = {
    "missing user_id": (",i1,view,2024-01-01,1,,,", "user_id", "missing user_id"),
    "missing item_id": ("u1,,view,2024-01-01,1,,,", "item_id", "missing item_id"),
    "missing event_type": ("u1,i1,,2024-01-01,1,,,", "event_type", "missing event_type"),
    "unknown event type": (
        "u1,i1,click,2024-01-01,1,,,",
        "event_type",
        "unknown event type 'click' (expected one of view, favorite, cart, purchase, rating; add it to events.types",
    ),
    "unparsable timestamp": ("u1,i1,view,yesterday,1,,,", "timestamp", "unparsable timestamp"),
    "future timestamp": (f"u1,i1,view,{FUTURE},1,,,", "timestamp", "timestamp in the future"),
    "quantity not a number": ("u1,i1,view,2024-01-01,two,,,", "quantity", "not a number"),
    "negative quantity": ("u1,i1,view,2024-01-01,-2,,,", "quantity", "negative quantity"),
    "fractional quantity": ("u1,i1,view,2024-01-01,1.5,,,", "quantity", "not a whole number"),
    "price not a number": ("u1,i1,purchase,2024-01-01,1,9;99,,", "price", "not a number"),
    "negative price": ("u1,i1,purchase,2024-01-01,1,-5,,", "price", "negative price"),
    "value not a number": ("u1,i1,rating,2024-01-01,1,,,five", "value", "not a number"),
    "exact duplicate": (E_OK, "(all columns)", "exact duplicate of row 1"),
}


@pytest.mark.parametrize("case", sorted(EVENT_CASES))
def test_event_row_errors_are_reported(tmp_path: Path, case: str) -> None:
    bad, field, reason = EVENT_CASES[case]
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, [E_OK, bad])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events)
    report = str(exc.value)
    assert str(events) in report
    assert f"row 2 (line 3), {field}: {reason}" in report
    assert "row 1 " not in report  # the good row is not reported
    assert HINT in report
    assert not (tmp_path / "data").exists()  # nothing written


I_OK = "i1,Pan,Home,,1,,2024-01-01,true"
ITEM_CASES = {
    "missing item_id": (",Pot,Home,,1,,,", "item_id", "missing item_id"),
    "missing category": ("i2,Pot,,,1,,,", "category", "missing category"),
    "created_at unparsable": ("i2,Pot,Home,,1,,31/02/2024,", "created_at", "unparsable timestamp"),
    "created_at in the future": (f"i2,Pot,Home,,1,,{FUTURE},", "created_at", "timestamp in the future"),
    "price not a number": ("i2,Pot,Home,,cheap,,,", "price", "not a number"),
    "negative price": ("i2,Pot,Home,,-1,,,", "price", "negative price"),
    "in_stock not a boolean": ("i2,Pot,Home,,1,,,maybe", "in_stock", "not a boolean (expected true/false, 1/0 or yes/no)"),
    "duplicate item_id": ("i1,Other pan,Home,,2,,,", "item_id", "duplicate item_id, first seen at row 1"),
}


@pytest.mark.parametrize("case", sorted(ITEM_CASES))
def test_item_row_errors_are_reported(tmp_path: Path, case: str) -> None:
    bad, field, reason = ITEM_CASES[case]
    items = _csv(tmp_path / "items.csv", ITEMS_HEADER, [I_OK, bad])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, items=items)
    report = str(exc.value)
    assert str(items) in report and f"row 2 (line 3), {field}: {reason}" in report


USER_CASES = {
    "missing user_id": (",2024-01-01,,,,", "user_id", "missing user_id"),
    "signup_at unparsable": ("u2,soon,,,,", "signup_at", "unparsable timestamp"),
    "signup_at in the future": (f"u2,{FUTURE},,,,", "signup_at", "timestamp in the future"),
    "duplicate user_id": ("u1,2024-02-01,,,,", "user_id", "duplicate user_id, first seen at row 1"),
}


@pytest.mark.parametrize("case", sorted(USER_CASES))
def test_user_row_errors_are_reported(tmp_path: Path, case: str) -> None:
    bad, field, reason = USER_CASES[case]
    users = _csv(tmp_path / "users.csv", USERS_HEADER, ["u1,2024-01-01,,,,", bad])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, users=users)
    report = str(exc.value)
    assert str(users) in report and f"row 2 (line 3), {field}: {reason}" in report


def test_unknown_item_is_checked_against_accepted_items(tmp_path: Path) -> None:
    items = _csv(tmp_path / "items.csv", ITEMS_HEADER, [I_OK, "i2,Pot,Home,,-1,,,"])  # i2 is itself bad
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, [E_OK, "u1,i2,view,2024-01-01,1,,,", "u1,i9,view,2024-01-01,1,,,"])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events, items=items)
    report = str(exc.value)
    assert f"row 2 (line 3), item_id: unknown item_id 'i2' (not in {items})" in report
    assert f"row 3 (line 4), item_id: unknown item_id 'i9' (not in {items})" in report
    assert f"items file {items}" in report and f"events file {events}" in report
    # Without an items file in the same import, item ids are not checked.
    summary = _import(tmp_path, events=events)
    assert summary.tables["events"].accepted == 3


def test_several_problems_in_a_row_are_listed_but_counted_once(tmp_path: Path) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, [E_OK, ",i1,click,never,-1,x,,"])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events)
    report = str(exc.value)
    for field in ("user_id", "event_type", "timestamp", "quantity", "price"):
        assert f"row 2 (line 3), {field}:" in report
    assert "1 bad row(s) of 2" in report
    summary = _import(tmp_path, events=events, quarantine=True)
    t = summary.tables["events"]
    assert (t.read, t.accepted, t.quarantined, t.deduplicated) == (2, 1, 1, 0)


def test_report_lists_max_report_rows_and_counts(tmp_path: Path) -> None:
    rows = [E_OK] + [f"u{i},i1,click,2024-01-01,1,,," for i in range(30)] + [f"u{i},,view,2024-01-01,1,,," for i in range(3)]
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, rows)
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events, max_report=5)
    report = str(exc.value)
    assert report.count("unknown event type 'click'") == 5
    assert "... and 28 more bad row(s)" in report
    assert "event_type: unknown event type: 30 row(s)" in report
    assert "item_id: missing item_id: 3 row(s)" in report


# ---------------------------------------------------------------------------------------------
# Refusal changes nothing; quarantine keeps the good rows


def test_refused_import_leaves_data_folder_byte_identical(tmp_path: Path) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    items = _csv(tmp_path / "items.csv", ITEMS_HEADER, GOOD_ITEMS)
    _import(tmp_path, events=events, items=items)
    data = tmp_path / "data"
    before = _snapshot(data)
    assert {"events.parquet", "items.parquet", "import.json"} <= set(before)

    time.sleep(0.01)  # so that a rewrite would change the mtimes
    good_items = _csv(tmp_path / "items2.csv", ITEMS_HEADER, GOOD_ITEMS + ["i3,Cup,Home,,1,,,"])
    bad_events = _csv(tmp_path / "events2.csv", EVENTS_HEADER, [*GOOD_EVENTS, "u1,i1,view,not-a-time,1,,,"])
    with pytest.raises(ImportRejected):
        _import(tmp_path, events=bad_events, items=good_items, mode="replace")
    with pytest.raises(ImportRejected):
        _import(tmp_path, events=bad_events, items=good_items, mode="append")
    with pytest.raises(UserError):
        _import(tmp_path, events=bad_events, items=tmp_path / "missing.csv", mode="replace")
    with pytest.raises(UserError, match="already holds"):
        _import(tmp_path, events=good_items)  # the folder holds the table: neither --append nor --replace
    assert _snapshot(data) == before


def test_failed_write_takes_quarantine_files_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    _import(tmp_path, events=events)
    before = _snapshot(tmp_path / "data")

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("storerec.features.importer.write_tables", broken)
    bad = _csv(tmp_path / "bad.csv", EVENTS_HEADER, [*GOOD_EVENTS, ",i1,view,2024-01-01,1,,,"])
    with pytest.raises(OSError):
        _import(tmp_path, events=bad, quarantine=True, mode="replace")
    assert _snapshot(tmp_path / "data") == before
    assert not (tmp_path / "data" / "quarantine").exists()


def test_quarantine_keeps_good_rows_and_sets_bad_ones_aside(tmp_path: Path) -> None:
    rows = [
        "u1,i1,view,2024-01-01T00:00:00Z,1,,,",  # 1 good
        ",i1,click,2024-01-01,1,,,",  # 2 two problems
        "u2,i1,view,2024-01-02,1,,,",  # 3 good
        "u1,i1,view,2024-01-01T00:00:00Z,1,,,",  # 4 copy of 1
        "u3,i1,view,2024-01-03,-1,,,",  # 5 bad
        "u4,i1,view,2024-01-04,1,,,",  # 6 good
    ]
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, rows)
    summary = _import(tmp_path, events=events, quarantine=True)
    t = summary.tables["events"]
    assert (t.read, t.accepted, t.quarantined, t.deduplicated) == (6, 3, 2, 1)
    assert t.read == t.accepted + t.quarantined + t.deduplicated

    ev = read_table(tmp_path / "data", "events")
    assert ev[C.User].to_list() == ["u1", "u2", "u4"]  # file order kept
    qfile = t.quarantine_file
    assert qfile is not None and qfile.parent == tmp_path / "data" / "quarantine"
    assert qfile.name.startswith("events-") and qfile.name.endswith("Z.csv")
    q = pl.read_csv(qfile, infer_schema=False)
    assert q.columns == EVENTS_HEADER.split(",") + ["row", "field", "reason"]
    assert q["row"].to_list() == ["2", "4", "5"]
    assert q["field"].to_list() == ["user_id; event_type", "(all columns)", "quantity"]
    assert q["reason"][0].startswith("missing user_id; unknown event type 'click'")
    assert q["reason"][1] == "exact duplicate of row 1"
    assert q["event_type"][0] == "click"  # raw values as read
    text = summary.render()
    assert "quarantined 2" in text and "deduplicated 1" in text and str(qfile) in text


def test_quarantine_without_bad_rows_writes_no_quarantine_file(tmp_path: Path) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    summary = _import(tmp_path, events=events, quarantine=True)
    assert summary.tables["events"].quarantine_file is None
    assert not (tmp_path / "data" / "quarantine").exists()


# ---------------------------------------------------------------------------------------------
# Mapping, file types, file-level errors


def test_mapping_renames_columns_maps_values_and_times(tmp_path: Path) -> None:
    events = _csv(
        tmp_path / "orders.csv",
        "customer_id;sku;action;ts;note",
        ["c1;s1;buy;2024-07-01 12:00:00;hello", "c2;s1;pageview;2024-07-01 13:00:00;", "c3;s1;view;2024-07-01 14:00:00;"],
    )
    items = _csv(tmp_path / "items.csv", "sku,path", ["s1,Garden"])
    mapping = tmp_path / "map.toml"
    mapping.write_text(
        '[events]\ndelimiter = ";"\ntimestamp_format = "%Y-%m-%d %H:%M:%S"\ntimezone = "Europe/Paris"\n'
        '[events.columns]\nuser_id = "customer_id"\nitem_id = "sku"\nevent_type = "action"\ntimestamp = "ts"\n'
        '[events.event_types]\nbuy = "purchase"\npageview = "view"\n'
        '[items.columns]\nitem_id = "sku"\ncategory = "path"\n'
    )
    summary = _import(tmp_path, events=events, items=items, mapping=mapping)
    ev = read_table(tmp_path / "data", "events")
    assert ev[C.User].to_list() == ["c1", "c2", "c3"]
    assert ev[C.EventType].to_list() == ["purchase", "view", "view"]
    assert ev[C.Timestamp][0] == datetime(2024, 7, 1, 10, tzinfo=UTC)  # Paris summer time is UTC+2
    assert summary.tables["events"].ignored_columns == ["note"]
    assert "ignored columns: note" in summary.render()
    assert read_table(tmp_path / "data", "items")[C.Category].to_list() == ["Garden"]
    assert json.loads((tmp_path / "data" / "import.json").read_text())["mapping"] == str(mapping)


def test_mapped_column_names_appear_in_the_report(tmp_path: Path) -> None:
    rows = ["c1,i1,view,2024-01-01", ",i1,view,2024-01-01"]
    events = _csv(tmp_path / "e.csv", "customer_id,item_id,event_type,timestamp", rows)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[events.columns]\nuser_id = "customer_id"\n')
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events, mapping=mapping)
    assert "row 2 (line 3), customer_id (user_id): missing user_id" in str(exc.value)


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[events]\ntimestamp_fmt = 'x'\n", "events.timestamp_fmt"),
        ("[orders]\n", "orders"),
        ("[events.columns]\nuserid = 'x'\n", "events.columns.userid"),
        ("[items.event_types]\nbuy = 'purchase'\n", "items.event_types"),
        ("[events.event_types]\nbuy = 'purchased'\n", "events.event_types.buy"),
        ("[events]\ntimezone = 'Mars/Olympus'\n", "events.timezone"),
    ],
)
def test_bad_mapping_keys_are_errors(tmp_path: Path, toml: str, key: str) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    mapping = tmp_path / "map.toml"
    mapping.write_text(toml)
    with pytest.raises(UserError) as exc:
        _import(tmp_path, events=events, mapping=mapping)
    assert str(mapping) in str(exc.value) and key in str(exc.value)


def test_missing_mapped_column_names_file_column_and_lists_columns(tmp_path: Path) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[events.columns]\nuser_id = "customer"\n')
    with pytest.raises(UserError) as exc:
        _import(tmp_path, events=events, mapping=mapping)
    msg = str(exc.value)
    assert str(events) in msg and "'customer'" in msg and "user_id, item_id, event_type, timestamp" in msg


def test_missing_required_column_is_an_error(tmp_path: Path) -> None:
    events = _csv(tmp_path / "events.csv", "user_id,item_id,event_type", ["u1,i1,view"])
    with pytest.raises(UserError, match="lacks required column.*timestamp"):
        _import(tmp_path, events=events)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.csv"):
        _import(tmp_path, events=tmp_path / "nope.csv")
    xlsx = tmp_path / "events.xlsx"
    xlsx.write_text("x")
    with pytest.raises(UserError, match="events.xlsx"):
        _import(tmp_path, events=xlsx)


def test_latin1_csv_with_encoding_in_mapping(tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_bytes("item_id,title,category\ni1,Café,Food\n".encode("latin-1"))
    with pytest.raises(UserError, match="items.csv"):
        _import(tmp_path, items=items)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[items]\nencoding = "latin-1"\n')
    _import(tmp_path, items=items, mapping=mapping)
    assert read_table(tmp_path / "data", "items")[C.Title].to_list() == ["Café"]


def test_parquet_input_with_native_types(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pl.DataFrame(
        {
            "item_id": ["i1", "i2"],
            "category": ["Home", "Garden"],
            "price": [1.25, 3.0],
            "tags": [["a", "b|c"], []],
            "created_at": [datetime(2024, 1, 1, 12), datetime(2024, 1, 2)],
            "in_stock": [False, True],
        }
    ).write_parquet(items)
    events = tmp_path / "events.pq"
    pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i1"],
            "event_type": ["view", "purchase", "view"],
            "timestamp": [datetime(2024, 2, 1, tzinfo=UTC)] * 2 + [None],
            "quantity": [1, 3, 1],
        }
    ).write_parquet(events)
    mapping = tmp_path / "map.toml"
    mapping.write_text('[items]\ntimestamp_format = "%d/%m/%Y"\n')  # for text; native times need none

    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events, items=items, mapping=mapping)
    assert f"events file {events}" in str(exc.value) and "row 3, timestamp: missing timestamp" in str(exc.value)

    summary = _import(tmp_path, events=events, items=items, mapping=mapping, quarantine=True)
    assert summary.tables["events"].accepted == 2
    it = read_table(tmp_path / "data", "items")
    assert it.schema == pl.Schema(TABLES["items"])
    assert it[C.Tags].to_list() == [["a", "b|c"], []]  # native lists kept as they are
    assert it[C.Price].to_list() == [1.25, 3.0]
    assert it[C.InStock].to_list() == [False, True]
    assert it[C.CreatedAt][0] == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert read_table(tmp_path / "data", "events")[C.Quantity].to_list() == [1, 3]


def test_many_rows_are_validated_quickly(tmp_path: Path) -> None:
    n = 200_000
    df = pl.DataFrame(
        {
            "user_id": [f"u{i % 5000}" for i in range(n)],
            "item_id": [f"i{i % 700}" for i in range(n)],
            "event_type": ["view", "cart", "purchase", "favorite"] * (n // 4),
            "timestamp": [f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}Z" for i in range(n)],
            "price": ["12.5"] * n,
        }
    ).with_row_index("n")
    df = df.with_columns(pl.col("n").cast(pl.String))  # every row distinct
    events = tmp_path / "events.csv"
    df.write_csv(events)
    t0 = time.perf_counter()
    summary = _import(tmp_path, events=events)
    assert summary.tables["events"].accepted == n
    assert time.perf_counter() - t0 < 20


# ---------------------------------------------------------------------------------------------
# The real command line


def test_cli_refuses_with_exit_2_and_report_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, [E_OK, "u1,i1,view,2024-13-45,1,,,"])
    out = tmp_path / "data"
    assert main(["-q", "import", "--events", str(events), "--data-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: import refused") and "row 2 (line 3), timestamp: unparsable timestamp" in err
    assert HINT in err and not out.exists()
    assert main(["-q", "import", "--events", str(events), "--data-dir", str(out), "--quarantine"]) == 0
    assert "quarantined 1" in capsys.readouterr().out


@pytest.mark.e2e
def test_installed_command_imports_files(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("storerec")
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    items = _csv(tmp_path / "items.csv", ITEMS_HEADER, GOOD_ITEMS)
    out = tmp_path / "data"
    proc = subprocess.run(
        [str(exe), "import", "--events", str(events), "--items", str(items), "--data-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "accepted 4" in proc.stdout and "[import] validate events" in proc.stderr
    assert read_table(out, "events").height == 4


# ---------------------------------------------------------------------------------------------
# Issue #11: a data folder that holds tables is only changed with --append or --replace


def _store(tmp_path: Path, events: list[str] | None = None) -> Path:
    """A data folder with an imported items table (i1, i2) and events."""
    ev = _csv(tmp_path / "store-events.csv", EVENTS_HEADER, events or GOOD_EVENTS)
    it = _csv(tmp_path / "store-items.csv", ITEMS_HEADER, GOOD_ITEMS)
    _import(tmp_path, events=ev, items=it)
    return tmp_path / "data"


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_import_into_a_folder_with_the_table_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _store(tmp_path)
    before = _snapshot(data)
    logged = _csv(tmp_path / "logged.csv", EVENTS_HEADER, ["u9,i1,view,2024-04-01,1,,,"])
    assert main(["-q", "import", "--events", str(logged), "--data-dir", str(data)]) == 2
    line = _err_line(capsys)
    assert f"{data / 'events.parquet'} already holds the events table (4 rows)" in line
    assert "--append" in line and "--replace" in line
    assert _snapshot(data) == before
    # Both at once is a usage error; nothing changes either.
    assert main(["-q", "import", "--events", str(logged), "--data-dir", str(data), "--append", "--replace"]) == 2
    assert "--append and --replace cannot be used together" in capsys.readouterr().err
    assert _snapshot(data) == before


def test_append_adds_rows_and_skips_rows_already_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _store(tmp_path)
    old = read_table(data, "events")
    logged = _csv(
        tmp_path / "logged.csv",
        EVENTS_HEADER,
        [GOOD_EVENTS[0], "u9,i1,view,2024-04-01T00:00:00Z,1,,,", GOOD_EVENTS[1], "u9,i2,cart,2024-04-01T00:05:00Z,1,,,"],
    )
    assert main(["-q", "import", "--append", "--events", str(logged), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "rows: 4 before, 6 after (appended 2; 2 duplicate(s) of rows already in the table skipped)" in out
    ev = read_table(data, "events")
    assert ev.head(4).equals(old)  # history kept, in its order; new rows after it
    assert ev[C.User].to_list()[4:] == ["u9", "u9"]
    assert read_table(data, "items").height == 2  # not part of this import: unchanged
    record = json.loads((data / "import.json").read_text())
    t = record["tables"]["events"]
    assert (record["mode"], t["rows_before"], t["rows_after"], t["appended"], t["duplicates_of_existing"]) == ("append", 4, 6, 2, 2)
    # The same file again appends nothing.
    assert main(["-q", "import", "--append", "--events", str(logged), "--data-dir", str(data)]) == 0
    assert "rows: 6 before, 6 after (appended 0; 4 duplicate(s)" in capsys.readouterr().out


def test_export_events_suggests_append_and_that_command_keeps_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from storerec.events.eventlog import EventLog, upgrade

    data = _store(tmp_path)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    upgrade(url)
    log = EventLog(url, flush_ms=5)
    ts = datetime(2024, 4, 2, tzinfo=UTC)
    rows = [
        {"event_id": "e1", "ts": ts, "request_id": "r", "user_id": "u7", "session_id": "s", "item_id": "i1", "event_type": "click", "revenue": 0.0},
        {"event_id": "e2", "ts": ts, "request_id": "r", "user_id": "u7", "session_id": "s", "item_id": "i2", "event_type": "purchase", "revenue": 4.5},
    ]
    assert log.store_feedback_sync(rows, 30) == 2
    log.close()
    out = tmp_path / "logged-events.parquet"
    assert main(["-q", "export-events", "--eventlog-url", url, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"storerec import --append --events {out}" in said
    command = said.split("`")[1].split()  # run what it says
    assert main(["-q", *command[1:], "--data-dir", str(data)]) == 0
    assert "rows: 4 before, 6 after (appended 2" in capsys.readouterr().out
    assert read_table(data, "events").height == 6


def test_replace_replaces_and_says_so(tmp_path: Path) -> None:
    data = _store(tmp_path)
    new = _csv(tmp_path / "new.csv", EVENTS_HEADER, ["u9,i1,view,2024-04-01,1,,,"])
    summary = _import(tmp_path, events=new, mode="replace")
    assert read_table(data, "events")[C.User].to_list() == ["u9"]
    assert "rows: 4 before, 1 after (table replaced)" in summary.render()
    assert summary.tables["events"].mode == "replace"


def test_an_import_that_would_leave_events_or_items_empty_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header_only = _csv(tmp_path / "empty.csv", "user_id,item_id,event_type,timestamp", [])
    fresh = tmp_path / "fresh"
    assert main(["-q", "import", "--events", str(header_only), "--data-dir", str(fresh)]) == 2
    line = _err_line(capsys)
    assert f"{header_only} has no data rows" in line and "events table would be empty" in line
    assert not fresh.exists()

    data = _store(tmp_path)
    before = _snapshot(data)
    assert main(["-q", "import", "--replace", "--events", str(header_only), "--data-dir", str(data)]) == 2
    assert "events table would be empty" in _err_line(capsys)
    all_bad = _csv(tmp_path / "bad.csv", ITEMS_HEADER, [",x,Home,,,,,", "i1,x,,,,,,"])
    assert main(["-q", "import", "--replace", "--quarantine", "--items", str(all_bad), "--data-dir", str(data)]) == 2
    line = _err_line(capsys)
    assert "none of the 2 rows" in line and "2 with problems" in line and "items table would be empty" in line
    assert _snapshot(data) == before  # not even a quarantine file
    # Appending nothing to a table with rows is harmless.
    assert main(["-q", "import", "--append", "--events", str(header_only), "--data-dir", str(data)]) == 0
    assert "rows: 4 before, 4 after (appended 0" in capsys.readouterr().out


def test_appended_events_are_checked_against_the_items_in_the_folder(tmp_path: Path) -> None:
    data = _store(tmp_path)
    new = _csv(tmp_path / "new.csv", EVENTS_HEADER, ["u9,i1,view,2024-04-01,1,,,", "u9,i7,view,2024-04-01,1,,,"])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=new, mode="append")
    assert f"row 2 (line 3), item_id: unknown item_id 'i7' (not in {data / 'items.parquet'})" in str(exc.value)
    # Items imported alongside count too.
    items = _csv(tmp_path / "more-items.csv", ITEMS_HEADER, ["i7,Lamp,Home,,,,,"])
    summary = _import(tmp_path, events=new, items=items, mode="append")
    assert summary.tables["events"].appended == 2 and summary.tables["items"].after == 3


def test_appended_items_keep_one_row_per_id(tmp_path: Path) -> None:
    data = _store(tmp_path)
    items = _csv(tmp_path / "more.csv", ITEMS_HEADER, [GOOD_ITEMS[1], "i2,Mug,Home > Garden,,,,,", "i3,Cup,Home,,,,,"])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, items=items, mode="append")
    assert f"row 2 (line 3), item_id: item_id already in {data / 'items.parquet'} with other values" in str(exc.value)
    summary = _import(tmp_path, items=items, mode="append", quarantine=True)
    t = summary.tables["items"]
    assert (t.accepted, t.quarantined, t.appended, t.existing_duplicates, t.before, t.after) == (2, 1, 1, 1, 2, 3)
    assert read_table(data, "items")[C.Item].to_list() == ["i2", "i1", "i3"]


def test_rows_already_in_matches_on_event_id_when_both_tables_have_it() -> None:
    from storerec.features.importer import rows_already_in

    old = pl.DataFrame({"event_id": ["a", None, "c"], "user_id": ["u1", "u2", "u3"]})
    new = pl.DataFrame({"event_id": ["a", None, None, "d", "c"], "user_id": ["other", "u2", "u3", "u2", "u3"]})
    # 'a': same id, other values -> already there; null ids: whole row; 'd': new id -> new even though u2 exists.
    assert rows_already_in(old, new, "event_id").to_list() == [True, True, False, False, True]
    assert rows_already_in(old, new).to_list() == [False, True, False, False, True]  # no key: whole rows (nulls equal)


def test_rows_of_forgotten_users_are_dropped_on_every_kind_of_import(tmp_path: Path) -> None:
    from storerec.features.forget import record_forgotten

    data = tmp_path / "data"
    record_forgotten(data, ["u1"])
    events = _csv(tmp_path / "e.csv", EVENTS_HEADER, [*GOOD_EVENTS, "u1,i1,click,2024-01-01,1,,,"])  # a bad row of u1 too
    users = _csv(tmp_path / "u.csv", USERS_HEADER, GOOD_USERS)
    summary = _import(tmp_path, events=events, users=users)  # u1's bad row is not reported: it is dropped
    assert set(read_table(data, "events")[C.User]) == {"u2", "u3"}
    assert read_table(data, "users")[C.User].to_list() == ["u2"]
    t = summary.tables["events"]
    assert (t.read, t.accepted, t.quarantined, t.forgotten) == (5, 2, 0, 3)
    assert t.read == t.accepted + t.quarantined + t.deduplicated + t.forgotten
    text = summary.render()
    assert "3 rows of forgotten users dropped" in text and "1 rows of forgotten users dropped" in text
    assert json.loads((data / "import.json").read_text())["tables"]["events"]["forgotten_dropped"] == 3

    more = _csv(tmp_path / "more.csv", EVENTS_HEADER, ["u1,i2,view,2024-05-01,1,,,", "u5,i2,view,2024-05-01,1,,,", ",i2,view,2024-05-01,1,,,"])
    summary = _import(tmp_path, events=more, mode="append", quarantine=True)
    assert summary.tables["events"].forgotten == 1 and summary.tables["events"].appended == 1
    assert "u1" not in read_table(data, "events")[C.User].to_list()
    summary = _import(tmp_path, events=more, mode="replace", quarantine=True)
    assert summary.tables["events"].forgotten == 1 and read_table(data, "events")[C.User].to_list() == ["u5"]
    q = pl.read_csv(summary.tables["events"].quarantine_file, infer_schema=False)
    assert q["row"].to_list() == ["3"]  # the bad row is set aside; u1's row is not kept anywhere


# ---------------------------------------------------------------------------------------------
# Issue #11: no silent type coercion


@pytest.mark.parametrize(
    "column, values, got",
    [
        ("user_id", [1.5, 2.0], "float"),
        ("item_id", [[1, 2], [3]], "list"),
        ("item_id", [{"a": 1}, {"a": 2}], "struct"),
        ("session_id", [b"\x01", b"\x02"], "binary"),
        ("user_id", [True, False], "boolean"),
    ],
)
def test_parquet_ids_must_be_strings_or_integers(tmp_path: Path, column: str, values: list, got: str) -> None:
    frame = {
        "user_id": ["u1", "u2"],
        "item_id": ["i1", "i2"],
        "event_type": ["view", "view"],
        "timestamp": [datetime(2024, 1, 1, tzinfo=UTC)] * 2,
        "session_id": ["s1", "s2"],
    }
    frame[column] = values
    events = tmp_path / "events.parquet"
    pl.DataFrame(frame).write_parquet(events)
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events)
    report = str(exc.value)
    for row in (1, 2):
        assert f"row {row}, {column}: {column} must be a string or an integer, got {got}" in report
    assert f"{column}: not a string or an integer: 2 row(s)" in report
    assert not (tmp_path / "data").exists()


def test_integer_ids_become_their_decimal_text(tmp_path: Path) -> None:
    events = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "user_id": pl.Series([42, 7], dtype=pl.Int64),
            "item_id": pl.Series([9_000_000_000_000_000_001, 5], dtype=pl.UInt64),
            "event_type": ["view", "view"],
            "timestamp": ["2024-01-01", "2024-01-02"],
            "session_id": pl.Series(["a", "b"], dtype=pl.Categorical),
        }
    ).write_parquet(events)
    _import(tmp_path, events=events)
    ev = read_table(tmp_path / "data", "events")
    assert ev[C.User].to_list() == ["42", "7"] and ev[C.Item].to_list() == ["9000000000000000001", "5"]
    assert ev[C.Session].to_list() == ["a", "b"]


def _mapping(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "map.toml"
    path.write_text(text)
    return path


def test_numeric_timestamps_need_timestamp_unit(tmp_path: Path) -> None:
    secs = [1709287200, 1709287260]
    events = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "event_type": ["view"] * 2, "timestamp": secs}).write_parquet(events)
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=events)
    assert 'row 1, timestamp: a number, not a date: set timestamp_unit = "s" or "ms"' in str(exc.value)
    assert "under [events] in the mapping" in str(exc.value)

    _import(tmp_path, events=events, mapping=_mapping(tmp_path, '[events]\ntimestamp_unit = "s"\n'))
    expected = [datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 10, 1, tzinfo=UTC)]
    assert read_table(tmp_path / "data", "events")[C.Timestamp].to_list() == expected

    millis = tmp_path / "millis.parquet"
    pl.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"], "event_type": ["view"] * 2,
                  "timestamp": [s * 1000 + 250 for s in secs]}).write_parquet(millis)  # fmt: skip
    _import(tmp_path, events=millis, mapping=_mapping(tmp_path, '[events]\ntimestamp_unit = "ms"\n'), mode="replace")
    got = read_table(tmp_path / "data", "events")[C.Timestamp].to_list()
    assert got == [t + timedelta(milliseconds=250) for t in expected]

    # CSV: a number is an error too (not 1970, not a guess), and fine with the unit.
    csv_file = _csv(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp", ["u1,i1,view,1709287200", "u2,i1,view,2024-03-01"])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, events=csv_file, mode="replace")
    assert "row 1 (line 2), timestamp: a number, not a date" in str(exc.value) and "row 2 " not in str(exc.value)
    with pytest.raises(ImportRejected) as exc:  # with a unit, the column holds numbers only
        _import(tmp_path, events=csv_file, mapping=_mapping(tmp_path, '[events]\ntimestamp_unit = "s"\n'), mode="replace")
    assert "row 2 (line 3), timestamp: unparsable timestamp (expected a number of seconds since 1970-01-01 UTC" in str(exc.value)
    csv_ok = _csv(tmp_path / "ok.csv", "user_id,item_id,event_type,timestamp", ["u1,i1,view,1709287200000"])
    _import(tmp_path, events=csv_ok, mapping=_mapping(tmp_path, '[events]\ntimestamp_unit = "ms"\n'), mode="replace")
    assert read_table(tmp_path / "data", "events")[C.Timestamp].to_list() == expected[:1]


def test_parse_datetime_with_a_unit() -> None:
    utc = UTC
    values = pl.Series(["1714557600", "1714557600.5", "-86400", "1.7145576e9", "soon", None, "99999999999999999999"])
    got = parse_datetime(values, unit="s").to_list()
    assert got[:4] == [
        datetime(2024, 5, 1, 10, tzinfo=utc),
        datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=utc),
        datetime(1969, 12, 31, tzinfo=utc),
        datetime(2024, 5, 1, 10, tzinfo=utc),
    ]
    assert got[4:] == [None, None, None]  # not a number, missing, out of range
    assert parse_datetime(pl.Series(["1714557600123456789"]), unit="ns").to_list() == [
        datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=utc)
    ]
    assert parse_datetime(pl.Series(["1714557600123456"]), unit="us").to_list() == [
        datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=utc)
    ]


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[events]\ntimestamp_unit = 'days'\n", "events.timestamp_unit"),
        ("[users]\ntimestamp_unit = 's'\ntimestamp_format = '%Y'\n", "users.timestamp_unit"),
    ],
)
def test_bad_timestamp_unit_in_mapping_is_an_error(tmp_path: Path, toml: str, key: str) -> None:
    events = _csv(tmp_path / "events.csv", EVENTS_HEADER, GOOD_EVENTS)
    with pytest.raises(UserError) as exc:
        _import(tmp_path, events=events, mapping=_mapping(tmp_path, toml))
    assert key in str(exc.value)


# ---------------------------------------------------------------------------------------------
# Issue #11: file-level errors are one line that says where and what to do, without the rows


def _rows(n: int) -> list[str]:
    return [f"secret-user-{i},i{i},view,2024-01-01" for i in range(1, n + 1)]


def test_unterminated_quote_names_the_row_and_prints_no_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(300)
    rows[11] = 'secret-user-12,"i12,view,2024-01-01'  # row 12 opens a quote that never closes
    events = _csv(tmp_path / "events.csv", "user_id,item_id,event_type,timestamp", rows)
    assert main(["-q", "import", "--events", str(events), "--data-dir", str(tmp_path / "data")]) == 2
    line = _err_line(capsys)
    assert line == (
        f"error: {events}: unterminated quote starting at row 12 (line 13): "
        "check the quoting of that row (a field that starts with a quote must end with one)"
    )
    assert "secret-user" not in line


def test_malformed_quote_and_extra_fields_name_the_row(tmp_path: Path) -> None:
    rows = _rows(20)
    rows[4] = 'secret-user-5,"i5"x,view,2024-01-01'
    rows[6] = 'secret-user-7,"i7,view,2024-01-01'  # swallows lines until the next quote
    events = _csv(tmp_path / "events.csv", "user_id,item_id,event_type,timestamp", rows)
    with pytest.raises(UserError) as exc:
        _import(tmp_path, events=events)
    msg = str(exc.value)
    assert "malformed quote in row 5 (line 6)" in msg or "row 7 (line 8)" in msg
    assert "secret-user" not in msg and "\n" not in msg
    rows = _rows(20)
    rows[8] = "secret-user-9,i9,view,2024-01-01,extra"
    events = _csv(tmp_path / "events2.csv", "user_id,item_id,event_type,timestamp", rows)
    with pytest.raises(UserError) as exc:
        _import(tmp_path, events=events)
    assert str(exc.value) == (
        f"{events}: row 9 (line 10) has 5 fields, the header has 4: check the separator (',';"
        " set delimiter under [events] in the mapping) and the quoting of that row"
    )


def test_invalid_utf8_names_byte_and_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "\n".join(["user_id,item_id,event_type,timestamp", *_rows(100)]) + "\n"
    data = text.encode("utf-8")
    at = data.index(b"i57,")
    events = tmp_path / "events.csv"
    events.write_bytes(data[:at] + "é".encode("latin-1") + data[at:])
    assert main(["-q", "import", "--events", str(events), "--data-dir", str(tmp_path / "data")]) == 2
    line = _err_line(capsys)
    assert line == (
        f"error: {events}: invalid UTF-8 at byte {at} (row 57, line 58): re-save the file as UTF-8, "
        "or set encoding = \"latin-1\" (or the file's encoding) under [events] in the mapping (--mapping)"
    )


# ---------------------------------------------------------------------------------------------
# Issue #11: reports show no personal values in clear; the quarantine file keeps the rows


def test_reports_redact_user_ids_and_personal_attributes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from storerec.features.forget import redact

    users = _csv(
        tmp_path / "users.csv",
        USERS_HEADER,
        ["alice@example.com,2024-01-01,25-34,F,Paris,nurse", "alice@example.com,2024-02-01,35-44,F,Lyon,doctor", "bob,soon,,,,"],
    )
    out = tmp_path / "data"
    assert main(["-q", "import", "--users", str(users), "--data-dir", str(out), "--max-report", "50"]) == 2
    err = capsys.readouterr().err
    assert f"row 2 (line 3), user_id: duplicate user_id, first seen at row 1 [value {redact('alice@example.com')}]" in err
    assert "row 3 (line 4), signup_at: unparsable timestamp [value 'soon']" in err  # signup_at may be shown
    for secret in ("alice", "example.com", "bob", "Lyon", "doctor", "35-44"):
        assert secret not in err, secret
    # Personal attributes are shown as <redacted> (MovieLens' age is one).
    from storerec.features.importer import _shown

    assert [_shown("users", f, "x") for f in ("age_band", "gender", "region", "occupation", "age")] == ["<redacted>"] * 5
    assert _shown("events", "item_id", "i1") == "'i1'" and _shown("events", "user_id", None) == "(empty)"

    assert main(["-q", "import", "--users", str(users), "--data-dir", str(out), "--quarantine"]) == 0
    said = capsys.readouterr().out
    assert "alice" not in said and "bob" not in said
    q = pl.read_csv(next((out / "quarantine").iterdir()), infer_schema=False)
    assert q["user_id"].to_list() == ["alice@example.com", "bob"] and q["region"][0] == "Lyon"  # the file keeps raw rows


def test_image_urls_are_optional_checked_and_reach_the_item_features(tmp_path: Path) -> None:
    """items.image_url (optional): an http(s) URL or an absolute path, else the row is refused
    naming it; imported as given, and carried into the item features the service renders from."""
    from storerec.features.profiles import build_profiles
    from storerec.ranking.facts import ItemFacts

    header = ITEMS_HEADER + ",image_url"
    bad = _csv(tmp_path / "bad.csv", header, ["i1,Pan,Home,,1,,,true,https://cdn.example.com/i1.jpg", "i2,Pot,Home,,1,,,true,pot.jpg"])
    with pytest.raises(ImportRejected) as exc:
        _import(tmp_path, items=bad)
    assert "row 2 (line 3), image_url: not an image URL (expected http://..., https://... or an absolute path /...)" in str(exc.value)
    items = _csv(tmp_path / "items.csv", header, ["i1,Pan,Home,,1,,,true,https://cdn.example.com/i1.jpg", "i2,Pot,Home,,1,,,true,/img/i2.png",
                                                  "i3,Lid,Home,,1,,,true,"])
    _import(tmp_path, items=items, events=_csv(tmp_path / "ev.csv", EVENTS_HEADER, [e for e in GOOD_EVENTS if ",i1," in e or ",i2," in e]))
    data = tmp_path / "data"
    assert read_table(data, "items")[C.ImageUrl].to_list() == ["https://cdn.example.com/i1.jpg", "/img/i2.png", None]
    build_profiles(Settings(), data)
    feats = pl.read_parquet(data / "profiles" / "items.parquet")
    facts = ItemFacts.from_table(["i2", "i1", "i3"], feats)
    assert [facts.details(k)["image_url"] for k in range(3)] == ["/img/i2.png", "https://cdn.example.com/i1.jpg", None]


def test_append_to_an_items_table_written_before_image_urls(tmp_path: Path) -> None:
    """A data folder from before items.image_url existed: appending items with pictures works,
    the old items get no picture (null), nothing else changes."""
    _import(tmp_path, items=_csv(tmp_path / "old.csv", ITEMS_HEADER, GOOD_ITEMS))
    path = tmp_path / "data" / "items.parquet"
    pl.read_parquet(path).drop(C.ImageUrl).write_parquet(path)  # as an older storerec wrote it
    new = _csv(tmp_path / "new.csv", ITEMS_HEADER + ",image_url", ["i9,Jug,Home > Kitchen,,3,,,true,https://cdn.example.com/i9.jpg"])
    _import(tmp_path, items=new, mode="append")
    it = read_table(tmp_path / "data", "items")
    assert it.schema == pl.Schema(TABLES["items"])
    assert dict(zip(it[C.Item].to_list(), it[C.ImageUrl].to_list())) == {"i2": None, "i1": None, "i9": "https://cdn.example.com/i9.jpg"}
