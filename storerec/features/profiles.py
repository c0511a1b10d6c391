"""User profiles and item features, built offline from the three tables as of a date.

Everything here uses only events strictly before ``as_of`` (no leakage), so evaluation can build
the features a model would have had at the split date. The rules come from ../shared/DOMAIN.md
and every threshold is configuration (:class:`storerec.core.settings.ProfileSettings`).

User profile (one row per user known at ``as_of``: signed up before it or seen in an event):

- **orders**: purchases sharing a ``session_id`` form one order; a purchase without a session is
  its own order. ``frequency`` = orders, ``monetary`` = spend = sum(price x quantity) (a purchase
  without a price is valued at the item's list price), ``aov`` = monetary / frequency.
- **recency_days**: days from the last purchase to ``as_of`` (null for users who never bought).
- **RFM scores 1-5** (quintiles among users who bought): a user's score is
  ``floor(5 * (rank - 1) / n) + 1`` where rank is the user's ascending rank by frequency /
  monetary (ties share the lowest rank), and by *descending* recency for R (most recent = 5).
  ``rfm_score`` = 100 R + 10 F + M. Users without purchases have null scores.
- **segment**: ``new`` when signed up (or first purchase) at most ``new_user_days`` ago;
  otherwise by days since the last purchase (since signup for users who never bought):
  ``active`` up to ``repurchase_cycle_days`` (inclusive), ``dormant`` up to ``churn_days``
  (inclusive), ``churned`` beyond.
- **tier** by cumulative spend: the highest tier whose threshold is <= spend (inclusive);
  ``next_tier`` and ``spend_to_next_tier`` tell how far the next one is.
- **points**: ``points_per_unit`` per currency unit spent, floored per purchase; points expire
  ``points_expiry_days`` after they were earned. ``points_balance`` counts unexpired points,
  ``points_expiring_30d`` those that expire within the next 30 days. (The data has no
  redemptions or check-in bonuses; those would subtract/add here.)
- **affinities**: ``top_categories`` (list of {category, share}: share of the user's weighted
  events, weights from ``events.weights``), ``top_category``, ``top_brands``; ``price_percentile``
  (median within-category price percentile of the items bought, else of items interacted with)
  and ``price_band`` (low / mid / high by ``price_band_cuts``).
- **activity**: ``active_days`` (distinct UTC dates with an event), ``last_event_at``,
  ``n_<event type>`` counts, ``last_items`` (the last ``last_items_n`` distinct items, most
  recent first), ``repurchase_rate`` (share of bought items bought in two or more orders),
  ``avg_order_interval_days``.

Item features (one row per item in the items table): category path and its first level, brand,
list price, within-category ``price_percentile`` and ``price_band``, ``is_new`` (created at most
``new_arrival_days`` before ``as_of``, or later), ``age_days``, popularity (distinct users) over 7
and 30 days, purchases over 7 and 30 days, ``trending_score`` = (users in the last 7 days + 1) /
(users in the 28 days before, per week, + 1) so > 1 means growing, ``repeat_purchase_rate``
(share of the item's buyers who bought it in two or more orders) and ``co_purchased`` (the items
most often bought in the same order).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import CATEGORY_SEP, UTC_DATETIME, Columns, EventTypes
from storerec.core.settings import Settings
from storerec.features import io

C = Columns
SEGMENTS = ["new", "active", "dormant", "churned"]
PRICE_BANDS = ["low", "mid", "high"]
DAY_US = 86_400 * 1_000_000


def _days_between(later: pl.Expr | datetime, earlier: pl.Expr) -> pl.Expr:
    later_e = pl.lit(later, dtype=UTC_DATETIME) if isinstance(later, datetime) else later
    return (later_e - earlier).dt.total_microseconds() / DAY_US


def _before(events: pl.DataFrame | pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    return events.lazy().filter(pl.col(C.Timestamp) < pl.lit(as_of, dtype=UTC_DATETIME))


def _band(pct: pl.Expr, cuts: list[float]) -> pl.Expr:
    return (
        pl.when(pct.is_null())
        .then(None)
        .when(pct < cuts[0])
        .then(pl.lit("low"))
        .when(pct < cuts[1])
        .then(pl.lit("mid"))
        .otherwise(pl.lit("high"))
    )


def _quintile(col: str, descending: bool = False) -> pl.Expr:
    """1-5 by ``floor(5 * (rank - 1) / n) + 1`` among non-null values; ties share the lowest rank."""
    value = -pl.col(col) if descending else pl.col(col)
    rank = value.rank(method="min")
    n = pl.col(col).count()
    return (((rank - 1) * 5 / n).floor() + 1).cast(pl.Int8)


def _item_price_percentile(items: pl.DataFrame) -> pl.DataFrame:
    """Within-category price percentile in [0, 1): share of the category's items that are cheaper."""
    return items.select(
        C.Item,
        C.Category,
        C.Brand,
        C.Price,
        ((pl.col(C.Price).rank(method="min").over(C.Category) - 1) / pl.col(C.Price).count().over(C.Category))
        .cast(pl.Float64)
        .alias("price_percentile"),
    )


