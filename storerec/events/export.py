"""Logged shopper events -> the events table format, so they flow back into training."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from storerec.core.errors import UserError
from storerec.core.schema import EVENTS_SCHEMA, FEEDBACK_TO_BEHAVIOUR, FeedbackTypes
from storerec.core.schema import Columns as C
from storerec.events.eventlog import read_frames
from storerec.features import io


def to_events_table(feedback: pl.DataFrame) -> pl.DataFrame:
    """Feedback as behaviour events (:data:`~storerec.core.schema.FEEDBACK_TO_BEHAVIOUR`: click ->
    view, cart -> cart, purchase -> purchase; price = revenue, quantity 1).
    Anonymous events keep their session as the shopper id ``anonymous:<session>``."""
    df = feedback.select(
        pl.coalesce(pl.col("user_id"), pl.lit("anonymous:") + pl.col("session_id").fill_null("unknown")).alias(C.User),
        pl.col("item_id").alias(C.Item),
        pl.col("event_type").replace_strict(FEEDBACK_TO_BEHAVIOUR).alias(C.EventType),
        pl.col("ts").alias(C.Timestamp),
        pl.lit(1, dtype=pl.Int32).alias(C.Quantity),
        pl.when(pl.col("event_type") == FeedbackTypes.Purchase).then(pl.col("revenue")).otherwise(None).cast(pl.Float64).alias(C.Price),
        pl.col("session_id").alias(C.Session),
        pl.lit(None, dtype=pl.Float64).alias(C.Value),
    )
    return df.select(pl.col(c).cast(t) for c, t in EVENTS_SCHEMA.items()).sort(C.Timestamp)


def export_events(url: str, out: Path) -> int:
    """Write every logged event to ``out`` (.parquet or .csv), atomically; returns the count."""
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise UserError(f"--out {out}: use a .parquet or .csv file name")
    table = to_events_table(read_frames(url)["feedback"])
    if out.suffix == ".parquet":
        io.write_atomic({out: table})
    else:
        io.write_text_atomic(out, table.write_csv())
    return table.height
