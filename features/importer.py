"""Importing a store's own data (CSV/Parquet files, or MovieLens-100K) into the data folder.

Flow: read every file as strings -> apply the column mapping -> validate all tables
(:mod:`features.validate`) -> either refuse with a report (nothing written) or write the accepted
rows of all tables together with :func:`features.io.write_tables` (atomic), bad rows to
``<data-dir>/quarantine/`` when asked, and ``import.json`` describing the import.
"""

from __future__ import annotations

import io
import json
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from features.io import TABLE_FILES, write_tables, write_text_atomic
from features.schema import CATEGORY_SEP, REQUIRED, TABLES, TAG_SEP, Columns
from features.validate import (
    DUPLICATE_FIELD,
    PROBLEM_SCHEMA,
    ROW,
    TIME_COLUMN,
    ParseOptions,
    Validated,
    check_timezone,
    validate_table,
)
from storerec.errors import UserError
from storerec.progress import Progress
from storerec.settings import Settings

C = Columns

CSV_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".txt": ","}
PARQUET_EXTENSIONS = {".parquet", ".pq"}
TABLE_ORDER = ("items", "events", "users")  # items first: events are checked against accepted items
MAPPING_KEYS = {"columns", "timestamp_format", "timezone", "delimiter", "encoding", "event_types"}
QUARANTINE_DIR = "quarantine"
IMPORT_RECORD = "import.json"
SIMULATION_RECORD = "simulation.json"
HINT = "fix the rows, or re-run with --quarantine to keep the good rows and set the bad ones aside"

ML_GENRE_COLUMNS = ("item_id", "title", "release_date", "video_release_date", "imdb_url")
ML_AGE_BANDS = ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64"))


class ImportRejected(UserError):
    """The input has bad rows and --quarantine was not given; the message is the full report."""


# --------------------------------------------------------------------------------------------
# Summary


@dataclass
class TableSummary:
    """Counts and paths for one imported table (``read == accepted + quarantined + deduplicated``)."""

    table: str
    source: str
    read: int
    accepted: int
    quarantined: int
    deduplicated: int
    output: Path | None = None
    quarantine_file: Path | None = None
    ignored_columns: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # "field: kind" -> rows, bad rows only

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "deduplicated": self.deduplicated,
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