def _orders(purchases: pl.LazyFrame) -> pl.LazyFrame:
    """Adds ``order_id``: the session for purchases that have one, else the single event."""
    return purchases.with_columns(
        pl.coalesce(
            pl.lit("s:") + pl.col(C.Session),
            pl.lit("e:") + pl.col(C.User) + pl.lit("@") + pl.col(C.Timestamp).cast(pl.Int64).cast(pl.String),
        ).alias("order_id")
    )


def _purchases(events: pl.LazyFrame, items: pl.DataFrame) -> pl.LazyFrame:
    list_price = items.lazy().select(C.Item, pl.col(C.Price).alias("_list_price"))
    return _orders(
        events.filter(pl.col(C.EventType) == EventTypes.Purchase)
        .join(list_price, on=C.Item, how="left")
        .with_columns(
            (pl.coalesce(C.Price, "_list_price").fill_null(0.0) * pl.col(C.Quantity).fill_null(1).cast(pl.Float64)).alias(
                "spend"
            )
        )
    )


def user_profiles(
    events: pl.DataFrame,
    users: pl.DataFrame | None,
    items: pl.DataFrame,
    settings: Settings,
    as_of: datetime,
) -> pl.DataFrame:
    """One profile row per user known at ``as_of``; pure function of its inputs (see module doc).

    Parameters
    ----------
    events, users, items
        The three tables (``users`` may be None: users then come from the events alone).
    settings
        ``settings.profiles`` gives the thresholds, ``settings.events`` the event weights/types.
    as_of
        Only events strictly before this UTC time are used; recency and segments are measured
        from it.
    """
    cfg = settings.profiles
    ev = _before(events, as_of)
    item_info = _item_price_percentile(items)

    # the users known at as_of: registered before it, or seen in an event before it
    seen = ev.group_by(C.User).agg(
        pl.col(C.Timestamp).min().alias("first_event_at"),
        pl.col(C.Timestamp).max().alias("last_event_at"),
        pl.col(C.Timestamp).dt.date().n_unique().cast(pl.Int32).alias("active_days"),
    )
    if users is not None:
        base = users.lazy().filter(
            pl.col(C.SignupAt).is_null() | (pl.col(C.SignupAt) < pl.lit(as_of, dtype=UTC_DATETIME))
        )
        known = base.join(seen, on=C.User, how="full", coalesce=True).filter(
            pl.col(C.SignupAt).is_not_null() | pl.col("first_event_at").is_not_null()
        )
    else:
        known = seen.with_columns(
            pl.lit(None, dtype=UTC_DATETIME).alias(C.SignupAt),
            *[pl.lit(None, dtype=pl.String).alias(c) for c in (C.AgeBand, C.Gender, C.Region, C.Occupation)],
        )
    known = known.with_columns(pl.coalesce(C.SignupAt, "first_event_at").alias(C.SignupAt))

    # orders, spend and points
    purchases = _purchases(ev, items)
    orders = purchases.group_by(C.User, "order_id").agg(
        pl.col(C.Timestamp).min().alias("_at"), pl.col("spend").sum().alias("_spend")
    )
    per_user_orders = orders.group_by(C.User).agg(
        pl.len().cast(pl.Int32).alias("frequency"),
        pl.col("_spend").sum().alias("monetary"),
        pl.col("_at").min().alias("first_purchase_at"),
        pl.col("_at").max().alias("last_purchase_at"),
    )
    expiry = timedelta(days=cfg.points_expiry_days)
    points = (
        purchases.with_columns((pl.col("spend") * cfg.points_per_unit).floor().cast(pl.Int64).alias("_pts"))
        .group_by(C.User)
        .agg(
            pl.col("_pts").filter(pl.col(C.Timestamp) + expiry > pl.lit(as_of, dtype=UTC_DATETIME)).sum().alias("points_balance"),
            pl.col("_pts")
            .filter(
                (pl.col(C.Timestamp) + expiry > pl.lit(as_of, dtype=UTC_DATETIME))
                & (pl.col(C.Timestamp) + expiry <= pl.lit(as_of + timedelta(days=30), dtype=UTC_DATETIME))
            )
            .sum()
            .alias("points_expiring_30d"),
        )
    )
    per_item_orders = purchases.group_by(C.User, C.Item).agg(pl.col("order_id").n_unique().alias("_n"))
    repurchase = per_item_orders.group_by(C.User).agg(
        ((pl.col("_n") >= 2).sum() / pl.len()).cast(pl.Float64).alias("repurchase_rate")
    )

    # counts per event type
    types = settings.events.types
    counts = ev.group_by(C.User).agg(
        [(pl.col(C.EventType) == t).sum().cast(pl.Int32).alias(f"n_{t}") for t in types]
    )

    # affinities: weighted events per category / brand
    weights = settings.events.weights
    weighted = ev.select(
        C.User,
        C.Item,
        C.EventType,
        C.Timestamp,
        pl.col(C.EventType).replace_strict(weights, default=1.0, return_dtype=pl.Float64).alias("_w"),
    ).join(item_info.lazy(), on=C.Item, how="left")
    top_n = cfg.top_n
    by_cat = (
        weighted.filter(pl.col(C.Category).is_not_null())
        .group_by(C.User, C.Category)
        .agg(pl.col("_w").sum())
        .with_columns((pl.col("_w") / pl.col("_w").sum().over(C.User)).alias("share"))
        .sort([C.User, "share", C.Category], descending=[False, True, False])
        .group_by(C.User, maintain_order=True)
        .agg(pl.struct(pl.col(C.Category).alias("category"), "share").head(top_n).alias("top_categories"))
    )
    by_brand = (
        weighted.filter(pl.col(C.Brand).is_not_null())
        .group_by(C.User, C.Brand)
        .agg(pl.col("_w").sum())
        .sort([C.User, "_w", C.Brand], descending=[False, True, False])
        .group_by(C.User, maintain_order=True)
        .agg(pl.col(C.Brand).head(top_n).alias("top_brands"))
    )
    price = weighted.group_by(C.User).agg(
        pl.coalesce(
            pl.col("price_percentile").filter(pl.col(C.EventType) == EventTypes.Purchase).median(),
            pl.col("price_percentile").median(),
        ).alias("price_percentile")
    )
    last_items = (
        ev.select(C.User, C.Item, C.Timestamp)
        .group_by(C.User, C.Item)
        .agg(pl.col(C.Timestamp).max())
        .sort([C.User, C.Timestamp, C.Item], descending=[False, True, False])
        .group_by(C.User, maintain_order=True)
        .agg(pl.col(C.Item).head(cfg.last_items_n).alias("last_items"))
    )

    prof = (
        known.join(per_user_orders, on=C.User, how="left")
        .join(points, on=C.User, how="left")
        .join(repurchase, on=C.User, how="left")
        .join(counts, on=C.User, how="left")
        .join(by_cat, on=C.User, how="left")
        .join(by_brand, on=C.User, how="left")
        .join(price, on=C.User, how="left")
        .join(last_items, on=C.User, how="left")
        .collect()
    )

    prof = prof.with_columns(
        pl.col("frequency").fill_null(0),
        pl.col("monetary").fill_null(0.0),
        pl.col("points_balance").fill_null(0),
        pl.col("points_expiring_30d").fill_null(0),
        pl.col("active_days").fill_null(0),
        *[pl.col(f"n_{t}").fill_null(0) for t in types],
        _days_between(as_of, pl.col("last_purchase_at")).alias("recency_days"),
        _days_between(as_of, pl.col(C.SignupAt)).alias("_since_signup"),
        _days_between(as_of, pl.col("first_purchase_at")).alias("_since_first_purchase"),
    ).with_columns(
        pl.when(pl.col("frequency") > 0).then(pl.col("monetary") / pl.col("frequency")).alias("aov"),
        pl.when(pl.col("frequency") > 1)
        .then(_days_between(pl.col("last_purchase_at"), pl.col("first_purchase_at")) / (pl.col("frequency") - 1))
        .alias("avg_order_interval_days"),
    )

    # RFM scores among buyers
    buyers = prof.filter(pl.col("frequency") > 0).select(
        C.User,
        _quintile("recency_days", descending=True).alias("r_score"),
        _quintile("frequency").alias("f_score"),
        _quintile("monetary").alias("m_score"),
    )
    prof = prof.join(buyers, on=C.User, how="left").with_columns(
        (pl.col("r_score").cast(pl.Int16) * 100 + pl.col("f_score").cast(pl.Int16) * 10 + pl.col("m_score").cast(pl.Int16)).alias(
            "rfm_score"
        )
    )

    # lifecycle segment
    since_activity = pl.coalesce("recency_days", "_since_signup")
    is_new = (pl.col("_since_signup") <= cfg.new_user_days) | (pl.col("_since_first_purchase") <= cfg.new_user_days)
    segment = (
        pl.when(is_new)
        .then(pl.lit("new"))
        .when(since_activity <= cfg.repurchase_cycle_days)
        .then(pl.lit("active"))
        .when(since_activity <= cfg.churn_days)
        .then(pl.lit("dormant"))
        .otherwise(pl.lit("churned"))
    )

    # membership tier
    names = list(cfg.tiers)
    thresholds = list(cfg.tiers.values())
    tier = pl.lit(names[0])
    next_tier = pl.lit(names[1] if len(names) > 1 else None, dtype=pl.String)
    to_next = pl.lit(thresholds[1] if len(names) > 1 else None, dtype=pl.Float64) - pl.col("monetary")
    for i in range(1, len(names)):
        reached = pl.col("monetary") >= thresholds[i]
        tier = pl.when(reached).then(pl.lit(names[i])).otherwise(tier)
        if i + 1 < len(names):
            next_tier = pl.when(reached).then(pl.lit(names[i + 1])).otherwise(next_tier)
            to_next = pl.when(reached).then(pl.lit(thresholds[i + 1]) - pl.col("monetary")).otherwise(to_next)
        else:
            next_tier = pl.when(reached).then(pl.lit(None, dtype=pl.String)).otherwise(next_tier)
            to_next = pl.when(reached).then(pl.lit(None, dtype=pl.Float64)).otherwise(to_next)

    prof = prof.with_columns(
        segment.cast(pl.Enum(SEGMENTS)).alias("segment"),
        tier.cast(pl.Enum(names)).alias("tier"),
        pl.col("monetary").alias("cumulative_spend"),
        next_tier.alias("next_tier"),
        to_next.alias("spend_to_next_tier"),
        pl.col("top_categories").list.first().struct.field("category").alias("top_category"),
        _band(pl.col("price_percentile"), cfg.price_band_cuts).cast(pl.Enum(PRICE_BANDS)).alias("price_band"),
    )
    columns = [
        C.User, C.SignupAt, C.AgeBand, C.Gender, C.Region, C.Occupation,
        "segment", "tier", "next_tier", "spend_to_next_tier", "cumulative_spend",
        "points_balance", "points_expiring_30d",
        "recency_days", "frequency", "monetary", "aov", "r_score", "f_score", "m_score", "rfm_score",
        "first_purchase_at", "last_purchase_at", "last_event_at", "active_days",
        "top_categories", "top_category", "top_brands", "price_percentile", "price_band",
        *[f"n_{t}" for t in types],
        "last_items", "repurchase_rate", "avg_order_interval_days",
    ]  # fmt: skip
    for col in (C.AgeBand, C.Gender, C.Region, C.Occupation):
        if col not in prof.columns:
            prof = prof.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    return prof.select(columns).sort(C.User)


