"""The serving snapshot of a registered version: what a replica needs besides the model.

``storerec train`` writes it beside the model when it registers a version (artifact folder
``serving/`` of the pyfunc's ``artifacts/``, next to ``model/`` and ``item_features.parquet``):

* ``profiles.parquet``: the user profiles as of the end of the training data (the table
  ``storerec features`` writes to ``<data>/profiles/users.parquet``);
* ``events.parquet``: the events table's ``user_id``, ``item_id``, ``event_type``,
  ``timestamp`` (all the ranking pipeline reads: each user's history and purchases, regional
  and tier facts; zstd);
* ``manifest.json``: format, row counts, the as-of time and the data fingerprint.

With it, ``storerec.serving.state.load`` needs only the registry (or a folder of the version's
artifacts baked into a Bento), never the data folder. Versions registered before snapshots
existed have no ``serving/`` folder and are served with the data folder's tables, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.schema import Columns as C

SNAPSHOT_DIR = "serving"
MANIFEST = "manifest.json"
PROFILES = "profiles.parquet"
EVENTS = "events.parquet"
FORMAT = 1
EVENT_COLUMNS = (C.User, C.Item, C.EventType, C.Timestamp)


@dataclass(frozen=True)
class Snapshot:
    profiles: pl.DataFrame | None
    events: pl.DataFrame | None
    manifest: dict[str, Any]


def write_snapshot(
    folder: Path, *, profiles: pl.DataFrame | None, events: pl.DataFrame | None, as_of: datetime | None,
    fingerprint: str | None, source: str = "training",
) -> Path:
    """Write ``folder/serving/`` (profiles, the events' four columns, the manifest); returns it."""
    out = Path(folder) / SNAPSHOT_DIR
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int | None] = {"profiles": None, "events": None, "users_with_events": None}
    if profiles is not None:
        profiles.write_parquet(out / PROFILES, compression="zstd")
        rows["profiles"] = profiles.height
    if events is not None:
        ev = events.select(*EVENT_COLUMNS)
        ev.write_parquet(out / EVENTS, compression="zstd")
        rows["events"] = ev.height
        rows["users_with_events"] = ev[C.User].n_unique()
    manifest = {
        "format": FORMAT,
        "as_of": as_of.astimezone(UTC).isoformat() if as_of is not None else None,
        "data_fingerprint": fingerprint,
        "rows": rows,
        "written_by": source,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def has_snapshot(artifacts: Path) -> bool:
    """Whether a version's downloaded ``artifacts/`` folder holds a serving snapshot."""
    return (Path(artifacts) / SNAPSHOT_DIR / MANIFEST).is_file()


def read_snapshot(artifacts: Path) -> Snapshot | None:
    """The snapshot in a version's ``artifacts/`` folder, read into memory (nothing maps the
    files, so the folder can go at once); None for a version registered before snapshots."""
    folder = Path(artifacts) / SNAPSHOT_DIR
    if not has_snapshot(artifacts):
        return None
    manifest = json.loads((folder / MANIFEST).read_text())
    if int(manifest.get("format", 0)) > FORMAT:
        raise ValueError(f"serving snapshot format {manifest.get('format')} is newer than this storerec reads ({FORMAT}); upgrade storerec")

    def read(name: str) -> pl.DataFrame | None:
        path = folder / name
        return pl.read_parquet(BytesIO(path.read_bytes())) if path.is_file() else None

    return Snapshot(read(PROFILES), read(EVENTS), manifest)
