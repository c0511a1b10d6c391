"""The quality-benchmark data converters, on tiny synthetic raw files (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.features.importer import import_files
from storerec.tools.quality_data import (
    EVENTS_FILE,
    ITEMS_FILE,
    LASTFM_TIMESTAMP,
    available,
    convert_lastfm,
    convert_online_retail,
)


def _rows(path: Path) -> list[dict[str, str | None]]:
    return pl.read_csv(path, infer_schema=False).to_dicts()


def _import(out: Path, tmp_path: Path) -> tuple[int, int]:
    """Import the converted files with the real importer; return (events, items) accepted."""
    summary = import_files(
        Settings(), tmp_path / "imported", events=out / EVENTS_FILE, items=out / ITEMS_FILE, users=None,
        mapping=None, quarantine=False, max_report=5, progress=Progress("test", quiet=True),
    )
    tables = summary.tables
    assert all(t.quarantined == 0 and t.deduplicated == 0 for t in tables.values())
    return tables["events"].accepted, tables["items"].accepted


def test_lastfm(tmp_path: Path) -> None:
    raw = tmp_path / "lastfm" / "raw"
    raw.mkdir(parents=True)
    (raw / "user_artists.dat").write_text(
        "userID\tartistID\tweight\r\n"
        "2\t51\t13883\r\n"
        "2\t52\t7\r\n"
        "3\t51\t0\r\n"  # bad weight
        "3\t52\t2.5\r\n"  # bad weight
        "3\t99\t4\r\n"  # unknown artist
        "4\t52\t1\r\n"
        "4\t52\t2\r\n"  # same pair again: summed
    )
    (raw / "artists.dat").write_text(
        "id\tname\turl\tpictureURL\n"
        '51\t"Weird Al" Yankovic\thttp://x\thttp://y\n'
        "52\tMALICE MIZER\thttp://x\thttp://y\n"
        "53\tNobody Plays Me\thttp://x\thttp://y\n"
    )
    out = tmp_path / "out"
    counts = convert_lastfm(raw, out)

    assert counts["dropped"] == {"bad_weight": 2, "unknown_artist": 1, "merged_duplicate_pair": 1}
    assert (counts["rows_read"], counts["users"], counts["items"], counts["events"]) == (7, 2, 3, 3)
    assert _rows(out / EVENTS_FILE) == [
        {"user_id": "2", "item_id": "51", "event_type": "purchase", "timestamp": LASTFM_TIMESTAMP, "quantity": "13883"},
        {"user_id": "2", "item_id": "52", "event_type": "purchase", "timestamp": LASTFM_TIMESTAMP, "quantity": "7"},
        {"user_id": "4", "item_id": "52", "event_type": "purchase", "timestamp": LASTFM_TIMESTAMP, "quantity": "3"},
    ]
    assert _rows(out / ITEMS_FILE) == [
        {"item_id": "51", "category": "music", "title": '"Weird Al" Yankovic'},
        {"item_id": "52", "category": "music", "title": "MALICE MIZER"},
        {"item_id": "53", "category": "music", "title": "Nobody Plays Me"},
    ]
    assert _import(out, tmp_path) == (3, 3)
    assert available(tmp_path) == {"lastfm": raw}


RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def test_online_retail(tmp_path: Path) -> None:
    raw = tmp_path / "online_retail" / "raw"
    raw.mkdir(parents=True)
    (raw / "online_retail.csv").write_text(
        RETAIL_HEADER
        + "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
        + "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom\n"
        + "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom\n"  # duplicate
        + "536366,85123A,CREAM HANGING HEART,2,12/9/2011 12:50,2.95,13047.0,France\n"  # Kaggle form, float id
        + "536367,85123A,WHITE HANGING HEART,1,2011-01-05 10:00:00,2.55,13047,France\n"
        + "C536379,85123A,WHITE HANGING HEART,-1,2010-12-01 09:41:00,2.55,14527,United Kingdom\n"  # cancellation
        + "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18,12583,France\n"  # non-product code
        + "536371,BANK CHARGES,Bank Charges,1,2010-12-01 09:00:00,15,12583,France\n"  # non-product code
        + "536372,22632,HAND WARMER,6,2010-12-01 09:01:00,1.85,,United Kingdom\n"  # no customer
        + "536373,22633,HAND WARMER UNION JACK,0,2010-12-01 09:02:00,1.85,17850,United Kingdom\n"  # quantity 0
        + "536374,22634,FREEBIE,4,2010-12-01 09:03:00,0,17850,United Kingdom\n"  # price 0
        + "536375,22635,BROKEN DATE,4,yesterday,1.00,17850,United Kingdom\n"  # unparsable
    )
    out = tmp_path / "out"
    counts = convert_online_retail(raw, out)

    assert counts["dropped"] == {
        "unparsable": 1,
        "cancellation": 1,
        "no_customer": 1,
        "non_product_code": 2,
        "quantity_not_positive": 1,
        "price_not_positive": 1,
        "duplicate_row": 1,
    }
    assert (counts["rows_read"], counts["users"], counts["items"], counts["events"], counts["sessions"]) == (12, 2, 2, 4, 3)
    ev = [("purchase", "2010-12-01T08:26:00Z"), ("purchase", "2011-01-05T10:00:00Z"), ("purchase", "2011-12-09T12:50:00Z")]
    assert _rows(out / EVENTS_FILE) == [
        {"user_id": "17850", "item_id": "71053", "event_type": ev[0][0], "timestamp": ev[0][1], "quantity": "6", "price": "3.39", "session_id": "536365"},
        {"user_id": "17850", "item_id": "85123A", "event_type": ev[0][0], "timestamp": ev[0][1], "quantity": "6", "price": "2.55", "session_id": "536365"},
        {"user_id": "13047", "item_id": "85123A", "event_type": ev[1][0], "timestamp": ev[1][1], "quantity": "1", "price": "2.55", "session_id": "536367"},
        {"user_id": "13047", "item_id": "85123A", "event_type": ev[2][0], "timestamp": ev[2][1], "quantity": "2", "price": "2.95", "session_id": "536366"},
    ]
    assert _rows(out / ITEMS_FILE) == [
        {"item_id": "71053", "category": "gifts", "title": "WHITE METAL LANTERN", "price": "3.39"},
        {"item_id": "85123A", "category": "gifts", "title": "WHITE HANGING HEART", "price": "2.55"},  # most frequent
    ]
    assert _import(out, tmp_path) == (4, 2)

    before = {f: (out / f).read_bytes() for f in (EVENTS_FILE, ITEMS_FILE)}
    assert convert_online_retail(raw, out) == counts
    assert {f: (out / f).read_bytes() for f in before} == before  # deterministic
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert available(tmp_path) == {"online_retail": raw}
