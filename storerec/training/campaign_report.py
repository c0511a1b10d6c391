"""``storerec campaign-report``: did a loyalty campaign (``storerec campaign``) pay off? Treated
members against the campaign's holdout, over a window after it.

Members come from the event log's campaign ledger (:func:`storerec.events.campaigns.campaign_members`):
everyone the campaign selected, with the sticky ``holdout`` flag (the holdout received nothing).
The window is ``[ts, ts + window_days)`` in UTC, ``ts`` being when the campaign was generated
(its ledger time); nothing before it or from its end on counts.

**Outcome events** are the members' purchases (``event_type`` ``purchase``, any item, not only the
campaign's) in the window, from two sources:

* the data folder's events table (imported history and what ``sync-events`` copied there), and
* the event log's ``behaviour`` table (``POST /track``: tracked purchases with quantity and unit
  price), which may hold purchases not synced yet.

A tracked purchase that ``sync-events`` already copied into the data folder is the same row in
both (member, item, time to the microsecond, quantity and price: ``sync-events`` keeps them as
sent). So purchases are grouped by those five fields and each group counts ``max(rows in the
data folder, rows in the log)`` times: a synced purchase once, an unsynced one once, and
distinct purchases that happen to be identical as often as the fuller source has them.
Feedback on served lists (``POST /events``) is not read: it covers only purchases of a
recommended item, which a storefront tracking every purchase also sends to ``POST /track``.
Spend = unit price x quantity (no price: the item's list price, no quantity: 1), as the profiles
value purchases.

**Per member**: converted = at least one purchase in the window; revenue = the spend in it (0 for
none). Per group (treated, holdout): members, converters, conversion with its Wilson 95 % CI,
revenue per member with its t 95 % CI. Treated minus holdout with the A/B report's statistics
(:mod:`storerec.evaluation.ab`): conversion by the two-proportion z-test, revenue per member by
Welch's CI with a bootstrap CI beside it and a permutation p-value (:func:`permutation_p`; Welch's
own p-value rejects too often with a small holdout and skewed spend, see :func:`compare`), relative
lifts with delta-method CIs. The unit is the member, never the purchase. The sample-ratio check is the A/B report's chi-square of members per
group against the campaign's holdout share (flagged below p = 0.001).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa
from scipy import stats

from storerec.core.errors import UserError
from storerec.core.schema import Columns as C
from storerec.core.schema import EventTypes
from storerec.core.tables import markdown_table
from storerec.evaluation.ab import Comparison, srm, two_proportions, welch, wilson_ci
from storerec.features import io

DEFAULT_WINDOW_DAYS = 14.0
ALPHA = 0.05
GROUPS = ("treated", "holdout")
KEY = [C.User, C.Item, C.Timestamp, C.Quantity, C.Price]  # one purchase, as sync-events copies it
_PURCHASE_SCHEMA: dict[str, Any] = {C.User: pl.String, C.Item: pl.String, C.Timestamp: pl.Datetime("us", "UTC"), C.Quantity: pl.Int64,
                                    C.Price: pl.Float64}
_LISTED = 10  # campaign ids named in the error for an unknown one


# ---- the statistics (a pure function of the per-member outcomes) ---------------------------------


def _group(sub: pl.DataFrame) -> dict[str, Any]:
    n = sub.height
    conv = sub["purchases"].to_numpy() > 0
    rev = sub["revenue"].to_numpy().astype(np.float64)
    x = int(conv.sum())
    out: dict[str, Any] = {"members": n, "converters": x, "purchases": int(sub["purchases"].sum()) if n else 0,
                           "revenue": float(rev.sum()) if n else 0.0}
    if n == 0:
        return out | {"conversion": math.nan, "conversion_ci": (math.nan, math.nan), "revenue_per_member": math.nan,
                      "revenue_per_member_ci": (math.nan, math.nan)}
    mean = float(rev.mean())
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1)) * float(rev.std(ddof=1)) / math.sqrt(n)
    else:
        half = math.nan
    return out | {"conversion": x / n, "conversion_ci": wilson_ci(x, n), "revenue_per_member": mean,
                  "revenue_per_member_ci": (mean - half, mean + half)}


def permutation_p(x_c: np.ndarray, x_t: np.ndarray, permutations: int = 2000, seed: int = 0) -> float:
    """Two-sided Monte Carlo permutation p-value of ``mean(x_t) - mean(x_c)``: how often
    re-dealing the pooled values into groups of the same sizes gives a difference at least as
    large, ``(1 + hits) / (1 + permutations)``. Exact under "the campaign changed nothing",
    whatever the shape of the values (zero-inflated, skewed spend). Only the non-zero values are
    dealt (the number going to the first group is hypergeometric), so the cost follows the
    buyers, not the members."""
    pooled = np.concatenate([x_c, x_t]).astype(np.float64)
    n, n_c = len(pooled), len(x_c)
    n_t = n - n_c
    nz = pooled[pooled != 0]
    if permutations <= 0 or n_c == 0 or n_t == 0 or len(nz) == 0:
        return 1.0
    observed = abs(float(x_t.mean()) - float(x_c.mean()))
    rng = np.random.default_rng(seed)
    k = rng.hypergeometric(len(nz), n - len(nz), n_c, size=permutations)
    sums = np.empty(permutations)
    chunk = max(1, 2_000_000 // len(nz))  # at most ~16 MB of random keys at a time
    for s in range(0, permutations, chunk):
        kk = k[s:s + chunk]
        order = rng.random((len(kk), len(nz))).argsort(axis=1)
        cum = np.concatenate([np.zeros((len(kk), 1)), np.cumsum(nz[order], axis=1)], axis=1)
        sums[s:s + len(kk)] = cum[np.arange(len(kk)), kk]
    total = float(pooled.sum())
    diffs = np.abs((total - sums) / n_t - sums / n_c)
    return float((1 + np.sum(diffs >= observed * (1 - 1e-9))) / (permutations + 1))


def compare(outcomes: pl.DataFrame, holdout_share: float, *, bootstrap: int = 2000, permutations: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Treated vs holdout from per-member outcomes (columns ``holdout``, ``purchases``,
    ``revenue``; one row per member, zeros included): per group members, converters, conversion
    (Wilson 95 % CI), revenue per member (t 95 % CI); treated - holdout for conversion
    (two-proportion z-test) and revenue per member (Welch CI, plus a ``bootstrap`` CI, 0: none;
    the p-value from ``permutations`` permutations, 0: Welch's); the sample-ratio check against
    ``holdout_share``.

    Why not Welch's p-value for revenue: with a small holdout and zero-inflated, skewed spend it
    rejects too often: over 2,000 A/A draws of 2,000 members (10 % held out, 15 % buying,
    exponential spend) Welch gave p < 0.05 in 7.2 % of them, the permutation test (1,000
    permutations) in 5.55 %, the conversion z-test in 5.05 %. (Welch's 95 % CI of the revenue
    difference covered 0 in 92.8 % of them: read it as a little narrow with a small holdout.)"""
    if not 0.0 < holdout_share < 1.0:
        raise UserError(f"holdout share {holdout_share}: must be above 0 and below 1 (the share the campaign held out)")
    parts = {"treated": outcomes.filter(~pl.col("holdout")), "holdout": outcomes.filter(pl.col("holdout"))}
    groups = {name: _group(sub) for name, sub in parts.items()}
    t, h = groups["treated"], groups["holdout"]
    comparisons: dict[str, Comparison] = {}
    if t["members"] >= 2 and h["members"] >= 2:
        comparisons["conversion"] = two_proportions(h["converters"], h["members"], t["converters"], t["members"])
        rev_comp = welch(parts["holdout"]["revenue"].to_numpy().astype(np.float64), parts["treated"]["revenue"].to_numpy().astype(np.float64),
                         bootstrap=bootstrap, seed=seed)
        rev_comp.metric = "revenue_per_member"
        if permutations > 0:
            rev_comp.extra["welch_p"] = rev_comp.p_value
            rev_comp.extra["permutations"] = permutations
            rev_comp.p_value = permutation_p(parts["holdout"]["revenue"].to_numpy(), parts["treated"]["revenue"].to_numpy(), permutations, seed)
            rev_comp.test = f"Welch CI; permutation p ({permutations})"
        comparisons["revenue_per_member"] = rev_comp
    check = srm({g: groups[g]["members"] for g in GROUPS}, {"treated": 1.0 - holdout_share, "holdout": holdout_share})
    return {"groups": groups, "comparisons": comparisons, "srm": check, "holdout_share": holdout_share, "alpha": ALPHA}


