"""The validation split (#13 item 7): ``auto`` keeps the temporal window only when it holds
enough users; otherwise a window of a handful of shoppers would crown champions on noise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from storerec.core.errors import UserError
from storerec.core.settings import TrainingSettings
from storerec.training.pipeline import Tables, make_split

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _tables(n_users: int, recent_users: int) -> Tables:
    """``n_users`` users with 5 purchases each, 60 to 20 days before the end; ``recent_users`` of
    them buy once more in the last 14 days."""
    rows = []
    for u in range(n_users):
        for j in range(5):
            rows.append((f"u{u}", f"i{(u + j) % 50}", "purchase", T0 + timedelta(days=j * 8, hours=u % 24)))
        if u < recent_users:
            rows.append((f"u{u}", f"i{(u + 7) % 50}", "purchase", T0 + timedelta(days=55)))
    events = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "event_type": pl.String,
                                        "timestamp": pl.Datetime("us", "UTC")}, orient="row")
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(50)]})
    return Tables(events, items, None, "fp")


def test_auto_keeps_a_well_populated_temporal_window() -> None:
    split = make_split(_tables(400, 150), TrainingSettings())
    assert split.params["split"] == "temporal"
    assert split.test["user_id"].n_unique() == 150
    assert "150 validation users" in split.params["split.reason"]


def test_auto_falls_back_to_a_per_user_split_when_the_window_is_thin() -> None:
    split = make_split(_tables(400, 12), TrainingSettings())
    assert split.params["split"] == "last_fraction"
    assert "12 validation users of 400" in split.params["split.reason"] and "per-user" in split.params["split.reason"]
    assert split.test["user_id"].n_unique() == 400  # every user with more than one event validates
    # no validation pair leaks into train
    assert split.test.join(split.train.select("user_id", "item_id"), on=["user_id", "item_id"]).is_empty()


def test_the_share_rule_counts_too() -> None:
    # 150 users in the window pass min_test_users=100 but not 5 % of 4,000 users (200)
    split = make_split(_tables(4000, 150), TrainingSettings())
    assert split.params["split"] == "last_fraction"
    assert "fewer than 200" in split.params["split.reason"]


def test_an_explicit_temporal_split_is_kept_and_an_empty_window_is_refused() -> None:
    split = make_split(_tables(400, 12), TrainingSettings(split="temporal"))
    assert split.params["split"] == "temporal" and split.test["user_id"].n_unique() == 12
    with pytest.raises(UserError, match="no relevant validation events"):
        make_split(_tables(400, 12), TrainingSettings(split="temporal", relevant_event_types=["rating"]))


def _constant_time_tables(n_users: int = 300, per_user: int = 10) -> Tables:
    """Play-count-like data: every event at one time (the source had none)."""
    rows = [(f"u{u}", f"i{(u * 7 + j) % 200:03d}", "purchase", T0) for u in range(n_users) for j in range(per_user)]
    events = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "event_type": pl.String,
                                        "timestamp": pl.Datetime("us", "UTC")}, orient="row")
    return Tables(events, pl.DataFrame({"item_id": [f"i{i:03d}" for i in range(200)]}), None, "fp")


def test_auto_detects_timestamps_that_carry_no_order() -> None:
    """Constant timestamps: a temporal window would hold everything, and "each user's last 20 %"
    would be their largest item ids; auto takes a seeded random 20 % per user instead."""
    tables = _constant_time_tables()
    split = make_split(tables, TrainingSettings())
    assert split.params["split"] == "last_fraction" and split.params["split.order"] == "random"
    assert "do not order" in split.params["split.reason"] and "1 distinct times" in split.params["split.reason"]
    assert split.test["user_id"].n_unique() == 300 and split.test.height == 600  # 2 of 10 per user
    # not the largest item ids: a sorted-by-item tail would hold only each user's 2 largest ids
    by_id = tables.events.sort("user_id", "item_id").group_by("user_id", maintain_order=True).tail(2)
    assert split.test.join(by_id.select("user_id", "item_id"), on=["user_id", "item_id"]).height < 0.5 * split.test.height
    # reproducible, and nothing leaks
    again = make_split(tables, TrainingSettings())
    assert again.test.sort("user_id", "item_id").equals(split.test.sort("user_id", "item_id"))
    assert split.test.join(split.train.select("user_id", "item_id"), on=["user_id", "item_id"]).is_empty()


def test_informative_timestamps_keep_the_time_order() -> None:
    from storerec.evaluation.splitters import time_orders_events

    assert time_orders_events(_tables(400, 12).events)
    assert not time_orders_events(_constant_time_tables().events)


def test_released_events_are_read_again_and_a_changed_folder_is_refused(tmp_path) -> None:
    """`storerec train` drops the events table after the split (memory at scale) and reads it again
    for the refit; a folder that changed in between is an error, not a silently different model."""
    from storerec.core.schema import conform
    from storerec.features import io

    tables = _tables(50, 10)
    items = tables.items.with_columns(pl.lit("c").alias("category"))
    io.write_tables(tmp_path, {"events": conform(tables.events, "events"), "items": conform(items, "items")})
    loaded = Tables.load(tmp_path)
    before = loaded.events
    loaded.release_events()
    assert loaded._events is None
    assert loaded.events.equals(before)  # read again, same fingerprint
    loaded.release_events()
    io.write_tables(tmp_path, {"events": conform(tables.events.head(10), "events")})
    with pytest.raises(UserError, match="changed while this job ran"):
        _ = loaded.events
    in_memory = _tables(50, 10)  # not read from a folder: nothing to read again, so it is kept
    in_memory.release_events()
    assert in_memory.events.height > 0


def test_a_released_split_cannot_be_used() -> None:
    split = make_split(_tables(400, 150), TrainingSettings())
    split.release()
    with pytest.raises(RuntimeError, match="released"):
        _ = split.train
    with pytest.raises(RuntimeError, match="released"):
        _ = split.test
