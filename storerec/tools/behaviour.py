"""The recorded-request check (``storerec behaviour`` / ``make behaviour``): does the service still
answer exactly as it did?

It trains six models (ALS, item-kNN, popularity, LightFM, BPR, EASE) once on the built-in store
into ``--out`` (kept between runs, so the same registered versions are served each time), starts the
real service, and for each version sends the same fixed, seeded set of requests: hot, warm and cold
shoppers, anonymous sessions with page context, every filter and diversity setting, similar items,
trending, new arrivals and bare scores. ``record`` writes every status and response body (less the
random request ids) to a JSON-lines file; ``compare`` sends the requests again and reports each
response that differs. Use it around a refactoring: record on the old code, compare on the new.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from storerec.tools.serve_proc import start

MODELS = ("als", "itemknn", "popularity", "lightfm", "bpr", "ease")
_FAST_PARAMS = {"lightfm": ["--param", "epochs=10"]}  # keeps preparation around a minute


def _cli(cfg: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "storerec.cli", "--config", str(cfg), "-q", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def prepare(out: Path, log: Callable[[str], None]) -> tuple[Path, list[str]]:
    """The store, features and one registered version per model under ``out`` (reused when there)."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "storerec.toml"
    versions_file = out / "versions.json"
    if versions_file.exists():
        return cfg, json.loads(versions_file.read_text())
    cfg.write_text(
        f'[data]\ndir = "{out / "data"}"\n'
        f'[mlflow]\ntracking_uri = "sqlite:///{out / "mlflow.db"}"\nartifact_root = "{out / "artifacts"}"\n'
        f'[eventlog]\nurl = "sqlite:///{out / "events.db"}"\n'
        f'[serving]\ncontrol_url = "sqlite:///{out / "control.db"}"\n'
    )
    log("simulating the built-in store and building features")
    _cli(cfg, "simulate")
    _cli(cfg, "features")
    versions: list[str] = []
    for model in MODELS:
        log(f"training {model}")
        _cli(cfg, "train", "--model", model, *_FAST_PARAMS.get(model, []))
        versions.append(str(len(versions) + 1))
    _cli(cfg, "promote", "--version", versions[0], "--alias", "champion")
    versions_file.write_text(json.dumps(versions))
    return cfg, versions


def requests_for(data_dir: Path, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """The fixed request set (endpoint, body), the same for every version."""
    rng = random.Random(seed)
    events = pl.read_parquet(data_dir / "events.parquet", columns=["user_id", "item_id"])
    users = pl.read_parquet(data_dir / "users.parquet", columns=["user_id"])["user_id"].cast(pl.Utf8).to_list()
    items = pl.read_parquet(data_dir / "items.parquet", columns=["item_id", "category"])
    item_ids = items["item_id"].cast(pl.Utf8).to_list()
    categories = sorted(set(items["category"].to_list()))
    tops = sorted({c.split(">")[0].strip() for c in categories})
    active = sorted(set(events["user_id"].cast(pl.Utf8).to_list()))
    warm = sorted(set(users) - set(active))
    hot = rng.sample(active, 55)
    warm_pick = rng.sample(warm, min(10, len(warm)))
    cold = [f"behaviour-cold-{i}" for i in range(5)]
    filters: list[dict[str, Any]] = [
        {},
        {"exclude_seen": False},
        {"exclude_purchased": False, "exclude_seen": False},
        {"include_categories": [tops[0]]},
        {"include_categories": [categories[3], categories[7]]},
        {"exclude_categories": [tops[1]]},
        {"min_price": 20.0, "max_price": 80.0},
        {"in_stock_only": False},
        {"exclude_item_ids": rng.sample(item_ids, 20)},
    ]
    diversity: list[dict[str, Any]] = [{}, {"strength": 0.0}, {"strength": 0.6}, {"strength": 1.0, "max_per_category": 1},
                                       {"max_per_category": 3}]
    out: list[tuple[str, dict[str, Any]]] = []
    for n, user in enumerate(hot + warm_pick + cold):
        out.append(("/recommend", {"user_id": user, "k": 10}))
        out.append(("/recommend", {"user_id": user, "k": 20, "filters": filters[n % len(filters)],
                                   "diversity": diversity[n % len(diversity)]}))
        out.append(("/recommend", {"user_id": user, "k": 8, "context": {"page": "product", "item_ids": [rng.choice(item_ids)]}}))
        out.append(("/recommend", {"user_id": user, "k": 10, "context": {"page": "cart", "item_ids": rng.sample(item_ids, 2),
                                                                        "recent_item_ids": rng.sample(item_ids, 3)},
                                   "diversity": diversity[(n + 2) % len(diversity)]}))
        if user in hot:
            out.append(("/score", {"user_id": user, "k": 10}))
    for n in range(15):  # anonymous shoppers
        out.append(("/recommend", {"session_id": f"behaviour-s{n}", "k": 10,
                                   "context": {"page": "home", "recent_item_ids": rng.sample(item_ids, 1 + n % 4)},
                                   "filters": filters[n % len(filters)]}))
    for item in rng.sample(item_ids, 25):
        out.append(("/similar_items", {"item_id": item, "k": 10}))
    for body in ({"k": 10}, {"k": 20, "category": tops[0]}, {"k": 5, "category": categories[2]}, {"k": 10, "region": "north"}):
        out.append(("/trending", body))
        out.append(("/new_arrivals", {k: v for k, v in body.items() if k != "region"}))
    return out


def _clean(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _clean(v) for k, v in body.items() if k != "request_id"}
    if isinstance(body, list):
        return [_clean(v) for v in body]
    return body


def responses(client: httpx.Client, versions: list[str], reqs: list[tuple[str, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for version in versions:
        r = client.post("/admin/reload", json={"model": version})
        r.raise_for_status()
        for path, body in reqs:
            resp = client.post(path, json=body)
            yield {"version": version, "path": path, "body": body, "status": resp.status_code, "response": _clean(resp.json())}


def run(out: Path, mode: str, file: Path, log: Callable[[str], None]) -> int:
    """``record`` into ``file`` or ``compare`` with it; returns the number of differing responses."""
    cfg, versions = prepare(out, log)
    data_dir = out.resolve() / "data"
    reqs = requests_for(data_dir)
    served = start(cfg, out / "serve.log")
    try:
        with served.client() as client:
            got = list(responses(client, versions, reqs))
    finally:
        served.stop()
    if mode == "record":
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in got))
        tmp.replace(file)
        log(f"recorded {len(got)} responses over {len(versions)} versions into {file}")
        return 0
    want = [json.loads(line) for line in file.read_text().splitlines()]
    if len(want) != len(got):
        log(f"{len(want)} recorded responses, {len(got)} now: the request set changed")
        return max(1, abs(len(want) - len(got)))
    diffs = 0
    for w, g in zip(want, got):
        if w != g:
            diffs += 1
            if diffs <= 10:
                log(f"differs: version {g['version']} {g['path']} {json.dumps(g['body'])}\n"
                    f"  was: {json.dumps(w['response'])[:600]}\n  now: {json.dumps(g['response'])[:600]}")
    log(f"{len(got) - diffs} of {len(got)} responses identical, {diffs} differ")
    return diffs
