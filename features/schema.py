"""The three tables storerec accepts, as polars schemas.

Ids are strings on the outside; models map them to internal integers themselves. All timestamps
are UTC (``Datetime("us", "UTC")``). Column names are constants on :class:`Columns`; code refers
to them rather than to string literals.
"""

from __future__ import annotations

import polars as pl

UTC_DATETIME = pl.Datetime("us", "UTC")


class Columns:
    """Column names shared by every table and stage."""

    User = "user_id"
    Item = "item_id"
    EventType = "event_type"
    Timestamp = "timestamp"
    Quantity = "quantity"
    Price = "price"
    Session = "session_id"
    Value = "value"

    Title = "title"
    Category = "category"
    Brand = "brand"
    Tags = "tags"
    CreatedAt = "created_at"
    InStock = "in_stock"

    SignupAt = "signup_at"
    AgeBand = "age_band"
    Gender = "gender"
    Region = "region"
    Occupation = "occupation"


class EventTypes:
    View = "view"
    Favorite = "favorite"
    Cart = "cart"
    Purchase = "purchase"
    Rating = "rating"


C = Columns

# Required columns must be present (after the column mapping); optional ones are added as nulls.
EVENTS_SCHEMA: dict[str, pl.DataType] = {
    C.User: pl.String(),
    C.Item: pl.String(),
    C.EventType: pl.String(),
    C.Timestamp: UTC_DATETIME,
    C.Quantity: pl.Int32(),
    C.Price: pl.Float64(),
    C.Session: pl.String(),
    C.Value: pl.Float64(),
}
EVENTS_REQUIRED = (C.User, C.Item, C.EventType, C.Timestamp)
EVENTS_DOC = {
    C.User: "shopper id (string)",
    C.Item: "item id (string)",
    C.EventType: "one of events.types (default view, favorite, cart, purchase, rating)",
    C.Timestamp: "when it happened, UTC (naive times are read as UTC)",
    C.Quantity: "units (default 1), >= 0",
    C.Price: "unit price paid, for purchases; >= 0",
    C.Session: "optional session id; purchases sharing it form one order",
    C.Value: "optional numeric value carried by the event (e.g. a rating's stars)",
}

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    C.Item: pl.String(),
    C.Title: pl.String(),
    C.Category: pl.String(),
    C.Brand: pl.String(),
    C.Price: pl.Float64(),
    C.Tags: pl.List(pl.String()),
    C.CreatedAt: UTC_DATETIME,
    C.InStock: pl.Boolean(),
}
ITEMS_REQUIRED = (C.Item, C.Category)
ITEMS_DOC = {
    C.Item: "item id (string)",
    C.Title: "display title",
    C.Category: "category path, levels separated by ' > ' (e.g. 'Home > Kitchen')",
    C.Brand: "brand name",
    C.Price: "list price, >= 0",
    C.Tags: "list of tags (in CSV: separated by '|')",
    C.CreatedAt: "when the item was listed, UTC",
    C.InStock: "true/false (default true)",
}

USERS_SCHEMA: dict[str, pl.DataType] = {
    C.User: pl.String(),
    C.SignupAt: UTC_DATETIME,
    C.AgeBand: pl.String(),
    C.Gender: pl.String(),
    C.Region: pl.String(),
    C.Occupation: pl.String(),
}
USERS_REQUIRED = (C.User,)
USERS_DOC = {
    C.User: "shopper id (string)",
    C.SignupAt: "registration time, UTC (when unknown, profiles use the first event)",
    C.AgeBand: "optional, e.g. '25-34'",
    C.Gender: "optional",
    C.Region: "optional",
    C.Occupation: "optional",
}

TABLES: dict[str, dict[str, pl.DataType]] = {"events": EVENTS_SCHEMA, "items": ITEMS_SCHEMA, "users": USERS_SCHEMA}
REQUIRED: dict[str, tuple[str, ...]] = {"events": EVENTS_REQUIRED, "items": ITEMS_REQUIRED, "users": USERS_REQUIRED}
TABLE_DOCS: dict[str, dict[str, str]] = {"events": EVENTS_DOC, "items": ITEMS_DOC, "users": USERS_DOC}

CATEGORY_SEP = " > "
TAG_SEP = "|"


def conform(df: pl.DataFrame, table: str) -> pl.DataFrame:
    """Return ``df`` with exactly the table's columns, in order, with the schema's dtypes.

    Optional columns that are missing are added as nulls (``in_stock`` defaults to true and
    ``quantity`` to 1). Casts are strict: a value that does not fit raises rather than turning
    into null, so callers validate first (see :mod:`features.validate`).
    """
    schema = TABLES[table]
    missing = [c for c in REQUIRED[table] if c not in df.columns]
    if missing:
        raise ValueError(f"{table} table lacks required column(s) {missing}")
    exprs = []
    for name, dtype in schema.items():
        if name in df.columns:
            exprs.append(pl.col(name).cast(dtype, strict=True))
        elif name == C.InStock:
            exprs.append(pl.lit(True, dtype=dtype).alias(name))
        elif name == C.Quantity:
            exprs.append(pl.lit(1, dtype=dtype).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(exprs)


def check_schema(df: pl.DataFrame, table: str) -> None:
    """Raise ``ValueError`` naming the column if ``df`` does not match the table's schema exactly."""
    schema = TABLES[table]
    if list(df.columns) != list(schema):
        raise ValueError(f"{table} table has columns {df.columns}, expected {list(schema)}")
    for name, dtype in schema.items():
        if df.schema[name] != dtype:
            raise ValueError(f"{table}.{name} has dtype {df.schema[name]}, expected {dtype}")
