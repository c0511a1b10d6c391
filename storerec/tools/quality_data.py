"""Public "stranger" data sets for the quality benchmark, converted to files ``storerec import`` accepts.

Each data set's raw files live in ``bench-out/datasets/<name>/raw/`` (never committed; how they
were obtained is in ``bench-out/datasets/<name>/SOURCE.txt``). ``convert_<name>(raw_dir, out_dir)``
writes ``events.csv`` and ``items.csv`` in storerec's column names and formats (see
``configs/mapping.example.toml``), so they import without a mapping::

    storerec import --events OUT/events.csv --items OUT/items.csv --data-dir DIR --replace

Output is deterministic (rows sorted, fixed formats) and each file is written atomically (a
temporary file in the same folder, then ``os.replace``). Each converter returns a small dict of
counts: users, items, events, rows read, and rows left out by reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.schema import Columns, EventTypes
from storerec.features.io import write_text_atomic

C = Columns

DATASETS_DIR = Path("bench-out/datasets")  # relative to the repository (the current directory)
RAW = "raw"
EVENTS_FILE = "events.csv"
ITEMS_FILE = "items.csv"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# Last.fm HetRec 2011 has no times: every event gets this one (synthetic) timestamp.
LASTFM_TIMESTAMP = "2011-01-01T00:00:00Z"
LASTFM_CATEGORY = "music"
LASTFM_FILES = ("user_artists.dat", "artists.dat")

# UCI Online Retail has no product category: every item gets this constant.
RETAIL_CATEGORY = "gifts"
RETAIL_FILE = "online_retail.csv"
RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
# InvoiceDate formats understood, tried in order: the ISO dump of the CRAN/UCI data
# (``raw/online_retail.csv``), the same without seconds, and the UCI/Kaggle CSV's month-first form.
RETAIL_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M")
# Reasons a row is left out, in the order they are tested: a row is counted once, under the first
# reason that applies.
RETAIL_DROP_REASONS = (
    "unparsable",  # Quantity, UnitPrice or InvoiceDate not readable, or no StockCode / InvoiceNo
    "cancellation",  # InvoiceNo starts with "C"
    "no_customer",  # CustomerID empty
    "non_product_code",  # StockCode without any digit: POST, D, M, DOT, BANK CHARGES, AMAZONFEE, CRUK...
    "quantity_not_positive",
    "price_not_positive",
    "duplicate_row",  # same user, item, time, quantity, price and invoice as a row kept
)


# --------------------------------------------------------------------------------------------
# Writing


def _write_csv_atomic(df: pl.DataFrame, path: Path) -> None:
    """``df`` as CSV at ``path``, atomically (:func:`storerec.features.io.write_text_atomic`)."""
    write_text_atomic(path, df.write_csv(line_terminator="\n"))


def _write(out_dir: Path, events: pl.DataFrame, items: pl.DataFrame) -> None:
    out_dir = Path(out_dir)
    _write_csv_atomic(items.sort(C.Item), out_dir / ITEMS_FILE)
    order = [C.Timestamp, *(c for c in events.columns if c != C.Timestamp)]  # by time, then every column
    _write_csv_atomic(events.sort(order), out_dir / EVENTS_FILE)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"raw file {path} is missing (see {DATASETS_DIR}/<name>/SOURCE.txt for where it comes from)")
    return path


# --------------------------------------------------------------------------------------------
# Last.fm HetRec 2011


def convert_lastfm(raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Convert Last.fm HetRec 2011 (``user_artists.dat``, ``artists.dat``) to storerec import files.

    Events: one ``purchase`` event per (user, artist) pair (a play is a consumption, the storefront's
    purchase; views are not validation targets by default), ``quantity`` = the pair's play count
    (``weight``, a whole number >= 1). The data set has **no timestamps**: every event gets the
    same synthetic time, :data:`LASTFM_TIMESTAMP` (2011-01-01T00:00:00Z), so any time-based split
    of these events is meaningless and must be detected (all times equal) by the caller.

    Items: every artist of ``artists.dat``, ``title`` = artist name, ``category`` = the constant
    ``"music"`` (the data set's tags are not in the raw files used here).

    Rows left out (counted in ``dropped``): a weight that is not a whole number >= 1
    (``bad_weight``), an artist absent from ``artists.dat`` (``unknown_artist``); a (user, artist)
    pair listed twice has its play counts summed (``merged_duplicate_pair`` rows).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    plays = pl.read_csv(_need(raw_dir / "user_artists.dat"), separator="\t", infer_schema=False)
    artists = pl.read_csv(_need(raw_dir / "artists.dat"), separator="\t", infer_schema=False, quote_char=None)
    plays = plays.select(pl.col("userID", "artistID", "weight").str.strip_chars())
    artists = artists.select(pl.col("id").str.strip_chars(), pl.col("name").str.strip_chars())
    if artists["id"].is_duplicated().any():
        raise ValueError(f"{raw_dir / 'artists.dat'} lists an artist id more than once")
    dropped: dict[str, int] = {}

    weight = pl.col("weight").cast(pl.Float64, strict=False)
    good_weight = weight.is_finite() & (weight >= 1) & (weight == weight.round())
    dropped["bad_weight"] = plays.filter(~good_weight.fill_null(False)).height
    plays = plays.filter(good_weight.fill_null(False)).with_columns(weight.cast(pl.Int64))
    known = pl.col("artistID").is_in(artists["id"].implode())
    dropped["unknown_artist"] = plays.filter(~known).height
    plays = plays.filter(known)
    pairs = plays.group_by("userID", "artistID").agg(pl.col("weight").sum(), pl.len().alias("n"))
    dropped["merged_duplicate_pair"] = int((pairs["n"] - 1).sum())

    events = pairs.select(
        pl.col("userID").alias(C.User),
        pl.col("artistID").alias(C.Item),
        pl.lit(EventTypes.Purchase).alias(C.EventType),
        pl.lit(LASTFM_TIMESTAMP).alias(C.Timestamp),
        pl.col("weight").alias(C.Quantity),
    )
    items = artists.select(
        pl.col("id").alias(C.Item),
        pl.lit(LASTFM_CATEGORY).alias(C.Category),
        pl.col("name").alias(C.Title),
    )
    _write(out_dir, events, items)
    return {
        "dataset": "lastfm",
        "rows_read": plays.height + dropped["bad_weight"] + dropped["unknown_artist"],
        "users": events[C.User].n_unique(),
        "items": items.height,
        "items_with_events": events[C.Item].n_unique(),
        "events": events.height,
        "dropped": dropped,
        "timestamp": f"synthetic: all {LASTFM_TIMESTAMP}",
        "category": f"constant {LASTFM_CATEGORY!r}",
    }


# --------------------------------------------------------------------------------------------
# UCI Online Retail


def _retail_time(col: pl.Expr) -> pl.Expr:
    parsed = [col.str.strptime(pl.Datetime("us"), fmt, strict=False, exact=True) for fmt in RETAIL_TIME_FORMATS]
    return pl.coalesce(parsed)


def _modes(df: pl.DataFrame, key: str, value: str) -> pl.DataFrame:
    """Per ``key``, the most frequent non-null ``value`` (ties: the smallest value)."""
    return (
        df.filter(pl.col(value).is_not_null())
        .group_by(key, value)
        .len()
        .sort([key, "len", value], descending=[False, True, False])
        .unique(key, keep="first", maintain_order=True)
        .select(key, value)
    )


def convert_online_retail(raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Convert UCI Online Retail (``online_retail.csv``) to storerec import files.

    ``online_retail.csv`` has the UCI columns InvoiceNo, StockCode, Description, Quantity,
    InvoiceDate, UnitPrice, CustomerID, Country (one row per invoice line, 2010-12-01..2011-12-09).
    InvoiceDate may be ``YYYY-MM-DD HH:MM[:SS]`` or the UCI/Kaggle CSV's ``M/D/YYYY H:MM``; it is a
    wall-clock time of the UK shop, with no zone, and is taken as UTC.

    Events: one ``purchase`` per kept row: ``user_id`` = CustomerID as integer text ("17850", also
    when the file says "17850.0"), ``item_id`` = StockCode, ``timestamp`` = InvoiceDate,
    ``quantity`` = Quantity, ``price`` = UnitPrice, ``session_id`` = InvoiceNo.

    Items: every StockCode that has a kept event; ``category`` = the constant ``"gifts"`` (the data
    has no category), ``title`` = its most frequent Description among kept rows, ``price`` = its
    most frequent UnitPrice among kept rows (ties: the smaller value).

    Rows left out are counted in ``dropped`` under the first of :data:`RETAIL_DROP_REASONS` that
    applies: unparsable, cancellation (InvoiceNo starting with "C"), no_customer, non_product_code
    (a StockCode with no digit: postage, discounts, manual entries, fees...), quantity_not_positive,
    price_not_positive, duplicate_row (an output row identical to one already kept; ``storerec
    import`` would otherwise set it aside as an exact duplicate).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    src = pl.read_csv(_need(raw_dir / RETAIL_FILE), infer_schema=False, encoding="utf8-lossy")
    missing = [c for c in RETAIL_COLUMNS if c not in src.columns]
    if missing:
        raise ValueError(f"{raw_dir / RETAIL_FILE} lacks column(s) {missing}")
    n_read = src.height

    text = {c: pl.col(c).str.strip_chars() for c in RETAIL_COLUMNS}
    df = src.select(
        text["InvoiceNo"].alias("invoice"),
        text["StockCode"].alias("stock"),
        text["Description"].alias("description"),
        text["Quantity"].cast(pl.Float64, strict=False).alias("qty"),
        _retail_time(text["InvoiceDate"]).alias("time"),
        text["UnitPrice"].cast(pl.Float64, strict=False).alias("price"),
        text["CustomerID"].alias("customer_raw"),
    ).with_columns(
        pl.when(pl.col("description") != "").then(pl.col("description")).alias("description"),
        pl.when(pl.col("customer_raw") != "").then(pl.col("customer_raw")).alias("customer_raw"),
    )
    customer_num = pl.col("customer_raw").cast(pl.Float64, strict=False)
    df = df.with_columns(
        pl.when(customer_num.is_finite() & (customer_num == customer_num.round()))
        .then(customer_num.cast(pl.Int64).cast(pl.String))
        .otherwise(pl.col("customer_raw"))  # a non-numeric id is kept as written
        .alias("customer")
    )
    qty, price = pl.col("qty"), pl.col("price")
    tests: dict[str, pl.Expr] = {
        "unparsable": (
            ~qty.is_finite().fill_null(False)
            | (qty != qty.round()).fill_null(False)
            | ~price.is_finite().fill_null(False)
            | pl.col("time").is_null()
            | pl.col("invoice").is_null()
            | (pl.col("invoice") == "")
            | pl.col("stock").is_null()
            | (pl.col("stock") == "")
        ),
        "cancellation": pl.col("invoice").str.to_uppercase().str.starts_with("C"),
        "no_customer": pl.col("customer").is_null(),
        "non_product_code": ~pl.col("stock").str.contains(r"\d"),
        "quantity_not_positive": qty <= 0,
        "price_not_positive": price <= 0,
    }
    dropped: dict[str, int] = {}
    for reason, bad in tests.items():
        hit = bad.fill_null(False)
        dropped[reason] = df.filter(hit).height
        df = df.filter(~hit)

    events = df.select(
        pl.col("customer").alias(C.User),
        pl.col("stock").alias(C.Item),
        pl.lit(EventTypes.Purchase).alias(C.EventType),
        pl.col("time").dt.strftime(TIME_FORMAT).alias(C.Timestamp),
        pl.col("qty").cast(pl.Int64).alias(C.Quantity),
        pl.col("price").alias(C.Price),
        pl.col("invoice").alias(C.Session),
        pl.col("description"),
    )
    first = events.select(pl.struct(pl.exclude("description")).is_first_distinct())[:, 0]
    dropped["duplicate_row"] = events.height - int(first.sum())
    events = events.filter(first)

    titles = _modes(events, C.Item, "description").rename({"description": C.Title})
    prices = _modes(events, C.Item, C.Price)
    items = (
        events.select(C.Item)
        .unique()
        .join(titles, on=C.Item, how="left")
        .join(prices, on=C.Item, how="left")
        .select(C.Item, pl.lit(RETAIL_CATEGORY).alias(C.Category), C.Title, C.Price)
    )
    events = events.drop("description")
    _write(out_dir, events, items)
    if n_read != events.height + sum(dropped.values()):  # every row is kept or counted once
        raise RuntimeError(f"row accounting is off: read {n_read}, kept {events.height}, dropped {dropped}")
    return {
        "dataset": "online_retail",
        "rows_read": n_read,
        "users": events[C.User].n_unique(),
        "items": items.height,
        "events": events.height,
        "sessions": events[C.Session].n_unique(),
        "dropped": dropped,
        "time_range": [events[C.Timestamp].min(), events[C.Timestamp].max()],
        "category": f"constant {RETAIL_CATEGORY!r}",
    }


# --------------------------------------------------------------------------------------------
# Registry

CONVERTERS: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "lastfm": convert_lastfm,
    "online_retail": convert_online_retail,
}
RAW_FILES: dict[str, tuple[str, ...]] = {"lastfm": LASTFM_FILES, "online_retail": (RETAIL_FILE,)}


def available(datasets_dir: Path = DATASETS_DIR) -> dict[str, Path]:
    """Each data set whose raw files are all present, mapped to its raw folder."""
    found: dict[str, Path] = {}
    for name, files in RAW_FILES.items():
        raw = Path(datasets_dir) / name / RAW
        if all((raw / f).is_file() for f in files):
            found[name] = raw
    return found
