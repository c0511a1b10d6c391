"""The three tables storerec accepts, as polars schemas, and the event vocabularies.

Ids are strings on the outside; models map them to internal integers themselves. All timestamps
are UTC (``Datetime("us", "UTC")``). Column names are constants on :class:`Columns` and event
types on :class:`EventTypes` / :class:`FeedbackTypes`; code refers to them rather than to string
literals.
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
    ImageUrl = "image_url"

    SignupAt = "signup_at"
    AgeBand = "age_band"
    Gender = "gender"
    Region = "region"
    Occupation = "occupation"


class EventTypes:
    """Behaviour event types of the events table (the default ``events.types``; a store may add more)."""

    View = "view"
    Favorite = "favorite"
    Cart = "cart"
    Purchase = "purchase"
    Rating = "rating"


# The default accepted behaviour event types, in this order (``events.types``).
BEHAVIOUR_EVENT_TYPES: tuple[str, ...] = (
    EventTypes.View,
    EventTypes.Favorite,
    EventTypes.Cart,
    EventTypes.Purchase,
    EventTypes.Rating,
)


class FeedbackTypes:
    """Feedback on a served list (``POST /events``, the event log's ``events`` table, A/B reports)."""

    Click = "click"
    Cart = "cart"
    Purchase = "purchase"


FEEDBACK_EVENT_TYPES: tuple[str, ...] = (FeedbackTypes.Click, FeedbackTypes.Cart, FeedbackTypes.Purchase)
# A feedback event as a behaviour event (exporting the event log as training data): a click on a
# recommended item is a view of it.
FEEDBACK_TO_BEHAVIOUR: dict[str, str] = {
    FeedbackTypes.Click: EventTypes.View,
    FeedbackTypes.Cart: EventTypes.Cart,
    FeedbackTypes.Purchase: EventTypes.Purchase,
}


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

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    C.Item: pl.String(),
    C.Title: pl.String(),
    C.Category: pl.String(),
    C.Brand: pl.String(),
    C.Price: pl.Float64(),
    C.Tags: pl.List(pl.String()),
    C.CreatedAt: UTC_DATETIME,
    C.InStock: pl.Boolean(),
    C.ImageUrl: pl.String(),  # optional: an http(s) URL or an absolute path of the item's picture
}
ITEMS_REQUIRED = (C.Item, C.Category)

USERS_SCHEMA: dict[str, pl.DataType] = {
    C.User: pl.String(),
    C.SignupAt: UTC_DATETIME,
    C.AgeBand: pl.String(),
    C.Gender: pl.String(),
    C.Region: pl.String(),
    C.Occupation: pl.String(),
}
USERS_REQUIRED = (C.User,)

TABLES: dict[str, dict[str, pl.DataType]] = {"events": EVENTS_SCHEMA, "items": ITEMS_SCHEMA, "users": USERS_SCHEMA}
REQUIRED: dict[str, tuple[str, ...]] = {"events": EVENTS_REQUIRED, "items": ITEMS_REQUIRED, "users": USERS_REQUIRED}

CATEGORY_SEP = " > "
TAG_SEP = "|"


def conform(df: pl.DataFrame, table: str) -> pl.DataFrame:
    """Return ``df`` with exactly the table's columns, in order, with the schema's dtypes.

    Optional columns that are missing are added as nulls (``in_stock`` defaults to true and
    ``quantity`` to 1). Casts are strict: a value that does not fit raises rather than turning
    into null, so callers validate first (see :mod:`storerec.features.validate`).
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
