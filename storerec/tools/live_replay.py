"""Live replay (``storerec live-replay``): do lists react to tracked events, and what does it cost?

On the built-in store (``storerec simulate`` with the default settings: 5,000 users, 2,000
items, 300,000 events over 180 days), or any data folder:

1. **hold out the last day**: a training folder holds the events before it (the users and items
   tables whole); ``features``, ``train --model als`` and ``promote`` register a champion whose
   serving snapshot ends where the held-out day begins;
2. start two services on that champion: **live** (the overlay on, serving/live.py) and
   **snapshot** (``live.enabled = false``: what the service did before ``POST /track``);
3. **replay** the held-out day's events in time order. Before each event of a shopper who
   carts or buys something later that day, ask both services ``POST /recommend`` for that shopper
   (``k``, default filters) and record whether the shopper's *next* cart or purchase item is in
   the list (hit rate@k); then send the event to the live service's ``POST /track``, one event
   per call, as a storefront would. Events on items the champion does not know (listed during
   the held-out day) are refused by ``/track`` (404) and counted;
4. **load**: ``POST /recommend`` at concurrency 8 on the live service (the overlay holding the
   day's shoppers; bodies for shoppers with tracked events first) and on the snapshot service,
   closed loop (:mod:`storerec.tools.loadgen`), p50/p95/p99 over ``repeats`` rounds.

The figures and their breakdown (shoppers the model knows, new shoppers) go to
``<out>/live-replay.json``; :func:`to_markdown` gives the table for docs/live.md.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.schema import Columns as C
from storerec.core.schema import EventTypes
from storerec.core.tables import markdown_table
from storerec.tools import serve_proc
from storerec.tools.bench import machine
from storerec.tools.bench_serve import run_cli, write_config
from storerec.tools.loadgen import post_request, run_load

TARGET_TYPES = (EventTypes.Cart, EventTypes.Purchase)
TRACKED_TYPES = (EventTypes.View, EventTypes.Favorite, EventTypes.Cart, EventTypes.Purchase)


def _config(root: Path, data: Path) -> Path:
    """bench_serve's settings file, plus: the held-out day is history, so /track must take its
    timestamps; access log and metrics off."""
    return write_config(root, data, "max_event_age_days = 36500\n[serving]\naccess_log = false\nmetrics = false\n")


def prepare(out: Path, source: Path | None, holdout_days: float, log: Callable[[str], None]) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
    """The training folder (events before the held-out day), its registered ALS champion, the
    held-out events and the training events. ``source``: a data folder (default: the built-in
    store, simulated under ``out``)."""
    if source is None:
        source = out / "store"
        if not (source / "events.parquet").exists():
            log("simulate the built-in store (default settings)")
            run_cli(_config(out / "simulate", source), "simulate", "--force")
    events = pl.read_parquet(source / "events.parquet")
    newest: datetime = events[C.Timestamp].max()  # type: ignore[assignment]
    cutoff = newest - timedelta(days=holdout_days)
    train = events.filter(pl.col(C.Timestamp) < cutoff)
    held = events.filter(pl.col(C.Timestamp) >= cutoff).sort(C.Timestamp, C.User, C.EventType)
    data = out / "train-data"
    root = out / "serve"
    cfg = _config(root, data)
    marker = root / "registered.json"
    if marker.exists() and json.loads(marker.read_text()).get("cutoff") == cutoff.isoformat():
        return cfg, held, train
    log(f"training folder: {train.height:,} events before {cutoff:%Y-%m-%d %H:%M} UTC; {held.height:,} held out")
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    cfg = _config(root, data)
    data.mkdir(parents=True)
    train.write_parquet(data / "events.parquet")
    for name in ("items", "users"):
        if (source / f"{name}.parquet").exists():
            shutil.copy2(source / f"{name}.parquet", data / f"{name}.parquet")
    log("features, train ALS, promote")
    run_cli(cfg, "features")
    run_cli(cfg, "train", "--model", "als")
    run_cli(cfg, "promote", "--version", "1")
    marker.write_text(json.dumps({"cutoff": cutoff.isoformat()}))
    return cfg, held, train


FILTERS = {  # the lists asked for: the default (every item the shopper interacted with left out) and a reminder list
    "default": {},
    "exclude_seen=false": {"filters": {"exclude_seen": False}},
}
SEGMENTS = ("all", "known", "new", "target_viewed", "target_not_viewed")


def _hit(client: Any, user: str, target: str, k: int, extra: dict[str, Any]) -> tuple[bool, str]:
    r = client.post("/recommend", json={"user_id": user, "k": k, **extra})
    r.raise_for_status()
    body = r.json()
    return target in {i["item_id"] for i in body["items"]}, body["source"]


def replay(live: Any, snapshot: Any, held: pl.DataFrame, known_users: set[str], k: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Replay ``held`` through ``live``'s ``/track``, asking both services before each event of a
    shopper with a cart or purchase still to come (module docstring, step 3), once per
    :data:`FILTERS` entry. Segments: shoppers the model knows / new ones, and whether the target
    item was viewed earlier that day (then it is in the shopper's tracked session, which stays
    eligible in the live list by default: ``live.session_items_eligible``)."""
    rows = held.filter(pl.col(C.EventType).is_in(TRACKED_TYPES)).select(
        C.User, C.Item, C.EventType, C.Timestamp, C.Quantity, C.Price, C.Session
    ).to_dicts()
    # each event's next target (the shopper's next cart/purchase at or after it), by a backward pass
    nxt: list[str | None] = [None] * len(rows)
    pending: dict[str, str] = {}
    for j in range(len(rows) - 1, -1, -1):
        r = rows[j]
        if r[C.EventType] in TARGET_TYPES:
            pending[r[C.User]] = r[C.Item]
        nxt[j] = pending.get(r[C.User])
    stats: dict[str, dict[str, dict[str, Any]]] = {f: {g: {"asked": 0, "live_hits": 0, "snapshot_hits": 0} for g in SEGMENTS} for f in FILTERS}
    sources: dict[str, int] = {}
    viewed: dict[str, set[str]] = {}
    refused = tracked = 0
    t0 = time.monotonic()
    for j, r in enumerate(rows):
        user = r[C.User]
        target = nxt[j]
        if target is not None:
            groups = ("all", "known" if user in known_users else "new",
                      "target_viewed" if target in viewed.get(user, ()) else "target_not_viewed")
            for f, extra in FILTERS.items():
                hit_live, source = _hit(live, user, target, k, extra)
                hit_snap, _ = _hit(snapshot, user, target, k, extra)
                for g in groups:
                    stats[f][g]["asked"] += 1
                    stats[f][g]["live_hits"] += hit_live
                    stats[f][g]["snapshot_hits"] += hit_snap
                if f == "default":
                    sources[source] = sources.get(source, 0) + 1
        viewed.setdefault(user, set()).add(r[C.Item])
        ev = {"event_type": r[C.EventType], "item_id": r[C.Item], "user_id": user, "session_id": r[C.Session],
              "timestamp": r[C.Timestamp].isoformat(), "event_id": f"replay-{j}"}
        if r[C.EventType] in TARGET_TYPES and r[C.Quantity] is not None:
            ev["quantity"] = int(r[C.Quantity])
        if r[C.EventType] == EventTypes.Purchase and r[C.Price] is not None:
            ev["price"] = float(r[C.Price])
        resp = live.post("/track", json={"events": [ev]})
        if resp.status_code == 404:
            refused += 1
        else:
            resp.raise_for_status()
            tracked += 1
        if (j + 1) % 500 == 0:
            log(f"replayed {j + 1:,}/{len(rows):,} events")
    for per in stats.values():
        for s in per.values():
            n = s["asked"] or 1
            s["live_hit_rate"] = s["live_hits"] / n
            s["snapshot_hit_rate"] = s["snapshot_hits"] / n
            s["lift"] = (s["live_hit_rate"] / s["snapshot_hit_rate"] - 1.0) if s["snapshot_hit_rate"] else None
    return {"events": len(rows), "tracked": tracked, "refused_unknown_item": refused, "seconds": time.monotonic() - t0,
            "hit_rate": stats, "live_sources": sources, "users": held[C.User].n_unique()}