def item_features(events: pl.DataFrame, items: pl.DataFrame, settings: Settings, as_of: datetime) -> pl.DataFrame:
    """One feature row per item of the items table, from events strictly before ``as_of``.

    Items created after ``as_of`` are kept (flagged ``is_new``, with no popularity): the catalogue
    is known at serving time and the hybrid model scores such items from their features.
    """
    cfg = settings.profiles
    ev = _before(events, as_of)
    at = pl.lit(as_of, dtype=UTC_DATETIME)
    d7, d30, d35 = (at - timedelta(days=d) for d in (7, 30, 35))
    pop = ev.group_by(C.Item).agg(
        pl.col(C.User).filter(pl.col(C.Timestamp) >= d7).n_unique().cast(pl.Int32).alias("pop_7d"),
        pl.col(C.User).filter(pl.col(C.Timestamp) >= d30).n_unique().cast(pl.Int32).alias("pop_30d"),
        pl.col(C.User).filter((pl.col(C.Timestamp) >= d35) & (pl.col(C.Timestamp) < d7)).n_unique().alias("_prev28"),
        pl.col(C.User).n_unique().cast(pl.Int32).alias("users_total"),
        (pl.col(C.EventType) == EventTypes.Purchase).filter(pl.col(C.Timestamp) >= d7).sum().cast(pl.Int32).alias("purchases_7d"),
        (pl.col(C.EventType) == EventTypes.Purchase).filter(pl.col(C.Timestamp) >= d30).sum().cast(pl.Int32).alias("purchases_30d"),
        (pl.col(C.EventType) == EventTypes.Purchase).sum().cast(pl.Int32).alias("purchases_total"),
    )
    purchases = _purchases(ev, items)
    per_buyer = purchases.group_by(C.Item, C.User).agg(pl.col("order_id").n_unique().alias("_n"))
    repeat = per_buyer.group_by(C.Item).agg(((pl.col("_n") >= 2).sum() / pl.len()).cast(pl.Float64).alias("repeat_purchase_rate"))
    basket = purchases.select("order_id", C.Item).unique()
    co = (
        basket.join(basket, on="order_id", suffix="_other")
        .filter(pl.col(C.Item) != pl.col(f"{C.Item}_other"))
        .group_by(C.Item, f"{C.Item}_other")
        .agg(pl.len().alias("_n"))
        .sort([C.Item, "_n", f"{C.Item}_other"], descending=[False, True, False])
        .group_by(C.Item, maintain_order=True)
        .agg(pl.col(f"{C.Item}_other").head(cfg.co_purchase_n).alias("co_purchased"))
    )
    pct = _item_price_percentile(items).select(C.Item, "price_percentile")
    new_cut = as_of - timedelta(days=cfg.new_arrival_days)
    out = (
        items.lazy()
        .join(pct.lazy(), on=C.Item, how="left")
        .join(pop, on=C.Item, how="left")
        .join(repeat, on=C.Item, how="left")
        .join(co, on=C.Item, how="left")
        .with_columns(
            pl.col(C.Category).str.split(CATEGORY_SEP).list.first().alias("category_l1"),
            _band(pl.col("price_percentile"), cfg.price_band_cuts).cast(pl.Enum(PRICE_BANDS)).alias("price_band"),
            (pl.col(C.CreatedAt).is_not_null() & (pl.col(C.CreatedAt) >= pl.lit(new_cut, dtype=UTC_DATETIME))).alias("is_new"),
            _days_between(as_of, pl.col(C.CreatedAt)).alias("age_days"),
            *[pl.col(c).fill_null(0) for c in ("pop_7d", "pop_30d", "users_total", "purchases_7d", "purchases_30d", "purchases_total")],
            ((pl.col("pop_7d").fill_null(0) + 1) / (pl.col("_prev28").fill_null(0) / 4 + 1)).alias("trending_score"),
            pl.col("co_purchased").fill_null([]),
        )
        .select(
            C.Item, C.Title, C.Category, "category_l1", C.Brand, C.Price, C.Tags, "price_percentile", "price_band",
            C.CreatedAt, "age_days", "is_new", C.InStock, *([C.ImageUrl] if C.ImageUrl in items.columns else []),
            "pop_7d", "pop_30d", "users_total", "purchases_7d", "purchases_30d", "purchases_total",
            "trending_score", "repeat_purchase_rate", "co_purchased",
        )  # fmt: skip
        .sort(C.Item)
        .collect()
    )
    return out


