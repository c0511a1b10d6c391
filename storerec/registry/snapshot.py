"""The serving snapshot of a registered version: what a replica needs besides the model.

``storerec train`` writes it beside the model when it registers a version (artifact folder
``serving/`` of the pyfunc's ``artifacts/``, next to ``model/`` and ``item_features.parquet``):

* ``profiles.parquet``: the user profiles as of the end of the training data (the table
  ``storerec features`` writes to ``<data>/profiles/users.parquet``);
* ``events.parquet``: the events table's ``user_id``, ``item_id``, ``event_type``,
  ``timestamp`` (all the ranking pipeline reads: each user's history and purchases, regional
  and tier facts; zstd);
* ``neighbours.npy``: each item's ``NEIGHBOURS`` most similar items for the model (int32
  ``(n_items, k)``, best first, -1 padded; :mod:`storerec.ranking.neighbours`), found here once
  rather than by every replica at start (O(items²) by brute force: about 1,900 CPU-seconds at
  500k items, docs/benchmarks.md). The manifest's ``neighbours`` entry records the digest of the item ids in the model's
  order, ``k`` and how they were found; the service uses them only for that order and ``k``
  (else it finds them again, and logs why);
* ``manifest.json``: format, row counts, the as-of time and the data fingerprint.

With it, ``storerec.registry.loading.load`` needs only the registry (or a folder of the version's
artifacts baked into a Bento), never the data folder. Versions registered before snapshots
existed have no ``serving/`` folder and are served with the data folder's tables, as before;
versions whose snapshot has no ``neighbours.npy`` (registered before it was written, or baked
by ``storerec build`` from the data folder) have their neighbours found at start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.core.schema import Columns as C
from storerec.ranking.neighbours import Neighbours

SNAPSHOT_DIR = "serving"
MANIFEST = "manifest.json"
PROFILES = "profiles.parquet"
EVENTS = "events.parquet"
NEIGHBOURS = "neighbours.npy"
FORMAT = 1
EVENT_COLUMNS = (C.User, C.Item, C.EventType, C.Timestamp)


@dataclass(frozen=True)
class Snapshot:
    profiles: pl.DataFrame | None
    events: pl.DataFrame | None
    manifest: dict[str, Any]
    neighbours: Neighbours | None = None


def write_snapshot(
    folder: Path, *, profiles: pl.DataFrame | None, events: pl.DataFrame | None, as_of: datetime | None,
    fingerprint: str | None, source: str = "training", model: Any = None, item_table: pl.DataFrame | None = None,
) -> Path:
    """Write ``folder/serving/`` (profiles, the events' four columns, the manifest; with
    ``model`` and its ``item_table``, the items' neighbour lists); returns it."""
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
    found: dict[str, Any] | None = None
    if model is not None and item_table is not None:
        from storerec.ranking.facts import item_neighbours

        t0 = time.perf_counter()
        nbrs = item_neighbours(model, item_table)
        np.save(out / NEIGHBOURS, nbrs.table)
        found = {"file": NEIGHBOURS, "items": int(nbrs.table.shape[0]), "k": nbrs.k, "items_digest": nbrs.items_digest,
                 "method": nbrs.method, "seconds": round(time.perf_counter() - t0, 2)}
    manifest = {
        "format": FORMAT,
        "as_of": as_of.astimezone(UTC).isoformat() if as_of is not None else None,
        "data_fingerprint": fingerprint,
        "rows": rows,
        "neighbours": found,
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

    return Snapshot(read(PROFILES), read(EVENTS), manifest, _read_neighbours(folder, manifest))


def _read_neighbours(folder: Path, manifest: dict[str, Any]) -> Neighbours | None:
    """The stored neighbour lists with the item digest they were found for; None when the
    snapshot has none (the service finds them). A file that does not match its manifest entry
    is an error (a corrupt version), as a broken parquet file is."""
    entry = manifest.get("neighbours")
    if not entry:
        return None
    path = folder / str(entry.get("file") or NEIGHBOURS)
    table = np.load(BytesIO(path.read_bytes()), allow_pickle=False)
    if table.dtype != np.int32 or table.ndim != 2 or table.shape != (entry.get("items"), entry.get("k")):
        raise ValueError(f"{path}: neighbour lists of shape {table.shape} ({table.dtype}), the manifest says "
                         f"({entry.get('items')}, {entry.get('k')}) int32")
    return Neighbours(table, str(entry.get("items_digest")), str(entry.get("method")))