@dataclass
class _TableMapping:
    columns: dict[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None
    timezone: str = "UTC"
    delimiter: str | None = None
    encoding: str = "utf-8"
    event_types: dict[str, str] = field(default_factory=dict)


def load_mapping(path: Path | None, settings: Settings) -> dict[str, _TableMapping]:
    """Read and check a TOML column mapping (see ``configs/mapping.example.toml``).

    Raises
    ------
    UserError
        If the file is missing or not TOML, or names an unknown table, key or column, or maps
        an event type to one not in ``events.types``; the message names the file and key.
    """
    out = {t: _TableMapping() for t in TABLES}
    if path is None:
        return out
    path = Path(path)
    if not path.exists():
        raise UserError(f"mapping file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"mapping file {path} is not valid TOML: {exc}") from exc

    def bad(key: str, why: str) -> UserError:
        return UserError(f"mapping file {path}: {key}: {why}")

    for table, section in raw.items():
        if table not in TABLES:
            raise bad(table, f"unknown key (expected tables {', '.join(TABLES)})")
        if not isinstance(section, dict):
            raise bad(table, "must be a table ([events], [items] or [users])")
        allowed = MAPPING_KEYS if table == "events" else MAPPING_KEYS - {"event_types"}
        m = out[table]
        for key, value in section.items():
            name = f"{table}.{key}"
            if key not in allowed:
                raise bad(name, f"unknown key (allowed: {', '.join(sorted(allowed))})")
            if key in ("columns", "event_types"):
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    raise bad(name, 'must be a table of strings, e.g. user_id = "customer_id"')
                if key == "columns":
                    for col in value:
                        if col not in TABLES[table]:
                            raise bad(f"{name}.{col}", f"unknown key: not a {table} column (columns: {', '.join(TABLES[table])})")
                else:
                    for src, dst in value.items():
                        if dst not in settings.events.types:
                            raise bad(f"{name}.{src}", f"{dst!r} is not in events.types ({', '.join(settings.events.types)})")
                setattr(m, key, dict(value))
            elif not isinstance(value, str):
                raise bad(name, "must be a string")
            elif key == "delimiter" and len(value.encode()) != 1:
                raise bad(name, "must be a single one-byte character such as ',' or '\\t'")
            elif key == "timezone":
                try:
                    check_timezone(value)
                except ValueError as exc:
                    raise bad(name, str(exc)) from exc
                m.timezone = value
            elif key == "encoding":
                try:
                    "".encode(value)
                except LookupError as exc:
                    raise bad(name, f"unknown encoding {value!r}") from exc
                m.encoding = value
            else:
                setattr(m, key, value)
    return out


def _stringify(df: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, set[str]]:
    """Parquet columns as strings (times as ISO 8601, lists joined by '|'); also the time columns."""
    exprs, temporal = [], set()
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
            exprs.append(col.dt.to_string(fmt))
            temporal.add(name)
        elif isinstance(dtype, pl.Date):
            exprs.append(col.dt.to_string("%Y-%m-%d"))
            temporal.add(name)
        elif isinstance(dtype, pl.List):
            exprs.append(col.cast(pl.List(pl.String)).list.join(TAG_SEP))
        else:
            exprs.append(col.cast(pl.String))
    try:
        return df.select(exprs), temporal
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"{path}: a column cannot be read as text ({exc}); columns: {dict(df.schema)}") from exc


def _read(path: Path, mapping: _TableMapping) -> tuple[pl.DataFrame, pl.DataFrame, set[str], int | None]:
    """Read a file: (strings + ROW, native frame for list columns, temporal columns, line offset)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if suffix not in CSV_EXTENSIONS and suffix not in PARQUET_EXTENSIONS:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'!r}; use .csv/.tsv/.txt (CSV) or .parquet/.pq")
    try:
        if suffix in PARQUET_EXTENSIONS:
            native = pl.read_parquet(path)
            strings, temporal = _stringify(native, path)
            offset = None
        else:
            source: Path | io.BytesIO = path
            if mapping.encoding.lower().replace("-", "") not in ("utf8", "utf8sig"):
                # polars reads UTF-8 only; other encodings are re-encoded in memory.
                source = io.BytesIO(path.read_bytes().decode(mapping.encoding).encode("utf-8"))
            sep = mapping.delimiter or CSV_EXTENSIONS[suffix]
            # Every column as a string: nothing is coerced (or silently lost) on read.
            native = strings = pl.read_csv(source, separator=sep, infer_schema=False)
            temporal, offset = set(), 1
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid {mapping.encoding}: {exc}") from exc
    except pl.exceptions.NoDataError as exc:
        raise UserError(f"{path} is empty (a CSV file needs at least a header line)") from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        hint = " (not UTF-8? set encoding in the mapping file)" if "utf-8" in str(exc) else ""
        raise UserError(f"cannot read {path}: {exc}{hint}") from exc
    if ROW in strings.columns:
        raise UserError(f"{path}: column name {ROW!r} is reserved")
    return strings.with_row_index(ROW, offset=1), native, temporal, offset


def _file_source(table: str, path: Path, mapping: _TableMapping) -> _Source:
    raw, native, temporal, offset = _read(path, mapping)
    file_cols = [c for c in raw.columns if c != ROW]
    names: dict[str, str] = {}
    for col in TABLES[table]:
        src = mapping.columns.get(col)
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
    if C.Tags in names and isinstance(native.schema[names[C.Tags]], pl.List):
        work = work.with_columns(native[names[C.Tags]].cast(pl.List(pl.String)).alias(C.Tags))
    time_col = TIME_COLUMN[table]
    fmt = None if names.get(time_col) in temporal else mapping.timestamp_format
    options = ParseOptions(timestamp_format=fmt, timezone=mapping.timezone, event_types=mapping.event_types)
    used = set(names.values())
    ignored = [c for c in file_cols if c not in used]
    return _Source(table, str(path), work, raw, names, options, offset, ignored)


# --------------------------------------------------------------------------------------------
# Validation, report, writing


def _where(row: int, offset: int | None) -> str:
    return f"row {row} (line {row + offset})" if offset is not None else f"row {row}"


def _field_name(src: _Source, col: str) -> str:
    name = src.names.get(col, col)
    return col if name == col else f"{name} ({col})"


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
        val = "(empty)" if value is None else repr(value)
        where = _where(row, src.line_offset)
        lines.append(f"  {where}, {_field_name(src, fld)}: {reason}" + ("" if fld == DUPLICATE_FIELD else f" [value {val}]"))
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


def _validate_all(settings: Settings, sources: dict[str, _Source], progress: Progress) -> dict[str, Validated]:
    results: dict[str, Validated] = {}
    now = datetime.now(timezone.utc)
    for table in TABLE_ORDER:
        src = sources.get(table)
        if src is None:
            continue
        known = None
        if table == "events" and "items" in results:
            known = results["items"].data[C.Item]
        with progress.step(f"validate {table} ({src.work.height:,} rows)"):
            results[table] = validate_table(
                table,
                src.work,
                src.raw,
                settings,
                src.options,
                known_items=known,
                items_label=sources["items"].label if known is not None else None,
                extra_problems=src.extra_problems,
                now=now,
            )
    return results


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
) -> ImportSummary:
    """Validate, then refuse (raise) or write everything; nothing is written before all checks pass."""
    results = _validate_all(settings, sources, progress)
    ordered = [t for t in TABLES if t in results]
    bad = [t for t in ordered if results[t].n_quarantined or results[t].n_deduplicated]
    if bad and not quarantine:
        reports = [_report(sources[t], results[t], max_report) for t in bad]
        raise ImportRejected("import refused, nothing was written:\n" + "\n".join(reports) + f"\n{HINT}")

    data_dir = Path(data_dir)
    imported_at = datetime.now(timezone.utc)
    stamp = imported_at.strftime("%Y%m%dT%H%M%SZ")
    summaries = {
        t: TableSummary(
            table=t,
            source=sources[t].label,
            read=results[t].n_read,
            accepted=results[t].n_accepted,
            quarantined=results[t].n_quarantined,
            deduplicated=results[t].n_deduplicated,
            ignored_columns=sources[t].ignored,
        )
        for t in ordered
    }
    written: list[Path] = []
    try:
        with progress.step("write"):
            for t in bad:
                path = data_dir / QUARANTINE_DIR / f"{t}-{stamp}.csv"
                write_text_atomic(path, _quarantine_frame(sources[t], results[t]).write_csv())
                written.append(path)
                summaries[t].quarantine_file = path
                summaries[t].reasons = _reason_counts(sources[t], results[t].problems)
            paths = write_tables(data_dir, {t: results[t].data for t in ordered})
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

    Returns
    -------
    ImportSummary

    Raises
    ------
    ImportRejected
        Bad rows without ``quarantine``; the message is the report. ``data_dir`` is unchanged.
    UserError
        Unreadable/missing file, bad mapping, missing required column.
    """
    started = time.perf_counter()
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
        max_report=max_report, progress=progress, started=started,
    )


