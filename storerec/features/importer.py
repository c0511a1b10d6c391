"""Importing a store's own data (CSV/Parquet files, or MovieLens-100K) into the data folder.

Flow: refuse at once if a table to import is already in the folder and neither ``append`` nor
``replace`` was chosen -> read every file as strings (ids must be strings or integers, numeric
times need a unit) -> apply the column mapping -> validate all tables (:mod:`storerec.features.validate`)
-> drop rows of forgotten users (:mod:`storerec.features.forget`) -> with ``append``, set aside rows
already in the table -> either refuse with a report (nothing written) or write the resulting
tables together with :func:`storerec.features.io.write_tables` (atomic), bad rows to
``<data-dir>/quarantine/`` when asked, and ``import.json`` describing the import. An import that
would leave the events or items table empty is refused.

Reports printed to the terminal show user ids only as :func:`storerec.features.forget.redact` hashes and
users' personal attributes as ``<redacted>``; the quarantine files keep the rows as read.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import AfterValidator, Field, ValidationInfo, create_model, field_validator

from storerec.core.config import ConfigModel, read_toml, validate_config
from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import CATEGORY_SEP, REQUIRED, TABLES, TAG_SEP, Columns, EventTypes, check_schema, conform
from storerec.core.settings import Settings
from storerec.features.forget import drop_forgotten, forgotten_hashes, redact
from storerec.features.io import TABLE_FILES, table_path, write_tables, write_text_atomic
from storerec.features.validate import (
    DUPLICATE_FIELD,
    PROBLEM_SCHEMA,
    ROW,
    TIME_COLUMN,
    TIMESTAMP_UNITS,
    ParseOptions,
    Validated,
    check_timezone,
    validate_table,
)

C = Columns

CSV_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".txt": ","}
PARQUET_EXTENSIONS = {".parquet", ".pq"}
TABLE_ORDER = ("items", "events", "users")  # items first: events are checked against accepted items
MAPPING_EXAMPLE = "configs/mapping.example.toml"
QUARANTINE_DIR = "quarantine"
IMPORT_RECORD = "import.json"
SIMULATION_RECORD = "simulation.json"
HINT = "fix the rows, or re-run with --quarantine to keep the good rows and set the bad ones aside"

Mode = Literal["append", "replace"]
MODES = ("append", "replace")
# Tables the later stages cannot do without: an import never leaves them empty.
NONEMPTY_TABLES = ("events", "items")
# With --append, a new row that equals a row already in the table (this key when both have it
# and it is set, else every column) is skipped and counted; items and users also keep one row
# per id, so a known id with other values is a bad row.
APPEND_KEY = {"events": "event_id"}
ENTITY_KEY = {"items": Columns.Item, "users": Columns.User}
# Id columns: every schema column named *_id (user_id, item_id, session_id...); they must be
# strings or integers in Parquet files (integers become their decimal text).
ID_COLUMNS = {t: tuple(c for c in schema if c.endswith("_id")) for t, schema in TABLES.items()}
# Values never printed in clear: user ids (shown as a hash) and users' personal attributes.
PERSONAL_FIELDS = {"users": {Columns.AgeBand, Columns.Gender, Columns.Region, Columns.Occupation, "age"}}
REDACTED = "<redacted>"

ML_GENRE_COLUMNS = ("item_id", "title", "release_date", "video_release_date", "imdb_url")
ML_AGE_BANDS = ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64"))


class ImportRejected(UserError):
    """The input has bad rows and --quarantine was not given; the message is the full report."""


# --------------------------------------------------------------------------------------------
# Summary


@dataclass
class TableSummary:
    """Counts and paths for one imported table.

    ``read == accepted + quarantined + deduplicated + forgotten``; the table had ``before`` rows
    and has ``after``: with ``mode == "append"``, ``after == before + appended`` and
    ``accepted == appended + existing_duplicates``; otherwise ``after == accepted``.
    """

    table: str
    source: str
    read: int
    accepted: int
    quarantined: int
    deduplicated: int
    forgotten: int = 0
    mode: str = "new"  # "new" (no table before), "append" or "replace"
    before: int = 0
    after: int = 0
    appended: int = 0
    existing_duplicates: int = 0
    output: Path | None = None
    quarantine_file: Path | None = None
    ignored_columns: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # "field: kind" -> rows, bad rows only

    def rows_line(self) -> str:
        """Rows before and after, e.g. ``rows: 300,000 before, 302,650 after (appended 2,650; ...)``."""
        if self.mode == "append":
            return (
                f"rows: {self.before:,} before, {self.after:,} after (appended {self.appended:,}; "
                f"{self.existing_duplicates:,} duplicate(s) of rows already in the table skipped)"
            )
        if self.mode == "replace":
            return f"rows: {self.before:,} before, {self.after:,} after (table replaced)"
        return f"rows: 0 before (new table), {self.after:,} after"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "deduplicated": self.deduplicated,
            "forgotten_dropped": self.forgotten,
            "mode": self.mode,
            "rows_before": self.before,
            "rows_after": self.after,
            "appended": self.appended,
            "duplicates_of_existing": self.existing_duplicates,
            "output": str(self.output) if self.output else None,
            "quarantine_file": str(self.quarantine_file) if self.quarantine_file else None,
            "ignored_columns": self.ignored_columns,
        }


@dataclass
class ImportSummary:
    """What an import did; :meth:`render` is the text the CLI prints."""

    data_dir: Path
    tables: dict[str, TableSummary]
    seconds: float
    imported_at: datetime
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"imported {len(self.tables)} table(s) into {self.data_dir} in {self.seconds:.1f}s"]
        for t in self.tables.values():
            lines.append(
                f"  {t.table:<6} read {t.read:,}  accepted {t.accepted:,}  quarantined {t.quarantined:,}  "
                f"deduplicated {t.deduplicated:,}  -> {t.output}  (from {t.source})"
            )
            lines.append(f"         {t.rows_line()}")
            if t.forgotten:
                lines.append(f"         {t.forgotten:,} rows of forgotten users dropped")
            if t.ignored_columns:
                lines.append(f"         ignored columns: {', '.join(t.ignored_columns)}")
            if t.quarantine_file:
                reasons = ", ".join(f"{k}: {v:,}" for k, v in t.reasons.items())
                lines.append(f"         bad rows set aside in {t.quarantine_file} ({reasons})")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Sources


@dataclass
class _Source:
    """One table ready for validation."""

    table: str
    label: str  # how messages name the source (the file as given)
    work: pl.DataFrame  # storerec-named columns (+ ROW)
    raw: pl.DataFrame  # source columns as strings (+ ROW): duplicates, quarantine file
    names: dict[str, str]  # storerec column -> source column, for messages
    options: ParseOptions
    line_offset: int | None  # row N is on line N + offset; None: not a text file
    ignored: list[str] = field(default_factory=list)
    extra_problems: pl.DataFrame | None = None


def _check_unit(value: str) -> str:
    if value not in TIMESTAMP_UNITS:
        units = ", ".join(repr(u) for u in TIMESTAMP_UNITS)
        raise ValueError(f"unknown unit {value!r} (use {units}: time since 1970-01-01 UTC)")
    return value


def _check_timezone(value: str) -> str:
    check_timezone(value)
    return value


def _check_delimiter(value: str) -> str:
    if len(value.encode()) != 1:
        raise ValueError("must be a single one-byte character such as ',' or '\\t'")
    return value


def _check_encoding(value: str) -> str:
    try:
        "".encode(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r} (e.g. 'utf-8', 'latin-1', 'cp1252')") from None
    return value


def _known_event_type(value: str, info: ValidationInfo) -> str:
    types = (info.context or {}).get("event_types")
    if types is not None and value not in types:
        raise ValueError(f"{value!r} is not in events.types ({', '.join(types)})")
    return value


class _TableMapping(ConfigModel):
    """How one table's file is written (a section of a mapping file, ``configs/mapping.example.toml``)."""

    columns: ConfigModel = Field(default_factory=ConfigModel)  # per table: storerec column -> file column
    timestamp_format: str | None = None
    timestamp_unit: Annotated[str, AfterValidator(_check_unit)] | None = None
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "UTC"
    delimiter: Annotated[str, AfterValidator(_check_delimiter)] | None = None
    encoding: Annotated[str, AfterValidator(_check_encoding)] = "utf-8"

    @field_validator("timestamp_unit")
    @classmethod
    def _one_time_spelling(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("timestamp_format") is not None:
            raise ValueError("set timestamp_format (times written as text) or timestamp_unit (times written as numbers), not both")
        return value

    def renames(self) -> dict[str, str]:
        """storerec column -> column of the file, for the mapped columns."""
        return {k: v for k, v in self.columns.model_dump().items() if v is not None}

    def event_type_map(self) -> dict[str, str]:
        """Value in the file -> storerec event type (events only)."""
        return {}


def _columns_model(table: str) -> Any:
    """``[<table>.columns]``: every key optional, one per column of the table."""
    fields: dict[str, Any] = {c: (str | None, None) for c in TABLES[table]}
    return create_model(f"{table.title()}Columns", __base__=ConfigModel, **fields)


_EventsColumns, _ItemsColumns, _UsersColumns = (_columns_model(t) for t in ("events", "items", "users"))


class _EventsMapping(_TableMapping):
    columns: _EventsColumns = Field(default_factory=_EventsColumns)  # type: ignore[valid-type]
    event_types: dict[str, Annotated[str, AfterValidator(_known_event_type)]] = Field(default_factory=dict)

    def event_type_map(self) -> dict[str, str]:
        return dict(self.event_types)


class _ItemsMapping(_TableMapping):
    columns: _ItemsColumns = Field(default_factory=_ItemsColumns)  # type: ignore[valid-type]


class _UsersMapping(_TableMapping):
    columns: _UsersColumns = Field(default_factory=_UsersColumns)  # type: ignore[valid-type]


class _MappingFile(ConfigModel):
    events: _EventsMapping = Field(default_factory=_EventsMapping)
    items: _ItemsMapping = Field(default_factory=_ItemsMapping)
    users: _UsersMapping = Field(default_factory=_UsersMapping)


def load_mapping(path: Path | None, settings: Settings) -> dict[str, _TableMapping]:
    """Read and check a TOML column mapping (see ``configs/mapping.example.toml``).

    Raises
    ------
    storerec.core.config.ConfigError
        If the file is missing or not TOML, or names an unknown table, key or column, or maps
        an event type to one not in ``events.types``; the message names the file and key.
    """
    if path is None:
        mapping = _MappingFile()
    else:
        raw = read_toml(path, "mapping file", "--mapping")
        mapping = validate_config(
            _MappingFile, raw, header=f"mapping file {path} is invalid:", hint=f"see {MAPPING_EXAMPLE}",
            context={"event_types": settings.events.types},
        )
    return {"events": mapping.events, "items": mapping.items, "users": mapping.users}


def _type_name(dtype: pl.DataType) -> str:
    """How messages name a Parquet column type: float, list, struct, binary, boolean..."""
    if dtype.is_float():
        return "float"
    if dtype.is_decimal():
        return "decimal"
    for kind, name in ((pl.List, "list"), (pl.Array, "list"), (pl.Struct, "struct"), (pl.Binary, "binary"), (pl.Boolean, "boolean")):
        if isinstance(dtype, kind):
            return name
    if dtype.is_temporal():
        return "date/time"
    return str(dtype).lower()


def _is_text(dtype: pl.DataType) -> bool:
    return isinstance(dtype, (pl.String, pl.Categorical, pl.Enum, pl.Null))


def _type_problem(table: str, col: str, dtype: pl.DataType) -> tuple[str, str] | None:
    """Why a Parquet column of this type cannot fill ``table.col``, as (reason, kind); None: it can."""
    got = f", got {_type_name(dtype)}"
    if col in ID_COLUMNS[table]:
        if _is_text(dtype) or dtype.is_integer():
            return None
        return f"{col} must be a string or an integer{got}", "not a string or an integer"
    if col == TIME_COLUMN[table]:
        if _is_text(dtype) or dtype.is_numeric() or isinstance(dtype, (pl.Datetime, pl.Date)):
            return None
        return f"{col} must be a date/time, text, or a number with timestamp_unit{got}", "not a date/time"
    if col == C.Tags:
        if _is_text(dtype) or (isinstance(dtype, (pl.List, pl.Array)) and not dtype.inner.is_nested()):
            return None
        return f"{col} must be a list of strings or '{TAG_SEP}'-separated text{got}", "not a list of strings"
    if TABLES[table][col] == pl.String() and (dtype.is_nested() or isinstance(dtype, (pl.Binary, pl.Object))):
        return f"{col} must be text{got}", "not text"
    return None


def _as_text(s: pl.Series, *, tags: bool = False) -> pl.Series:
    """A Parquet column as text: times as ISO 8601, tags joined by '|' (other lists as
    ``[a, b]``), structs as JSON, binary as hex; anything else through str(). Only the value's
    spelling changes, so that a bad value can be shown and set aside as it was."""
    dtype = s.dtype
    try:
        if isinstance(dtype, pl.Datetime):
            return s.dt.to_string("%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else ""))
        if isinstance(dtype, pl.Date):
            return s.dt.to_string("%Y-%m-%d")
        if isinstance(dtype, (pl.List, pl.Array)):
            joined = s.cast(pl.List(pl.String)).list.join(TAG_SEP if tags else ", ")
            return joined if tags else pl.select(pl.lit("[") + joined + pl.lit("]")).to_series().alias(s.name)
        if isinstance(dtype, pl.Struct):
            return s.struct.json_encode()
        if isinstance(dtype, pl.Binary):
            return s.bin.encode("hex")
        return s.cast(pl.String)
    except pl.exceptions.PolarsError:
        return pl.Series(s.name, [None if v is None else str(v) for v in s.to_list()], dtype=pl.String)


def _stringify(df: pl.DataFrame, tags: str | None) -> tuple[pl.DataFrame, set[str]]:
    """Parquet columns as text (see :func:`_as_text`; ``tags``: the tags column, if any); also
    the names of the time columns."""
    temporal = {n for n, t in df.schema.items() if isinstance(t, (pl.Datetime, pl.Date))}
    return pl.DataFrame([_as_text(df[n], tags=n == tags) for n in df.columns]), temporal


def _records_before(text: str, sep: str) -> int:
    """CSV records (header included) that start in ``text``."""
    if not text:
        return 0
    try:
        n = sum(1 for _ in csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    except csv.Error:
        n = text.count("\n") + 1
    return n if not text.endswith(("\n", "\r")) else n + 1


def _csv_problem(path: Path, data: bytes, encoding: str, sep: str, table: str) -> str | None:
    """Find what makes a CSV file unreadable by scanning its bytes: a byte that is not valid in
    the encoding, an unterminated or malformed quote, or a row with more fields than the header.
    The message names the file, the row (data rows count from 1; line = row + 1 without
    line breaks inside quotes) or byte, and what to do; it shows no value from the file."""
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        prefix = data[: exc.start].decode(encoding, errors="replace")
        row = max(_records_before(prefix, sep) - 1, 1)
        line = data.count(b"\n", 0, exc.start) + 1
        is_utf8 = encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")
        todo = (
            f're-save the file as UTF-8, or set encoding = "latin-1" (or the file\'s encoding) under [{table}] in the mapping (--mapping)'
            if is_utf8
            else f"check encoding = {encoding!r} under [{table}] in the mapping: it is not the file's encoding"
        )
        return f"{path}: invalid {'UTF-8' if is_utf8 else encoding} at byte {exc.start} (row {row}, line {line}): {todo}"
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    width, start = None, 1
    for n in range(10**12):  # n = data row (0: the header)
        try:
            record = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            where = f"row {n} (line {start})" if n else f"the header (line {start})"
            if "end of data" in str(exc) or "field larger" in str(exc):
                return f"{path}: unterminated quote starting at {where}: check the quoting of that row (a field that starts with a quote must end with one)"
            return (
                f"{path}: malformed quote in {where}: a quoted field must end with a quote followed by the "
                f"separator {sep!r} or the end of the line, and quotes inside it must be doubled; check the quoting of that row"
            )
        if width is None:
            width = len(record)
        elif len(record) > width:
            return (
                f"{path}: row {n} (line {start}) has {len(record)} fields, the header has {width}: check the separator "
                f"({sep!r}; set delimiter under [{table}] in the mapping) and the quoting of that row"
            )
        start = reader.line_num + 1
    return None


def _polars_message(exc: Exception) -> str:
    """The first line of a polars error without the file contents it may quote."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    first = re.sub(r"`[^`]*`?", "(…)", first)
    return first[:200]


def _read(path: Path, mapping: _TableMapping, table: str) -> tuple[pl.DataFrame, pl.DataFrame, set[str], int | None]:
    """Read a file: (strings + ROW, native frame (types as stored), temporal columns, line offset)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if suffix not in CSV_EXTENSIONS and suffix not in PARQUET_EXTENSIONS:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'!r}; use .csv/.tsv/.txt (CSV) or .parquet/.pq")
    if suffix in PARQUET_EXTENSIONS:
        try:
            native = pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise UserError(f"cannot read {path} as Parquet: {_polars_message(exc)}") from exc
        strings, temporal = _stringify(native, mapping.renames().get(C.Tags, C.Tags))
        offset = None
    else:
        sep = mapping.delimiter or CSV_EXTENSIONS[suffix]
        try:
            source: Path | io.BytesIO = path
            if mapping.encoding.lower().replace("-", "") not in ("utf8", "utf8sig"):
                # polars reads UTF-8 only; other encodings are re-encoded in memory.
                source = io.BytesIO(path.read_bytes().decode(mapping.encoding).encode("utf-8"))
            # Every column as a string: nothing is coerced (or silently lost) on read.
            native = strings = pl.read_csv(source, separator=sep, infer_schema=False)
        except pl.exceptions.NoDataError as exc:
            raise UserError(f"{path} is empty (a CSV file needs at least a header line)") from exc
        except (UnicodeDecodeError, pl.exceptions.PolarsError) as exc:
            # polars' own message quotes whole rows (and names no row): find the place ourselves.
            problem = _csv_problem(path, path.read_bytes(), mapping.encoding, sep, table)
            raise UserError(problem or f"cannot read {path} as CSV: {_polars_message(exc)}") from exc
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc}") from exc
        temporal, offset = set(), 1
    if ROW in strings.columns:
        raise UserError(f"{path}: column name {ROW!r} is reserved")
    return strings.with_row_index(ROW, offset=1), native, temporal, offset


def _type_problems(table: str, raw: pl.DataFrame, native: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame | None:
    """Row-level problems for columns whose Parquet type cannot hold the field (a float user_id,
    a list item_id...): every row with a value is bad, reported like any bad row."""
    frames = []
    for col, src in names.items():
        problem = _type_problem(table, col, native.schema[src])
        if problem is None:
            continue
        why, kind = problem
        frames.append(
            raw.filter(pl.col(src).is_not_null()).select(
                pl.col(ROW).cast(pl.Int64).alias("row"),
                pl.lit(col, dtype=pl.String).alias("field"),
                pl.col(src).alias("value"),
                pl.lit(why, dtype=pl.String).alias("reason"),
                pl.lit(kind, dtype=pl.String).alias("kind"),
            )
        )
    if not frames:
        return None
    return pl.concat(frames).select(pl.col(n).cast(t) for n, t in PROBLEM_SCHEMA.items())


def _file_source(table: str, path: Path, mapping: _TableMapping) -> _Source:
    raw, native, temporal, offset = _read(path, mapping, table)
    file_cols = [c for c in raw.columns if c != ROW]
    names: dict[str, str] = {}
    renames = mapping.renames()
    for col in TABLES[table]:
        src = renames.get(col)
        if src is not None and src not in file_cols:
            raise UserError(
                f"{path}: mapped column {src!r} (for {table}.{col}) is not in the file; its columns: {', '.join(file_cols)}"
            )
        if src is None and col in file_cols:
            src = col
        if src is not None:
            names[col] = src
    missing = [c for c in REQUIRED[table] if c not in names]
    if missing:
        raise UserError(
            f"{path}: {table} file lacks required column(s) {', '.join(missing)}; its columns: {', '.join(file_cols)}. "
            f"Rename them, or map them with --mapping ([{table}.columns] {missing[0]} = \"<your column>\")"
        )
    work = raw.select(ROW, *(pl.col(src).alias(col) for col, src in names.items()))
    tags_type = native.schema[names[C.Tags]] if C.Tags in names else None
    if isinstance(tags_type, (pl.List, pl.Array)) and _type_problem(table, C.Tags, tags_type) is None:
        work = work.with_columns(native[names[C.Tags]].cast(pl.List(pl.String)).alias(C.Tags))  # native lists kept
    time_col = TIME_COLUMN[table]
    fmt, unit = mapping.timestamp_format, mapping.timestamp_unit
    if time_col in names:
        stored = native.schema[names[time_col]]
        if names[time_col] in temporal:
            fmt, unit = None, None  # already a time: no format, no unit
        elif stored.is_numeric():
            fmt = None  # a number: only timestamp_unit can say what it counts
    options = ParseOptions(timestamp_format=fmt, timestamp_unit=unit, timezone=mapping.timezone, event_types=mapping.event_type_map())
    used = set(names.values())
    ignored = [c for c in file_cols if c not in used]
    extra = _type_problems(table, raw, native, names)
    return _Source(table, str(path), work, raw, names, options, offset, ignored, extra)


# --------------------------------------------------------------------------------------------
# Validation, report, writing


def _where(row: int, offset: int | None) -> str:
    return f"row {row} (line {row + offset})" if offset is not None else f"row {row}"


def _field_name(src: _Source, col: str) -> str:
    name = src.names.get(col, col)
    return col if name == col else f"{name} ({col})"


def _shown(table: str, fld: str, value: str | None) -> str:
    """A value as the terminal report shows it: user ids hashed, personal attributes hidden."""
    if value is None:
        return "(empty)"
    if fld == C.User:
        return redact(value)
    if fld in PERSONAL_FIELDS.get(table, ()):
        return REDACTED
    return repr(value)


def _reason_counts(src: _Source, problems: pl.DataFrame) -> dict[str, int]:
    counts = problems.group_by(["field", "kind"], maintain_order=True).len().sort("len", descending=True, maintain_order=True)
    return {f"{_field_name(src, f)}: {k}": n for f, k, n in counts.iter_rows()}


def _report(src: _Source, v: Validated, max_report: int) -> str:
    """The report for one table: the first ``max_report`` bad rows, then counts per field and reason."""
    n_bad = v.n_quarantined + v.n_deduplicated
    lines = [
        f"{src.table} file {src.label}: {n_bad:,} bad row(s) of {v.n_read:,} "
        f"({v.n_quarantined:,} with problems, {v.n_deduplicated:,} exact duplicate(s))"
    ]
    shown_rows = v.problems["row"].unique(maintain_order=True).head(max(max_report, 0))
    shown = v.problems.filter(pl.col("row").is_in(shown_rows.implode()))
    for row, fld, value, reason, _ in shown.iter_rows():
        where = _where(row, src.line_offset)
        val = "" if fld == DUPLICATE_FIELD else f" [value {_shown(src.table, fld, value)}]"
        lines.append(f"  {where}, {_field_name(src, fld)}: {reason}{val}")
    if n_bad > shown_rows.len():
        lines.append(f"  ... and {n_bad - shown_rows.len():,} more bad row(s) (--max-report N shows more)")
    lines.append("  problems by field and reason:")
    lines.extend(f"    {k}: {n:,} row(s)" for k, n in _reason_counts(src, v.problems).items())
    return "\n".join(lines)


def _quarantine_frame(src: _Source, v: Validated) -> pl.DataFrame:
    """Bad rows as read, each once, with their row number, fields and reasons joined by '; '."""
    meta = {"row": "row", "field": "field", "reason": "reason"}
    source_cols = [c for c in src.raw.columns if c != ROW]
    meta = {k: (f"quarantine_{k}" if k in source_cols else k) for k in meta}
    per_row = v.problems.group_by("row", maintain_order=True).agg(
        pl.col("field").str.join("; ").alias(meta["field"]), pl.col("reason").str.join("; ").alias(meta["reason"])
    )
    rows = src.raw.with_columns(pl.col(ROW).cast(pl.Int64)).join(
        per_row, left_on=ROW, right_on="row", how="inner", maintain_order="left"
    )
    return rows.select(*source_cols, pl.col(ROW).alias(meta["row"]), meta["field"], meta["reason"])


def _existing_tables(data_dir: Path, tables: list[str], mode: Mode | None) -> dict[str, int]:
    """Row counts of the tables to import that the folder already holds; refuses (nothing read
    or written yet) when there are some and ``mode`` does not say what to do with them."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} or None, got {mode!r}")
    held: dict[str, int] = {}
    for t in tables:
        path = table_path(data_dir, t)
        if not path.exists():
            continue
        try:
            held[t] = pl.scan_parquet(path).select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, OSError) as exc:
            if mode != "replace":
                raise UserError(f"{path} cannot be read ({_polars_message(exc)}); move it away, or re-run with --replace") from exc
            held[t] = 0
    if held and mode is None:
        what = "; ".join(f"{table_path(data_dir, t)} already holds the {t} table ({n:,} rows)" for t, n in held.items())
        it = "them" if len(held) > 1 else "it"
        raise UserError(
            f"import refused, nothing was written: {what}. Re-run with --append to add the new rows to {it} "
            f"(rows already there are skipped), or with --replace to replace {it}"
        )
    return held


def _read_existing(data_dir: Path, table: str) -> pl.DataFrame:
    path = table_path(data_dir, table)
    try:
        df = pl.read_parquet(path)
        if set(df.columns) < set(TABLES[table]) and set(REQUIRED[table]) <= set(df.columns):
            df = conform(df, table)  # written before an optional column existed (items.image_url): it is null there
        check_schema(df, table)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        msg = _polars_message(exc) if isinstance(exc, pl.exceptions.PolarsError) else str(exc)
        raise UserError(f"cannot append to {path}: {msg}; re-run with --replace to replace it") from exc
    return df


def rows_already_in(existing: pl.DataFrame, new: pl.DataFrame, key: str | None = None) -> pl.Series:
    """Boolean mask over ``new``: the rows already in ``existing``.

    A row whose ``key`` is set (when both tables have that column, e.g. ``event_id``) matches on
    the key alone; any other row matches a row with every column equal (nulls equal).
    """
    idx = "__new_row__"
    n = new.with_row_index(idx)
    hits = []
    rest = n
    if key is not None and key in new.columns and key in existing.columns:
        known = existing[key].drop_nulls().implode()
        hits.append(n.filter(pl.col(key).is_not_null() & pl.col(key).is_in(known))[idx])
        rest = n.filter(pl.col(key).is_null())
    cols = [c for c in new.columns if c in existing.columns]
    hits.append(rest.join(existing.select(cols), on=cols, how="semi", nulls_equal=True)[idx])
    found = pl.concat(hits)
    return n.select(pl.col(idx).is_in(found.implode())).to_series().alias("already_in")


def _filtered(v: Validated, keep: pl.Series, *, drop_rows: pl.Series | None = None, problems: pl.DataFrame | None = None,
              bad_rows: pl.Series | None = None, forgotten: int = 0) -> Validated:
    """``v`` with only the ``keep`` rows of its data, without the problems of ``drop_rows``, plus
    extra ``problems`` (their rows are bad rows)."""
    probs, bad, dups = v.problems, v.bad_rows, v.duplicate_rows
    if drop_rows is not None and drop_rows.len():
        gone = drop_rows.implode()
        probs = probs.filter(~pl.col("row").is_in(gone))
        bad = bad.filter(~bad.is_in(gone))
        dups = dups.filter(~dups.is_in(gone))
    if problems is not None and problems.height:
        probs = pl.concat([probs, problems]).with_row_index("__order__").sort(["row", "__order__"]).drop("__order__")
        bad = pl.concat([bad, problems["row"].unique(maintain_order=True)])
    return Validated(
        data=v.data.filter(keep), problems=probs, bad_rows=bad, duplicate_rows=dups, n_read=v.n_read,
        data_rows=v.data_rows.filter(keep), n_forgotten=v.n_forgotten + forgotten,
    )


def _without_forgotten(src: _Source, v: Validated, hashes: set[str]) -> Validated:
    """Take the rows of forgotten users out (accepted or bad: they are neither written, nor set
    aside, nor reported), counting them in ``n_forgotten``."""
    if not hashes or C.User not in src.work.columns:
        return v
    accepted, n_accepted = drop_forgotten(v.data.with_row_index("__i__"), hashes, C.User)
    others = pl.concat([v.bad_rows, v.duplicate_rows]).implode()
    bad = src.work.select(pl.col(ROW).cast(pl.Int64).alias("row"), C.User).filter(pl.col("row").is_in(others))
    kept, n_bad = drop_forgotten(bad, hashes, C.User)
    if n_accepted + n_bad == 0:
        return v
    gone = bad.filter(~pl.col("row").is_in(kept["row"].implode()))["row"]
    keep = pl.int_range(v.data.height, eager=True).is_in(accepted["__i__"].cast(pl.Int64).implode())
    return _filtered(v, keep, drop_rows=gone, forgotten=n_accepted + n_bad)


def _set_aside_existing(table: str, existing: pl.DataFrame, label: str, v: Validated) -> tuple[Validated, pl.Series]:
    """For --append: which accepted rows are already in the table (returned as a mask over the
    new data: skipped, counted); for items and users, a known id with other values is a bad row."""
    dup = rows_already_in(existing, v.data, APPEND_KEY.get(table))
    key = ENTITY_KEY.get(table)
    if key is None:
        return v, dup
    clash = ~dup & v.data[key].is_in(existing[key].implode())
    if not clash.any():
        return v, dup
    reason = f"{key} already in {label} with other values (--append adds new {key}s only; --replace replaces the table)"
    problems = pl.DataFrame(
        {
            "row": v.data_rows.filter(clash),
            "field": [key] * int(clash.sum()),
            "value": v.data[key].filter(clash),
            "reason": [reason] * int(clash.sum()),
            "kind": [f"{key} already in the table"] * int(clash.sum()),
        },
        schema=PROBLEM_SCHEMA,
    )
    return _filtered(v, ~clash, problems=problems), dup.filter(~clash)


def _validate_all(
    settings: Settings, sources: dict[str, _Source], progress: Progress, kept_items: tuple[str, pl.Series] | None
) -> dict[str, Validated]:
    """Validate every table; events are checked against the items the folder will hold: those
    imported now and ``kept_items`` (label, ids) from the folder's items table."""
    results: dict[str, Validated] = {}
    now = datetime.now(UTC)
    for table in TABLE_ORDER:
        src = sources.get(table)
        if src is None:
            continue
        known, labels = [], []
        if table == "events":
            if "items" in results:
                known.append(results["items"].data[C.Item])
                labels.append(sources["items"].label)
            if kept_items is not None:
                known.append(kept_items[1])
                labels.append(kept_items[0])
        with progress.step(f"validate {table} ({src.work.height:,} rows)"):
            results[table] = validate_table(
                table,
                src.work,
                src.raw,
                settings,
                src.options,
                known_items=pl.concat(known) if known else None,
                items_label=" or ".join(labels) if labels else None,
                extra_problems=src.extra_problems,
                now=now,
            )
    return results


def _empty_table_message(table: str, src: _Source, v: Validated) -> str:
    if v.n_read == 0:
        why = f"{src.label} has no data rows"
    else:
        parts = [
            f"{n:,} {what}"
            for n, what in ((v.n_quarantined, "with problems"), (v.n_deduplicated, "exact duplicate(s)"), (v.n_forgotten, "of forgotten users"))
            if n
        ]
        why = f"none of the {v.n_read:,} rows of {src.label} can be imported ({', '.join(parts)})"
    return (
        f"import refused, nothing was written: {why}, so the {table} table would be empty "
        f"(storerec needs at least one event and one item)"
    )


def _finish(
    settings: Settings,
    data_dir: Path,
    sources: dict[str, _Source],
    *,
    kind: str,
    mapping: Path | None,
    quarantine: bool,
    max_report: int,
    progress: Progress,
    started: float,
    mode: Mode | None,
    held: dict[str, int],
) -> ImportSummary:
    """Validate, then refuse (raise) or write everything; nothing is written before all checks pass."""
    data_dir = Path(data_dir)
    existing: dict[str, pl.DataFrame] = {}
    if mode == "append":
        existing = {t: _read_existing(data_dir, t) for t in sources if t in held}
    kept_items = None
    items_path = table_path(data_dir, "items")
    if "events" in sources and items_path.exists() and ("items" not in sources or mode == "append"):
        items = existing["items"] if "items" in existing else _read_existing(data_dir, "items")
        kept_items = (str(items_path), items[C.Item])

    results = _validate_all(settings, sources, progress, kept_items)
    hashes = forgotten_hashes(data_dir)
    duplicates: dict[str, pl.Series] = {}
    for t in list(results):
        results[t] = _without_forgotten(sources[t], results[t], hashes)
        if t in existing:
            results[t], duplicates[t] = _set_aside_existing(t, existing[t], str(table_path(data_dir, t)), results[t])
    ordered = [t for t in TABLES if t in results]
    bad = [t for t in ordered if results[t].n_quarantined or results[t].n_deduplicated]
    if bad and not quarantine:
        reports = [_report(sources[t], results[t], max_report) for t in bad]
        raise ImportRejected("import refused, nothing was written:\n" + "\n".join(reports) + f"\n{HINT}")

    tables: dict[str, pl.DataFrame] = {}
    for t in ordered:
        new = results[t].data
        if t in existing:
            tables[t] = pl.concat([existing[t], new.filter(~duplicates[t])])
        else:
            tables[t] = new
        if t in NONEMPTY_TABLES and tables[t].height == 0:
            raise UserError(_empty_table_message(t, sources[t], results[t]))

    imported_at = datetime.now(UTC)
    stamp = imported_at.strftime("%Y%m%dT%H%M%SZ")
    summaries = {}
    for t in ordered:
        v = results[t]
        n_dup = int(duplicates[t].sum()) if t in duplicates else 0
        summaries[t] = TableSummary(
            table=t,
            source=sources[t].label,
            read=v.n_read,
            accepted=v.n_accepted,
            quarantined=v.n_quarantined,
            deduplicated=v.n_deduplicated,
            forgotten=v.n_forgotten,
            mode=(mode or "new") if t in held else "new",
            before=held.get(t, 0),
            after=tables[t].height,
            appended=v.n_accepted - n_dup if t in existing else 0,
            existing_duplicates=n_dup,
            ignored_columns=sources[t].ignored,
        )
    written: list[Path] = []
    try:
        with progress.step("write"):
            for t in bad:
                path = data_dir / QUARANTINE_DIR / f"{t}-{stamp}.csv"
                write_text_atomic(path, _quarantine_frame(sources[t], results[t]).write_csv())
                written.append(path)
                summaries[t].quarantine_file = path
                summaries[t].reasons = _reason_counts(sources[t], results[t].problems)
            paths = write_tables(data_dir, tables)
    except BaseException:
        # The tables were not replaced: take the quarantine files back too, so nothing changed.
        for path in written:
            path.unlink(missing_ok=True)
        if written and not any((data_dir / QUARANTINE_DIR).iterdir()):
            (data_dir / QUARANTINE_DIR).rmdir()
        raise
    for t in ordered:
        summaries[t].output = paths[t]

    notes = []
    simulation = data_dir / SIMULATION_RECORD
    for t in TABLES:
        if t not in results and (data_dir / TABLE_FILES[t]).exists():
            origin = "a simulation" if simulation.exists() else "an earlier import"
            notes.append(f"{data_dir / TABLE_FILES[t]} was kept as it was (from {origin}); it is not part of this import")
    simulation.unlink(missing_ok=True)  # the folder now holds imported data
    record = {
        "kind": kind,
        "imported_at": imported_at.isoformat().replace("+00:00", "Z"),
        "mapping": str(mapping) if mapping else None,
        "mode": mode or "new",
        "tables": {t: s.to_json() for t, s in summaries.items()},
    }
    write_text_atomic(data_dir / IMPORT_RECORD, json.dumps(record, indent=2) + "\n")
    return ImportSummary(data_dir, summaries, time.perf_counter() - started, imported_at, notes)


# --------------------------------------------------------------------------------------------
# Public API


def import_files(
    settings: Settings,
    data_dir: Path,
    *,
    events: Path | None,
    items: Path | None,
    users: Path | None,
    mapping: Path | None,
    quarantine: bool,
    max_report: int,
    progress: Progress,
    mode: Mode | None = None,
) -> ImportSummary:
    """Validate CSV/Parquet files and import them into ``data_dir`` as Parquet.

    Parameters
    ----------
    settings
        Accepted event types (``events.types``) and the future-timestamp margin.
    data_dir
        Target folder; gets ``events/items/users.parquet``, ``import.json`` and, with
        ``quarantine``, ``quarantine/<table>-<UTC time>.csv``.
    events, items, users
        Input files (.csv/.tsv/.txt or .parquet/.pq); at least one.
    mapping
        Optional TOML mapping of column names, time format/zone, delimiter, encoding and event
        type values (see ``configs/mapping.example.toml``).
    quarantine
        Import the good rows and set bad ones aside instead of refusing the import.
    max_report
        Bad rows listed per table in a refusal.
    progress
        Step timings.
    mode
        What to do with a table the folder already holds: ``"append"`` adds the new rows
        (rows already in it are skipped and counted; for items and users a known id with
        other values is a bad row), ``"replace"`` replaces it; ``None`` refuses the import.

    Returns
    -------
    ImportSummary

    Raises
    ------
    ImportRejected
        Bad rows without ``quarantine``; the message is the report. ``data_dir`` is unchanged.
    UserError
        A table to import is already in ``data_dir`` and ``mode`` is None; the events or items
        table would end up empty; unreadable/missing file, bad mapping, missing required column.
    """
    started = time.perf_counter()
    chosen = [t for t, p in (("events", events), ("items", items), ("users", users)) if p is not None]
    held = _existing_tables(Path(data_dir), chosen, mode)
    maps = load_mapping(mapping, settings)
    sources: dict[str, _Source] = {}
    for table, path in (("events", events), ("items", items), ("users", users)):
        if path is not None:
            with progress.step(f"read {table} from {path}"):
                sources[table] = _file_source(table, Path(path), maps[table])
    if not sources:
        raise UserError("nothing to import: give at least one of events, items, users")
    return _finish(
        settings, data_dir, sources, kind="files", mapping=mapping, quarantine=quarantine,
        max_report=max_report, progress=progress, started=started, mode=mode, held=held,
    )


def _ml_read(path: Path, names: list[str], sep: str, *, encoding: str = "utf-8") -> pl.DataFrame:
    """A headerless MovieLens file as strings, with ROW (= line number)."""
    if not path.exists():
        raise UserError(f"MovieLens file {path} not found (expected u.data, u.item, u.user and u.genre in {path.parent})")
    try:
        data = path.read_bytes().decode(encoding).encode("utf-8")
        df = pl.read_csv(io.BytesIO(data), separator=sep, has_header=False, infer_schema=False, quote_char=None)
    except UnicodeDecodeError as exc:
        line = path.read_bytes().count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}: invalid {encoding} at byte {exc.start} (line {line}): is it the MovieLens-100K file?") from exc
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"cannot read {path}: {_polars_message(exc)}") from exc
    if df.width != len(names):
        raise UserError(f"{path}: expected {len(names)} fields separated by {sep!r}, found {df.width}")
    return df.rename(dict(zip(df.columns, names))).with_row_index(ROW, offset=1)


def _ml_genres(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"MovieLens file {path} not found (expected u.data, u.item, u.user and u.genre in {path.parent})")
    lines = [ln.rsplit("|", 1) for ln in path.read_text(encoding="latin-1").splitlines() if ln.strip()]
    try:
        return [name for name, _ in sorted(lines, key=lambda p: int(p[1]))]
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: expected lines 'genre|index'") from exc


def _age_band(age: pl.Expr) -> pl.Expr:
    expr: Any = pl.when(age.is_null()).then(None)  # a when/then chain
    for upper, band in ML_AGE_BANDS:
        expr = expr.when(age < upper).then(pl.lit(band))
    return expr.otherwise(pl.lit("65+"))


def import_movielens(
    settings: Settings, ml_dir: Path, data_dir: Path, *, quarantine: bool, max_report: int, progress: Progress,
    mode: Mode | None = None,
) -> ImportSummary:
    """Import a MovieLens-100K folder (``u.data``, ``u.item``, ``u.user``, ``u.genre``).

    Ratings become ``rating`` events (value = stars, quantity 1), which count by their stars in
    interaction matrices through the default ``events.strength.rating`` (value, linear; set
    ``transform = "rating"`` with a threshold to keep only liked movies); movies become items in
    category ``Movies > <first genre>`` tagged with all their genres, created at the release
    date; users get an age band, ``US-<first zip digit>`` region and, since MovieLens has no
    sign-up time, ``signup_at`` = their first rating. Rows go through the same validation as
    :func:`import_files`, and the same rules for tables already in ``data_dir`` (``mode``) and
    for rows of forgotten users.

    Raises
    ------
    UserError
        A file is missing or malformed; tables already in ``data_dir`` and ``mode`` is None;
        :class:`ImportRejected` for bad rows without ``quarantine``.
    """
    started = time.perf_counter()
    ml_dir = Path(ml_dir)
    if not ml_dir.is_dir():
        raise UserError(f"MovieLens folder {ml_dir} does not exist")
    held = _existing_tables(Path(data_dir), list(TABLES), mode)
    with progress.step(f"read MovieLens from {ml_dir}"):
        genres = _ml_genres(ml_dir / "u.genre")
        ratings = _ml_read(ml_dir / "u.data", ["user_id", "item_id", "rating", "unix_timestamp"], "\t")
        movies = _ml_read(ml_dir / "u.item", [*ML_GENRE_COLUMNS, *genres], "|", encoding="latin-1")
        people = _ml_read(ml_dir / "u.user", ["user_id", "age", "gender", "occupation", "zip_code"], "|")

    events = ratings.select(
        ROW,
        pl.col("user_id").alias(C.User),
        pl.col("item_id").alias(C.Item),
        pl.lit(EventTypes.Rating).alias(C.EventType),
        pl.col("unix_timestamp").alias(C.Timestamp),
        pl.lit("1").alias(C.Quantity),
        pl.col("rating").alias(C.Value),
    )
    flagged = [pl.when(pl.col(g).str.strip_chars() == "1").then(pl.lit(g)) for g in genres]
    items = movies.select(
        ROW,
        pl.col("item_id").alias(C.Item),
        pl.col("title").alias(C.Title),
        (pl.lit("Movies" + CATEGORY_SEP) + pl.coalesce(flagged).fill_null("unknown")).alias(C.Category),
        pl.concat_list(flagged).list.drop_nulls().alias(C.Tags),
        pl.col("release_date").alias(C.CreatedAt),
    )
    # MovieLens has no sign-up time: use each user's first rating (unix seconds, as text).
    first = ratings.group_by("user_id").agg(pl.col("unix_timestamp").cast(pl.Int64, strict=False).min().alias("first"))
    age = pl.col("age").str.strip_chars().cast(pl.Int64, strict=False)
    zip_first = pl.col("zip_code").str.strip_chars().str.slice(0, 1)
    users = people.join(first, on="user_id", how="left", maintain_order="left").select(
        ROW,
        pl.col("user_id").alias(C.User),
        pl.col("first").cast(pl.String).alias(C.SignupAt),
        _age_band(age).alias(C.AgeBand),
        pl.col("gender").alias(C.Gender),
        pl.when(zip_first.str.contains(r"^\d$")).then(pl.lit("US-") + zip_first).alias(C.Region),
        pl.col("occupation").alias(C.Occupation),
    )
    bad_age = people.filter(pl.col("age").is_not_null() & age.is_null()).select(
        pl.col(ROW).alias("row"),
        pl.lit("age").alias("field"),
        pl.col("age").alias("value"),
        pl.lit("not a number").alias("reason"),
        pl.lit("not a number").alias("kind"),
    )

    def src(table: str, label: str, work: pl.DataFrame, raw: pl.DataFrame, names: dict[str, str], **kw: Any) -> _Source:
        return _Source(table, str(ml_dir / label), work, raw, names, kw.pop("options", ParseOptions()), 0, **kw)

    flags = f"genre flags ({len(genres)} columns)"
    unix = ParseOptions(timestamp_unit="s")  # u.data's times (and signup_at, from them) are unix seconds
    sources = {
        "events": src("events", "u.data", events, ratings, {C.Timestamp: "unix_timestamp", C.Value: "rating"}, options=unix),
        "items": src(
            "items", "u.item", items, movies, {C.CreatedAt: "release_date", C.Category: flags, C.Tags: flags},
            options=ParseOptions(timestamp_format="%d-%b-%Y"),
        ),
        "users": src(
            "users", "u.user", users, people, {C.SignupAt: "first rating in u.data", C.Region: "zip_code"}, options=unix,
            extra_problems=bad_age.select(pl.col(n).cast(t) for n, t in PROBLEM_SCHEMA.items()),
        ),
    }
    return _finish(
        settings, data_dir, sources, kind="movielens-100k", mapping=None, quarantine=quarantine,
        max_report=max_report, progress=progress, started=started, mode=mode, held=held,
    )
