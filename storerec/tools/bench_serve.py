"""Serving benchmark (``storerec bench --suite serve`` / ``make bench-serve``).

For each data set (the built-in store, and MovieLens-100K when it is present) this trains an
ALS model, registers it as champion in a private MLflow store under ``out``, starts the real
service (``storerec serve``, i.e. ``bentoml serve``) and drives it with the closed-loop client in
:mod:`storerec.tools.loadgen` at each concurrency:

* ``full``: ``POST /recommend`` with the whole pipeline: business filters, MMR diversity with a
  category cap, reasons for every item;
* ``full+context``: the same with three session items in ``recent_item_ids`` (context scoring);
* ``bare``: ``POST /score``, the model's top k over all items and nothing else.

The client runs on the same machine as the server, so the two share its cores; the client's own
CPU time is reported beside each row. Service configurations (workers, access log, metrics) are
compared on the built-in store, so each tuning step shows what it bought.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.core.schema import EventTypes
from storerec.core.tables import markdown_table
from storerec.tools import serve_proc
from storerec.tools.bench import machine
from storerec.tools.loadgen import post_request, run_load


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    env: dict[str, str] = field(default_factory=dict)


_UNTUNED = {  # BentoML's own defaults: span per request, access log, metrics, BLAS on every core
    "STOREREC__SERVING__TRACING": "true",
    "STOREREC__SERVING__BLAS_THREADS": str(os.cpu_count() or 1),
    "STOREREC__SERVING__ACCESS_LOG": "true",
    "STOREREC__SERVING__METRICS": "true",
}
_QUIET = {"STOREREC__SERVING__ACCESS_LOG": "false", "STOREREC__SERVING__METRICS": "false"}
_TUNED = {"STOREREC__SERVING__TRACING": "false", "STOREREC__SERVING__BLAS_THREADS": "1"}  # the storerec defaults

# The tuning ladder, each step adding to the one before; the storerec defaults are step B. Every
# step logs impressions to the event log (the default) except C0, which shows what logging costs.
CONFIGS = [
    ServiceConfig("A: untuned (tracing on, BLAS threads = cores, access log, metrics)", _UNTUNED),
    ServiceConfig("B: A + tracing off, 1 BLAS thread (storerec defaults)",
                  {**_TUNED, "STOREREC__SERVING__ACCESS_LOG": "true", "STOREREC__SERVING__METRICS": "true"}),
    ServiceConfig("C: B + access log and metrics off", {**_TUNED, **_QUIET}),
    ServiceConfig("C0: C without the event log (no impressions logged)", {**_TUNED, **_QUIET, "STOREREC__EVENTLOG__ENABLED": "false"}),
    ServiceConfig("D: C + 2 workers", {**_TUNED, **_QUIET, "STOREREC__SERVING__WORKERS": "2"}),
]


def run_cli(cfg: Path, *args: str) -> None:
    """``storerec --config CFG -q ARGS`` in a child process; its output in the error when it fails."""
    cmd = [sys.executable, "-m", "storerec.cli", "--config", str(cfg), "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def write_config(root: Path, data_dir: Path, extra: str = "") -> Path:
    """A private settings file under ``root``: its own MLflow store and event log, ``data_dir`` as data."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "storerec.toml"
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


def prepare_ml100k(root: Path, ml_dir: Path, log: Callable[[str], None]) -> Path:
    """MovieLens-100K imported, with profiles and an ALS champion (reused when present)."""
    data = root / "data"
    extra = f'[training]\nsplit = "last_fraction"\ntest_fraction = 0.2\nrelevant_event_types = ["{EventTypes.Rating}"]\n'
    cfg = write_config(root, data, extra)
    if not _registered(cfg):
        log("ml-100k: import, features, train ALS, promote")
        run_cli(cfg, "import", "--movielens", str(ml_dir), "--replace")
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


def _measure(port: int, reqs: list[bytes], c: int, warmup: float, duration: float) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    res = run_load("127.0.0.1", port, reqs, concurrency=c, warmup_s=warmup, duration_s=duration)
    after = resource.getrusage(resource.RUSAGE_SELF)
    out = res.summary()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["client_cpu_pct"] = 100.0 * cpu / (warmup + duration)
    return out


