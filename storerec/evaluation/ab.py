"""A/B analysis of logged impressions and events (``storerec ab-report``).

The unit of analysis is the assignment unit (user id, or session id for anonymous shoppers):
each unit is one independent observation, never each impression.

Per variant: units ("users"), impressions (lists shown), clicks, CTR, conversion, revenue per
user. Against the control:

* **CTR** = lists with at least one click / lists shown. A user's lists are not independent, so
  its standard error comes from per-user sums (delta method for a ratio of means); z-test.
* **conversion** = users with a purchase of a recommended item / users: two-proportion z-test.
* **revenue per user**: Welch's t-test; 95 % CI from Welch and from a bootstrap over users.
* relative lift = difference / control, with a delta-method 95 % CI.
* **SRM**: chi-square of users per variant against the configured shares; p < 0.001 flags it.

Events count when their ``(request_id, item_id)`` is an item of a list of this experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from storerec.core.schema import FeedbackTypes

Z95 = 1.959963984540054
SRM_ALPHA = 0.001


def per_unit(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per (variant, unit): lists, clicked lists, clicks, purchases, revenue."""
    imp = frames["impressions"].with_columns(pl.coalesce("user_id", "session_id").alias("unit")).filter(pl.col("unit").is_not_null())
    items = frames["items"]
    fb = frames["feedback"].join(items.select("request_id", "item_id"), on=["request_id", "item_id"], how="semi")
    per_req = fb.group_by("request_id").agg(
        (pl.col("event_type") == FeedbackTypes.Click).sum().alias("clicks"),
        (pl.col("event_type") == FeedbackTypes.Purchase).sum().alias("purchases"),
        pl.col("revenue").filter(pl.col("event_type") == FeedbackTypes.Purchase).sum().alias("revenue"),
    )
    lists = imp.join(per_req, on="request_id", how="left").with_columns(
        pl.col("clicks").fill_null(0), pl.col("purchases").fill_null(0), pl.col("revenue").fill_null(0.0)
    )
    return lists.group_by("variant", "unit").agg(
        pl.len().alias("lists"),
        (pl.col("clicks") > 0).sum().alias("clicked_lists"),
        pl.col("clicks").sum().alias("clicks"),
        pl.col("purchases").sum().alias("purchases"),
        pl.col("revenue").sum().alias("revenue"),
    )


@dataclass
class Comparison:
    metric: str
    control: float
    treatment: float
    diff: float
    diff_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    p_value: float
    test: str
    extra: dict[str, Any] = field(default_factory=dict)


def _rel(diff: float, c: float, t: float, var_c_mean: float, var_t_mean: float) -> tuple[float, tuple[float, float]]:
    """Relative lift t/c - 1 with a delta-method CI (variances are of the two means)."""
    if c == 0:
        return math.nan, (math.nan, math.nan)
    ratio = t / c
    se = math.sqrt(var_t_mean / c**2 + (t**2) * var_c_mean / c**4)
    return ratio - 1.0, (ratio - 1.0 - Z95 * se, ratio - 1.0 + Z95 * se)


def two_proportions(x_c: int, n_c: int, x_t: int, n_t: int) -> Comparison:
    """Two-proportion z-test (pooled SE for the p-value, unpooled for the CI)."""
    p_c, p_t = x_c / n_c, x_t / n_t
    pooled = (x_c + x_t) / (n_c + n_t)
    se_pool = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_t))
    z = (p_t - p_c) / se_pool if se_pool > 0 else 0.0
    p = 2 * stats.norm.sf(abs(z))
    var_c, var_t = p_c * (1 - p_c) / n_c, p_t * (1 - p_t) / n_t
    se = math.sqrt(var_c + var_t)
    diff = p_t - p_c
    rel, rel_ci = _rel(diff, p_c, p_t, var_c, var_t)
    return Comparison("conversion", p_c, p_t, diff, (diff - Z95 * se, diff + Z95 * se), rel, rel_ci, float(p), "two-proportion z-test", {"z": z})


def ratio_mean_var(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """sum num / sum den over units, and the variance of that ratio (delta method, per unit)."""
    n = len(num)
    r = num.sum() / den.sum()
    my = den.mean()
    cov = np.cov(num, den, ddof=1) if n > 1 else np.zeros((2, 2))
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * my * my)
    return float(r), float(max(var, 0.0))


