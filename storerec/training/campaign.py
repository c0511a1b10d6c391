"""Loyalty campaign lists (issue #17, ../shared/DOMAIN.md "campaigns"): who gets which items,
why, and who is held out, through the service's own ranking pipeline.

This module holds the parts that do not need the event log: who is due (:func:`due_items`),
who is dormant, the sticky holdout (:func:`in_holdout`) and the lists themselves
(:func:`build_lists`: the campaign's own first items and reasons, then the champion's ranker with
its filters, diversity and reasons, exactly as ``POST /recommend`` ranks). The kinds:

* ``replenish``: members whose repurchase of a replenishable item (one that a fifth of its buyers
  bought again: :func:`due_items`) falls due in the next ``due_days`` days: the member's own
  median interval between purchases of that item, or else the item's typical one (the median
  over every member who bought it more than once). Due items come first (soonest first) with the reason "Time to
  restock X (you buy it every ~N days)", then their complements (items bought in the same orders,
  not bought by the member before: "Often bought together with X"), then the ranker's list.
* ``points-expiring``: members with points expiring within 30 days (the profiles'
  ``points_expiring_30d``; the date is the first expiry, ``profiles.points_expiry_days`` after the
  purchase that earned them): the ranker's list priced up to what their whole balance is worth
  (``point_value`` per point), each item with "Your N points expire on DATE: your B points
  (worth V) cover this".
* ``new-arrivals``: members with new items (``is_new``) in their top categories: the ranker's list
  restricted to those new items and categories (the model's cold-start path where it has one,
  e.g. LightFM's item features; the pipeline's new-arrival and popularity sources otherwise),
  with "New arrival in X, a category you often buy".
* ``winback``: members of the ``dormant`` segment: the ranker's list restricted to their top
  categories (when they have any) and priced up to what they paid before (their highest purchase price x 1.2), each
  item with "Popular in X since your last visit" when at least ``min_buyers_since`` members bought
  it since their last purchase.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.schema import Columns, EventTypes
from storerec.core.settings import Settings
from storerec.features import io
from storerec.ranking.ranker import Context, Diversity, Filters, Ranker, RankingInputError
from storerec.training.batch import check_output

C = Columns
KINDS = ("replenish", "winback", "points-expiring", "new-arrivals")


@dataclass(frozen=True)
class CampaignSpec:
    kind: str
    campaign_id: str
    k: int = 5
    holdout: float = 0.1
    due_days: int = 7
    min_repeat_buyers: int = 3
    min_buyers_since: int = 3
    diversity: float = 0.3
    max_per_category: int | None = 2
    point_value: float = 0.10  # currency per loyalty point (points-expiring: what the balance buys)
    segment: str | None = None
    tier: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"--kind {self.kind!r}: unknown campaign kind; use one of {', '.join(KINDS)}")
        if not 0.0 <= self.holdout < 1.0:
            raise UserError(f"--holdout {self.holdout}: must be at least 0 and below 1 (the share of members held out)")
        if not 1 <= self.k <= 100:
            raise UserError(f"--k {self.k}: must be between 1 and 100")
        if self.due_days < 1:
            raise UserError(f"--due-days {self.due_days}: must be at least 1")
        if self.point_value <= 0:
            raise UserError(f"--point-value {self.point_value}: must be positive (currency per point)")
        if not self.campaign_id or any(ch.isspace() for ch in self.campaign_id):
            raise UserError(f"--campaign-id {self.campaign_id!r}: give a non-empty id without spaces")


def in_holdout(campaign_id: str, user_id: str, share: float) -> bool:
    """Sticky and random: the same member of the same campaign is always in or out (a hash of the
    campaign id and the user id, uniform on [0, 1), below ``share``); independent across campaigns."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{campaign_id}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def purchases(events: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """Purchases strictly before ``as_of``: user_id, item_id, timestamp."""
    return events.filter((pl.col(C.EventType) == EventTypes.Purchase) & (pl.col(C.Timestamp) < as_of)).select(C.User, C.Item, C.Timestamp)


def due_items(events: pl.DataFrame, as_of: datetime, due_days: int, min_repeat_buyers: int = 3, min_repeat_rate: float = 0.2) -> pl.DataFrame:
    """(user, item) pairs whose next purchase falls due in ``[as_of, as_of + due_days)``.

    Only replenishable items count: at least ``min_repeat_buyers`` members, and at least
    ``min_repeat_rate`` of its buyers, bought it again on another day (on the built-in store the
    consumables' rates have a median of 0.5 and a 10th percentile of 0.27, the other items' a
    90th percentile of 0.09: a phone bought twice is not a cycle). Columns: user_id, item_id,
    last_purchase, interval_days (float), own_interval (bool: from the member's own repeats, else
    the item's typical interval), due (datetime). Sorted by user, then due date. Days are counted
    from the last purchase of the item before ``as_of``."""
    buys = purchases(events, as_of).sort(C.User, C.Item, C.Timestamp)
    gaps = (
        buys.with_columns((pl.col(C.Timestamp).diff().over(C.User, C.Item).dt.total_seconds() / 86_400.0).alias("gap"))
        .filter(pl.col("gap").is_not_null() & (pl.col("gap") >= 1.0))  # the same day: one order, not a repurchase
    )
    own = gaps.group_by(C.User, C.Item).agg(pl.col("gap").median().alias("own"))
    buyers = buys.group_by(C.Item).agg(pl.col(C.User).n_unique().alias("buyers"))
    typical = (
        gaps.group_by(C.Item)
        .agg(pl.col("gap").median().alias("typical"), pl.col(C.User).n_unique().alias("repeaters"))
        .join(buyers, on=C.Item)
        .filter((pl.col("repeaters") >= min_repeat_buyers) & (pl.col("repeaters") >= min_repeat_rate * pl.col("buyers")))
    )
    last = buys.group_by(C.User, C.Item).agg(pl.col(C.Timestamp).max().alias("last_purchase"))
    out = (
        last.join(typical.select(C.Item, "typical"), on=C.Item, how="inner")  # replenishable items only
        .join(own, on=[C.User, C.Item], how="left")
        .with_columns(
            pl.coalesce("own", "typical").alias("interval_days"),
            pl.col("own").is_not_null().alias("own_interval"),
        )
        .filter(pl.col("interval_days").is_not_null())
        .with_columns((pl.col("last_purchase") + pl.duration(seconds=pl.col("interval_days") * 86_400.0)).alias("due"))
        .filter((pl.col("due") >= as_of) & (pl.col("due") < as_of + timedelta(days=due_days)))
        .select(C.User, C.Item, "last_purchase", "interval_days", "own_interval", "due")
        .sort(C.User, "due", C.Item)
    )
    return out


def _reason(code: str, text: str, evidence: dict[str, Any]) -> dict[str, Any]:
    return {"code": code, "text": text, "evidence": evidence}


@dataclass
class CampaignLists:
    rows: pl.DataFrame  # one row per member and item (treated members only)
    members: pl.DataFrame  # one row per targeted member, with the holdout flag
    skipped_capped: int  # members left out by the frequency cap
    skipped_empty: int  # treated members for whom no item was left


def _row(spec: CampaignSpec, user: str, rank: int, item: str, score: float | None, reasons: list[dict[str, Any]],
         titles: dict[str, str], categories: dict[str, str], prices: dict[str, float | None]) -> dict[str, Any]:
    first = reasons[0] if reasons else {"code": None, "text": None}
    return {
        "campaign_id": spec.campaign_id, "kind": spec.kind, C.User: user, "rank": rank, C.Item: item,
        "title": titles.get(item), "category": categories.get(item), "price": prices.get(item),
        "score": score, "reason_code": first["code"], "reason_text": first["text"],
        "reasons": json.dumps(reasons, default=str),
    }


def build_lists(
    spec: CampaignSpec,
    ranker: Ranker,
    events: pl.DataFrame,
    profiles: pl.DataFrame,
    items: pl.DataFrame,
    as_of: datetime,
    *,
    capped: set[str] = frozenset(),  # type: ignore[assignment]
    expiry_days: int = 365,
    points_per_unit: float = 1.0,
) -> CampaignLists:
    """The campaign's members and lists (see the module docstring). ``capped``: members contacted
    by another campaign within the frequency cap, left out before the holdout is drawn."""
    titles = dict(zip(items[C.Item].to_list(), (items["title"] if "title" in items.columns else items[C.Item]).to_list()))
    categories = dict(zip(items[C.Item].to_list(), items["category"].to_list())) if "category" in items.columns else {}
    prices = dict(zip(items[C.Item].to_list(), items["price"].to_list())) if "price" in items.columns else {}
    targets: dict[str, list[dict[str, Any]]] = {}  # user -> the campaign's own first items
    filters: dict[str, Filters] = {}
    context: dict[str, Context] = {}
    extra_reason: dict[str, Any] = {}
    since_buyers: Any = None
    if spec.kind == "replenish":
        due = due_items(events, as_of, spec.due_days, spec.min_repeat_buyers)
        index = {item: i for i, item in enumerate(ranker.items.ids.tolist())}
        bought: dict[str, set[str]] = {}
        for u, i in purchases(events, as_of).filter(pl.col(C.User).is_in(due[C.User].unique().implode())).select(C.User, C.Item).iter_rows():
            bought.setdefault(u, set()).add(i)
        stocked = dict(zip(items[C.Item].to_list(), items["in_stock"].to_list())) if "in_stock" in items.columns else {}
        for user, user_due in due.group_by(C.User, maintain_order=True):
            firsts = []
            for r in user_due.iter_rows(named=True):
                if stocked.get(r[C.Item]) is False:
                    continue  # nothing to restock from (the service's in-stock filter)
                days = int(round(r["interval_days"]))
                whose = "you buy it" if r["own_interval"] else "shoppers buy it"
                firsts.append({"item": r[C.Item], "reason": _reason(
                    "replenish", f"Time to restock {titles.get(r[C.Item], r[C.Item])} ({whose} every ~{days} days)",
                    {"item_id": r[C.Item], "last_purchase": r["last_purchase"].isoformat(), "interval_days": round(r["interval_days"], 1),
                     "own_interval": r["own_interval"], "due": r["due"].isoformat()})})
            uid = str(user[0])
            if not firsts:
                continue
            targets[uid] = firsts[: spec.k]
            targets[uid] += complements(ranker, [f["item"] for f in targets[uid]], bought.get(uid, set()), spec.k - len(targets[uid]), index)
            taken = tuple(f["item"] for f in targets[uid])
            # then the member's own list (its reasons name their history, e.g. "because you bought"), without those;
            # no page context: "similar to X, which you are looking at" would not be true in an e-mail
            context[uid] = Context(page="home")
            filters[uid] = Filters(exclude_item_ids=taken)
    elif spec.kind == "winback":
        if "segment" not in profiles.columns:
            raise UserError("winback needs the user profiles' segment: run `storerec features` first")
        dormant = profiles.filter(pl.col("segment").cast(pl.String) == "dormant")
        buys = purchases(events, as_of)
        paid = buys.join(items.select(C.Item, "price"), on=C.Item, how="left") if "price" in items.columns else None
        top_price = dict(paid.group_by(C.User).agg(pl.col("price").max()).iter_rows()) if paid is not None else {}
        last_visit = dict(buys.group_by(C.User).agg(pl.col(C.Timestamp).max()).iter_rows())
        for r in dormant.iter_rows(named=True):
            uid = r[C.User]
            cats = tuple(sorted(top_categories(r.get("top_categories"))))
            cap_price = top_price.get(uid)
            targets[uid] = []
            context[uid] = Context(page="home")
            filters[uid] = Filters(include_categories=cats, max_price=round(cap_price * 1.2, 2) if cap_price else None)
            extra_reason[uid] = last_visit.get(uid)
        since_buyers = _buyers_since(buys)
    elif spec.kind == "points-expiring":
        for uid, points in points_expiring(events, items, profiles, as_of, expiry_days, points_per_unit).items():
            value = round(points["balance"] * spec.point_value, 2)
            targets[uid] = []
            context[uid] = Context(page="home")
            filters[uid] = Filters(max_price=value)
            extra_reason[uid] = _reason(
                "points_expiring",
                f"Your {points['expiring']} points expire on {points['expires']:%d %b %Y}: your {points['balance']} points "
                f"(worth {value:.2f}) cover this",
                {"points_expiring": points["expiring"], "expires_on": points["expires"].date().isoformat(),
                 "points_balance": points["balance"], "point_value": spec.point_value, "balance_value": value})
    else:  # new-arrivals: the ranker on the new items of the member's top categories (the model's cold-start path where it has one)
        new_ids = set(items.filter(pl.col("is_new"))[C.Item].to_list()) if "is_new" in items.columns else set()
        not_new = tuple(i for i in ranker.items.ids.tolist() if i not in new_ids)
        for uid, picks in new_arrival_matches(profiles, items, spec.k, spec.max_per_category).items():
            shares = {cat: share for _, cat, share, _ in picks}
            targets[uid] = []
            context[uid] = Context(page="home")
            filters[uid] = Filters(include_categories=tuple(sorted(shares)), exclude_item_ids=not_new)
            extra_reason[uid] = shares
    rows: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    skipped_capped = skipped_empty = 0
    seg = dict(zip(profiles[C.User].to_list(), profiles["segment"].cast(pl.String).to_list())) if "segment" in profiles.columns else {}
    tier = dict(zip(profiles[C.User].to_list(), profiles["tier"].cast(pl.String).to_list())) if "tier" in profiles.columns else {}
    for uid in sorted(targets):
        if (spec.segment and seg.get(uid) != spec.segment) or (spec.tier and tier.get(uid) != spec.tier):
            continue
        if uid in capped:
            skipped_capped += 1
            continue
        held = in_holdout(spec.campaign_id, uid, spec.holdout)
        mine: list[dict[str, Any]] = []
        for f in targets[uid]:
            mine.append(_row(spec, uid, len(mine) + 1, f["item"], None, [f["reason"]], titles, categories, prices))
        want = spec.k - len(mine)
        if want > 0:
            try:
                result = ranker.rank(uid, want, context[uid], filters[uid], Diversity(spec.diversity, spec.max_per_category))
            except RankingInputError:
                result = None
            for it in result.items if result is not None else []:
                reasons = list(it.reasons)
                if spec.kind == "points-expiring" and uid in extra_reason:
                    reasons.insert(0, extra_reason[uid])
                if spec.kind == "new-arrivals" and it.category in extra_reason.get(uid, {}):
                    share = extra_reason[uid][it.category]
                    reasons.insert(0, _reason("new_arrival_for_you", f"New arrival in {it.category}, a category you often buy",
                                              {"category": it.category, "your_share": round(share, 3)}))
                if since_buyers is not None:
                    since = extra_reason.get(uid)
                    n = since_buyers(it.item_id, since) if since is not None else 0
                    if since is not None and n >= spec.min_buyers_since:
                        reasons.insert(0, _reason("popular_since_last_visit", f"Popular in {it.category} since your last visit",
                                                  {"category": it.category, "buyers_since": n, "last_visit": since.isoformat()}))
                mine.append(_row(spec, uid, len(mine) + 1, it.item_id, round(it.score, 6), reasons, titles, categories, prices))
        if not mine:
            skipped_empty += 1
            continue
        members.append({"campaign_id": spec.campaign_id, "kind": spec.kind, C.User: uid, "holdout": held,
                        "n_items": 0 if held else len(mine), "segment": seg.get(uid), "tier": tier.get(uid)})
        if not held:
            rows += mine
    row_schema = {"campaign_id": pl.String, "kind": pl.String, C.User: pl.String, "rank": pl.Int64, C.Item: pl.String,
                  "title": pl.String, "category": pl.String, "price": pl.Float64, "score": pl.Float64,
                  "reason_code": pl.String, "reason_text": pl.String, "reasons": pl.String}
    member_schema = {"campaign_id": pl.String, "kind": pl.String, C.User: pl.String, "holdout": pl.Boolean, "n_items": pl.Int64,
                     "segment": pl.String, "tier": pl.String}
    return CampaignLists(pl.DataFrame(rows, schema=row_schema), pl.DataFrame(members, schema=member_schema), skipped_capped, skipped_empty)


def complements(ranker: Ranker, anchors: list[str], owned: set[str], n: int, index: dict[str, int]) -> list[dict[str, Any]]:
    """Up to ``n`` items bought in the same orders as ``anchors`` (the item features'
    ``co_purchased``, in that order), in stock, not bought by the member before, each with the
    reason "Often bought together with X". ``index``: item id -> the ranker's item index."""
    out: list[dict[str, Any]] = []
    if n <= 0:
        return out
    seen = set(anchors) | owned
    for anchor in anchors:
        a = index.get(anchor)
        if a is None:
            continue
        for partner in ranker.items.co_purchased[a] or []:
            j = index.get(partner)
            if j is None or partner in seen or not ranker.items.in_stock[j]:
                continue
            seen.add(partner)
            out.append({"item": partner, "reason": ranker.reasons.item_page("bought_together", a)})
            if len(out) == n:
                return out
    return out


def top_categories(value: Any) -> dict[str, float]:
    """A profile's ``top_categories`` (a list of ``{category, share}`` in the parquet file, a dict
    in the ranker's profiles) as ``{category: share}``."""
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    out: dict[str, float] = {}
    for entry in value or []:
        if isinstance(entry, dict) and entry.get("category") is not None:
            out[str(entry["category"])] = float(entry.get("share") or 0.0)
    return out


def points_expiring(events: pl.DataFrame, items: pl.DataFrame, profiles: pl.DataFrame, as_of: datetime, expiry_days: int,
                    points_per_unit: float) -> dict[str, dict[str, Any]]:
    """Members with points expiring within 30 days of ``as_of`` (the profiles' rule: points
    expire ``expiry_days`` after the purchase that earned them): ``{user: {expiring, balance,
    expires}}``, ``expires`` the first of those expiry dates, the amounts from the profiles."""
    if "points_expiring_30d" not in profiles.columns:
        raise UserError("points-expiring needs the user profiles' points: run `storerec features` first")
    due = profiles.filter(pl.col("points_expiring_30d") > 0).select(C.User, "points_expiring_30d", "points_balance")
    if not due.height:
        return {}
    expiry = timedelta(days=expiry_days)
    ev = events.lazy().filter((pl.col(C.EventType) == EventTypes.Purchase) & (pl.col(C.Timestamp) < as_of))
    for col, dtype in ((C.Quantity, pl.Int64), (C.Price, pl.Float64)):
        if col not in events.columns:
            ev = ev.with_columns(pl.lit(None, dtype=dtype).alias(col))
    # spend per purchase as the profiles count it (the paid price, else the list price, times the quantity)
    list_price = items.lazy().select(C.Item, pl.col(C.Price).alias("_list_price")) if C.Price in items.columns else None
    if list_price is not None:
        ev = ev.join(list_price, on=C.Item, how="left")
    else:
        ev = ev.with_columns(pl.lit(None, dtype=pl.Float64).alias("_list_price"))
    buys = ev.with_columns(
        (pl.coalesce(C.Price, "_list_price").fill_null(0.0) * pl.col(C.Quantity).fill_null(1).cast(pl.Float64)).alias("spend")
    ).filter(
        (pl.col("spend") * points_per_unit >= 1)
        & (pl.col(C.Timestamp) + expiry > as_of) & (pl.col(C.Timestamp) + expiry <= as_of + timedelta(days=30))
    )
    first = dict(buys.group_by(C.User).agg((pl.col(C.Timestamp).min() + expiry).alias("expires")).collect().iter_rows())
    return {r[C.User]: {"expiring": int(r["points_expiring_30d"]), "balance": int(r["points_balance"]), "expires": first[r[C.User]]}
            for r in due.iter_rows(named=True) if r[C.User] in first}


def new_arrival_matches(profiles: pl.DataFrame, items: pl.DataFrame, k: int, max_per_category: int | None) -> dict[str, list[tuple]]:
    """New items (``is_new`` in the item features) for each member whose top categories hold some:
    the member's likeliest first (their share of that category, then the item's 7-day popularity,
    then item id; at most ``max_per_category`` per category), up to ``k``:
    ``{user: [(item, category, share, created_at), ...]}``."""
    if "is_new" not in items.columns or "top_categories" not in profiles.columns:
        raise UserError("new-arrivals needs the item features (is_new) and user profiles: run `storerec features` first")
    new = items.filter(pl.col("is_new"))
    pop = "pop_7d" if "pop_7d" in new.columns else None
    by_cat: dict[str, list[tuple[float, str, str | None]]] = {}
    for r in new.iter_rows(named=True):
        created = r.get("created_at")
        by_cat.setdefault(r["category"], []).append((float(r[pop] or 0.0) if pop else 0.0, r[C.Item], created.isoformat() if created else None))
    for cat in by_cat:
        by_cat[cat].sort(key=lambda t: (-t[0], t[1]))
    out: dict[str, list[tuple]] = {}
    for r in profiles.iter_rows(named=True):
        shares = top_categories(r.get("top_categories"))
        picks: list[tuple[float, float, str, str, str | None]] = []
        for cat, share in shares.items():
            for popularity, item, created in by_cat.get(cat, [])[: max_per_category or k]:
                picks.append((share, popularity, item, cat, created))
        if picks:
            picks.sort(key=lambda t: (-t[0], -t[1], t[2]))
            out[r[C.User]] = [(item, cat, share, created) for share, _, item, cat, created in picks[:k]]
    return out


def _buyers_since(buys: pl.DataFrame) -> Any:
    """``f(item, since)``: distinct buyers of ``item`` after ``since`` (purchases sorted once)."""
    by_item: dict[str, list[tuple[datetime, str]]] = {}
    for user, item, ts in buys.sort(C.Timestamp).iter_rows():
        by_item.setdefault(item, []).append((ts, user))

    def count(item: str, since: datetime) -> int:
        return len({u for ts, u in by_item.get(item, ()) if ts > since})

    return count


@dataclass
class CampaignSummary:
    campaign_id: str
    kind: str
    out: Path
    members_out: Path
    treated: int
    held_out: int
    rows: int
    skipped_capped: int
    skipped_empty: int
    version: str
    as_of: datetime
    note: str | None = None  # why nobody qualified, when nobody did

    def render(self) -> str:
        lines = [
            f"campaign {self.campaign_id} ({self.kind}, model version {self.version}, data as of {self.as_of:%Y-%m-%d %H:%M} UTC): "
            f"{self.treated} members get {self.rows} items in {self.out}; {self.held_out} held out (they receive nothing); "
            f"members and the holdout flag in {self.members_out}",
        ]
        if self.skipped_capped:
            lines.append(f"  {self.skipped_capped} members left out: another campaign reached them within the frequency cap")
        if self.skipped_empty:
            lines.append(f"  {self.skipped_empty} members left out: no item passed their filters")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def members_path(out: Path) -> Path:
    """The member file beside ``out``: ``NAME-members.SUFFIX``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-members{out.suffix}")


def run_campaign(
    settings: Settings,
    data_dir: Path,
    spec: CampaignSpec,
    *,
    out: Path,
    model_ref: str = "champion",
    as_of: datetime | None = None,
    cap_days: float = 7.0,
    progress: Progress,
) -> CampaignSummary:
    """Build the campaign's lists with ``model_ref``'s ranker, leave out members another campaign
    reached within ``cap_days`` (the event log's campaign ledger), write the item rows to ``out``
    and the members (holdout flag) beside it, then record the campaign in the ledger. The files
    are renamed into place only once the ledger has the campaign, and the ledger refuses an id it
    has already (nothing is written then)."""
    from storerec.events import eventlog
    from storerec.events.campaigns import CampaignExists, contacted_since, record_campaign
    from storerec.registry.loading import load

    check_output(out)
    members_out = members_path(out)
    if cap_days < 0:
        raise UserError(f"--cap-days {cap_days}: must be 0 (no cap) or more")
    data_dir = Path(data_dir)
    for table in ("events", "items"):
        if not io.has_table(data_dir, table):
            raise UserError(f"{data_dir}: no {table} table; run `storerec simulate` or `storerec import` first")
    profiles_path = data_dir / "profiles" / "users.parquet"
    if not profiles_path.exists():
        raise UserError(f"a campaign needs user profiles: {profiles_path} not found; run `storerec features` first")
    with progress.step(f"load model {model_ref}"):
        loaded = load(settings, model_ref)
    events_path = io.table_path(data_dir, "events")
    wanted = [C.User, C.Item, C.EventType, C.Timestamp, C.Quantity, C.Price]
    events = pl.read_parquet(events_path, columns=[c for c in wanted if c in pl.read_parquet_schema(events_path)])
    items = pl.read_parquet(io.table_path(data_dir, "items"))
    item_features = data_dir / "profiles" / "items.parquet"
    if spec.kind == "new-arrivals":  # is_new and popularity live in the item features
        if not item_features.exists():
            raise UserError(f"new-arrivals needs the item features: {item_features} not found; run `storerec features` first")
        items = pl.read_parquet(item_features)
    profiles = pl.read_parquet(profiles_path)
    if as_of is None:  # just after the data's last event
        last = events[C.Timestamp].max()
        if not isinstance(last, datetime):
            raise UserError(f"{data_dir}: the events table has no timestamps")
        as_of = last + timedelta(seconds=1)
    if settings.eventlog.auto_upgrade:  # the ledger is a table of the event log (schema 0003)
        eventlog.upgrade(settings.eventlog.url)
    engine = eventlog.make_engine(settings.eventlog.url)
    try:
        now = datetime.now(UTC)
        capped = contacted_since(engine, now - timedelta(days=cap_days)) if cap_days > 0 else set()
        with progress.step(f"{spec.kind} lists"):
            lists = build_lists(spec, loaded.ranker, events, profiles, items, as_of, capped=capped,
                                expiry_days=settings.profiles.points_expiry_days, points_per_unit=settings.profiles.points_per_unit)
        temps = {out: _temp(out), members_out: _temp(members_out)}
        try:
            _write(lists.rows, temps[out], out.suffix)
            _write(lists.members, temps[members_out], out.suffix)
            members = [(r[C.User], r["holdout"], r["n_items"]) for r in lists.members.iter_rows(named=True)]
            try:
                record_campaign(engine, spec.campaign_id, spec.kind, now, members, holdout_share=spec.holdout)
            except CampaignExists as exc:
                raise UserError(f"{exc}: pick another --campaign-id (nothing was written)") from None
            for final, tmp in temps.items():
                os.replace(tmp, final)
        finally:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)
    finally:
        engine.dispose()
    held = int(lists.members["holdout"].sum()) if lists.members.height else 0
    note = None
    if not lists.members.height and not lists.skipped_capped and not lists.skipped_empty:
        note = {
            "replenish": f"nobody qualified: no member has a replenishable item due in the {spec.due_days} days from {as_of:%Y-%m-%d}",
            "winback": "nobody qualified: no member is in the dormant segment (profiles)",
            "points-expiring": f"nobody qualified: no member has points expiring within 30 days (points expire "
                               f"{settings.profiles.points_expiry_days} days after the purchase that earned them: profiles.points_expiry_days)",
            "new-arrivals": "nobody qualified: no new item (is_new) in any member's top categories",
        }[spec.kind]
        if spec.segment or spec.tier:
            note += f" with --segment {spec.segment or 'any'} --tier {spec.tier or 'any'}"
    return CampaignSummary(spec.campaign_id, spec.kind, Path(out), members_out, lists.members.height - held, held, lists.rows.height,
                           lists.skipped_capped, lists.skipped_empty, loaded.version, as_of, note)


def _temp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)
    os.close(fd)
    return Path(tmp)


def _write(df: pl.DataFrame, tmp: Path, suffix: str) -> None:
    if suffix.lower() == ".parquet":
        df.write_parquet(tmp)
    else:
        df.write_csv(tmp)