def _summarise(runs: list[dict[str, Any]], c: int) -> dict[str, Any]:
    out: dict[str, Any] = {"concurrency": c, "repeats": len(runs)}
    for key in ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "client_cpu_pct"):
        out[key] = statistics.median(r[key] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["runs"] = runs
    return out


def measure_level(port: int, reqs: dict[str, list[bytes]], c: int, endpoints: list[str], warmup: float, duration: float, repeats: int) -> list[dict[str, Any]]:
    """``repeats`` rounds at concurrency ``c``; each round runs every endpoint once, back to
    back, on fresh connections. Interleaving matters on a shared machine whose speed drifts over
    minutes: each ``full`` run is compared with the ``bare`` run of its own round (the
    ``full_bare`` ratio is the median of those paired ratios), and each figure is a median over
    rounds. Fresh connections also matter with several workers: the kernel can land all of one
    run's connections on one worker."""
    runs: dict[str, list[dict[str, Any]]] = {ep: [] for ep in endpoints}
    for _ in range(repeats):
        for ep in endpoints:
            runs[ep].append(_measure(port, reqs[ep], c, warmup, duration))
    rows = []
    for ep in endpoints:
        row = {"endpoint": ep, **_summarise(runs[ep], c)}
        if ep != "bare" and "bare" in runs:
            pairs = [f["rps"] / b["rps"] for f, b in zip(runs[ep], runs["bare"]) if b["rps"] > 0]
            row["full_bare"] = statistics.median(pairs) if pairs else None
            row["full_bare_runs"] = pairs
        rows.append(row)
    return rows


def serve_benchmark(
    out: Path,
    ml_dir: Path | None,
    *,
    concurrency: tuple[int, ...] = (1, 8, 32),
    duration: float = 5.0,
    warmup: float = 1.0,
    repeats: int = 3,
    quiet: bool = False,
) -> str:
    """Run the serving benchmark; returns Markdown and writes ``out/bench-serve.json``."""
    out = Path(out)
    log = (lambda m: None) if quiet else (lambda m: print(f"[bench-serve] {m}", file=sys.stderr, flush=True))
    sets = [("built-in store", prepare_store(out / "serve-store", log), CONFIGS)]
    if ml_dir is not None and (Path(ml_dir) / "u.data").exists():
        sets.append(("ml-100k", prepare_ml100k(out / "serve-ml100k", Path(ml_dir), log), [CONFIGS[2], CONFIGS[4]]))
    else:
        log(f"MovieLens-100K not found at {ml_dir}: the ml-100k rows are skipped")
    rows: list[dict[str, Any]] = []
    for dataset, cfg, configs in sets:
        for conf in configs:
            log(f"{dataset}: start service ({conf.name})")
            for old in cfg.parent.glob("events.db*"):  # each configuration logs into a new event log
                old.unlink()
            server = Server(cfg, conf.env, cfg.parent / "serve.log")
            try:
                reqs = request_sets(cfg, "127.0.0.1", server.port)
                for c in concurrency:
                    endpoints = ["full", "full+context", "bare"] if c == 8 else ["full", "bare"]
                    for r in measure_level(server.port, reqs, c, endpoints, warmup, duration, repeats):
                        rows.append({"dataset": dataset, "config": conf.name, **r})
                        ratio = f", {100 * r['full_bare']:.0f}% of bare" if r.get("full_bare") else ""
                        log(f"{dataset} | {conf.name} | {r['endpoint']} c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
                            f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}{ratio}")
            finally:
                server.stop()
    info = machine()
    out.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "duration_s": duration, "warmup_s": warmup, "repeats": repeats, "rows": rows}
    (out / "bench-serve.json").write_text(json.dumps(payload, indent=2))
    return to_markdown(rows, info, duration, warmup, repeats)


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any], duration: float, warmup: float, repeats: int) -> str:
    lines = [
        f"Serving, ALS champion, k=10, closed loop; {repeats} rounds per concurrency, each running every endpoint once "
        f"({warmup:g} s warm-up + {duration:g} s, fresh connections); figures are medians over rounds, and full/bare is the "
        f"median of each round's paired ratio; client on the same machine. "
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']}.",
    ]
    services = list(dict.fromkeys((r["dataset"], r["config"]) for r in rows))  # in the order they ran
    cells = []
    for r in sorted(rows, key=lambda r: (services.index((r["dataset"], r["config"])), ["full", "full+context", "bare"].index(r["endpoint"]), r["concurrency"])):
        ratio = f"{100 * r['full_bare']:.0f}%" if r.get("full_bare") else ""
        cells.append([r["dataset"], r["config"], r["endpoint"], r["concurrency"], f"{r['rps']:.0f}", f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}", r["errors"], f"{r['client_cpu_pct']:.0f}", ratio])
    header = ["data", "service", "endpoint", "conc.", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "client CPU %", "full/bare req/s (paired)"]
    return "\n".join([*lines, "", markdown_table(header, cells, align="lll" + "r" * 8)])
