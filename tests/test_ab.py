"""A/B statistics against textbook values and scipy, the SRM check, and the per-user unit."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from storerec.evaluation.ab import analyze, per_unit, ratio_of_sums, srm, two_proportions, welch


def test_two_proportion_z_test_matches_the_textbook() -> None:
    c = two_proportions(100, 1000, 130, 1000)
    pooled = 230 / 2000
    z = (0.13 - 0.10) / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert c.p_value == pytest.approx(2 * stats.norm.sf(z))
    se = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert c.diff_ci == pytest.approx((0.03 - 1.96 * se, 0.03 + 1.96 * se), abs=1e-4)
    assert c.rel_lift == pytest.approx(0.3)


def test_welch_matches_scipy_and_the_bootstrap_agrees() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.exponential(10, 800), rng.exponential(12, 700)
    c = welch(a, b, bootstrap=1000)
    assert c.p_value == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    lo, hi = c.extra["bootstrap_ci"]
    assert lo == pytest.approx(c.diff_ci[0], abs=0.5) and hi == pytest.approx(c.diff_ci[1], abs=0.5)


def test_ratio_metric_with_one_list_per_user_is_the_unpooled_proportion_test() -> None:
    x_c = np.r_[np.ones(100), np.zeros(900)]
    x_t = np.r_[np.ones(130), np.zeros(870)]
    r = ratio_of_sums(x_c, np.ones(1000), x_t, np.ones(1000))
    p = two_proportions(100, 1000, 130, 1000)
    assert r.diff == pytest.approx(p.diff)
    assert r.diff_ci == pytest.approx(p.diff_ci, abs=2e-4)  # ddof=1 vs the binomial variance


def test_srm_flags_a_skewed_split() -> None:
    assert srm({"a": 5300, "b": 4700}, {"a": 0.5, "b": 0.5})["flagged"]
    assert not srm({"a": 5030, "b": 4970}, {"a": 0.5, "b": 0.5})["flagged"]
    assert not srm({"a": 7000, "b": 3000}, {"a": 0.7, "b": 0.3})["flagged"]


def test_units_are_users_and_only_shown_items_count() -> None:
    imp = pl.DataFrame({"request_id": ["r1", "r2", "r3"], "user_id": ["u1", "u1", None], "session_id": [None, None, "s9"],
                        "variant": ["a", "a", "b"]})
    items = pl.DataFrame({"request_id": ["r1", "r1", "r2", "r3"], "item_id": ["x", "y", "x", "z"], "rank": [1, 2, 1, 1]})
    fb = pl.DataFrame({"request_id": ["r1", "r1", "r2", "r3"], "item_id": ["x", "x", "nope", "z"],
                       "event_type": ["click", "purchase", "click", "click"], "revenue": [5.0, 5.0, 0.0, 0.0]})
    units = per_unit({"impressions": imp, "items": items, "feedback": fb}).sort("unit")
    assert units["unit"].to_list() == ["s9", "u1"]
    u1 = units.row(1, named=True)
    assert (u1["lists"], u1["clicked_lists"], u1["clicks"], u1["purchases"], u1["revenue"]) == (2, 1, 1, 1, 5.0)
    res = analyze(units, {"a": 0.5, "b": 0.5}, "a", bootstrap=0)
    assert res["variants"]["a"]["users"] == 1 and res["variants"]["a"]["ctr"] == 0.5