def track_all(live: Any, held: pl.DataFrame, batch: int = 200) -> int:
    """Send the held-out day to ``/track`` in batches (200 events stay within the default
    ``serving.max_body_bytes``), without asking: fills the overlay for the load measurement when
    the hit rates are not wanted. Returns the events stored."""
    rows = held.filter(pl.col(C.EventType).is_in(TRACKED_TYPES)).to_dicts()
    stored = 0
    for start in range(0, len(rows), batch):
        events = []
        for j, r in enumerate(rows[start : start + batch], start):
            ev = {"event_type": r[C.EventType], "item_id": r[C.Item], "user_id": r[C.User], "session_id": r[C.Session],
                  "timestamp": r[C.Timestamp].isoformat(), "event_id": f"replay-{j}"}
            if r[C.EventType] in TARGET_TYPES and r[C.Quantity] is not None:
                ev["quantity"] = int(r[C.Quantity])
            if r[C.EventType] == EventTypes.Purchase and r[C.Price] is not None:
                ev["price"] = float(r[C.Price])
            events.append(ev)
        resp = live.post("/track", json={"events": events})
        resp.raise_for_status()
        stored += resp.json()["stored"]
    return stored


_WRK_SCRIPT = """
local bodies = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, bodies[(n %% #bodies) + 1])
end
"""
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _wrk(port: int, bodies: list[str], concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    """One wrk run (``--latency``; a warm-up run first, not counted): req/s and latency
    percentiles in ms."""
    import re
    import tempfile

    wrk = shutil.which("wrk")
    assert wrk is not None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(_WRK_SCRIPT % ", ".join(json.dumps(b) for b in bodies))
        script = fh.name
    try:
        base = [wrk, "-t", "2", "-c", str(concurrency), "-s", script, "--latency"]
        url = f"http://127.0.0.1:{port}/recommend"
        if warmup > 0:
            subprocess.run([*base, "-d", f"{max(1, round(warmup))}s", url], capture_output=True, check=True)
        out = subprocess.run([*base, "-d", f"{max(1, round(duration))}s", url], capture_output=True, text=True, check=True).stdout
    finally:
        Path(script).unlink()
    res: dict[str, Any] = {}
    for pct, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, flags=re.M):
        res[f"p{pct}_ms"] = float(value) * _UNIT_MS[unit]
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(rps.group(1)) if rps else 0.0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
    res["errors"] = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errors.groups()) if errors else 0)
    return res  # (wrk prints the 50/75/90/99th percentiles: no p95)


