"""Row-level validation of imported tables, vectorised with polars.

Input is a table of *strings* (as read from CSV, or stringified from Parquet) with storerec column
names and a row number; output is the accepted rows parsed into the schema's dtypes plus a table
of problems, one line per (row, field): ``row``, ``field``, ``value`` (the raw string), ``reason``
and ``kind`` (the reason without the offending value, for counting). Every check is a column
expression over the whole table, so millions of rows take seconds; there is no per-row Python.

Exact duplicates (all source columns equal) are set apart first: the first copy is checked like
any row, later copies are reported only as "exact duplicate of row N". This keeps the counts
simple: every row read is exactly one of accepted, quarantined (>= 1 problem) or deduplicated.

Numbers are never taken for times by guessing: a numeric time value needs the mapping's
``timestamp_unit`` (seconds, milliseconds... since 1970-01-01 UTC); without it the row is bad.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from storerec.core.schema import REQUIRED, TAG_SEP, UTC_DATETIME, Columns, conform
from storerec.core.settings import Settings

C = Columns

ROW = "__row__"  # internal row number column (1-based data row); never a user column name
DUPLICATE_FIELD = "(all columns)"

PROBLEM_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "field": pl.String(),
    "value": pl.String(),
    "reason": pl.String(),
    "kind": pl.String(),
}

# Default time formats, tried in turn (see parse_datetime). '%.f' also matches no fraction; '%#z'
# takes 'Z', '+02:00' and '+0200' and makes a time absolute; the others are naive and read in
# the mapping's timezone. Exact formats come first: polars has fast paths for them.
_DEFAULT_FORMATS = (
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M%#z",
    "%Y-%m-%d %H:%M%#z",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
)
_SAMPLE = 1_000

# A time value written as a number (optionally signed, with a fraction or an exponent).
NUMERIC = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_INTEGER = r"^[+-]?\d{1,19}$"
# timestamp_unit -> microseconds per unit (times are stored in microseconds).
TIMESTAMP_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_I64_MAX = 2**63 - 1

IMAGE_URL = r"^(https?://[^\s]+|/[^\s]*)$"  # an http(s) URL or an absolute path, no whitespace
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_INT32_MAX = 2**31 - 1

# The time column of each table, which the mapping's ``timestamp_format`` applies to.
TIME_COLUMN = {"events": C.Timestamp, "items": C.CreatedAt, "users": C.SignupAt}


@dataclass(frozen=True)
class ParseOptions:
    """How to read one table's values.

    Attributes
    ----------
    timestamp_format
        strftime format of the table's time column; ``None``: ISO 8601 / RFC 3339.
    timestamp_unit
        ``"s"``, ``"ms"``, ``"us"`` or ``"ns"``: the time column holds numbers of these units
        since 1970-01-01 UTC. Without it a numeric time value is a bad row, never a guess.
    timezone
        IANA zone of naive times (times without an offset).
    event_types
        Source value -> storerec event type, applied before checking ``events.types``.
    """

    timestamp_format: str | None = None
    timestamp_unit: str | None = None
    timezone: str = "UTC"
    event_types: dict[str, str] = field(default_factory=dict)


@dataclass
class Validated:
    """The outcome of validating one table.

    Attributes
    ----------
    data
        Accepted rows in file order, conformed to the table's schema (exact dtypes).
    problems
        One line per (row, field) problem, sorted by row (columns of :data:`PROBLEM_SCHEMA`).
    bad_rows
        Row numbers of rows with at least one problem, excluding exact-duplicate copies.
    duplicate_rows
        Row numbers of exact-duplicate copies (the first copy is not among them).
    n_read
        Rows read.
    data_rows
        Row number of each row of ``data`` (same order).
    n_forgotten
        Rows of forgotten users taken out after validation (by the importer), whatever their
        state: ``n_read == n_accepted + n_quarantined + n_deduplicated + n_forgotten``.
    """

    data: pl.DataFrame
    problems: pl.DataFrame
    bad_rows: pl.Series
    duplicate_rows: pl.Series
    n_read: int
    data_rows: pl.Series
    n_forgotten: int = 0

    @property
    def n_accepted(self) -> int:
        return self.data.height

    @property
    def n_quarantined(self) -> int:
        return self.bad_rows.len()

    @property
    def n_deduplicated(self) -> int:
        return self.duplicate_rows.len()


def check_timezone(name: str) -> None:
    """Raise ``ValueError`` if ``name`` is not an IANA time zone."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'UTC' or 'Europe/Paris')") from exc