# ---- outcome events ------------------------------------------------------------------------------


def _data_purchases(data_dir: Path, users: list[str], start: datetime, end: datetime) -> tuple[pl.DataFrame, datetime | None]:
    """The members' purchases in ``[start, end)`` from the data folder's events table, and the
    table's latest timestamp (None: no table, or empty)."""
    if not io.has_table(data_dir, "events"):
        return pl.DataFrame(schema=_PURCHASE_SCHEMA), None
    lf = io.read_table(data_dir, "events", lazy=True)
    assert isinstance(lf, pl.LazyFrame)
    names = lf.collect_schema().names()
    lf = lf.with_columns(*[pl.lit(None, dtype=_PURCHASE_SCHEMA[c]).alias(c) for c in (C.Quantity, C.Price) if c not in names])
    last = lf.select(pl.col(C.Timestamp).max()).collect().item()
    ts = pl.col(C.Timestamp).cast(pl.Datetime("us", "UTC"))
    rows = (
        lf.filter((pl.col(C.EventType) == EventTypes.Purchase) & (ts >= start) & (ts < end) & pl.col(C.User).is_in(users))
        .select(*[pl.col(c).cast(t) for c, t in _PURCHASE_SCHEMA.items()])
        .collect()
    )
    return rows, last


def _log_purchases(engine: sa.Engine, users: set[str], start: datetime, end: datetime) -> tuple[pl.DataFrame, datetime | None]:
    """The members' tracked purchases (the event log's ``behaviour`` table) in ``[start, end)``,
    and the table's latest ``ts`` (None: no such table, or empty)."""
    from storerec.events.eventlog import _utc, behaviour

    b = behaviour.c
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(behaviour.name):
            return pl.DataFrame(schema=_PURCHASE_SCHEMA), None
        sqlite = engine.dialect.name == "sqlite"
        lo, hi = (start.replace(tzinfo=None), end.replace(tzinfo=None)) if sqlite else (start, end)
        q = sa.select(b.user_id, b.item_id, b.ts, b.quantity, b.price).where(
            b.event_type == EventTypes.Purchase, b.ts >= lo, b.ts < hi, b.user_id.is_not(None))
        rows = [r for r in conn.execute(q).all() if r.user_id in users]
        last = conn.execute(sa.select(sa.func.max(b.ts))).scalar()
    frame = pl.DataFrame(
        {C.User: [r.user_id for r in rows], C.Item: [r.item_id for r in rows], C.Timestamp: [_utc(r.ts) for r in rows],
         C.Quantity: [r.quantity for r in rows], C.Price: [r.price for r in rows]},
        schema=_PURCHASE_SCHEMA,
    )
    return frame, (_utc(last) if last is not None else None)