def load(ports: dict[str, int], users: list[str], k: int, repeats: int, duration: float, warmup: float,
         concurrency: int = 8) -> dict[str, dict[str, Any]]:
    """``POST /recommend`` at ``concurrency`` on each service with wrk (the project's Python
    client :mod:`storerec.tools.loadgen` when wrk is not installed), in interleaved rounds (a
    shared machine's speed drifts: each round measures every service back to back); medians
    over ``repeats`` rounds, per service."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ports}
    bodies = [json.dumps({"user_id": u, "k": k}) for u in users]
    for _ in range(repeats):
        for name, port in ports.items():
            if shutil.which("wrk"):
                runs[name].append(_wrk(port, bodies, concurrency, duration, warmup))
                continue
            reqs = [post_request("127.0.0.1", port, "/recommend", {"user_id": u, "k": k}) for u in users]
            runs[name].append(run_load("127.0.0.1", port, reqs, concurrency=concurrency, warmup_s=warmup, duration_s=duration).summary())
    out: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        o: dict[str, Any] = {"concurrency": concurrency, "repeats": repeats, "duration_s": duration, "client": "wrk" if shutil.which("wrk") else "loadgen"}
        for key in ("rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms"):
            if all(key in r for r in rs):
                o[key] = statistics.median(r[key] for r in rs)
        o["p99_ms_runs"] = [r["p99_ms"] for r in rs]
        o["errors"] = sum(r["errors"] for r in rs)
        out[name] = o
    return out


def live_replay(out: Path, *, source: Path | None = None, k: int = 10, holdout_days: float = 1.0, repeats: int = 3,
                duration: float = 10.0, warmup: float = 2.0, asks: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run the replay and the load measurement; writes ``out/live-replay.json`` (or, with
    ``asks`` false, only tracks the day in batches and measures the load:
    ``out/live-load.json``) and returns it."""
    out = Path(out)
    log = (lambda m: None) if quiet else (lambda m: print(f"[live-replay] {m}", file=sys.stderr, flush=True))
    cfg, held, train = prepare(out, source, holdout_days, log)
    for old in cfg.parent.glob("events*.db*"):
        old.unlink()
    known = set(train[C.User].unique().to_list())
    root = cfg.parent
    env_live = {"STOREREC__EVENTLOG__URL": f"sqlite:///{(root / 'events-live.db').resolve()}"}
    env_snap = {"STOREREC__EVENTLOG__URL": f"sqlite:///{(root / 'events-snapshot.db').resolve()}", "STOREREC__LIVE__ENABLED": "false"}
    log("start the live and the snapshot-only service")
    live = serve_proc.start(cfg, root / "serve-live.log", env=env_live, timeout=180, append=False)
    try:
        snap = serve_proc.start(cfg, root / "serve-snapshot.log", env=env_snap, timeout=180, append=False)
        try:
            with live.client() as lc, snap.client() as sc:
                if asks:
                    result = replay(lc, sc, held, known, k, log)
                else:
                    result = {"events": held.height, "tracked": track_all(lc, held), "users": held[C.User].n_unique(), "hit_rate": {}}
            for f, per in result["hit_rate"].items():
                h = per["all"]
                log(f"hit rate@{k} ({f} filters): live {h['live_hit_rate']:.4f}, snapshot-only {h['snapshot_hit_rate']:.4f} over {h['asked']:,} asks")
            day_users = held[C.User].unique().sort().to_list()
            others = sorted(known - set(day_users))[: max(0, 1000 - len(day_users))]
            users = day_users + others
            log(f"load: /recommend at concurrency 8, {len(users)} shoppers ({len(day_users)} with tracked events)")
            measured = load({"live": live.port, "snapshot": snap.port}, users, k, repeats, duration, warmup)
            result["load_live"], result["load_snapshot"] = measured["live"], measured["snapshot"]
            log(f"p99 live {result['load_live']['p99_ms']:.1f} ms, snapshot-only {result['load_snapshot']['p99_ms']:.1f} ms")
        finally:
            snap.stop()
    finally:
        live.stop()
    result.update({"k": k, "holdout_days": holdout_days, "machine": machine(), "train_events": train.height})
    out.mkdir(parents=True, exist_ok=True)
    (out / ("live-replay.json" if asks else "live-load.json")).write_text(json.dumps(result, indent=2, default=str))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    k = result["k"]
    labels = {"all": "all asks", "known": "shoppers the model knows", "new": "new shoppers (no history before the day)",
              "target_viewed": "next item already viewed that day", "target_not_viewed": "next item not viewed yet"}
    rows = []
    for f, per in result["hit_rate"].items():
        for g in SEGMENTS:
            s = per[g]
            if not s["asked"]:
                continue
            lift = f"{100 * s['lift']:+.0f}%" if s.get("lift") is not None else ""
            rows.append([f, labels[g], f"{s['asked']:,}", f"{s['snapshot_hit_rate']:.4f}", f"{s['live_hit_rate']:.4f}", lift])
    table = markdown_table(["filters", "asks", "n", f"snapshot-only hit@{k}", f"live hit@{k}", "lift"], rows, align="llrrrr")
    ll, ls = result["load_live"], result["load_snapshot"]
    mid = "p90_ms" if "p90_ms" in ll else "p95_ms"
    tail = mid.replace("_ms", " ms")
    load_rows = [[name, f"{x['rps']:.0f}", f"{x['p50_ms']:.1f}", f"{x[mid]:.1f}", f"{x['p99_ms']:.1f}", x["errors"]]
                 for name, x in (("live (overlay on)", ll), ("snapshot-only", ls))]
    load_table = markdown_table(["service", "req/s", "p50 ms", tail, "p99 ms", "errors"], load_rows, align="lrrrrr")
    info = result["machine"]
    return "\n".join([
        f"Held-out day replayed: {result['events']:,} events ({result['tracked']:,} tracked, {result.get('refused_unknown_item', 0):,} refused: "
        f"items new that day), {result['users']:,} shoppers; champion ALS trained on {result['train_events']:,} events before it. "
        f"{info['cpu']}, {info['cores']} cores, {info['date']}.",
        "", table if result["hit_rate"] else "(hit rates not measured: --no-asks)", "",
        f"POST /recommend at concurrency 8 (k={k}, {ll.get('client', 'loadgen')}, closed loop, medians of {ll['repeats']} interleaved rounds "
        f"of {ll['duration_s']:g} s):",
        "", load_table,
    ])
