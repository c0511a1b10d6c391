"""``storerec recommend-batch``: lists for campaigns from a registered model version."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features import io
from features.schema import Columns
from models.base import ModelBase
from storerec.errors import UserError
from storerec.progress import Progress
from storerec.settings import Settings
from training import tracking

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
    if users_file is None and segment is None:
        raise UserError("give --users FILE, --segment NAME, or both")
    client = tracking.configure(settings.mlflow)
    with progress.step(f"load model {model_ref}"):
        version = tracking.resolve_version(client, settings.mlflow.registered_model, model_ref)
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
    assert users is not None
    with progress.step(f"recommend for {len(users)} users"):
        reco = model.recommend(users, k=k).with_columns(
            pl.lit(model.name).alias("model"), pl.lit(str(version.version)).alias("model_version")
        )
    io.write_atomic({Path(out): reco})
    return BatchSummary(Path(out), str(version.version), len(users), reco[C.User].n_unique(), reco.height)
