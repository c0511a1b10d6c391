"""``storerec forget-user``: erase users from everything storerec keeps.

For each id it removes, in this order (each step atomic, each safe to run again):

1. the data folder's tables: ``events``, ``users``, ``profiles/users.parquet``, the simulator's
   ground truth (``truth/*.parquet`` with a ``user_id`` column), and every quarantine CSV row
   that holds the id in any field;
2. the event log (SQLite or PostgreSQL): the user's impressions, their feedback, feedback
   sent against those impressions' request ids, their tracked behaviour events (``POST /track``)
   and their campaign ledger rows (``campaign_sends``: sends and holdout membership);
3. then records the **hashed** id in ``<data>/forgotten.parquet`` (``storerec/features/forget.py``), so
   later imports drop the user's rows again and serving treats the id as unknown.

What it cannot rewrite: registered model versions. Their id maps and factors were learned from
the user's events; ``storerec models --containing-forgotten`` lists the versions that still
contain a forgotten user, and the README says how to retrain them out (train on the cleaned data,
promote the new version, delete the old ones). A running service stops using the user's profile,
history and model factors after its next reload (``POST /admin/reload``, or an alias move).

Nothing here prints or logs an id in clear: the report names users by ``storerec.features.forget.redact``.
"""

from __future__ import annotations

import io as _io
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from storerec.core.errors import UserError
from storerec.features import io
from storerec.features.forget import drop_forgotten, forgotten_hashes, record_forgotten, user_hash
from storerec.training.fitcache import cache_dir


@dataclass
class ForgetReport:
    users: int
    newly_recorded: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # place -> rows removed

    def render(self) -> str:
        lines = [f"forgot {self.users} user(s) ({self.newly_recorded} newly recorded in forgotten.parquet, hashed)"]
        for place, n in self.rows.items():
            lines.append(f"  {place}: {n} row(s) removed")
        return "\n".join(lines)


def read_ids(ids: Iterable[str], from_file: Path | None) -> list[str]:
    """Ids from the command line and/or a file (one per line, or a CSV/Parquet with user_id)."""
    out = [i for i in ids if i]
    if from_file is not None:
        path = Path(from_file)
        if not path.exists():
            raise UserError(f"--from-file {path}: no such file")
        if path.suffix == ".parquet":
            df = pl.read_parquet(path)
            if "user_id" not in df.columns:
                raise UserError(f"--from-file {path}: no user_id column")
            out += [str(v) for v in df["user_id"].drop_nulls().to_list()]
        else:
            text = path.read_text(encoding="utf-8")
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines and lines[0].split(",")[0].strip() == "user_id":
                out += [line.split(",")[0].strip() for line in lines[1:]]
            else:
                out += lines
    seen: dict[str, None] = {}
    for i in out:
        seen.setdefault(i, None)
    if not seen:
        raise UserError("give at least one user id (or --from-file FILE)")
    return list(seen)


def _clean_parquet(path: Path, hashes: set[str]) -> int:
    if not path.exists():
        return 0
    df = pl.read_parquet(path)
    if "user_id" not in df.columns:
        return 0
    kept, removed = drop_forgotten(df, hashes)
    if removed:
        io.write_atomic({path: kept})
    return removed


def _clean_quarantine(folder: Path, ids: set[str]) -> int:
    removed = 0
    for path in sorted(folder.glob("*.csv")) if folder.exists() else []:
        df = pl.read_csv(path, infer_schema=False)  # every field as text, as written
        hit = pl.any_horizontal([pl.col(c).is_in(list(ids)).fill_null(False) for c in df.columns]) if df.columns else pl.lit(False)
        kept = df.filter(~hit)
        if kept.height != df.height:
            removed += df.height - kept.height
            buf = _io.StringIO()
            kept.write_csv(buf)
            io.write_text_atomic(path, buf.getvalue())
    return removed


def forget_event_log(url: str, ids: list[str]) -> tuple[int, int, int, int]:
    """Delete the users' impressions, feedback (and feedback on their lists), tracked behaviour
    events and campaign ledger rows; returns ``(impressions, feedback, behaviour,
    campaign_sends)`` deleted. A log that does not exist yet holds nothing; one from before the
    behaviour table (schema 0001) or the campaign ledger (0002) has none there."""
    import sqlalchemy as sa

    from storerec.events.eventlog import delete_users, read_engine

    try:
        engine = read_engine(url)
    except UserError:
        return 0, 0, 0, 0  # no event log: nothing logged, nothing to forget
    try:
        with engine.begin() as conn:
            insp = sa.inspect(conn)
            if not (insp.has_table("impressions") and insp.has_table("feedback")):
                return 0, 0, 0, 0
            counts = delete_users(conn, ids)
    except sa.exc.SQLAlchemyError as exc:
        raise UserError(f"the event log could not be cleaned ({type(exc).__name__}): nothing was deleted there; "
                        "run `storerec forget-user` again when the database is reachable") from None
    finally:
        engine.dispose()
    return counts


def forget_users(data_dir: Path, ids: list[str], eventlog_url: str | None) -> ForgetReport:
    data_dir = Path(data_dir)
    hashes = {user_hash(i) for i in ids}
    report = ForgetReport(users=len(ids))
    for table in ("events", "users"):
        report.rows[table] = _clean_parquet(io.table_path(data_dir, table), hashes)
    report.rows["profiles"] = _clean_parquet(data_dir / "profiles" / "users.parquet", hashes)
    truth = sum(_clean_parquet(p, hashes) for p in sorted((data_dir / "truth").glob("*.parquet"))) if (data_dir / "truth").exists() else 0
    report.rows["simulator truth"] = truth
    report.rows["quarantine files"] = _clean_quarantine(data_dir / "quarantine", set(ids))
    if eventlog_url:
        imp, fb, beh, camp = forget_event_log(eventlog_url, ids)
        report.rows["event log impressions"] = imp
        report.rows["event log feedback"] = fb
        report.rows["event log behaviour"] = beh
        report.rows["event log campaign sends"] = camp
    fits = cache_dir(data_dir)  # evaluate's cached fits hold every user's id and factors: dropped whole
    report.rows["cached fits"] = sum(1 for _ in fits.iterdir()) if fits.is_dir() else 0
    shutil.rmtree(fits, ignore_errors=True)
    report.newly_recorded = record_forgotten(data_dir, ids)
    return report


def versions_containing_forgotten(client, registered_model: str, data_dir: Path) -> list[dict]:
    """Registered versions whose user id map still holds a forgotten user: version, aliases and
    how many forgotten users it holds."""
    import shutil
    import tempfile

    from storerec.models.base import ModelBase
    from storerec.registry import tracking

    hashes = forgotten_hashes(data_dir)
    if not hashes:
        return []
    out = []
    for row in tracking.list_versions(client, registered_model):
        version = tracking.resolve_version(client, registered_model, str(row["version"]))
        tmp = Path(tempfile.mkdtemp(prefix="storerec-forget-"))
        try:
            folder = tracking.download_version(client, version, tmp)
            model = ModelBase.load(folder / tracking.ARTIFACT_MODEL)
        except Exception:
            out.append({"version": str(row["version"]), "aliases": row["aliases"], "forgotten_users": None})
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        users = model.users.external.tolist() if model.users is not None else []
        n = sum(1 for u in users if user_hash(str(u)) in hashes)
        if n:
            out.append({"version": str(row["version"]), "aliases": row["aliases"], "forgotten_users": n})
    return out