def _attempt(s: pl.Series, fmt: str, tz: str) -> pl.Series:
    parsed = s.str.to_datetime(fmt, strict=False, time_unit="us")
    if parsed.dtype.time_zone is None:  # type: ignore[attr-defined]
        parsed = parsed.dt.replace_time_zone(tz, ambiguous="earliest", non_existent="null")
    return parsed.dt.convert_time_zone("UTC")


def _from_epoch(s: pl.Series, unit: str) -> pl.Series:
    """Numbers of ``unit`` since 1970-01-01 UTC -> UTC datetimes (microseconds); others null.

    Whole numbers are converted exactly (no float rounding); fractions and exponents go through
    float64 (sub-microsecond digits are dropped). Values outside the datetime range are null.
    """
    per = TIMESTAMP_UNITS[unit]
    whole = s.str.contains(_INTEGER)
    ints = pl.when(whole).then(s.cast(pl.Int64, strict=False))
    exact: pl.Expr
    if per >= 1:
        limit = _I64_MAX // int(per)
        exact = pl.when(ints.abs() <= limit).then(ints * int(per))
    else:  # nanoseconds: floor to whole microseconds
        exact = ints.floordiv(int(round(1 / per)))
    num = pl.when(~whole & s.str.contains(NUMERIC)).then(s.cast(pl.Float64, strict=False) * per)
    inexact = pl.when(num.is_finite() & (num.abs() < 9.2e18)).then(num.floor().cast(pl.Int64, strict=False))
    micros = pl.coalesce(exact, inexact)
    return pl.select(pl.from_epoch(micros, "us").dt.replace_time_zone("UTC")).to_series()


def parse_datetime(values: pl.Series, fmt: str | None = None, tz: str = "UTC", unit: str | None = None) -> pl.Series:
    """Parse strings into ``Datetime("us", "UTC")``; unparsable values become null.

    Parameters
    ----------
    values
        String series.
    fmt
        strftime format; ``None`` accepts ISO 8601 / RFC 3339 (``2024-05-01``,
        ``2024-05-01T10:00:00Z``, ``2024-05-01 10:00:00.123+02:00`` ...). Numbers are not
        dates here: they need ``unit``.
    tz
        Zone for naive times. Ambiguous local times (DST fall-back) take the earlier instant;
        non-existent ones (DST spring-forward) are unparsable.
    unit
        ``"s"``, ``"ms"``, ``"us"`` or ``"ns"``: the values are numbers of this unit since
        1970-01-01 UTC (``fmt`` and ``tz`` are then not used); anything else is unparsable.

    Notes
    -----
    Formats are ordered by how many of the first values they parse; each later format is tried
    only on the values still unparsed, so a file in one format costs one parse of the column.
    """
    s = values.str.strip_chars()
    if unit is not None:
        return _from_epoch(s, unit).alias(values.name)
    if fmt is not None:
        return _attempt(s, fmt, tz).alias(values.name)
    sample = s.drop_nulls().head(_SAMPLE)
    formats = sorted(_DEFAULT_FORMATS, key=lambda f: -_attempt(sample, f, tz).count())
    out = _attempt(s, formats[0], tz)
    for f in formats[1:]:
        todo = (out.is_null() & s.is_not_null()).arg_true()
        if todo.len() == 0:
            break
        out = out.scatter(todo, _attempt(s.gather(todo), f, tz))
    return out.alias(values.name)