@dataclass
class ProfileSummary:
    as_of: datetime
    users: int
    items: int
    events_used: int
    segments: dict[str, int]
    tiers: dict[str, int]
    categories: dict[str, int]
    paths: dict[str, Path]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"profiles as of {self.as_of.isoformat()}: {self.users:,} users, {self.items:,} items, "
            f"from {self.events_used:,} events ({self.seconds:.1f}s)",
            "  users per segment: " + ", ".join(f"{k} {v:,}" for k, v in self.segments.items()),
            "  users per tier:    " + ", ".join(f"{k} {v:,}" for k, v in self.tiers.items()),
            f"  items per category ({len(self.categories)}):",
        ]
        cats = sorted(self.categories.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = cats[:30]
        for name, n in shown:
            lines.append(f"    {n:>7,}  {name}")
        if len(cats) > len(shown):
            lines.append(f"    ... and {len(cats) - len(shown)} more")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  wrote {p}" for p in self.paths.values()]
        return "\n".join(lines)


def default_as_of(events: pl.DataFrame | pl.LazyFrame) -> datetime:
    """Just after the last event, so that every event counts."""
    last = events.lazy().select(pl.col(C.Timestamp).max()).collect().item()
    if last is None:
        raise UserError("the events table is empty: nothing to build profiles from")
    return last + timedelta(microseconds=1)


def build_profiles(
    settings: Settings,
    data_dir: Path,
    *,
    as_of: datetime | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> ProfileSummary:
    """Read the data folder, build both tables and write ``users.parquet``, ``items.parquet`` and
    ``meta.json`` into ``out_dir`` (default ``<data_dir>/profiles``), all atomically.

    Raises
    ------
    UserError
        When a table is missing or no event lies before ``as_of``.
    """
    progress = progress or Progress("features", quiet=True)
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir else data_dir / "profiles"
    with progress.step("read tables"):
        events = io.read_table(data_dir, "events")
        items = io.read_table(data_dir, "items")
        users = io.read_table(data_dir, "users") if io.has_table(data_dir, "users") else None
    assert isinstance(events, pl.DataFrame) and isinstance(items, pl.DataFrame) and not isinstance(users, pl.LazyFrame)
    notes = []
    if as_of is None:
        as_of = default_as_of(events)
    else:
        as_of = as_of.astimezone(UTC)
    used = events.filter(pl.col(C.Timestamp) < pl.lit(as_of, dtype=UTC_DATETIME)).height
    if used == 0:
        first = events.select(pl.col(C.Timestamp).min()).item()
        raise UserError(f"no events before --as-of {as_of.isoformat()} (the first event is at {first}); pick a later date")
    if used < events.height:
        notes.append(f"{events.height - used:,} events at or after {as_of.isoformat()} were left out (as-of)")
    with progress.step(f"user profiles ({used:,} events)"):
        prof = user_profiles(events, users, items, settings, as_of)
    with progress.step("item features"):
        feats = item_features(events, items, settings, as_of)
    segments = {s: 0 for s in SEGMENTS} | dict(prof.group_by("segment").len().select(pl.col("segment").cast(pl.String), "len").iter_rows())
    tiers = {t: 0 for t in settings.profiles.tiers} | dict(prof.group_by("tier").len().select(pl.col("tier").cast(pl.String), "len").iter_rows())
    categories = dict(feats.group_by(C.Category).len().iter_rows())
    paths = {"users": out_dir / "users.parquet", "items": out_dir / "items.parquet", "meta": out_dir / "meta.json"}
    with progress.step("write"):
        io.write_atomic({paths["users"]: prof, paths["items"]: feats})
        meta = {
            "as_of": as_of.isoformat(),
            "users": prof.height,
            "items": feats.height,
            "events_used": used,
            "segments": segments,
            "tiers": tiers,
            "settings": json.loads(settings.profiles.model_dump_json()),
        }
        io.write_text_atomic(paths["meta"], json.dumps(meta, indent=2) + "\n")
    return ProfileSummary(
        as_of, prof.height, feats.height, used, segments, tiers, categories, paths, time.perf_counter() - t0, notes
    )