def _ml_read(path: Path, names: list[str], sep: str, *, encoding: str = "utf-8") -> pl.DataFrame:
    """A headerless MovieLens file as strings, with ROW (= line number)."""
    if not path.exists():
        raise UserError(f"MovieLens file {path} not found (expected u.data, u.item, u.user and u.genre in {path.parent})")
    try:
        data = path.read_bytes().decode(encoding).encode("utf-8")
        df = pl.read_csv(io.BytesIO(data), separator=sep, has_header=False, infer_schema=False, quote_char=None)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid {encoding}: {exc}") from exc
    except pl.exceptions.PolarsError as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
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
    expr = pl.when(age.is_null()).then(None)
    for upper, band in ML_AGE_BANDS:
        expr = expr.when(age < upper).then(pl.lit(band))
    return expr.otherwise(pl.lit("65+"))


def import_movielens(
    settings: Settings, ml_dir: Path, data_dir: Path, *, quarantine: bool, max_report: int, progress: Progress
) -> ImportSummary:
    """Import a MovieLens-100K folder (``u.data``, ``u.item``, ``u.user``, ``u.genre``).

    Ratings become ``rating`` events (value = stars, quantity 1); movies become items in
    category ``Movies > <first genre>`` tagged with all their genres, created at the release
    date; users get an age band, ``US-<first zip digit>`` region and, since MovieLens has no
    sign-up time, ``signup_at`` = their first rating. Rows go through the same validation as
    :func:`import_files`.

    Raises
    ------
    UserError
        A file is missing or malformed; :class:`ImportRejected` for bad rows without ``quarantine``.
    """
    started = time.perf_counter()
    ml_dir = Path(ml_dir)
    if not ml_dir.is_dir():
        raise UserError(f"MovieLens folder {ml_dir} does not exist")
    with progress.step(f"read MovieLens from {ml_dir}"):
        genres = _ml_genres(ml_dir / "u.genre")
        ratings = _ml_read(ml_dir / "u.data", ["user_id", "item_id", "rating", "unix_timestamp"], "\t")
        movies = _ml_read(ml_dir / "u.item", [*ML_GENRE_COLUMNS, *genres], "|", encoding="latin-1")
        people = _ml_read(ml_dir / "u.user", ["user_id", "age", "gender", "occupation", "zip_code"], "|")

    events = ratings.select(
        ROW,
        pl.col("user_id").alias(C.User),
        pl.col("item_id").alias(C.Item),
        pl.lit("rating").alias(C.EventType),
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
    sources = {
        "events": src("events", "u.data", events, ratings, {C.Timestamp: "unix_timestamp", C.Value: "rating"}),
        "items": src(
            "items", "u.item", items, movies, {C.CreatedAt: "release_date", C.Category: flags, C.Tags: flags},
            options=ParseOptions(timestamp_format="%d-%b-%Y"),
        ),
        "users": src(
            "users", "u.user", users, people, {C.SignupAt: "first rating in u.data", C.Region: "zip_code"},
            extra_problems=bad_age.select(pl.col(n).cast(t) for n, t in PROBLEM_SCHEMA.items()),
        ),
    }
    return _finish(
        settings, data_dir, sources, kind="movielens-100k", mapping=None, quarantine=quarantine,
        max_report=max_report, progress=progress, started=started,
    )