def _missing_to_null(df: pl.DataFrame) -> pl.DataFrame:
    """Empty (or all-blank) strings count as missing."""
    return df.with_columns(
        pl.when(pl.col(c).str.strip_chars() == "").then(None).otherwise(pl.col(c)).alias(c)
        for c, t in df.schema.items()
        if t == pl.String()
    )


@dataclass
class _Check:
    field: str
    bad: pl.Expr
    reason: pl.Expr
    kind: str


def _lit(text: str) -> pl.Expr:
    return pl.lit(text, dtype=pl.String)


def _parsed(col: str) -> str:
    return f"__parsed_{col}__"


def _parse(
    table: str, work: pl.DataFrame, settings: Settings, options: ParseOptions, now: datetime
) -> tuple[pl.DataFrame, list[_Check]]:
    """Add a parsed column per typed field (computed once), and the checks over them."""
    latest = now + timedelta(seconds=settings.events.max_future_seconds)
    columns = [c for c in work.columns if c != ROW]
    exprs: list[pl.Expr | pl.Series] = []
    checks = [_Check(c, pl.col(c).is_null(), _lit(f"missing {c}"), f"missing {c}") for c in REQUIRED[table]]
    for col in columns:
        raw, v = pl.col(col), pl.col(_parsed(col))
        present = raw.is_not_null()
        if col == TIME_COLUMN[table]:
            fmt, unit = options.timestamp_format, options.timestamp_unit
            exprs.append(parse_datetime(work[col], fmt, options.timezone, unit).alias(_parsed(col)))
            if unit is not None:
                hint = f"unparsable timestamp (expected a number of {UNIT_NAMES[unit]} since 1970-01-01 UTC, as timestamp_unit = {unit!r} says)"
            else:
                hint = f"unparsable timestamp (expected {fmt!r})" if fmt else "unparsable timestamp"
            unparsable = present & v.is_null()
            if fmt is None and unit is None:
                # A number is not taken for seconds (or days, or 1970) by guessing: the mapping says.
                numeric = raw.str.strip_chars().str.contains(NUMERIC)
                why = (
                    f'a number, not a date: set timestamp_unit = "s" or "ms" (time since 1970-01-01 UTC) under [{table}] '
                    f"in the mapping (--mapping), or timestamp_format if it is a date written as digits"
                )
                checks.append(_Check(col, numeric, _lit(why), "number without timestamp_unit"))
                unparsable = unparsable & ~numeric
            checks.append(_Check(col, unparsable, _lit(hint), "unparsable timestamp"))
            future = v > pl.lit(latest, dtype=UTC_DATETIME)
            checks.append(_Check(col, future, _lit("timestamp in the future"), "timestamp in the future"))
        elif col in (C.Quantity, C.Price, C.Value):
            num = raw.str.strip_chars().cast(pl.Float64, strict=False)
            exprs.append(pl.when(num.is_finite()).then(num).alias(_parsed(col)))
            checks.append(_Check(col, present & v.is_null(), _lit("not a number"), "not a number"))
            if col == C.Quantity:
                fraction = v != v.round()
                checks.append(_Check(col, fraction, _lit("not a whole number"), "not a whole number"))
                too_big = v.abs() > _INT32_MAX
                checks.append(_Check(col, too_big, _lit(f"too large (at most {_INT32_MAX:,})"), "too large"))
            if col != C.Value:  # values (e.g. ratings, scores) may be negative
                checks.append(_Check(col, v < 0, _lit(f"negative {col}"), f"negative {col}"))
        elif table == "events" and col == C.EventType:
            types = list(settings.events.types)
            exprs.append((raw.replace(options.event_types) if options.event_types else raw).alias(_parsed(col)))
            expected = f"' (expected one of {', '.join(types)}; add it to events.types to accept it)"
            reason = pl.concat_str(_lit("unknown event type '"), v, _lit(expected))
            checks.append(_Check(col, v.is_not_null() & ~v.is_in(types), reason, "unknown event type"))
        elif col == C.ImageUrl:
            exprs.append(raw.str.strip_chars().alias(_parsed(col)))
            reason = _lit("not an image URL (expected http://..., https://... or an absolute path /...)")
            checks.append(_Check(col, present & ~v.str.contains(IMAGE_URL), reason, "not an image URL"))
        elif col == C.InStock:
            flag = raw.str.strip_chars().str.to_lowercase().replace_strict(_BOOLEANS, default=None, return_dtype=pl.Boolean)
            exprs.append(flag.alias(_parsed(col)))
            reason = _lit("not a boolean (expected true/false, 1/0 or yes/no)")
            checks.append(_Check(col, present & v.is_null(), reason, "not a boolean"))
    return work.with_columns(exprs), checks


