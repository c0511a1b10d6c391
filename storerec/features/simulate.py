"""The built-in storefront: a deterministic simulated store with planted structure.

``storerec simulate`` writes users, items and events through the same schemas and atomic writer
as a real import, plus the ground truth in ``<data-dir>/truth/`` so that tests (and A/B
simulations) can check what models recover:

* **categories** - about 20 two-level categories (``Grocery > Coffee``) in 7 top levels, 6 of
  them consumable; each has its own brands and a lognormal price distribution around its median.
* **items** - Zipf-like popularity inside each category; a share of items listed during the last
  ``new_arrival_days`` (new arrivals); a few *trending* items whose popularity jumps in the last
  7 days; a share of items with a planted complementary *partner* that is bought in the same
  order about half of the time.
* **users** - latent category tastes (a sparse Dirichlet draw: most users like 2-3 categories),
  a price sensitivity (how much they prefer the cheap end of a category), an activity level
  (lognormal), and a lifecycle: active, new (signed up in the last ``new_user_days``), dormant
  (stopped 70-170 days before the end) or churned (only browsed at the start of the history).
* **sessions** - a view -> cart (12 %) -> purchase (50 % of carts) funnel with favourites; all
  purchases of a session form one order; consumable purchases are repeated about a month later.

Everything is vectorised numpy and seeded, so one seed gives byte-identical files. The number of
events is within a fraction of a percent of ``n_events`` (whole shopping sessions are kept or
dropped, so no session is cut in half).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import Columns as C
from storerec.core.schema import EventTypes as E
from storerec.core.schema import check_schema, conform
from storerec.features.io import TABLE_FILES, has_table, table_path, write_atomic, write_text_atomic

SIMULATION_RECORD = "simulation.json"
IMPORT_RECORD = "import.json"
TRUTH_DIR = "truth"
TRUTH_TABLES = ("user_tastes", "user_traits", "complementary_pairs", "categories", "trending_items")

# (top level, second level, median price, consumable, weight of the category in the catalogue)
CATEGORIES: tuple[tuple[str, str, float, bool, float], ...] = (
    ("Grocery", "Coffee", 14.0, True, 1.0),
    ("Grocery", "Tea", 9.0, True, 0.7),
    ("Grocery", "Snacks", 5.0, True, 1.0),
    ("Beauty", "Skincare", 28.0, True, 1.0),
    ("Beauty", "Haircare", 15.0, True, 0.8),
    ("Beauty", "Makeup", 22.0, False, 0.9),
    ("Home", "Kitchen", 40.0, False, 1.2),
    ("Home", "Decor", 35.0, False, 1.0),
    ("Home", "Bedding", 65.0, False, 0.7),
    ("Electronics", "Phones", 450.0, False, 0.6),
    ("Electronics", "Audio", 120.0, False, 0.8),
    ("Electronics", "Accessories", 25.0, False, 1.0),
    ("Fashion", "Women", 55.0, False, 1.3),
    ("Fashion", "Men", 50.0, False, 1.1),
    ("Fashion", "Shoes", 85.0, False, 1.0),
    ("Sports", "Running", 75.0, False, 0.8),
    ("Sports", "Fitness", 45.0, False, 0.8),
    ("Sports", "Outdoor", 95.0, False, 0.7),
    ("Pets", "Food", 30.0, True, 0.8),
    ("Pets", "Toys", 12.0, False, 0.6),
)
# Where a planted complementary partner comes from (by second-level name); otherwise the same top level.
PARTNER_CATEGORY = {
    "Phones": "Accessories",
    "Audio": "Accessories",
    "Coffee": "Snacks",
    "Tea": "Snacks",
    "Running": "Shoes",
    "Skincare": "Makeup",
    "Kitchen": "Decor",
    "Bedding": "Decor",
    "Food": "Toys",
}
BRAND_SYLLABLES = ("ka", "lo", "mi", "ra", "ve", "no", "su", "ta", "be", "xi", "do", "fe")
TAGS = ("eco", "premium", "bestseller", "gift", "limited", "vegan", "handmade", "imported")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
REGIONS = ("North", "South", "East", "West", "Central")
OCCUPATIONS = ("student", "engineer", "teacher", "healthcare", "retail", "artist", "retired", "other")

VIEWS_PER_SESSION = 2.6  # mean of 1 + Poisson
P_FAVORITE = 0.04
P_CART = 0.12
P_PURCHASE = 0.5  # of carted items
P_PARTNER = 0.5  # a purchased item's partner joins the order
P_REPEAT = 0.55  # a consumable purchase is bought again one cycle later
REPEAT_CYCLE_DAYS = (30.0, 7.0)  # mean, sd
TRENDING_SHARE = 0.015
TRENDING_BOOST = 12.0
TRENDING_DAYS = 7
PRICE_LEVELS = 5  # price sensitivity is bucketed into this many levels for sampling
STEP_SECONDS = 40  # time between consecutive events in a session
DAY = 86_400


@dataclass
class Generated:
    events: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    truth: dict[str, pl.DataFrame]


@dataclass
class Summary:
    """What ``storerec simulate`` wrote; :meth:`render` is the text the CLI prints."""

    data_dir: Path
    counts: dict[str, int]
    event_counts: dict[str, int]
    start: datetime
    end: datetime
    seconds: float
    truth_dir: Path

    def render(self) -> str:
        types = ", ".join(f"{k} {v:,}" for k, v in self.event_counts.items())
        return "\n".join(
            [
                f"simulated store in {self.data_dir} ({self.seconds:.1f}s)",
                f"  users {self.counts['users']:,}, items {self.counts['items']:,}, events {self.counts['events']:,} ({types})",
                f"  history {self.start:%Y-%m-%d} .. {self.end:%Y-%m-%d}",
                f"  ground truth: {self.truth_dir}/ ({', '.join(TRUTH_TABLES)})",
            ]
        )


# ---- generation ---------------------------------------------------------------------------------


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        syl = rng.choice(len(BRAND_SYLLABLES), size=int(rng.integers(2, 4)))
        name = "".join(BRAND_SYLLABLES[s] for s in syl).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _ids(prefix: str, n: int) -> pl.Series:
    width = max(5, len(str(n)))
    return pl.Series([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=pl.String)


def _to_datetime(seconds: np.ndarray, name: str) -> pl.Series:
    return pl.Series(name, seconds.astype(np.int64) * 1_000_000).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _make_items(sim: Any, rng: np.random.Generator, start_s: int, end_s: int) -> dict[str, Any]:
    n_items = sim.n_items
    n_cat = len(CATEGORIES)
    cat_weight = np.array([c[4] for c in CATEGORIES])
    # Every category gets at least 2 items; the rest by weight.
    base = np.full(n_cat, 2)
    extra = rng.multinomial(n_items - base.sum(), cat_weight / cat_weight.sum())
    cat = np.repeat(np.arange(n_cat), base + extra)
    rng.shuffle(cat)

    l1_names = sorted({c[0] for c in CATEGORIES})
    brands_per_l1 = {l1: _brand_names(rng, 6) for l1 in l1_names}
    brand = np.empty(n_items, dtype=object)
    for l1 in l1_names:
        members = np.nonzero(np.array([CATEGORIES[c][0] == l1 for c in cat]))[0]
        picks = rng.zipf(1.6, size=len(members)).clip(max=6) - 1
        brand[members] = np.array(brands_per_l1[l1], dtype=object)[picks]

    median = np.array([c[2] for c in CATEGORIES])[cat]
    log_noise = rng.normal(0.0, 0.55, n_items)
    price = np.round(np.maximum(median * np.exp(log_noise), 0.5), 0) - 0.01

    # Within-category z-score of log price (used by price-sensitive choice).
    z = np.zeros(n_items)
    for c in range(n_cat):
        m = cat == c
        lp = np.log(price[m])
        z[m] = (lp - lp.mean()) / (lp.std() + 1e-9)

    # Power-law popularity inside each category, independent of price.
    pop = np.empty(n_items)
    for c in range(n_cat):
        m = np.nonzero(cat == c)[0]
        ranks = rng.permutation(len(m)) + 1
        pop[m] = ranks.astype(float) ** -1.0

    # Listing dates: most items before the history, some during it, a share in the last days.
    n_new = int(round(sim.share_new_items * n_items))
    created = np.empty(n_items, dtype=np.int64)
    kind = rng.random(n_items)
    older = start_s - rng.integers(0, 720 * DAY, n_items)
    during = rng.integers(start_s, end_s - sim.new_arrival_days * DAY, n_items)
    created[:] = np.where(kind < 0.85, older, during)
    new_idx = rng.choice(n_items, size=n_new, replace=False)
    created[new_idx] = end_s - rng.integers(DAY // 2, sim.new_arrival_days * DAY, n_new)
    # New arrivals get a popularity boost (the storefront promotes them).
    pop[new_idx] *= 3.0

    in_stock = rng.random(n_items) >= 0.04
    n_tags = rng.integers(0, 3, n_items)
    tags = [sorted({TAGS[t] for t in rng.choice(len(TAGS), size=k, replace=False)}) for k in n_tags]

    n_trend = max(2, int(round(TRENDING_SHARE * n_items)))
    trend_idx = np.sort(rng.choice(n_items, size=n_trend, replace=False))
    trending = np.zeros(n_items, dtype=bool)
    trending[trend_idx] = True

    # Complementary pairs: anchor -> partner in the partner category (or the same top level).
    n_comp = int(round(sim.share_complementary * n_items))
    anchors = np.sort(rng.choice(n_items, size=n_comp, replace=False))
    partner = np.full(n_items, -1, dtype=np.int64)
    l2_index = {c[1]: i for i, c in enumerate(CATEGORIES)}
    for a in anchors:
        l1, l2 = CATEGORIES[cat[a]][0], CATEGORIES[cat[a]][1]
        if l2 in PARTNER_CATEGORY:
            pool = np.nonzero(cat == l2_index[PARTNER_CATEGORY[l2]])[0]
        else:
            pool = np.nonzero(np.array([CATEGORIES[c][0] == l1 for c in range(n_cat)])[cat] & (cat != cat[a]))[0]
        pool = pool[pool != a]
        if len(pool):
            # Partners are popular-ish items of their category.
            w = pop[pool] / pop[pool].sum()
            partner[a] = pool[rng.choice(len(pool), p=w)]
    adjectives = ("Classic", "Pro", "Lite", "Plus", "Mini", "Max", "Eco", "Select")
    titles = [
        f"{brand[i]} {CATEGORIES[cat[i]][1]} {adjectives[i % len(adjectives)]} {i + 1}" for i in range(n_items)
    ]
    return dict(
        cat=cat, brand=brand, price=price, z=z, pop=pop, created=created, in_stock=in_stock, tags=tags,
        trending=trending, partner=partner, titles=titles,
    )


def _make_users(sim: Any, rng: np.random.Generator, start_s: int, end_s: int) -> dict[str, Any]:
    n = sim.n_users
    n_cat = len(CATEGORIES)
    cat_weight = np.array([c[4] for c in CATEGORIES])
    tastes = rng.dirichlet(np.full(n_cat, 0.25), size=n) * 0.9 + 0.1 * cat_weight / cat_weight.sum()
    price_sens = np.clip(rng.normal(0.0, 0.8, n), -1.5, 1.5)
    activity = rng.lognormal(0.0, 0.8, n)

    life = np.zeros(n, dtype=np.int8)  # 0 active, 1 new, 2 dormant, 3 churned
    order = rng.permutation(n)
    k_new = int(round(sim.share_new_users * n))
    k_dorm = int(round(sim.share_dormant * n))
    k_churn = int(round(sim.share_churned * n))
    life[order[:k_new]] = 1
    life[order[k_new : k_new + k_dorm]] = 2
    life[order[k_new + k_dorm : k_new + k_dorm + k_churn]] = 3

    signup = np.where(
        rng.random(n) < 0.7,
        start_s - rng.integers(DAY, 900 * DAY, n),
        rng.integers(start_s, end_s - (sim.new_user_days + 1) * DAY, n),
    )
    # Dormant and churned users were customers before the history started.
    old = (life == 2) | (life == 3)
    signup[old] = start_s - rng.integers(30 * DAY, 900 * DAY, int(old.sum()))
    new = life == 1
    signup[new] = end_s - rng.integers(DAY // 4, sim.new_user_days * DAY, int(new.sum()))
    window_start = np.maximum(signup, start_s)
    stop = np.full(n, end_s, dtype=np.int64)
    history_days = (end_s - start_s) // DAY
    dorm = life == 2
    stop[dorm] = end_s - rng.integers(70 * DAY, min(170, history_days - 5) * DAY, int(dorm.sum()))
    churn = life == 3
    stop[churn] = start_s + rng.integers(2 * DAY, max(3, min(20, history_days // 6)) * DAY, int(churn.sum()))
    stop = np.maximum(stop, window_start + DAY)
    return dict(
        tastes=tastes, price_sens=price_sens, activity=activity, life=life, signup=signup,
        window_start=window_start, stop=stop,
    )


def _sample_items(
    rng: np.random.Generator, it: dict[str, Any], n_items: int, group: np.ndarray, n_groups: int
) -> np.ndarray:
    """Draw one item per row; ``group`` encodes (category, price level, trending window)."""
    cat, z, pop, trending = it["cat"], it["z"], it["pop"], it["trending"]
    levels = np.linspace(-1.5, 1.5, PRICE_LEVELS)
    out = np.empty(len(group), dtype=np.int64)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(n_groups + 1))
    members_by_cat = [np.nonzero(cat == c)[0] for c in range(len(CATEGORIES))]
    for g in range(n_groups):
        lo, hi = bounds[g], bounds[g + 1]
        if lo == hi:
            continue
        c, rest = divmod(g, PRICE_LEVELS * 2)
        level, trend = divmod(rest, 2)
        members = members_by_cat[c]
        w = pop[members] * np.exp(-levels[level] * z[members])
        if trend:
            w = w * np.where(trending[members], TRENDING_BOOST, 1.0)
        cdf = np.cumsum(w)
        cdf /= cdf[-1]
        pick = np.searchsorted(cdf, rng.random(hi - lo), side="right").clip(max=len(members) - 1)
        out[order[lo:hi]] = members[pick]
    return out


def generate(sim: Any, progress: Progress | None = None) -> Generated:
    """Generate the store in memory (deterministic for ``sim.seed``)."""
    progress = progress or Progress("simulate", quiet=True)
    rng = np.random.default_rng(sim.seed)
    end_s = int(sim.end.timestamp())
    start_s = end_s - sim.days * DAY
    n_cat = len(CATEGORIES)

    with progress.step("catalogue and users"):
        it = _make_items(sim, rng, start_s, end_s)
        us = _make_users(sim, rng, start_s, end_s)

    with progress.step("sessions and events"):
        # Sessions: users drawn by activity x length of their active window (at least a week, so
        # new users get a few sessions); the time is uniform in the window.
        window = (us["stop"] - us["window_start"]).astype(float)
        weight = us["activity"] * np.maximum(window, 7 * DAY)
        # Draw more sessions than needed (about 3.1 events each); whole ones are dropped below.
        events_per_session = VIEWS_PER_SESSION * (1 + P_FAVORITE + P_CART * (1 + P_PURCHASE * 1.3))
        n_sessions = int(sim.n_events / events_per_session * 1.4) + 100
        s_user = rng.choice(sim.n_users, size=n_sessions, p=weight / weight.sum())
        s_time = us["window_start"][s_user] + (rng.random(n_sessions) * (us["stop"][s_user] - us["window_start"][s_user])).astype(np.int64)
        # Category from the user's tastes (inverse-CDF per row).
        cdf = np.cumsum(us["tastes"][s_user], axis=1)
        s_cat = (cdf < rng.random(n_sessions)[:, None] * cdf[:, -1:]).sum(axis=1).clip(max=n_cat - 1)
        s_level = np.digitize(us["price_sens"][s_user], np.linspace(-1.5, 1.5, PRICE_LEVELS + 1)[1:-1])
        s_trend = s_time >= end_s - TRENDING_DAYS * DAY
        s_group = (s_cat * PRICE_LEVELS + s_level) * 2 + s_trend
        n_groups = n_cat * PRICE_LEVELS * 2
        # Churned users only browse; everyone else may buy.
        s_can_buy = us["life"][s_user] != 3

        n_views = 1 + rng.poisson(VIEWS_PER_SESSION - 1.0, n_sessions)
        v_sess = np.repeat(np.arange(n_sessions), n_views)
        v_step = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
        v_item = _sample_items(rng, it, sim.n_items, s_group[v_sess], n_groups)
        v_time = s_time[v_sess] + v_step * STEP_SECONDS
        # An item cannot be seen before it is listed: draw again (up to 3 times), else drop the view.
        for _ in range(3):
            bad = np.nonzero(it["created"][v_item] > v_time)[0]
            if not len(bad):
                break
            v_item[bad] = _sample_items(rng, it, sim.n_items, s_group[v_sess[bad]], n_groups)
        ok = it["created"][v_item] <= v_time
        v_sess, v_item, v_step, v_time = v_sess[ok], v_item[ok], v_step[ok], v_time[ok]
        # The same item viewed twice in a session counts once further down the funnel.
        _, first_idx = np.unique(v_sess * sim.n_items + v_item, return_index=True)
        first = np.zeros(len(v_sess), dtype=bool)
        first[first_idx] = True

        u_fav = rng.random(len(v_sess))
        u_cart = rng.random(len(v_sess))
        u_buy = rng.random(len(v_sess))
        fav = first & (u_fav < P_FAVORITE)
        cart = first & (u_cart < P_CART) & it["in_stock"][v_item]
        buy = cart & (u_buy < P_PURCHASE) & s_can_buy[v_sess]
        last_step = np.zeros(n_sessions, dtype=np.int64)
        np.maximum.at(last_step, v_sess, v_step)

        parts = [
            (v_sess, v_item, np.zeros(len(v_sess), np.int8), v_time),
            (v_sess[fav], v_item[fav], np.full(fav.sum(), 1, np.int8), v_time[fav] + STEP_SECONDS // 2),
            (v_sess[cart], v_item[cart], np.full(cart.sum(), 2, np.int8), v_time[cart] + STEP_SECONDS // 2 + 1),
        ]
        b_sess, b_item = v_sess[buy], v_item[buy]
        b_time = s_time[b_sess] + (last_step[b_sess] + 2) * STEP_SECONDS + rng.integers(0, STEP_SECONDS, len(b_sess))

        # Complementary partners join the order (cart + purchase, after the anchor).
        p_item = it["partner"][b_item]
        join = (p_item >= 0) & (rng.random(len(b_item)) < P_PARTNER)
        join &= it["created"][np.maximum(p_item, 0)] <= b_time
        join &= it["in_stock"][np.maximum(p_item, 0)]
        c_sess, c_item, c_time = b_sess[join], p_item[join], b_time[join] + STEP_SECONDS
        parts.append((c_sess, c_item, np.full(len(c_sess), 2, np.int8), c_time - 5))
        buys_sess = np.concatenate([b_sess, c_sess])
        buys_item = np.concatenate([b_item, c_item])
        buys_time = np.concatenate([b_time, c_time])

        # Consumables are bought again about one cycle later (two rounds): a new short session
        # (view, cart, purchase) of the same item, if the user is still active then.
        consumable = np.array([c[3] for c in CATEGORIES])
        root_of_session = np.arange(n_sessions)
        rep_sessions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        src_sess, src_item, src_time = buys_sess, buys_item, buys_time
        for _ in range(2):
            user = s_user[root_of_session[src_sess]]
            gap = np.maximum(rng.normal(*REPEAT_CYCLE_DAYS, len(src_item)), 7.0) * DAY
            t = src_time + gap.astype(np.int64)
            again = consumable[it["cat"][src_item]] & (rng.random(len(src_item)) < P_REPEAT) & (t < us["stop"][user])
            root = root_of_session[src_sess[again]]
            new_ids = len(root_of_session) + np.arange(int(again.sum()))
            root_of_session = np.concatenate([root_of_session, root])
            rep_sessions.append((new_ids, src_item[again], t[again]))
            src_sess, src_item, src_time = new_ids, src_item[again], t[again] + 2 * STEP_SECONDS
        for ids, item, t in rep_sessions:
            parts.append((ids, item, np.zeros(len(ids), np.int8), t))
            parts.append((ids, item, np.full(len(ids), 2, np.int8), t + STEP_SECONDS))
            parts.append((ids, item, np.full(len(ids), 3, np.int8), t + 2 * STEP_SECONDS))
        parts.append((buys_sess, buys_item, np.full(len(buys_sess), 3, np.int8), buys_time))

        e_sess = np.concatenate([p[0] for p in parts])
        e_item = np.concatenate([p[1] for p in parts])
        e_type = np.concatenate([p[2] for p in parts])
        e_time = np.concatenate([p[3] for p in parts])

        # Events after the end of the history (repeat sessions, late steps) do not happen.
        inside = e_time < end_s
        e_sess, e_item, e_type, e_time = e_sess[inside], e_item[inside], e_type[inside], e_time[inside]
        # Keep whole roots (a session and its repeat sessions) in random order until the target.
        e_root = root_of_session[e_sess]
        per_root = np.bincount(e_root, minlength=n_sessions)
        root_order = rng.permutation(n_sessions)
        cum = np.cumsum(per_root[root_order])
        n_keep = int(np.searchsorted(cum, sim.n_events, side="left")) + 1
        keep_root = np.zeros(n_sessions, dtype=bool)
        keep_root[root_order[:n_keep]] = True
        keep = keep_root[e_root]
        e_sess, e_item, e_type, e_time = e_sess[keep], e_item[keep], e_type[keep], e_time[keep]
        e_user = s_user[root_of_session[e_sess]]

    with progress.step("tables"):
        order = np.lexsort((e_type, e_item, e_time, e_user))
        e_sess, e_item, e_type, e_time, e_user = (a[order] for a in (e_sess, e_item, e_type, e_time, e_user))
        user_ids = _ids("u", sim.n_users)
        item_ids = _ids("i", sim.n_items)
        type_names = pl.Series([E.View, E.Favorite, E.Cart, E.Purchase])
        is_buy = e_type == 3
        qty = np.ones(len(e_type), dtype=np.int32)
        cons_buy = is_buy & consumable[it["cat"][e_item]]
        qty[cons_buy] += rng.poisson(0.5, int(cons_buy.sum())).astype(np.int32)
        paid = np.round(it["price"][e_item] * rng.uniform(0.8, 1.0, len(e_item)), 2)
        # Session ids are renumbered in order of first appearance so the files do not depend on
        # how many sessions were drawn before the cut.
        _, first_pos, inverse = np.unique(e_sess, return_index=True, return_inverse=True)
        rank = np.empty(len(first_pos), dtype=np.int64)
        rank[np.argsort(first_pos, kind="stable")] = np.arange(len(first_pos))
        events = pl.DataFrame(
            {
                C.User: user_ids.gather(e_user),
                C.Item: item_ids.gather(e_item),
                C.EventType: type_names.gather(e_type.astype(np.int64)),
                C.Timestamp: _to_datetime(e_time, C.Timestamp),
                C.Quantity: qty,
                C.Price: pl.Series(np.where(is_buy, paid, np.nan)).fill_nan(None),
                C.Session: pl.Series((rank[inverse] + 1).astype(np.int64)).cast(pl.String).str.zfill(8),
            }
        )
        events = conform(events.with_columns(pl.concat_str(pl.lit("s"), pl.col(C.Session)).alias(C.Session)), "events")

        cat_names = [f"{c[0]} > {c[1]}" for c in CATEGORIES]
        items = conform(
            pl.DataFrame(
                {
                    C.Item: item_ids,
                    C.Title: it["titles"],
                    C.Category: pl.Series(cat_names).gather(it["cat"]),
                    C.Brand: pl.Series(list(it["brand"]), dtype=pl.String),
                    C.Price: it["price"],
                    C.Tags: pl.Series(it["tags"], dtype=pl.List(pl.String)),
                    C.CreatedAt: _to_datetime(it["created"], C.CreatedAt),
                    C.InStock: it["in_stock"],
                }
            ),
            "items",
        )
        n = sim.n_users
        users = conform(
            pl.DataFrame(
                {
                    C.User: user_ids,
                    C.SignupAt: _to_datetime(us["signup"], C.SignupAt),
                    C.AgeBand: pl.Series(AGE_BANDS).gather(rng.choice(len(AGE_BANDS), n, p=[0.12, 0.28, 0.24, 0.17, 0.12, 0.07])),
                    C.Gender: pl.Series(["F", "M", "X"]).gather(rng.choice(3, n, p=[0.52, 0.45, 0.03])),
                    C.Region: pl.Series(REGIONS).gather(rng.integers(0, len(REGIONS), n)),
                    C.Occupation: pl.Series(OCCUPATIONS).gather(rng.integers(0, len(OCCUPATIONS), n)),
                }
            ),
            "users",
        )
        truth = _truth(it, us, user_ids, item_ids, cat_names)
    return Generated(events=events, items=items, users=users, truth=truth)


def _truth(it: dict[str, Any], us: dict[str, Any], user_ids: pl.Series, item_ids: pl.Series, cat_names: list[str]) -> dict[str, pl.DataFrame]:
    n_users, n_cat = us["tastes"].shape
    tastes = (
        pl.DataFrame(
            {
                C.User: user_ids.gather(np.repeat(np.arange(n_users), n_cat)),
                C.Category: pl.Series(cat_names).gather(np.tile(np.arange(n_cat), n_users)),
                "weight": us["tastes"].ravel(),
            }
        )
        .filter(pl.col("weight") >= 0.01)
        .sort([C.User, "weight"], descending=[False, True])
    )
    life_names = pl.Series(["active", "new", "dormant", "churned"])
    traits = pl.DataFrame(
        {
            C.User: user_ids,
            "price_sensitivity": us["price_sens"],
            "activity": us["activity"],
            "lifecycle": life_names.gather(us["life"].astype(np.int64)),
            "active_until": _to_datetime(us["stop"], "active_until"),
        }
    )
    anchors = np.nonzero(it["partner"] >= 0)[0]
    pairs = pl.DataFrame({C.Item: item_ids.gather(anchors), "partner_id": item_ids.gather(it["partner"][anchors])})
    categories = pl.DataFrame(
        {
            C.Category: cat_names,
            "l1": [c[0] for c in CATEGORIES],
            "consumable": [c[3] for c in CATEGORIES],
            "price_median": [c[2] for c in CATEGORIES],
        }
    )
    trending = pl.DataFrame({C.Item: item_ids.gather(np.nonzero(it["trending"])[0])})
    return {
        "user_tastes": tastes,
        "user_traits": traits,
        "complementary_pairs": pairs,
        "categories": categories,
        "trending_items": trending,
    }


# ---- writing --------------------------------------------------------------------------------------


def _record(sim: Any) -> dict[str, Any]:
    return {"kind": "simulation", "settings": json.loads(sim.model_dump_json())}


def _check_event_types(events_settings: Any) -> None:
    missing = [t for t in (E.View, E.Favorite, E.Cart, E.Purchase) if t not in events_settings.types]
    if missing:
        raise UserError(f"the simulator emits event types {missing}, which events.types does not accept; add them to events.types")


def simulate_store(
    sim: Any, events_settings: Any, data_dir: Path, *, force: bool = False, progress: Progress | None = None
) -> Summary:
    """Generate the store and write it (tables, truth, ``simulation.json``) into ``data_dir``.

    Refuses to overwrite imported data (``import.json`` present, or tables without a
    ``simulation.json``) unless ``force``. All files are written atomically together.
    """
    data_dir = Path(data_dir)
    progress = progress or Progress("simulate", quiet=True)
    _check_event_types(events_settings)
    if not force:
        if (data_dir / IMPORT_RECORD).exists():
            raise UserError(
                f"{data_dir} holds imported data ({data_dir / IMPORT_RECORD}); simulating would overwrite it. "
                f"Use another --data-dir, or pass --force to replace it"
            )
        if any(has_table(data_dir, t) for t in TABLE_FILES) and not (data_dir / SIMULATION_RECORD).exists():
            raise UserError(
                f"{data_dir} already holds tables that were not simulated; use another --data-dir, or pass --force to replace them"
            )
    started = time.perf_counter()
    gen = generate(sim, progress)
    with progress.step("write"):
        tables = {"events": gen.events, "items": gen.items, "users": gen.users}
        for name, df in tables.items():
            check_schema(df, name)
        # Tables and truth in one atomic batch: a failure leaves the previous store as it was.
        frames = {table_path(data_dir, name): df for name, df in tables.items()}
        frames.update({data_dir / TRUTH_DIR / f"{name}.parquet": df for name, df in gen.truth.items()})
        write_atomic(frames)

        (data_dir / IMPORT_RECORD).unlink(missing_ok=True)
        write_text_atomic(data_dir / SIMULATION_RECORD, json.dumps(_record(sim), indent=2, sort_keys=True) + "\n")
    counts = {"users": gen.users.height, "items": gen.items.height, "events": gen.events.height}
    by_type = dict(gen.events.group_by(C.EventType).len().sort("len", descending=True).iter_rows())
    end = sim.end
    return Summary(
        data_dir=data_dir,
        counts=counts,
        event_counts=by_type,
        start=end - timedelta(days=sim.days),
        end=end,
        seconds=time.perf_counter() - started,
        truth_dir=data_dir / TRUTH_DIR,
    )


def ensure_simulated(sim: Any, events_settings: Any, data_dir: Path, *, progress: Progress | None = None) -> str:
    """Make sure ``data_dir`` holds a store: reuse imported data or a simulation made with the
    same settings; otherwise simulate. Returns a one-line (or summary) message."""
    data_dir = Path(data_dir)
    if (data_dir / IMPORT_RECORD).exists() and has_table(data_dir, "events"):
        return f"using imported data in {data_dir}"
    record = data_dir / SIMULATION_RECORD
    if record.exists() and all(has_table(data_dir, t) for t in TABLE_FILES):
        try:
            same = json.loads(record.read_text()) == json.loads(json.dumps(_record(sim)))
        except json.JSONDecodeError:
            same = False
        if same:
            return f"reusing the simulated store in {data_dir} (same settings; `storerec simulate` rebuilds it)"
    return simulate_store(sim, events_settings, data_dir, force=False, progress=progress).render()


def load_truth(data_dir: Path) -> dict[str, pl.DataFrame]:
    """Read the ground truth saved by :func:`simulate_store`."""
    folder = Path(data_dir) / TRUTH_DIR
    if not folder.exists():
        raise UserError(f"{folder} not found: ground truth exists only for a simulated store (`storerec simulate`)")
    return {name: pl.read_parquet(folder / f"{name}.parquet") for name in TRUTH_TABLES}
