"""Serving at catalogue scale (issue #16 item 4): the service on stores of 2k, 50k, 500k and 1M items.

For each size (:data:`SIZES`) a simulated store is prepared once under ``out`` (``simulate``,
``features``, ``train --model als``, ``promote``; reused when a champion is already registered),
then the real service is started with the lean environment (no access log, no metrics) and

* the seconds from launch to ``GET /readyz`` 200 are recorded, and the worker process's resident
  memory (``VmRSS``) and peak (``VmHWM``) read from ``/proc`` once it is ready and again after the
  load (the worker is the descendant whose command line holds ``_bentoml_impl.worker``);
* ``wrk`` (:mod:`storerec.tools.wrk`, 8 connections) drives ``POST /recommend`` with the
  full-pipeline bodies of :func:`storerec.tools.bench_serve.request_sets` (filters, diversity,
  reasons) and ``POST /similar_items`` (k = 10) for random catalogue items.

The service runs from a copy of the store's settings with an event log of its own
(``out/scale-run-SIZE/``), so the store's folder (for 2k items, ``make bench-serve``'s
``serve-store``) is only read. The client runs on the same machine as the server. :func:`scale_rows` returns one row per size
and endpoint; :func:`to_markdown` renders the table.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.tools import serve_proc
from storerec.tools.bench_serve import _QUIET, _registered, prepare_store, request_sets, run_cli, write_config
from storerec.tools.wrk import run_wrk

Log = Callable[[str], None]

LEAN_ENV = dict(_QUIET)  # access log and metrics off (the storerec defaults otherwise)


@dataclass(frozen=True)
class Size:
    """One store shape; ``users``/``items``/``events`` ``None`` means the built-in default store."""

    name: str
    users: int | None = None
    items: int | None = None
    events: int | None = None
    min_free_gib: float = 0.0  # skipped (with the reason) when less memory than this is available

    @property
    def builtin(self) -> bool:
        return self.items is None


SIZES: tuple[Size, ...] = (
    Size("2k"),  # the built-in store: 5,000 users, 2,000 items, 300,000 events
    Size("50k", users=50_000, items=50_000, events=1_000_000),
    Size("500k", users=200_000, items=500_000, events=5_000_000, min_free_gib=6.0),
    Size("1M", users=300_000, items=1_000_000, events=8_000_000, min_free_gib=10.0),
)


def prepare_sized(root: Path, users: int, items: int, events: int, log: Log) -> Path:
    """A simulated store of the given shape with profiles and an ALS champion under ``root``
    (reused when a champion is already registered); returns the settings file."""
    cfg = write_config(root, root / "data")
    if not _registered(cfg):
        log(f"{items:,} items: simulate ({users:,} users, {events:,} events), features, train ALS, promote")
        run_cli(cfg, "simulate", "--force", "--users", str(users), "--items", str(items), "--events", str(events))
        run_cli(cfg, "features")
        run_cli(cfg, "train", "--model", "als")
        run_cli(cfg, "promote", "--version", "1")
    return cfg


def prepare(out: Path, size: Size, log: Log) -> Path:
    if size.builtin:
        return prepare_store(Path(out) / "serve-store", log)
    assert size.users is not None and size.items is not None and size.events is not None
    return prepare_sized(Path(out) / f"scale-{size.name}", size.users, size.items, size.events, log)


def available_gib() -> float:
    """``MemAvailable`` from ``/proc/meminfo`` in GiB (infinity when it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def proc_memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process in MB (10^6 bytes; empty when it is gone)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return out


def worker_pids(pid: int) -> list[int]:
    """The BentoML workers below the service process ``pid``."""
    found = []
    for child in serve_proc.descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_bentoml_impl.worker" in cmdline:
            found.append(child)
    return found


def split_body(request: bytes) -> bytes:
    """The body of raw HTTP request bytes (after the blank line)."""
    return request.split(b"\r\n\r\n", 1)[1]


def similar_bodies(cfg: Path, n: int = 500, k: int = 10, seed: int = 0) -> list[bytes]:
    """``/similar_items`` bodies for ``n`` random catalogue items."""
    from storerec.core.settings import load_settings

    data_dir = Path(load_settings(cfg, environ={}).data.dir)
    ids = pl.read_parquet(data_dir / "items.parquet", columns=["item_id"])["item_id"].to_list()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(n, len(ids)), replace=False)
    return [json.dumps({"item_id": ids[i], "k": k}).encode() for i in pick]


