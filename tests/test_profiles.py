"""Profile values checked by hand on small fixtures (see storerec/features/profiles.py for the rules)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from storerec.core.errors import UserError
from storerec.core.schema import conform
from storerec.core.settings import Settings
from storerec.features import io
from storerec.features.profiles import build_profiles, item_features, user_profiles

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
S = Settings()


def ago(days: float) -> datetime:
    return AS_OF - timedelta(days=days)


def items_table() -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {
                "item_id": ["a", "b", "c", "d", "e", "f"],
                "category": ["Home > Kitchen", "Home > Kitchen", "Home > Kitchen", "Toys", "Toys", "Home > Bath"],
                "brand": ["acme", "acme", "zeta", "toyco", "toyco", "acme"],
                "price": [10.0, 20.0, 30.0, 5.0, 50.0, 7.0],
                "created_at": [ago(400), ago(400), ago(400), ago(400), ago(3), AS_OF + timedelta(days=1)],
            }
        ),
        "items",
    )


def events_table(rows: list[tuple]) -> pl.DataFrame:
    """rows: (user, item, type, days_ago, quantity, price, session)."""
    u, i, t, d, q, p, s = zip(*rows)
    return conform(
        pl.DataFrame(
            {
                "user_id": list(u),
                "item_id": list(i),
                "event_type": list(t),
                "timestamp": [ago(x) for x in d],
                "quantity": list(q),
                "price": list(p),
                "session_id": list(s),
            },
            schema_overrides={"price": pl.Float64, "session_id": pl.String},
        ),
        "events",
    )


def users_table(signups: dict[str, float]) -> pl.DataFrame:
    return conform(
        pl.DataFrame({"user_id": list(signups), "signup_at": [ago(d) for d in signups.values()]}), "users"
    )


def profile(events: pl.DataFrame, users: pl.DataFrame | None = None, settings: Settings = S, as_of: datetime = AS_OF) -> dict[str, dict]:
    df = user_profiles(events, users, items_table(), settings, as_of)
    return {r["user_id"]: r for r in df.iter_rows(named=True)}


def test_rfm_orders_spend_and_aov() -> None:
    ev = events_table(
        [
            # one order of two lines (same session), one order without session, one view
            ("u1", "a", "purchase", 10, 2, 9.0, "s1"),
            ("u1", "b", "purchase", 10, 1, 20.0, "s1"),
            ("u1", "c", "purchase", 4, 1, None, None),  # no price: valued at list price 30
            ("u1", "d", "view", 1, 1, None, "s2"),
        ]
    )
    p = profile(ev)["u1"]
    assert p["frequency"] == 2
    assert p["monetary"] == pytest.approx(2 * 9.0 + 20.0 + 30.0)
    assert p["aov"] == pytest.approx(68.0 / 2)
    assert p["recency_days"] == pytest.approx(4.0)
    assert p["n_purchase"] == 3 and p["n_view"] == 1 and p["n_cart"] == 0
    assert p["active_days"] == 3
    assert p["avg_order_interval_days"] == pytest.approx(6.0)
    assert p["last_items"][:2] == ["d", "c"]


def test_rfm_scores_are_quintiles_among_buyers() -> None:
    # ten buyers: user k bought k orders of 10.0, last k days ago; one user only viewed
    rows = []
    for k in range(1, 11):
        for j in range(k):
            rows.append((f"u{k:02d}", "a", "purchase", k + j * 0.01, 1, 10.0, f"s{k}-{j}"))
    rows.append(("viewer", "a", "view", 1, 1, None, None))
    p = profile(events_table(rows))
    # rank r (1..10) -> floor(5 * (r - 1) / 10) + 1: ranks 1-2 -> 1, 3-4 -> 2, ..., 9-10 -> 5
    assert [p[f"u{k:02d}"]["f_score"] for k in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [p[f"u{k:02d}"]["m_score"] for k in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # the most recent buyer (u01, 1 day) gets R = 5
    assert [p[f"u{k:02d}"]["r_score"] for k in range(1, 11)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert p["u10"]["rfm_score"] == 155
    assert p["viewer"]["r_score"] is None and p["viewer"]["rfm_score"] is None and p["viewer"]["frequency"] == 0


def test_rfm_ties_share_a_score() -> None:
    rows = [(f"u{k}", "a", "purchase", 5, 1, 10.0, f"s{k}") for k in range(5)]
    p = profile(events_table(rows))
    assert {p[f"u{k}"]["m_score"] for k in range(5)} == {1}


@pytest.mark.parametrize(
    ("days_since_purchase", "expected"),
    [(59.9, "active"), (60.0, "active"), (60.1, "dormant"), (179.9, "dormant"), (180.0, "dormant"), (180.1, "churned")],
)
def test_segment_boundaries_on_repurchase_cycle_and_churn(days_since_purchase: float, expected: str) -> None:
    ev = events_table([("u", "a", "purchase", days_since_purchase, 1, 10.0, "s"), ("u", "a", "purchase", 300, 1, 10.0, "t")])
    assert profile(ev, users_table({"u": 400}))["u"]["segment"] == expected


@pytest.mark.parametrize(("signup_days", "expected"), [(29.9, "new"), (30.0, "new"), (30.1, "active")])
def test_segment_new_by_signup(signup_days: float, expected: str) -> None:
    ev = events_table([("u", "a", "view", 1, 1, None, None)])
    assert profile(ev, users_table({"u": signup_days}))["u"]["segment"] == expected


def test_segment_new_by_first_purchase_and_never_bought() -> None:
    ev = events_table(
        [
            ("first", "a", "purchase", 10, 1, 10.0, "s"),  # registered long ago, first purchase 10 days ago
            ("old", "a", "purchase", 10, 1, 10.0, "s2"),
            ("old", "a", "purchase", 100, 1, 10.0, "s3"),
            ("browser", "a", "view", 1, 1, None, None),  # never bought, registered 90 days ago
        ]
    )
    p = profile(ev, users_table({"first": 400, "old": 400, "browser": 90}))
    assert p["first"]["segment"] == "new"
    assert p["old"]["segment"] == "active"
    assert p["browser"]["segment"] == "dormant"  # measured from signup when there is no purchase


def test_segment_thresholds_come_from_config() -> None:
    settings = Settings.model_validate({"profiles": {"repurchase_cycle_days": 20, "churn_days": 40}})
    ev = events_table([("u", "a", "purchase", 30, 1, 10.0, "s"), ("u", "a", "purchase", 300, 1, 10.0, "t")])
    assert profile(ev, users_table({"u": 400}), settings)["u"]["segment"] == "dormant"


@pytest.mark.parametrize(
    ("spend", "tier", "next_tier", "to_next"),
    [
        (0.0, "bronze", "silver", 300.0),
        (299.99, "bronze", "silver", 0.01),
        (300.0, "silver", "gold", 2700.0),
        (2999.0, "silver", "gold", 1.0),
        (3000.0, "gold", "platinum", 7000.0),
        (10_000.0, "platinum", "diamond", 20_000.0),
        (30_000.0, "diamond", None, None),
    ],
)
def test_tier_thresholds_inclusive(spend: float, tier: str, next_tier: str | None, to_next: float | None) -> None:
    ev = events_table([("u", "a", "purchase", 5, 1, spend, "s")])
    p = profile(ev)["u"]
    assert p["tier"] == tier and p["next_tier"] == next_tier and p["cumulative_spend"] == pytest.approx(spend)
    if to_next is None:
        assert p["spend_to_next_tier"] is None
    else:
        assert p["spend_to_next_tier"] == pytest.approx(to_next)


def test_user_without_purchase_is_bronze() -> None:
    p = profile(events_table([("u", "a", "view", 5, 1, None, None)]))["u"]
    assert p["tier"] == "bronze" and p["points_balance"] == 0


def test_points_expire_after_a_year() -> None:
    ev = events_table(
        [
            ("u", "a", "purchase", 400, 1, 100.0, "s1"),  # expired 35 days ago
            ("u", "a", "purchase", 350, 1, 40.5, "s2"),  # expires in 15 days -> expiring within 30
            ("u", "a", "purchase", 10, 2, 12.75, "s3"),  # 25.5 -> floor 25 points
        ]
    )
    p = profile(ev)["u"]
    assert p["points_balance"] == 40 + 25
    assert p["points_expiring_30d"] == 40
    assert p["cumulative_spend"] == pytest.approx(100 + 40.5 + 25.5)  # the tier counts all spend


def test_affinities_top_categories_brands_and_price_band() -> None:
    w = S.events.weights
    ev = events_table(
        [
            ("u", "c", "purchase", 3, 1, 30.0, "s"),  # Kitchen, most expensive -> high band
            ("u", "c", "view", 3, 1, None, "s"),
            ("u", "d", "view", 2, 1, None, "s"),  # Toys
            ("u", "f", "cart", 1, 1, None, "s"),  # Bath
        ]
    )
    p = profile(ev)["u"]
    total = w["purchase"] + w["view"] + w["view"] + w["cart"]
    cats = p["top_categories"]
    assert cats[0]["category"] == "Home > Kitchen"
    assert cats[0]["share"] == pytest.approx((w["purchase"] + w["view"]) / total)
    assert [c["category"] for c in cats] == ["Home > Kitchen", "Home > Bath", "Toys"]
    assert p["top_category"] == "Home > Kitchen"
    assert p["top_brands"][0] == "zeta"
    # c is the dearest of three Kitchen items: 2/3 of them are cheaper
    assert p["price_percentile"] == pytest.approx(2 / 3) and p["price_band"] == "high"


def test_as_of_uses_no_later_event() -> None:
    ev = events_table(
        [
            ("u", "a", "purchase", 10, 1, 10.0, "s1"),
            ("u", "b", "purchase", 0, 1, 500.0, "s2"),  # exactly at as_of: excluded
            ("u", "e", "view", -5, 1, None, None),  # after as_of
            ("later", "a", "view", -1, 1, None, None),  # a user first seen after as_of
        ]
    )
    p = profile(ev)
    assert "later" not in p
    assert p["u"]["frequency"] == 1 and p["u"]["monetary"] == pytest.approx(10.0) and p["u"]["tier"] == "bronze"
    assert p["u"]["n_view"] == 0 and p["u"]["last_items"] == ["a"]
    feats = {r["item_id"]: r for r in item_features(ev, items_table(), S, AS_OF).iter_rows(named=True)}
    assert feats["b"]["purchases_total"] == 0 and feats["e"]["users_total"] == 0


def test_users_registered_after_as_of_are_left_out() -> None:
    ev = events_table([("u", "a", "view", 5, 1, None, None)])
    p = profile(ev, users_table({"u": 100, "future": -3, "quiet": 50}))
    assert set(p) == {"u", "quiet"}
    assert p["quiet"]["frequency"] == 0 and p["quiet"]["top_categories"] is None


def test_item_features_popularity_trending_repeat_and_co_purchase() -> None:
    rows = [
        # item a: 3 users in the last 7 days, 2 users (x4, y2) 7-35 days ago -> trending (3 + 1) / (2 / 4 + 1)
        ("x1", "a", "view", 1, 1, None, None),
        ("x2", "a", "view", 2, 1, None, None),
        ("x3", "a", "purchase", 3, 1, 10.0, "o1"),
        ("x3", "d", "purchase", 3, 1, 5.0, "o1"),  # a and d bought together
        ("x4", "a", "view", 20, 1, None, None),
        # item b: bought twice by y1 (two orders), once by y2 -> repeat rate 1/2
        ("y1", "b", "purchase", 40, 1, 20.0, "o2"),
        ("y1", "b", "purchase", 20, 1, 20.0, "o3"),
        ("y2", "b", "purchase", 25, 1, 20.0, "o4"),
        ("y2", "a", "purchase", 25, 1, 10.0, "o4"),
    ]
    feats = {r["item_id"]: r for r in item_features(events_table(rows), items_table(), S, AS_OF).iter_rows(named=True)}
    a = feats["a"]
    assert a["pop_7d"] == 3 and a["pop_30d"] == 5 and a["purchases_7d"] == 1 and a["purchases_30d"] == 2
    assert a["trending_score"] == pytest.approx(4 / (2 / 4 + 1))
    assert feats["b"]["repeat_purchase_rate"] == pytest.approx(0.5)
    assert sorted(a["co_purchased"]) == ["b", "d"] and feats["d"]["co_purchased"] == ["a"]
    assert feats["c"]["co_purchased"] == [] and feats["c"]["trending_score"] == pytest.approx(1.0)
    # new arrivals: e was listed 3 days ago, f after as_of (kept, with no history)
    assert feats["e"]["is_new"] and feats["f"]["is_new"] and not a["is_new"]
    assert a["category_l1"] == "Home" and feats["d"]["category_l1"] == "Toys"
    assert [feats[i]["price_band"] for i in "abc"] == ["low", "mid", "high"]


def _write_store(data_dir: Path) -> None:
    ev = events_table(
        [
            ("u1", "a", "purchase", 10, 1, 10.0, "s1"),
            ("u1", "a", "purchase", 100, 1, 10.0, "s0"),
            ("u2", "b", "view", 200, 1, None, None),
            ("u3", "c", "purchase", 2, 1, 3500.0, "s3"),
        ]
    )
    io.write_tables(data_dir, {"events": ev, "items": items_table(), "users": users_table({"u1": 400, "u2": 400, "u3": 5})})


def test_build_profiles_writes_tables_and_summary(tmp_path: Path) -> None:
    _write_store(tmp_path)
    summary = build_profiles(S, tmp_path)
    text = summary.render()
    assert "new 1" in text and "active 1" in text and "churned 1" in text and "gold 1" in text
    assert "Home > Kitchen" in text
    users = pl.read_parquet(tmp_path / "profiles" / "users.parquet")
    assert users.height == 3 and users["segment"].dtype == pl.Enum(["new", "active", "dormant", "churned"])
    meta = json.loads((tmp_path / "profiles" / "meta.json").read_text())
    assert meta["users"] == 3 and meta["segments"]["new"] == 1


def test_build_profiles_as_of_before_first_event_is_a_clear_error(tmp_path: Path) -> None:
    _write_store(tmp_path)
    with pytest.raises(UserError, match="no events before"):
        build_profiles(S, tmp_path, as_of=datetime(2000, 1, 1, tzinfo=UTC))
    assert not (tmp_path / "profiles").exists()


def test_features_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_store(tmp_path)
    assert main(["-q", "features", "--data-dir", str(tmp_path), "--as-of", "2026-05-30"]) == 0
    out = capsys.readouterr().out
    assert "profiles as of 2026-05-30T00:00:00+00:00" in out and "1 events at or after" in out
    assert (tmp_path / "profiles" / "users.parquet").exists()