def _first_copies(raw: pl.DataFrame) -> pl.Series:
    """For each row, the row number of the first row with identical source values (its own if none)."""
    cols = [c for c in raw.columns if c != ROW]
    first = pl.struct(cols).is_first_distinct()
    rows = raw[ROW].cast(pl.Int64)
    mask = raw.select(first).to_series()
    if mask.all():
        return rows.alias("__first__")
    # Only duplicate copies need a lookup (usually few): join them to the originals.
    originals = raw.filter(mask).select(*cols, pl.col(ROW).cast(pl.Int64).alias("__first__"))
    copies = raw.filter(~mask).select(*cols, pl.col(ROW).cast(pl.Int64).alias("__copy__"))
    found = copies.join(originals, on=cols, how="left", nulls_equal=True, maintain_order="left").select("__copy__", "__first__")
    return rows.scatter((~mask).arg_true(), found["__first__"]).alias("__first__")


def _tags(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Tags from a '|'-separated string (CSV) or an existing list (Parquet); blanks dropped."""
    as_list = expr.str.split(TAG_SEP) if dtype == pl.String() else expr.cast(pl.List(pl.String))
    return as_list.list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))


def validate_table(
    table: str,
    work: pl.DataFrame,
    raw: pl.DataFrame,
    settings: Settings,
    options: ParseOptions | None = None,
    *,
    known_items: pl.Series | None = None,
    items_label: str | None = None,
    extra_problems: pl.DataFrame | None = None,
    now: datetime | None = None,
) -> Validated:
    """Validate one table and parse its accepted rows into the schema.

    Parameters
    ----------
    table
        ``"events"``, ``"items"`` or ``"users"``.
    work
        Storerec-named columns (a subset of the table's schema), all ``String`` except ``tags``
        which may already be a list, plus :data:`ROW`. Required columns must be present.
    raw
        The source columns as read, plus :data:`ROW`, in the same row order; exact duplicates
        are judged on these (all source columns equal).
    settings
        Accepted event types and the future-timestamp margin.
    options
        Time format/zone and event type value mapping.
    known_items
        Accepted item ids from an items table imported alongside; events naming any other item
        are bad. ``None`` skips the check.
    items_label
        How to name that items table in messages (its file).
    extra_problems
        Problems found by a caller on fields outside the schema (e.g. MovieLens' age), in
        :data:`PROBLEM_SCHEMA`; their rows count as bad.
    now
        Reference time for "in the future" (default: the current time).

    Returns
    -------
    Validated
    """
    options = options or ParseOptions()
    now = now or datetime.now(UTC)
    work = _missing_to_null(work).with_columns(pl.col(ROW).cast(pl.Int64))
    n_read = work.height
    columns = [c for c in work.columns if c != ROW]

    # Exact duplicates: the first of identical source rows is the original, later ones copies.
    work = work.with_columns(_first_copies(_missing_to_null(raw)))
    is_dup = pl.col("__first__") != pl.col(ROW)

    work, checks = _parse(table, work, settings, options, now)
    key = {"items": C.Item, "users": C.User}.get(table)
    if key is not None:
        # Same id, different content: only the first row keeps the id.
        first_id = pl.when(~is_dup & pl.col(key).is_not_null()).then(pl.col(ROW)).min().over(key)
        work = work.with_columns(first_id.alias("__first_id__"))
        bad = pl.col(key).is_not_null() & (pl.col("__first_id__") != pl.col(ROW))
        reason = pl.format(f"duplicate {key}, first seen at row {{}}", pl.col("__first_id__"))
        checks.append(_Check(key, bad, reason, f"duplicate {key}"))
    if table == "events" and known_items is not None:
        unknown = pl.col(C.Item).is_not_null() & ~pl.col(C.Item).is_in(known_items.implode())
        label = items_label or "the items table"
        # concat_str, not pl.format: the label is a path and may contain braces.
        reason = pl.concat_str(_lit("unknown item_id '"), pl.col(C.Item), _lit(f"' (not in {label})"))
        checks.append(_Check(C.Item, unknown, reason, "unknown item_id"))

    flags = [(~is_dup & c.bad.fill_null(False)).alias(f"__bad{i}__") for i, c in enumerate(checks)]
    work = work.with_columns(flags)
    frames = [
        work.lazy()
        .filter(pl.col(f"__bad{i}__"))
        .select(
            pl.col(ROW).alias("row"),
            pl.lit(c.field, dtype=pl.String).alias("field"),
            pl.col(c.field).cast(pl.String).alias("value") if c.field in columns else pl.lit(None, pl.String).alias("value"),
            c.reason.cast(pl.String).alias("reason"),
            pl.lit(c.kind, dtype=pl.String).alias("kind"),
        )
        for i, c in enumerate(checks)
    ]
    frames.append(
        work.lazy()
        .filter(is_dup)
        .select(
            pl.col(ROW).alias("row"),
            pl.lit(DUPLICATE_FIELD, dtype=pl.String).alias("field"),
            pl.lit(None, dtype=pl.String).alias("value"),
            pl.format("exact duplicate of row {}", pl.col("__first__")).alias("reason"),
            pl.lit("exact duplicate", dtype=pl.String).alias("kind"),
        )
    )
    if extra_problems is not None and extra_problems.height:
        dup_only = work.lazy().filter(is_dup).select(ROW)
        frames.append(
            extra_problems.lazy()
            .select(pl.col(n).cast(t) for n, t in PROBLEM_SCHEMA.items())
            .join(dup_only, left_on="row", right_on=ROW, how="anti")  # copies are only duplicates
        )
    problems = (
        pl.concat(frames, how="vertical")
        .collect()
        .with_row_index("__order__")
        .sort(["row", "__order__"])
        .drop("__order__")
    )

    dup_rows = work.filter(is_dup)[ROW].rename("row")
    bad_rows = problems.filter(pl.col("kind") != "exact duplicate")["row"].unique(maintain_order=True).rename("row")
    good = work.filter(~is_dup & ~pl.col(ROW).is_in(bad_rows.implode()))

    values = {c: pl.col(_parsed(c)) if _parsed(c) in work.columns else pl.col(c) for c in columns}
    if C.Tags in values:
        values[C.Tags] = _tags(pl.col(C.Tags), work.schema[C.Tags])
    if C.Quantity in values:
        values[C.Quantity] = values[C.Quantity].fill_null(1)  # schema default: one unit
    if C.InStock in values:
        values[C.InStock] = values[C.InStock].fill_null(True)  # schema default: in stock
    data = conform(good.select(e.alias(c) for c, e in values.items()), table)
    return Validated(
        data=data, problems=problems, bad_rows=bad_rows, duplicate_rows=dup_rows, n_read=n_read,
        data_rows=good[ROW].rename("row"),
    )
