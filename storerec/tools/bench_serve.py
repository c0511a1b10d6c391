"""Serving benchmark (``storerec bench --suite serve`` / ``make bench-serve``), measured from
outside as a storefront engineer would (issue #16):

1. **Against a hand-written server.** The built-in store gets an ALS champion in a private MLflow
   store under ``out``; the hand-written Starlette + implicit server
   (:mod:`storerec.tools.baseline_server`: ``model.recommend`` and nothing else) and the real
   service (``storerec serve``, i.e. ``bentoml serve``, in each configuration of
   :data:`CONFIGS`) run side by side. Each **round** runs ``wrk`` (the Debian package, 1 thread,
   ``connections`` keep-alive connections) for ``duration`` seconds on, back to back: the baseline,
   storerec's ``full`` pipeline (``POST /recommend``: business filters, MMR diversity with a
   category cap, reasons for every item, the impression logged) and storerec's ``bare``
   ``POST /score``. The figures are medians over rounds, and ``full/baseline`` is the median of
   each round's own ratio (the machine's speed drifts over minutes; rounds pair what ran
   together).
2. **Open loop.** For the storerec defaults, the lean configuration and the baseline: a
   constant-rate generator (:func:`storerec.tools.loadgen.run_open_loop`) at 50 % and 80 % of
   the throughput ``wrk`` measured for that server, latency counted from when each request was
   due (closed loops hide stalls: their clients stop sending while they wait); p50, p99, p99.9.
3. **Scale** (:mod:`storerec.tools.bench_scale`): 2k, 50k, 500k and 1M items (where memory
   allows): start-up time, RSS per worker, req/s and p99 of ``/recommend`` and ``/similar_items``.

Client and servers share the machine's cores; ``wrk`` is one thread.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

from storerec.core.errors import UserError
from storerec.core.tables import markdown_table
from storerec.tools import serve_proc
from storerec.tools.bench import machine
from storerec.tools.loadgen import post_request, run_open_loop
from storerec.tools.wrk import run_wrk, wrk_available


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    open_loop: bool = False  # also measured with the open-loop generator


_UNTUNED = {  # BentoML's own defaults: span per request, access log, metrics, BLAS on every core
    "STOREREC__SERVING__TRACING": "true",
    "STOREREC__SERVING__BLAS_THREADS": str(os.cpu_count() or 1),
    "STOREREC__SERVING__ACCESS_LOG": "true",
    "STOREREC__SERVING__METRICS": "true",
    "STOREREC__SERVING__DIRECT_DISPATCH": "false",
}
_QUIET = {"STOREREC__SERVING__ACCESS_LOG": "false", "STOREREC__SERVING__METRICS": "false"}
_TUNED = {"STOREREC__SERVING__TRACING": "false", "STOREREC__SERVING__BLAS_THREADS": "1"}  # the storerec defaults

# The storerec defaults (B) and the lean configuration (C), then what single options buy or cost.
# Every configuration logs impressions to the event log (the default) except C0.
CONFIGS = [
    ServiceConfig("B: storerec defaults (access log, metrics)", {**_TUNED, "STOREREC__SERVING__ACCESS_LOG": "true",
                                                                  "STOREREC__SERVING__METRICS": "true"}, open_loop=True),
    ServiceConfig("C: B + access log and metrics off (lean)", {**_TUNED, **_QUIET}, open_loop=True),
    ServiceConfig("C-: C without direct dispatch (BentoML's router parses each body again)",
                  {**_TUNED, **_QUIET, "STOREREC__SERVING__DIRECT_DISPATCH": "false"}),
    ServiceConfig("C0: C without the event log (no impressions logged)", {**_TUNED, **_QUIET, "STOREREC__EVENTLOG__ENABLED": "false"}),
    ServiceConfig("A: BentoML's defaults (tracing on, BLAS threads = cores, no direct dispatch, access log, metrics)", _UNTUNED),
]


def run_cli(cfg: Path, *args: str) -> None:
    """``storerec --config CFG -q ARGS`` in a child process; its output in the error when it fails."""
    cmd = [sys.executable, "-m", "storerec.cli", "--config", str(cfg), "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def with_control_store(extra: str, root: Path) -> str:
    """Settings text ``extra`` with ``serving.control_url`` at ``root/control.db``: in its
    ``[serving]`` section when it has one, else in a new one at the end (unchanged when it names
    a control store itself)."""
    if re.search(r"^control_url\s*=", extra, flags=re.M):
        return extra  # it names its own
    control = f'control_url = "sqlite:///{(root / "control.db").resolve()}"'
    if re.search(r"^\[serving\][ \t]*$", extra, flags=re.M):
        return re.sub(r"^\[serving\][ \t]*$", lambda m: f"[serving]\n{control}", extra, count=1, flags=re.M)
    return f"{extra}\n[serving]\n{control}\n"


def write_config(root: Path, data_dir: Path, extra: str = "") -> Path:
    """A private settings file under ``root``: its own MLflow store, event log and workers' control
    store (added to ``extra``'s ``[serving]`` section when it has one; the default is relative to
    the working directory), ``data_dir`` as data. ``extra`` follows the ``[eventlog]`` lines."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "storerec.toml"
    extra = with_control_store(extra, root)
    cfg.write_text(
        f'[data]\ndir = "{data_dir.resolve()}"\n'
        f'[mlflow]\ntracking_uri = "sqlite:///{(root / "mlflow.db").resolve()}"\n'
        f'artifact_root = "{(root / "artifacts").resolve()}"\n'
        f'[eventlog]\nurl = "sqlite:///{(root / "events.db").resolve()}"\n{extra}'
    )
    return cfg


