"""Soak test of the running service (``storerec soak`` / ``make soak``).

The real service (``storerec serve``, 2 workers by default) on the built-in store with two
registered versions, driven for ``duration`` seconds by ``concurrency`` shoppers, each looping:
``POST /recommend`` for a random known user, then, for about a third of the lists, a click (and
sometimes a purchase) on a listed item through ``POST /events`` with a fresh ``event_id``.
Meanwhile:

* every ``reload_every`` seconds ``POST /admin/reload`` switches between the two versions (all
  workers must follow: every list served after the reload answered carries the new version);
* in the middle, another process holds an exclusive lock on the event-log database for
  ``lock_seconds`` (SQLite ``BEGIN EXCLUSIVE``; PostgreSQL ``LOCK TABLE ... ACCESS EXCLUSIVE``);
* ``/readyz`` is polled every second, worker memory (RSS) every 5 s.

Afterwards (the service stopped normally) the event log is read back. The verdict:

* **0 acknowledged events lost**: every ``event_id`` answered 200 is in the log;
* **no refused event stored**: an event answered 503 is not in the log (a retry cannot double it);
* **impressions resume after the lock**: lists served after the lock was released are logged;
* **readiness tells the truth**: ``/readyz`` went 503 during the lock and 200 again after;
* **no 5xx other than those 503s**, and lists served after each reload all carry its version;
* **worker RSS growth < 5 %**: the median of the second minute (warm) against the median of the
  last minute, summed over the workers (single samples swing by a few % around each reload).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.schema import FeedbackTypes
from storerec.core.tables import markdown_table
from storerec.tools.serve_proc import descendants, rss_mb


def _hold_lock(url: str, seconds: float, done: threading.Event, log: Callable[[str], None]) -> None:
    """Hold an exclusive lock on the event log for ``seconds`` (another connection, as another
    process would)."""
    import sqlalchemy as sa

    if url.startswith("sqlite:///"):
        import sqlite3

        lite = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60, isolation_level=None)
        lite.execute("BEGIN EXCLUSIVE")
        log(f"event log locked (BEGIN EXCLUSIVE) for {seconds:g} s")
        time.sleep(seconds)
        lite.execute("COMMIT")
        lite.close()
    else:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("LOCK TABLE impressions, feedback IN ACCESS EXCLUSIVE MODE")
            log(f"event log locked (LOCK TABLE ... ACCESS EXCLUSIVE) for {seconds:g} s")
            time.sleep(seconds)
            conn.exec_driver_sql("COMMIT")
        engine.dispose()
    log("event log lock released")
    done.set()


async def _drive(base: str, token: str, users: list[str], *, duration: float, concurrency: int, reload_every: float,
                 versions: list[str], lock_at: float, lock_seconds: float, eventlog_url: str, pids: Callable[[], list[int]],
                 log: Callable[[str], None]) -> dict[str, Any]:
    import httpx

    t0 = time.monotonic()
    stop_at = t0 + duration
    acked: set[str] = set()
    refused: set[str] = set()
    statuses: dict[int, int] = {}
    lat: list[float] = []
    served: list[tuple[float, str]] = []  # (t, model_version) of lists
    reloads: list[tuple[float, float, str, int]] = []  # (t sent, t answered, version, status)
    ready: list[tuple[float, int]] = []
    rss: list[tuple[float, float]] = []
    lock_window: list[float] = []
    lock_done = threading.Event()
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def shopper(n: int) -> None:
            r = random.Random(n)
            while time.monotonic() < stop_at:
                user = r.choice(users)
                t = time.monotonic()
                try:
                    resp = await client.post("/recommend", json={"user_id": user, "k": 10})
                except httpx.HTTPError:
                    statuses[-1] = statuses.get(-1, 0) + 1
                    continue
                lat.append(time.monotonic() - t)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code != 200:
                    continue
                body = resp.json()
                served.append((time.monotonic() - t0, body["model_version"]))
                if r.random() < 0.35 and body["items"]:
                    item = r.choice(body["items"])["item_id"]
                    events = [{"request_id": body["request_id"], "item_id": item, "event_type": FeedbackTypes.Click, "event_id": uuid.uuid4().hex}]
                    if r.random() < 0.2:
                        events.append({"request_id": body["request_id"], "item_id": item, "event_type": FeedbackTypes.Purchase,
                                       "revenue": round(r.uniform(5, 80), 2), "event_id": uuid.uuid4().hex})
                    try:
                        ev = await client.post("/events", json={"events": events})
                    except httpx.HTTPError:
                        statuses[-1] = statuses.get(-1, 0) + 1
                        continue  # unknown outcome: neither acked nor refused
                    statuses[ev.status_code] = statuses.get(ev.status_code, 0) + 1
                    ids = {e["event_id"] for e in events}
                    if ev.status_code == 200:
                        acked.update(ids)
                    elif ev.status_code == 503:
                        refused.update(ids)

        async def reloader() -> None:
            k = 0
            while True:
                await asyncio.sleep(reload_every)
                if time.monotonic() + 5 > stop_at:
                    return
                k += 1
                version = versions[k % len(versions)]
                ts = time.monotonic() - t0
                resp = await client.post("/admin/reload", json={"model": version}, headers={"x-admin-token": token})
                reloads.append((ts, time.monotonic() - t0, version, resp.status_code))
                log(f"t={ts:.0f}s reload -> version {version}: {resp.status_code} in {time.monotonic() - t0 - ts:.1f} s")

        async def watcher() -> None:
            last_rss = -10.0
            while time.monotonic() < stop_at:
                t = time.monotonic() - t0
                try:
                    resp = await client.get("/readyz", timeout=5)
                    ready.append((t, resp.status_code))
                except httpx.HTTPError:
                    ready.append((t, -1))
                if t - last_rss >= 5:
                    rss.append((t, sum(rss_mb(p) for p in pids())))
                    last_rss = t
                await asyncio.sleep(1)

        async def locker() -> None:
            await asyncio.sleep(lock_at)
            lock_window.append(time.monotonic() - t0)
            await asyncio.to_thread(_hold_lock, eventlog_url, lock_seconds, lock_done, log)
            lock_window.append(time.monotonic() - t0)

        await asyncio.gather(*(shopper(n) for n in range(concurrency)), reloader(), watcher(), locker())
    return {"acked": acked, "refused": refused, "statuses": statuses, "lat": lat, "served": served, "reloads": reloads,
            "ready": ready, "rss": rss, "lock_window": lock_window, "t0_wall": time.time() - (time.monotonic() - t0)}


def soak(out: Path, *, duration: float = 600, concurrency: int = 16, reload_every: float = 30, lock_seconds: float = 40,
         workers: int = 2, eventlog_url: str | None = None, quiet: bool = False) -> tuple[str, bool]:
    """Run the soak; returns (Markdown summary, passed) and writes ``out/soak.json``."""
    from storerec.core.settings import load_settings
    from storerec.tools.bench import machine
    from storerec.tools.bench_serve import Server, prepare_store, run_cli

    log = (lambda m: None) if quiet else (lambda m: print(f"[soak] {m}", flush=True))
    out = Path(out)
    cfg = prepare_store(out / "soak-store", log)
    if not (out / "soak-store" / ".second-version").exists():
        run_cli(cfg, "train", "--model", "popularity")
        (out / "soak-store" / ".second-version").write_text("2")
    settings = load_settings(cfg, environ={})
    url = eventlog_url or settings.eventlog.url
    if url.startswith("sqlite:///"):
        for old in Path(url.removeprefix("sqlite:///")).parent.glob("events.db*"):
            old.unlink()
    token = "soak-" + uuid.uuid4().hex
    env = {"STOREREC__SERVING__WORKERS": str(workers), "STOREREC__SERVING__ADMIN_TOKEN": token, "STOREREC__EVENTLOG__URL": url,
           "STOREREC__SERVING__ACCESS_LOG": "false"}
    events = pl.read_parquet(Path(settings.data.dir) / "events.parquet", columns=["user_id"])
    users = sorted(events["user_id"].unique().to_list())
    server = Server(cfg, env, out / "soak-store" / "soak-serve.log")
    log(f"service on port {server.port} ({workers} workers), {concurrency} shoppers for {duration:g} s, reload every {reload_every:g} s, "
        f"{lock_seconds:g} s lock at {duration / 2 - lock_seconds / 2:.0f} s")
    try:
        res = asyncio.run(_drive(
            f"http://127.0.0.1:{server.port}", token, users, duration=duration, concurrency=concurrency, reload_every=reload_every,
            versions=["2", "1"], lock_at=max(1.0, duration / 2 - lock_seconds / 2), lock_seconds=lock_seconds, eventlog_url=url,
            pids=lambda: descendants(server.proc.pid), log=log,
        ))
    finally:
        server.stop()
    # Read back what the log holds.
    from storerec.events.eventlog import read_frames

    frames = read_frames(url)
    stored_ids = set(frames["feedback"]["event_id"].drop_nulls().to_list())
    lost = res["acked"] - stored_ids
    doubled = res["refused"] & stored_ids
    imp = frames["impressions"]
    lock_start, lock_end = (res["lock_window"] + [None, None])[:2]
    wall = res["t0_wall"]
    ts = imp["ts"].dt.replace_time_zone(None).dt.epoch("us").to_numpy() / 1e6 - wall if imp.height else []
    after_lock = int(sum(1 for t in ts if lock_end is not None and t > lock_end + 2))
    during_lock_ready = [s for t, s in res["ready"] if lock_start is not None and lock_end is not None and lock_start + 8 < t < lock_end - 1]
    after_ready = [s for t, s in res["ready"] if lock_end is not None and t > lock_end + 10]
    # every list served after a reload answered carries that reload's version, until the next reload is sent
    wrong = 0
    checked = 0
    reloads = [r for r in res["reloads"] if r[3] == 200]
    for i, (_sent, answered, version, _) in enumerate(reloads):
        nxt = reloads[i + 1][0] if i + 1 < len(reloads) else float("inf")
        for t, v in res["served"]:
            if answered + 0.05 < t < nxt:
                checked += 1
                wrong += v != version
    # Memory: the median of the second minute (warm: models loaded, caches filled) against the
    # median of the last minute; single samples swing by a few % while a reload holds two models.
    rss = res["rss"]
    early = [m for t, m in rss if 60 <= t < 120] or [m for _, m in rss][:3]
    late = [m for t, m in rss if t >= duration - 60] or [m for _, m in rss][-3:]
    warm = [statistics.median(early), statistics.median(late)] if early and late else []
    growth = (warm[1] - warm[0]) / warm[0] if warm and warm[0] else 0.0
    five_xx = {k: v for k, v in res["statuses"].items() if k >= 500 and k != 503}
    lat = sorted(res["lat"])

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    verdict = {
        "acknowledged events lost": (len(lost) == 0, f"{len(lost)} of {len(res['acked'])}"),
        "refused (503) events stored anyway": (len(doubled) == 0, f"{len(doubled)} of {len(res['refused'])}"),
        "impressions logged after the lock": (after_lock > 0, f"{after_lock}"),
        "/readyz 503 during the lock": (
            bool(during_lock_ready) and all(s == 503 for s in during_lock_ready), f"{during_lock_ready.count(503)} of {len(during_lock_ready)} polls"
        ),
        "/readyz 200 after the lock": (bool(after_ready) and all(s == 200 for s in after_ready), f"{after_ready.count(200)} of {len(after_ready)} polls"),
        "5xx other than 503": (not five_xx, json.dumps(five_xx)),
        "reloads answered 200": (len(reloads) == len(res["reloads"]) and len(reloads) > 0, f"{len(reloads)} of {len(res['reloads'])}"),
        "lists after a reload on its version": (wrong == 0 and checked > 0, f"{checked - wrong} of {checked}"),
        "worker RSS growth < 5 % (median of minute 2 -> of the last minute)": (
            growth < 0.05, f"{100 * growth:+.1f} % ({warm[0]:.0f} -> {warm[-1]:.0f} MB, all workers)" if warm else "no samples"),
    }
    passed = all(ok for ok, _ in verdict.values())
    info = machine()
    summary = {
        "machine": info, "duration_s": duration, "concurrency": concurrency, "workers": workers, "eventlog": url.split(":")[0],
        "reload_every_s": reload_every, "lock_s": lock_seconds, "lock_window_s": res["lock_window"],
        "statuses": res["statuses"], "lists": len(res["served"]), "acked_events": len(res["acked"]), "refused_events": len(res["refused"]),
        "impressions_logged": imp.height, "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999)},
        "rss_mb": rss, "reloads": res["reloads"],
        "verdict": {k: {"ok": ok, "value": v} for k, (ok, v) in verdict.items()}, "passed": passed,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [
        f"Soak: {duration:g} s, {concurrency} shoppers, {workers} workers, event log on {summary['eventlog']}, reload every {reload_every:g} s, "
        f"{lock_seconds:g} s exclusive lock on the event log at {res['lock_window'][0]:.0f}–{res['lock_window'][-1]:.0f} s. "
        f"{info['cpu']}, {info['cores']} cores, {info['date']}.",
        "",
        f"{len(res['served'])} lists ({len(res['served']) / duration:.0f}/s), /recommend p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, "
        f"p99.9 {pct(0.999):.1f} ms (client-side, including the lock); statuses {json.dumps(res['statuses'])}; "
        f"{len(res['acked'])} events acknowledged, {len(res['refused'])} refused with 503; {imp.height} impressions logged.",
        "",
        markdown_table(["check", "result", ""], [[k, v, "ok" if ok else "**FAILED**"] for k, (ok, v) in verdict.items()]),
        "",
        f"verdict: {'PASSED' if passed else 'FAILED'}",
    ]
    return "\n".join(lines), passed
