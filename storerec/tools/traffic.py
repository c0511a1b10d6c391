"""``storerec simulate-traffic``: shoppers from the built-in store against the running service.

Each simulated shopper asks ``POST /recommend`` for a list and reacts to it according to the
tastes planted by the simulator (``<data>/truth/user_tastes.parquet``), not to anything the
models learned: with ``a`` = the shopper's true taste for the item's category divided by their
strongest taste,

* click with probability ``click_base * a**2`` times a position discount ``1 / (1 + 0.3 (rank-1))``;
* after a click, add to cart with probability ``0.6 a`` and buy with probability ``buy_base * a``
  (revenue = the item's price).

The events go through the real ``POST /events`` endpoint with the list's request_id. Every
shopper's randomness comes from ``(seed, shopper)``, so a run is reproducible whatever the
concurrency.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import FEEDBACK_EVENT_TYPES
from storerec.core.schema import FeedbackTypes as F
from storerec.features.simulate import load_truth


@dataclass
class TrafficSummary:
    shoppers: int = 0
    lists: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    by_variant: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def render(self) -> str:
        split = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_variant.items()))
        return (
            f"{self.shoppers} shoppers, {self.lists} lists, {self.clicks} clicks, {self.carts} carts, "
            f"{self.purchases} purchases, revenue {self.revenue:.2f}; lists per variant: {split or '-'}"
            + (f"; {len(self.errors)} errors (first: {self.errors[0]})" if self.errors else "")
        )


def simulate_traffic(
    url: str,
    data_dir: Path,
    *,
    shoppers: int = 1000,
    lists_per_shopper: int = 1,
    k: int = 10,
    seed: int = 0,
    concurrency: int = 4,
    anonymous_share: float = 0.0,
    click_base: float = 0.35,
    buy_base: float = 0.3,
    progress: Progress | None = None,
) -> TrafficSummary:
    import httpx

    truth = load_truth(data_dir)
    tastes = truth["user_tastes"]
    items = pl.read_parquet(Path(data_dir) / "items.parquet", columns=["item_id", "category", "price"])
    cat_of = dict(zip(items["item_id"].to_list(), items["category"].to_list()))
    price_of = dict(zip(items["item_id"].to_list(), items["price"].fill_null(0.0).to_list()))
    users = sorted(tastes["user_id"].unique().to_list())
    if shoppers > len(users):
        raise UserError(f"--shoppers {shoppers} is more than the store's {len(users)} users")
    rng = np.random.default_rng(seed)
    picked = [users[i] for i in sorted(rng.choice(len(users), size=shoppers, replace=False))]
    taste: dict[str, dict[str, float]] = {}
    for user, cat, w in tastes.filter(pl.col("user_id").is_in(picked)).iter_rows():
        taste.setdefault(user, {})[cat] = w
    try:
        with httpx.Client(base_url=url, timeout=10) as probe:
            probe.get("/readyz").raise_for_status()
    except httpx.HTTPError as exc:
        raise UserError(f"the service at {url} is not ready ({exc}); start it with `storerec serve`") from None

    summary = TrafficSummary(shoppers=shoppers)
    lock = threading.Lock()
    local = threading.local()

    def client() -> Any:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=url, timeout=30)
        return local.c

    def shop(n: int) -> None:
        user = picked[n]
        r = np.random.default_rng([seed, n])
        top = max(taste[user].values())
        anonymous = r.random() < anonymous_share
        for visit in range(lists_per_shopper):
            body: dict[str, Any] = {"k": k, "session_id": f"s-{seed}-{n}-{visit}"}
            if not anonymous:
                body["user_id"] = user
            resp = client().post("/recommend", json=body)
            if resp.status_code != 200:
                with lock:
                    summary.errors.append(f"/recommend {resp.status_code}: {resp.text[:200]}")
                continue
            data = resp.json()
            events = []
            counts = dict.fromkeys(FEEDBACK_EVENT_TYPES, 0)
            revenue = 0.0
            for it in data["items"]:
                a = taste[user].get(cat_of.get(it["item_id"], ""), 0.0) / top
                if r.random() < click_base * a * a / (1 + 0.3 * (it["rank"] - 1)):
                    ev = {"request_id": data["request_id"], "item_id": it["item_id"], "session_id": body["session_id"]}
                    if not anonymous:
                        ev["user_id"] = user
                    events.append({**ev, "event_type": F.Click, "event_id": f"{data['request_id']}-{it['item_id']}-c"})
                    counts[F.Click] += 1
                    if r.random() < 0.6 * a:
                        events.append({**ev, "event_type": F.Cart, "event_id": f"{data['request_id']}-{it['item_id']}-a"})
                        counts[F.Cart] += 1
                    if r.random() < buy_base * a:
                        price = float(price_of.get(it["item_id"], 0.0))
                        events.append({**ev, "event_type": F.Purchase, "revenue": price, "event_id": f"{data['request_id']}-{it['item_id']}-p"})
                        counts[F.Purchase] += 1
                        revenue += price
            if events:
                er = client().post("/events", json={"events": events})
                if er.status_code != 200:
                    with lock:
                        summary.errors.append(f"/events {er.status_code}: {er.text[:200]}")
                    continue
            with lock:
                summary.lists += 1
                summary.clicks += counts[F.Click]
                summary.carts += counts[F.Cart]
                summary.purchases += counts[F.Purchase]
                summary.revenue += revenue
                key = data.get("variant") or "(no experiment)"
                summary.by_variant[key] = summary.by_variant.get(key, 0) + 1

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for _ in pool.map(shop, range(shoppers)):
            done += 1
            if progress is not None and done % max(1, shoppers // 10) == 0:
                progress.info(f"{done}/{shoppers} shoppers")
    return summary