def _registered(cfg: Path) -> bool:
    from storerec.core.settings import load_settings
    from storerec.registry import tracking

    settings = load_settings(cfg, environ={})
    client = tracking.configure(settings.mlflow)
    try:
        tracking.resolve_version(client, settings.registered_model_name(), "champion")
        return True
    except Exception:
        return False


def prepare_store(root: Path, log: Callable[[str], None]) -> Path:
    """The default built-in store with profiles and an ALS champion (reused when present)."""
    data = root / "data"
    cfg = write_config(root, data)
    if not _registered(cfg):
        log("built-in store: simulate, features, train ALS, promote")
        run_cli(cfg, "simulate", "--force")
        run_cli(cfg, "features")
        run_cli(cfg, "train", "--model", "als")
        run_cli(cfg, "promote", "--version", "1")
    return cfg


def request_sets(cfg: Path, host: str, port: int, n_users: int = 500, seed: int = 0) -> dict[str, list[bytes]]:
    """Request bytes for each endpoint, over the same sample of users with history."""
    from storerec.core.settings import load_settings

    data_dir = Path(load_settings(cfg, environ={}).data.dir)
    events = pl.read_parquet(data_dir / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    items = pl.read_parquet(data_dir / "items.parquet")
    rng = np.random.default_rng(seed)
    users = sorted(events["user_id"].unique().to_list())
    sample = [users[i] for i in rng.choice(len(users), size=min(n_users, len(users)), replace=False)]
    recent = (
        events.filter(pl.col("user_id").is_in(sample)).sort("timestamp", descending=True)
        .group_by("user_id", maintain_order=True).agg(pl.col("item_id").head(3))
    )
    recent_of = dict(zip(recent["user_id"].to_list(), recent["item_id"].to_list()))
    cats = items.group_by("category").len().sort(["len", "category"])
    filters: dict[str, Any] = {"exclude_purchased": True, "in_stock_only": True, "exclude_categories": [cats["category"][0]]}
    price = items["price"].drop_nulls() if "price" in items.columns else pl.Series([], dtype=pl.Float64)
    if price.len() == items.height:  # a price cap only where every item has a price
        filters["max_price"] = float(price.quantile(0.9) or 0.0)
    diversity = {"strength": 0.3, "max_per_category": 3}
    out: dict[str, list[bytes]] = {"full": [], "full+context": [], "bare": []}
    for u in sample:
        body = {"user_id": u, "k": 10, "context": {"page": "home"}, "filters": filters, "diversity": diversity}
        out["full"].append(post_request(host, port, "/recommend", body))
        ctx = {**body, "context": {"page": "home", "recent_item_ids": recent_of.get(u, [])}}
        out["full+context"].append(post_request(host, port, "/recommend", ctx))
        out["bare"].append(post_request(host, port, "/score", {"user_id": u, "k": 10}))
    return out


class Server:
    """``storerec serve`` in a subprocess on a free port, ready once constructed (with ``env``
    added to its environment; the log file is started anew); stopped with its process group and
    every worker (:mod:`storerec.tools.serve_proc`)."""

    def __init__(self, cfg: Path, env: dict[str, str], log_path: Path) -> None:
        self._served = serve_proc.start(cfg, log_path, env=env, timeout=180, append=False)
        self.proc = self._served.proc
        self.port = self._served.port
        self.log_path = log_path

    def stop(self) -> None:
        self._served.stop()


class Baseline:
    """The hand-written server (:mod:`storerec.tools.baseline_server`) on a free port, ready once
    constructed (it answered a ``POST /recommend``); :meth:`stop` ends it."""

    def __init__(self, cfg: Path, log_path: Path, probe: bytes, timeout: float = 120.0) -> None:
        self.port = serve_proc.free_port()
        self.log_path = log_path
        cmd = [sys.executable, "-m", "storerec.tools.baseline_server", "--config", str(cfg), "--port", str(self.port)]
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the baseline server exited ({self.proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                r = httpx.post(f"http://127.0.0.1:{self.port}/recommend", content=probe,
                               headers={"content-type": "application/json"}, timeout=5)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the baseline server was not ready within {timeout:g} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def bodies(requests: list[bytes]) -> list[bytes]:
    """The JSON bodies of raw requests (:func:`request_sets`)."""
    return [r.split(b"\r\n\r\n", 1)[1] for r in requests]


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": len(runs)}
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"):
        out[key] = statistics.median(r[key] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["runs"] = runs
    return out


def ratio_rounds(base_port: int, port: int, reqs: dict[str, list[bytes]], *, connections: int, duration: float,
                 repeats: int) -> dict[str, dict[str, Any]]:
    """``repeats`` rounds of wrk on the baseline, storerec's full pipeline and its bare scores,
    back to back; medians per endpoint and the paired ratios to the baseline."""
    plan = [("baseline", base_port, "/recommend", bodies(reqs["bare"])), ("full", port, "/recommend", bodies(reqs["full"])),
            ("bare", port, "/score", bodies(reqs["bare"]))]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for _ in range(repeats):
        for name, p, path, b in plan:
            runs[name].append(run_wrk(p, path, b, connections=connections, duration_s=duration))
    rows = {name: _median_row(r) for name, r in runs.items()}
    for name in ("full", "bare"):
        pairs = [x["rps"] / b["rps"] for x, b in zip(runs[name], runs["baseline"]) if b["rps"] > 0]
        rows[name]["vs_baseline"] = statistics.median(pairs) if pairs else None
        rows[name]["vs_baseline_runs"] = pairs
    return rows


def open_loop_rows(port: int, requests: list[bytes], max_rps: float, *, seconds: float, shares: tuple[float, ...] = (0.5, 0.8)) -> list[dict[str, Any]]:
    """The open-loop generator at each share of ``max_rps``."""
    out = []
    for share in shares:
        res = run_open_loop("127.0.0.1", port, requests, rate=max(1.0, share * max_rps), warmup_s=2.0, duration_s=seconds)
        out.append({"share": share, **res.summary()})
    return out


def serve_benchmark(
    out: Path,
    *,
    connections: int = 8,
    duration: float = 10.0,
    repeats: int = 3,
    open_loop_s: float = 15.0,
    configs: list[ServiceConfig] | None = None,
    scale: bool = True,
    sizes: Any = None,
    quiet: bool = False,
) -> str:
    """Run the serving benchmark; returns Markdown and writes ``out/bench-serve.json``."""
    out = Path(out)
    log = (lambda m: None) if quiet else (lambda m: print(f"[bench-serve] {m}", file=sys.stderr, flush=True))
    if not wrk_available():
        raise UserError("make bench-serve needs wrk: apt-get install wrk (Debian/Ubuntu)")
    cfg = prepare_store(out / "serve-store", log)
    configs = CONFIGS if configs is None else configs
    reqs = request_sets(cfg, "127.0.0.1", 0)  # the same requests for every server (neither reads the Host header)
    baseline = Baseline(cfg, cfg.parent / "baseline.log", bodies(reqs["bare"])[0])
    rows: list[dict[str, Any]] = []
    loops: list[dict[str, Any]] = []
    try:
        base_max: list[float] = []
        for conf in configs:
            log(f"start service ({conf.name})")
            for old in cfg.parent.glob("events.db*"):  # each configuration logs into a new event log
                old.unlink()
            server = Server(cfg, conf.env, cfg.parent / "serve.log")
            try:
                result = ratio_rounds(baseline.port, server.port, reqs, connections=connections, duration=duration, repeats=repeats)
                base_max.append(result["baseline"]["rps"])
                for endpoint, r in result.items():
                    rows.append({"config": conf.name, "endpoint": endpoint, "connections": connections, **r})
                    vs = f", {r['vs_baseline']:.2f}x the baseline" if r.get("vs_baseline") else ""
                    log(f"{conf.name} | {endpoint}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                        f"p99.9 {r['p999_ms']:.1f} ms, errors {r['errors']}{vs}")
                if conf.open_loop and open_loop_s > 0:
                    for r in open_loop_rows(server.port, reqs["full"], result["full"]["rps"], seconds=open_loop_s):
                        loops.append({"server": f"storerec /recommend, {conf.name}", **r})
                        log(f"open loop {conf.name} at {r['rate']:.0f} req/s: p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} "
                            f"p99.9 {r['p999_ms']:.1f} max {r['max_ms']:.1f} ms, errors {r['errors']}")
            finally:
                server.stop()
        if open_loop_s > 0 and base_max:
            base_requests = [post_request("127.0.0.1", baseline.port, "/recommend", json.loads(b)) for b in bodies(reqs["bare"])]
            for r in open_loop_rows(baseline.port, base_requests, statistics.median(base_max), seconds=open_loop_s):
                loops.append({"server": "hand-written Starlette + implicit", **r})
                log(f"open loop baseline at {r['rate']:.0f} req/s: p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} "
                    f"p99.9 {r['p999_ms']:.1f} max {r['max_ms']:.1f} ms, errors {r['errors']}")
    finally:
        baseline.stop()
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    parts = [to_markdown(rows, loops, info, connections=connections, duration=duration, repeats=repeats, open_loop_s=open_loop_s)]
    scale_md = ""
    if scale:
        from storerec.tools.bench_scale import SIZES, scale_benchmark

        scale_md = scale_benchmark(out, sizes=sizes or SIZES, duration=duration, quiet=quiet)
        parts.append(scale_md)
    payload = {"machine": info, "duration_s": duration, "repeats": repeats, "connections": connections, "rows": rows, "open_loop": loops}
    (out / "bench-serve.json").write_text(json.dumps(payload, indent=2))
    return "\n\n".join(parts)


def to_markdown(rows: list[dict[str, Any]], loops: list[dict[str, Any]], info: dict[str, Any], *, connections: int, duration: float,
                repeats: int, open_loop_s: float) -> str:
    """The ratio table and the open-loop table."""
    lines = [
        f"Closed loop: wrk, 1 thread, {connections} connections, {duration:g} s per run; {repeats} rounds, each running the "
        "hand-written baseline, storerec's full pipeline and its bare /score back to back; medians over rounds, and the "
        f"ratio is the median of each round's own ratio. {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"{info['date']}.",
        "",
    ]
    cells = []
    for r in rows:
        ratio = f"{r['vs_baseline']:.2f}x" if r.get("vs_baseline") else ""
        name = {"baseline": "hand-written Starlette + implicit", "full": "storerec /recommend (full pipeline)",
                "bare": "storerec /score (bare model)"}[r["endpoint"]]
        cells.append([r["config"], name, f"{r['rps']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['p999_ms']:.1f}",
                      f"{r['max_ms']:.1f}", r["errors"], ratio])
    header = ["service configuration", "server", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "vs baseline (paired)"]
    lines.append(markdown_table(header, cells, align="ll" + "r" * 7))
    if loops:
        lines += ["", f"Open loop: constant rate at 50 % and 80 % of each server's wrk throughput above, {open_loop_s:g} s after "
                  "2 s of warm-up; latency from when each request was due.", ""]
        cells = [[r["server"], f"{100 * r['share']:.0f} %", f"{r['rate']:.0f}", f"{r['achieved_rps']:.0f}", f"{r['p50_ms']:.1f}",
                  f"{r['p99_ms']:.1f}", f"{r['p999_ms']:.1f}", f"{r['max_ms']:.1f}", r["errors"], r["connections"],
                  f"{r['client_max_lag_ms']:.1f}"] for r in loops]
        header = ["server", "share of max", "rate req/s", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
                  "connections", "client lag ms"]
        lines.append(markdown_table(header, cells, align="ll" + "r" * 9))
    return "\n".join(lines)