def store_shape(cfg: Path) -> dict[str, int]:
    from storerec.core.settings import load_settings

    data_dir = Path(load_settings(cfg, environ={}).data.dir)
    return {
        "users": pl.scan_parquet(data_dir / "users.parquet").select(pl.len()).collect().item(),
        "items": pl.scan_parquet(data_dir / "items.parquet").select(pl.len()).collect().item(),
        "events": pl.scan_parquet(data_dir / "events.parquet").select(pl.len()).collect().item(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_config(cfg: Path, run_dir: Path) -> Path:
    """A copy of the store's settings file ``cfg`` (a :func:`write_config` file: same data and
    MLflow store) in ``run_dir`` whose event log is a new one there: the service's impressions
    and log never touch the store's folder, which another benchmark may be serving from (the
    built-in store is ``make bench-serve``'s)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("events.db*"):
        old.unlink()
    text, n = re.subn(r'(?m)^(\[eventlog\]\nurl = )"[^"]*"', lambda m: f'{m.group(1)}"sqlite:///{(run_dir / "events.db").resolve()}"',
                      Path(cfg).read_text())
    if n != 1:
        raise ValueError(f"{cfg}: no [eventlog] url to replace (not a write_config file)")
    out = run_dir / "storerec.toml"
    out.write_text(text)
    return out


def measure_size(size: Size, cfg: Path, log: Log, *, duration: float = 10.0, connections: int = 8,
                 timeout: float = 600.0) -> list[dict[str, Any]]:
    """Start the service on ``cfg``, measure start-up and memory, drive both endpoints with wrk."""
    shape = store_shape(cfg)
    run_cfg = run_config(cfg, Path(cfg).parent.parent / f"scale-run-{size.name}")
    load_before = loadavg()
    t0 = time.monotonic()
    served = serve_proc.start(run_cfg, run_cfg.parent / "serve.log", env=LEAN_ENV, timeout=timeout, append=False)
    ready_s = time.monotonic() - t0
    try:
        workers = worker_pids(served.proc.pid)
        ready_mem = [proc_memory_mb(p) for p in workers]
        log(f"{size.name}: ready in {ready_s:.1f} s, workers {workers}, memory {ready_mem} (load {load_before})")
        reqs = request_sets(cfg, "127.0.0.1", served.port)
        bodies = {
            "/recommend": [split_body(r) for r in reqs["full"]],
            "/similar_items": similar_bodies(cfg),
        }
        rows = []
        for path, b in bodies.items():
            load = loadavg()
            r = run_wrk(served.port, path, b, connections=connections, duration_s=duration)
            after = [proc_memory_mb(p) for p in workers]
            row = {
                "size": size.name, **shape, "endpoint": path, "ready_s": ready_s, "workers": len(workers),
                "rss_ready_mb": max((m.get("VmRSS", 0.0) for m in ready_mem), default=0.0),
                "rss_mb": max((m.get("VmRSS", 0.0) for m in after), default=0.0),
                "peak_mb": max((m.get("VmHWM", 0.0) for m in after), default=0.0),
                "loadavg": load, **{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "max_ms", "errors", "requests")},
            }
            log(f"{size.name} {path}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"p99.9 {r['p999_ms']:.1f} ms, errors {r['errors']} (load {load})")
            rows.append(row)
        return rows
    finally:
        served.stop()


def scale_rows(out: Path, sizes: Sequence[Size] = SIZES, log: Log = lambda m: None, duration: float = 10.0) -> list[dict[str, Any]]:
    """One row per size and endpoint (a size that does not fit in memory gives one ``skipped`` row)."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        free = available_gib()
        if free < size.min_free_gib:
            reason = f"needs about {size.min_free_gib:g} GiB free, {free:.1f} GiB available"
            log(f"{size.name}: skipped ({reason})")
            rows.append({"size": size.name, "skipped": reason})
            continue
        cfg = prepare(out, size, log)
        rows.extend(measure_size(size, cfg, log, duration=duration))
    return rows


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def to_markdown(rows: Sequence[dict[str, Any]], info: dict[str, Any], duration: float = 10.0) -> str:
    """The scale table: one line per size and endpoint; skipped sizes with their reason."""
    from storerec.core.tables import markdown_table

    head = (
        f"Serving at scale: ALS champion, lean service (1 worker, access log and metrics off), wrk with 8 connections "
        f"for {duration:g} s per endpoint on the same machine; `/recommend` with the full pipeline (filters, diversity, "
        f"reasons), `/similar_items` k=10 for random items. Start-up is launch to `/readyz` 200; RSS is the worker's "
        f"`VmRSS` after the load and peak its `VmHWM` (MB = 10^6 bytes). "
        f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('date', '?')}."
    )
    header = ["items", "users", "events", "endpoint", "start-up s", "worker RSS MB", "worker peak MB", "req/s",
              "p50 ms", "p99 ms", "p99.9 ms", "errors", "load avg"]
    cells: list[list[Any]] = []
    skipped = []
    for r in rows:
        if "skipped" in r:
            skipped.append(f"{r['size']}: skipped, {r['skipped']}.")
            continue
        cells.append([f"{r['items']:,}", f"{r['users']:,}", f"{r['events']:,}", r["endpoint"], _fmt(r["ready_s"]),
                      _fmt(r["rss_mb"], 0), _fmt(r["peak_mb"], 0), _fmt(r["rps"], 0), _fmt(r["p50_ms"]),
                      _fmt(r["p99_ms"]), _fmt(r["p999_ms"]), r["errors"], r.get("loadavg", "")])
    parts = [head, "", markdown_table(header, cells, align="rrrl" + "r" * 8 + "l")]
    if skipped:
        parts += ["", *skipped]
    return "\n".join(parts)


def scale_benchmark(out: Path, *, sizes: Sequence[Size] = SIZES, duration: float = 10.0, quiet: bool = False) -> str:
    """Run :func:`scale_rows`, write ``out/bench-scale.json`` and return the Markdown table."""
    import sys

    from storerec.tools.bench import machine

    out = Path(out)
    log: Log = (lambda m: None) if quiet else (lambda m: print(f"[bench-scale] {m}", file=sys.stderr, flush=True))
    rows = scale_rows(out, sizes, log, duration)
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-scale.json").write_text(json.dumps({"machine": info, "duration_s": duration, "rows": rows}, indent=2))
    return to_markdown(rows, info, duration)


__all__ = ["SIZES", "Size", "prepare_sized", "scale_rows", "scale_benchmark", "to_markdown"]
