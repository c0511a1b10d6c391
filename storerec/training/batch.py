"""``storerec recommend-batch``: lists for campaigns from a registered model version."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import Columns
from storerec.core.settings import Settings
from storerec.features import io
from storerec.models.base import ModelBase
from storerec.registry import tracking

C = Columns


def read_user_ids(path: Path) -> list[str]:
    """User ids from a CSV/Parquet file with a ``user_id`` column, or a plain text file (one per line)."""
    if not path.exists():
        raise UserError(f"users file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pl.read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        df = pl.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
    else:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return list(dict.fromkeys(line for line in lines if line))
    if C.User not in df.columns:
        raise UserError(f"{path} has no '{C.User}' column (columns: {df.columns})")
    missing = df[C.User].is_null() | (df[C.User].cast(pl.String).str.strip_chars() == "")
    if missing.any():
        rows = (missing.arg_true() + 1).head(5).to_list()
        raise UserError(f"{path}: empty {C.User} at row(s) {rows}; fix or remove those rows")
    return list(dict.fromkeys(df[C.User].cast(pl.String).to_list()))


OUTPUT_FORMATS = {".parquet": "Parquet", ".csv": "CSV"}


def check_output(out: Path) -> None:
    """``--out`` must end in .parquet or .csv (the format follows the suffix)."""
    if Path(out).suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(
            f"--out {out}: unknown suffix {Path(out).suffix or '(none)'!r}; use .parquet (Parquet) or .csv (CSV)"
        )


def write_output(reco: pl.DataFrame, out: Path) -> None:
    """Write the lists atomically as Parquet or CSV, by ``out``'s suffix."""
    out = Path(out)
    if out.suffix.lower() == ".parquet":
        io.write_atomic({out: reco})
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.fchmod(fd, 0o644)
    os.close(fd)
    try:
        reco.write_csv(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def all_user_ids(data_dir: Path) -> list[str]:
    """Every user of the data folder: the users table and everyone with events, sorted."""
    users: set[str] = set()
    for table in ("users", "events"):
        if io.has_table(data_dir, table):
            ids = pl.read_parquet(io.table_path(data_dir, table), columns=[C.User])[C.User]
            users.update(ids.cast(pl.String).drop_nulls().to_list())
    if not users:
        raise UserError(f"no users in {data_dir}: neither users.parquet nor events.parquet; run `storerec simulate` or `storerec import`")
    return sorted(users)


@dataclass
class BatchSummary:
    out: Path
    version: str
    requested: int
    served: int
    rows: int

    def render(self) -> str:
        lines = [f"wrote {self.rows} recommendations for {self.served}/{self.requested} users to {self.out} (model version {self.version})"]
        if self.served < self.requested:
            lines.append(
                f"  {self.requested - self.served} users got no list: unknown to this model, which does not serve cold "
                "users (use a model with cold-start support, e.g. lightfm or popularity)"
            )
        return "\n".join(lines)


def recommend_batch(
    settings: Settings,
    data_dir: Path,
    *,
    model_ref: str,
    users_file: Path | None,
    segment: str | None,
    k: int,
    out: Path,
    progress: Progress,
) -> BatchSummary:
    """Lists for the users in ``users_file`` and/or ``segment``; neither: every user of the data
    folder. Written to ``out`` as Parquet (.parquet) or CSV (.csv)."""
    check_output(out)
    client = tracking.configure(settings.mlflow)
    with progress.step(f"load model {model_ref}"):
        version = tracking.resolve_version(client, settings.registered_model_name(), model_ref)
        with tempfile.TemporaryDirectory(prefix="storerec-model-") as tmp:  # loaded into memory, then removed
            model = ModelBase.load(tracking.download_version(client, version, Path(tmp)) / tracking.ARTIFACT_MODEL)
    users = read_user_ids(users_file) if users_file else None
    if segment is not None:
        path = Path(data_dir) / "profiles" / "users.parquet"
        if not path.exists():
            raise UserError(f"--segment needs user profiles: {path} not found; run `storerec features` first")
        profiles = pl.read_parquet(path, columns=[C.User, "segment"])
        known = sorted(profiles["segment"].cast(pl.String).unique().drop_nulls().to_list())
        if segment not in known:
            raise UserError(f"unknown segment {segment!r}; segments in the profiles: {known}")
        in_segment = set(profiles.filter(pl.col("segment").cast(pl.String) == segment)[C.User].to_list())
        users = [u for u in users if u in in_segment] if users is not None else sorted(in_segment)
    if users is None:
        users = all_user_ids(Path(data_dir))
    with progress.step(f"recommend for {len(users)} users"):
        reco = model.recommend(users, k=k).with_columns(
            pl.lit(model.name).alias("model"), pl.lit(str(version.version)).alias("model_version")
        )
    write_output(reco, Path(out))
    return BatchSummary(Path(out), str(version.version), len(users), reco[C.User].n_unique(), reco.height)