def merge_purchases(data: pl.DataFrame, log: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """One row per distinct purchase (:data:`KEY`) with ``n``: how many times it counts, the
    larger of its rows in the data folder and in the log (a synced purchase counts once)."""
    both = pl.concat([data.with_columns(pl.lit("data").alias("_src")), log.with_columns(pl.lit("log").alias("_src"))])
    both = both.with_columns(pl.col(C.Quantity).fill_null(1))
    grouped = both.group_by(KEY).agg((pl.col("_src") == "data").sum().alias("_n_data"), (pl.col("_src") == "log").sum().alias("_n_log"))
    grouped = grouped.with_columns(pl.max_horizontal("_n_data", "_n_log").alias("n"), pl.min_horizontal("_n_data", "_n_log").alias("_dup"))
    counts = {"data_rows": data.height, "log_rows": log.height, "in_both": int(grouped["_dup"].sum()) if grouped.height else 0,
              "counted": int(grouped["n"].sum()) if grouped.height else 0}
    return grouped.drop("_n_data", "_n_log", "_dup"), counts


def member_outcomes(members: pl.DataFrame, purchases: pl.DataFrame, list_prices: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per member (all of ``members``: ``user_id``, ``holdout``): ``purchases`` and ``revenue``
    (spend = price x quantity, the item's list price when the purchase has none; 0 without any)."""
    p = purchases
    if "n" not in p.columns:
        p = p.with_columns(pl.lit(1, dtype=pl.UInt32).alias("n"))
    if list_prices is not None and list_prices.height:
        p = p.join(list_prices.select(C.Item, pl.col(C.Price).alias("_list")), on=C.Item, how="left")
        price = pl.coalesce(C.Price, "_list")
    else:
        price = pl.col(C.Price)
    spend = price.fill_null(0.0) * pl.col(C.Quantity).fill_null(1).cast(pl.Float64) * pl.col("n").cast(pl.Float64)
    per = p.group_by(C.User).agg(pl.col("n").sum().cast(pl.Int64).alias("purchases"), spend.sum().alias("revenue"))
    return members.select(C.User, "holdout").join(per, on=C.User, how="left").with_columns(
        pl.col("purchases").fill_null(0), pl.col("revenue").fill_null(0.0))


# ---- the command ---------------------------------------------------------------------------------


def list_campaigns(url: str) -> list[dict[str, Any]]:
    """The campaigns recorded in the event log at ``url``, newest first."""
    from storerec.events.campaigns import campaign_ids
    from storerec.events.eventlog import read_engine

    engine = read_engine(url)
    try:
        return campaign_ids(engine)
    finally:
        engine.dispose()


def render_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no campaigns recorded in the event log yet (`storerec campaign` records them)"
    return markdown_table(["campaign", "kind", "generated (UTC)", "members", "held out"],
                          [[r["campaign_id"], r["kind"], f"{r['ts']:%Y-%m-%d %H:%M:%S}", str(r["members"]), str(r["held_out"])] for r in rows],
                          align="lllrr")


def _unknown(campaign_id: str, known: list[dict[str, Any]]) -> UserError:
    if not known:
        return UserError(f"no campaign {campaign_id!r} in the event log: it has no campaigns recorded (`storerec campaign` records them; "
                         "check eventlog.url / --eventlog-url)")
    ids = [r["campaign_id"] for r in known[:_LISTED]]
    more = f" and {len(known) - _LISTED} more" if len(known) > _LISTED else ""
    return UserError(f"no campaign {campaign_id!r} in the event log; recorded (newest first): {', '.join(ids)}{more}. "
                     "`storerec campaign-report --list` lists them all")


def campaign_report(settings: Any, data_dir: Path, campaign_id: str, *, window_days: float = DEFAULT_WINDOW_DAYS, holdout_share: float | None = None,
                    eventlog_url: str | None = None, bootstrap: int = 2000, permutations: int = 2000,
                    now: datetime | None = None) -> tuple[str, dict[str, Any]]:
    """The campaign's report: (Markdown, a JSON-able dict). ``holdout_share``: the share the
    campaign held out, for the sample-ratio check; None: as the ledger recorded it (``storerec
    campaign`` records its ``--holdout``), else 0.1."""
    from storerec.events.campaigns import campaign_ids, campaign_members
    from storerec.events.eventlog import read_engine

    if not window_days > 0:
        raise UserError(f"--window-days {window_days}: must be above 0")
    if holdout_share is not None and not 0.0 < holdout_share < 1.0:
        raise UserError(f"--holdout-share {holdout_share}: must be above 0 and below 1 (the --holdout the campaign was run with)")
    url = eventlog_url or settings.eventlog.url
    data_dir = Path(data_dir)
    engine = read_engine(url)
    try:
        with engine.connect() as conn:
            has_ledger = sa.inspect(conn).has_table("campaign_sends")
        members = campaign_members(engine, campaign_id) if has_ledger else pl.DataFrame()
        if members.is_empty():
            raise _unknown(campaign_id, campaign_ids(engine) if has_ledger else [])
        if holdout_share is None:
            recorded = members["holdout_share"].drop_nulls() if "holdout_share" in members.columns else pl.Series([], dtype=pl.Float64)
            holdout_share = float(recorded[0]) if recorded.len() and 0.0 < float(recorded[0]) < 1.0 else 0.1
        start = members["ts"].min()
        assert isinstance(start, datetime)
        end = start + timedelta(days=window_days)
        users = members[C.User].to_list()
        log_rows, log_last = _log_purchases(engine, set(users), start, end)
    finally:
        engine.dispose()
    data_rows, data_last = _data_purchases(data_dir, users, start, end)
    merged, counts = merge_purchases(data_rows, log_rows)
    list_prices = io.read_table(data_dir, "items") if io.has_table(data_dir, "items") else None
    assert list_prices is None or isinstance(list_prices, pl.DataFrame)
    outcomes = member_outcomes(members, merged, list_prices)
    stats_ = compare(outcomes, holdout_share, bootstrap=bootstrap, permutations=permutations)
    now = now or datetime.now(UTC)
    latest = max([t for t in (data_last, log_last) if t is not None], default=None)
    result: dict[str, Any] = {
        "campaign_id": campaign_id,
        "kind": members["kind"][0],
        "generated": start.isoformat(),
        "window_days": window_days,
        "window": [start.isoformat(), end.isoformat()],
        "window_open": now < end,
        "latest_event": {"data_folder": data_last.isoformat() if data_last else None, "event_log": log_last.isoformat() if log_last else None},
        "sources": counts,
        **stats_,
    }
    return render(result, latest), to_jsonable(result)


def to_jsonable(obj: Any) -> Any:
    """``obj`` with Comparisons as dicts, tuples as lists and NaN as None (strict JSON)."""
    if isinstance(obj, Comparison):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return None if math.isnan(obj) or math.isinf(obj) else float(obj)
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}%"


def _num(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.2f}"


def _ts(s: str | datetime) -> str:
    d = datetime.fromisoformat(s) if isinstance(s, str) else s
    return f"{d.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def render(result: dict[str, Any], latest: datetime | None = None) -> str:
    """The report as Markdown."""
    g = result["groups"]
    start, end = result["window"]
    src = result["sources"]
    lines = [
        f"# Campaign report: {result['campaign_id']}",
        "",
        f"Campaign `{result['campaign_id']}` ({result['kind']}), generated {_ts(start)}. Window: {result['window_days']:g} days, "
        f"from {_ts(start)} up to {_ts(end)} (excluded). Outcome: the members' purchases of any item in the window; "
        f"{src['data_rows']} from the data folder's events table, {src['log_rows']} tracked in the event log, {src['in_both']} of them in both "
        f"(synced: counted once); {src['counted']} counted.",
    ]
    if result["window_open"]:
        lines += ["", f"**The window is still open** (it ends {_ts(end)}): the figures are partial."]
    if latest is None or latest < datetime.fromisoformat(end):
        seen = _ts(latest) if latest is not None else "none"
        lines += ["", f"Latest event seen in the data folder or the event log: {seen}, before the window ends: "
                  "purchases after it are not counted yet (`storerec sync-events` / `storerec import --append` the newer events)."]
    s = result["srm"]
    exp_share = result["holdout_share"]
    obs_share = g["holdout"]["members"] / max(1, g["holdout"]["members"] + g["treated"]["members"])
    ratio = (f"holdout {g['holdout']['members']} of {g['holdout']['members'] + g['treated']['members']} members = {100 * obs_share:.1f}% "
             f"(expected {100 * exp_share:.1f}%)")
    lines += [
        "",
        (f"**Sample ratio: FLAGGED**: {ratio}, chi-square {s['chi2']:.2f}, p = {s['p_value']:.3g} < 0.001. "
         "Members were lost or moved between the groups (or --holdout-share is not the campaign's --holdout): do not trust the lifts until the cause is found.")
        if s["flagged"] else f"Sample ratio check passed: {ratio}, chi-square {s['chi2']:.2f}, p = {s['p_value']:.3g} (flagged below 0.001).",
        "",
        markdown_table(
            ["group", "members", "converters", "conversion [95% CI]", "purchases", "revenue", "revenue/member [95% CI]"],
            [[name, str(v["members"]), str(v["converters"]),
              f"{_pct(v['conversion'])} [{_pct(v['conversion_ci'][0])}, {_pct(v['conversion_ci'][1])}]",
              str(v["purchases"]), _num(v["revenue"]),
              f"{_num(v['revenue_per_member'])} [{_num(v['revenue_per_member_ci'][0])}, {_num(v['revenue_per_member_ci'][1])}]"]
             for name, v in g.items()],
            align="lrrrrrr",
        ),
        "",
    ]
    comps = result["comparisons"]
    if comps:
        rows = []
        for metric, c in comps.items():
            pct = metric == "conversion"
            f = _pct if pct else _num
            diff = f"{'+' if c.diff >= 0 else ''}{f(c.diff)} [{f(c.diff_ci[0])}, {f(c.diff_ci[1])}]"
            if not pct and not math.isnan(c.extra["bootstrap_ci"][0]):
                b = c.extra["bootstrap_ci"]
                diff += f"; bootstrap [{_num(b[0])}, {_num(b[1])}]"
            sig = " **" if c.p_value < result["alpha"] else ""
            rows.append(["conversion" if pct else "revenue per member", f(c.control), f(c.treatment), diff,
                         f"{_pct(c.rel_lift)} [{_pct(c.rel_ci[0])}, {_pct(c.rel_ci[1])}]", f"{c.p_value:.4g}{sig}", c.test])
        lines += [
            markdown_table(["metric", "holdout", "treated", "treated − holdout [95% CI]", "relative lift [95% CI]", "p-value", "test"], rows),
            "",
            "Per member (the unit: each member counts once, never each purchase): conversion = members with a purchase in the window / members; "
            "revenue per member over all members of the group (0 for those who bought nothing). Group CIs: Wilson (conversion), t (revenue). "
            "Revenue p-value: permutation test (exact when the campaign changed nothing; Welch's own p is in the JSON). "
            f"** marks p < {result['alpha']:g}.",
        ]
    else:
        lines += ["(no comparison: each group needs at least 2 members)"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, md: str, result: dict[str, Any]) -> None:
    """``out`` written atomically: JSON for a ``.json`` name, else the Markdown."""
    out = Path(out)
    io.write_text_atomic(out, json.dumps(result, indent=2) + "\n" if out.suffix == ".json" else md)