def wilson_ci(x: int, n: int) -> tuple[float, float]:
    """Wilson 95 % interval of the proportion x / n (nan, nan for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(x, n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def ratio_of_sums(num_c: np.ndarray, den_c: np.ndarray, num_t: np.ndarray, den_t: np.ndarray) -> Comparison:
    """z-test for a ratio metric (sum num / sum den) with per-unit delta-method variances."""

    r_c, v_c = ratio_mean_var(num_c, den_c)
    r_t, v_t = ratio_mean_var(num_t, den_t)
    diff = r_t - r_c
    se = math.sqrt(v_c + v_t)
    z = diff / se if se > 0 else 0.0
    p = 2 * stats.norm.sf(abs(z))
    rel, rel_ci = _rel(diff, r_c, r_t, v_c, v_t)
    return Comparison("ctr", r_c, r_t, diff, (diff - Z95 * se, diff + Z95 * se), rel, rel_ci, float(p), "z-test, per-user delta method", {"z": z})


def welch(x_c: np.ndarray, x_t: np.ndarray, *, bootstrap: int = 2000, seed: int = 0) -> Comparison:
    """Welch's t-test on per-unit values, Welch CI, and a bootstrap CI of the difference."""
    m_c, m_t = float(x_c.mean()), float(x_t.mean())
    v_c, v_t = float(x_c.var(ddof=1)) / len(x_c), float(x_t.var(ddof=1)) / len(x_t)
    se = math.sqrt(v_c + v_t)
    diff = m_t - m_c
    if se > 0:
        df = (v_c + v_t) ** 2 / (v_c**2 / (len(x_c) - 1) + v_t**2 / (len(x_t) - 1))
        t = diff / se
        p = 2 * stats.t.sf(abs(t), df)
        q = stats.t.ppf(0.975, df)
    else:
        df, t, p, q = math.inf, 0.0, 1.0, Z95
    rng = np.random.default_rng(seed)
    boots = np.empty(bootstrap)
    for b in range(bootstrap):
        boots[b] = rng.choice(x_t, len(x_t)).mean() - rng.choice(x_c, len(x_c)).mean()
    boot_ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if bootstrap else (math.nan, math.nan)
    rel, rel_ci = _rel(diff, m_c, m_t, v_c, v_t)
    return Comparison(
        "revenue_per_user", m_c, m_t, diff, (diff - q * se, diff + q * se), rel, rel_ci, float(p), "Welch t-test",
        {"t": t, "df": df, "bootstrap_ci": boot_ci},
    )


def srm(observed: dict[str, int], shares: dict[str, float]) -> dict[str, Any]:
    """Chi-square goodness of fit of units per variant against the configured shares."""
    names = list(shares)
    obs = np.array([observed.get(n, 0) for n in names], dtype=float)
    total = obs.sum()
    expected = np.array([shares[n] for n in names]) * total
    if total == 0:
        return {"chi2": 0.0, "p_value": 1.0, "flagged": False, "observed": observed, "expected": dict(zip(names, expected.tolist()))}
    chi2, p = stats.chisquare(obs, expected)
    return {"chi2": float(chi2), "p_value": float(p), "flagged": bool(p < SRM_ALPHA), "observed": {n: int(o) for n, o in zip(names, obs)},
            "expected": {n: float(e) for n, e in zip(names, expected)}}


def analyze(units: pl.DataFrame, shares: dict[str, float], control: str, *, bootstrap: int = 2000) -> dict[str, Any]:
    """Per-variant summary, comparisons of every treatment with the control, and the SRM check."""
    variants: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name in shares:
        sub = units.filter(pl.col("variant") == name)
        a = {c: sub[c].to_numpy().astype(np.float64) for c in ("lists", "clicked_lists", "clicks", "purchases", "revenue")}
        arrays[name] = a
        n = sub.height
        ctr_rate, ctr_var = ratio_mean_var(a["clicked_lists"], a["lists"]) if n else (math.nan, math.nan)
        converted = int((a["purchases"] > 0).sum())
        variants[name] = {
            "users": n,
            "impressions": int(a["lists"].sum()),
            "clicks": int(a["clicks"].sum()),
            "ctr": ctr_rate,
            "ctr_ci": (ctr_rate - Z95 * math.sqrt(ctr_var), ctr_rate + Z95 * math.sqrt(ctr_var)) if n > 1 else (math.nan, math.nan),
            "conversion": converted / n if n else math.nan,
            "conversion_ci": wilson_ci(converted, n),
            "revenue_per_user": float(a["revenue"].mean()) if n else math.nan,
            "share_configured": shares[name],
        }
    comparisons: dict[str, list[Comparison]] = {}
    c = arrays[control]
    for name in shares:
        if name == control:
            continue
        t = arrays[name]
        if len(t["lists"]) < 2 or len(c["lists"]) < 2:
            comparisons[name] = []
            continue
        conv = two_proportions(int((c["purchases"] > 0).sum()), len(c["lists"]), int((t["purchases"] > 0).sum()), len(t["lists"]))
        ctr = ratio_of_sums(c["clicked_lists"], c["lists"], t["clicked_lists"], t["lists"])
        rev = welch(c["revenue"], t["revenue"], bootstrap=bootstrap)
        comparisons[name] = [ctr, conv, rev]
    return {
        "control": control,
        "variants": variants,
        "comparisons": comparisons,
        "srm": srm({k: v["users"] for k, v in variants.items()}, shares),
    }
