"""Loyalty campaigns (storerec/training/campaign.py, `storerec campaign`; issue #17): who is due,
the sticky holdout, the planted repurchase cycles of the built-in store, and the command end to
end with its frequency cap and ledger (the event log's campaign_sends)."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from storerec.core.errors import UserError
from storerec.training.campaign import (
    CampaignSpec,
    due_items,
    in_holdout,
    members_path,
    new_arrival_matches,
    points_expiring,
    top_categories,
)
from tests._serve import write_config

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _events(rows: list[tuple[str, str, float, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
         "timestamp": [T0 + timedelta(days=r[2]) for r in rows], "event_type": [r[3] for r in rows]},
        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Datetime("us", "UTC"), "event_type": pl.String},
    )


def test_holdout_is_sticky_random_and_independent_across_campaigns() -> None:
    users = [f"u{i}" for i in range(20_000)]
    a = [in_holdout("spring", u, 0.1) for u in users]
    assert a == [in_holdout("spring", u, 0.1) for u in users]  # the same member, the same answer, every run
    assert 0.09 < sum(a) / len(a) < 0.11
    b = [in_holdout("summer", u, 0.1) for u in users]
    both = sum(x and y for x, y in zip(a, b)) / len(users)
    assert 0.005 < both < 0.015  # about 0.1 x 0.1: another campaign draws its own group
    assert not any(in_holdout("spring", u, 0.0) for u in users[:100])


def test_due_items_use_the_members_own_cycle_else_the_items() -> None:
    ev = _events([
        ("a", "coffee", 0, "purchase"), ("a", "coffee", 30, "purchase"),  # own cycle 30 days: due on day 60
        ("a", "coffee", 30.01, "purchase"),  # same order again: not a repurchase
        ("b", "coffee", 40, "purchase"),  # bought once: the item's typical cycle (30, from a) -> due on day 70
        ("c", "tea", 10, "purchase"), ("c", "tea", 20, "purchase"), ("c", "tea", 56, "view"),  # cycle 10: due on day 30 (past)
        ("d", "coffee", 29, "view"),  # views are not purchases
    ])
    due = due_items(ev, T0 + timedelta(days=55), 7, min_repeat_buyers=1)
    assert due.select("user_id", "item_id", "own_interval").rows() == [("a", "coffee", True)]
    assert due["interval_days"].to_list() == [pytest.approx(30.0)]
    assert due["due"].to_list() == [T0 + timedelta(days=30.01 + 30)]  # from the last purchase of the item
    due = due_items(ev, T0 + timedelta(days=65), 7, min_repeat_buyers=1)
    assert due.select("user_id", "item_id", "own_interval").rows() == [("b", "coffee", False)]
    assert due_items(ev, T0 + timedelta(days=65), 7, min_repeat_buyers=2).height == 0  # one repeater is not a typical cycle
    assert due_items(ev, T0 + timedelta(days=60), 1, min_repeat_buyers=1)["user_id"].to_list() == ["a"]  # the window starts at as_of
    # only purchases before as_of count: on day 25 coffee has no cycle yet, c's tea (every 10 days) is due on day 30
    assert due_items(ev, T0 + timedelta(days=25), 7, min_repeat_buyers=1).select("user_id", "item_id").rows() == [("c", "tea")]


def test_campaign_settings_are_checked() -> None:
    with pytest.raises(UserError, match="--holdout"):
        CampaignSpec("replenish", "c1", holdout=1.0)
    with pytest.raises(UserError, match="unknown campaign kind"):
        CampaignSpec("spam", "c1")
    with pytest.raises(UserError, match="--campaign-id"):
        CampaignSpec("winback", "two words")


def test_planted_repurchase_cycles_are_found(store: Path) -> None:
    """The simulator repeats consumable purchases about a month later (55 %, two rounds): items
    due in the week after a cut-off are bought again in the two weeks after it far more often
    than the consumables these members bought before."""
    ev = pl.read_parquet(store / "events.parquet")
    cats = pl.read_parquet(store / "truth" / "categories.parquet")
    items = pl.read_parquet(store / "items.parquet", columns=["item_id", "category"])
    as_of = ev["timestamp"].max() - timedelta(days=21)
    due = due_items(ev, as_of, 7)
    assert due.height >= 100
    future = ev.filter((pl.col("event_type") == "purchase") & pl.col("timestamp").is_between(as_of, as_of + timedelta(days=14), closed="left"))
    bought_again = set(future.select("user_id", "item_id").iter_rows())
    consumable = set(cats.filter(pl.col("consumable"))["category"])
    due_cats = due.join(items, on="item_id")["category"]
    assert due_cats.is_in(list(consumable)).mean() >= 0.95  # what comes due are the consumables
    before = ev.filter((pl.col("event_type") == "purchase") & (pl.col("timestamp") < as_of)).join(items, on="item_id")
    pairs = before.filter(pl.col("category").is_in(list(consumable))).select("user_id", "item_id").unique()
    hit_due = sum(p in bought_again for p in due.select("user_id", "item_id").iter_rows()) / due.height
    hit_all = sum(p in bought_again for p in pairs.iter_rows()) / pairs.height
    assert hit_due >= 2 * hit_all, (hit_due, hit_all)


def test_points_expiring_members_dates_and_amounts(store: Path, tmp_path: Path) -> None:
    """With points valid 120 days (the built-in store's history is shorter than a year), members
    with points expiring within 30 days get the first expiry date of those points, 120 days
    after the purchase that earned them, and the profiles' amounts."""
    import shutil

    from storerec.core.settings import Settings
    from storerec.features.profiles import build_profiles

    data = tmp_path / "store"
    shutil.copytree(store, data, ignore=shutil.ignore_patterns("profiles"))
    settings = Settings.model_validate({"profiles": {"points_expiry_days": 120}})
    build_profiles(settings, data)
    profiles = pl.read_parquet(data / "profiles" / "users.parquet")
    events = pl.read_parquet(data / "events.parquet")
    items = pl.read_parquet(data / "items.parquet")
    as_of = datetime.fromisoformat(json.loads((data / "profiles" / "meta.json").read_text())["as_of"].replace("Z", "+00:00"))
    got = points_expiring(events, items, profiles, as_of, 120, 1.0)
    expected = profiles.filter(pl.col("points_expiring_30d") > 0)
    assert len(got) == expected.height > 100
    for r in expected.head(50).iter_rows(named=True):
        g = got[r["user_id"]]
        assert (g["expiring"], g["balance"]) == (r["points_expiring_30d"], r["points_balance"])
        assert as_of < g["expires"] <= as_of + timedelta(days=30)
        buys = events.filter((pl.col("user_id") == r["user_id"]) & (pl.col("event_type") == "purchase"))
        assert (g["expires"] - timedelta(days=120)) in set(buys["timestamp"])  # the earning purchase
    assert points_expiring(events, items, pl.read_parquet(store / "profiles" / "users.parquet"), as_of, 365, 1.0) == {}


def test_new_arrivals_go_to_members_of_their_categories(store: Path) -> None:
    profiles = pl.read_parquet(store / "profiles" / "users.parquet")
    items = pl.read_parquet(store / "profiles" / "items.parquet")
    got = new_arrival_matches(profiles, items, 5, 2)
    new = dict(items.filter(pl.col("is_new")).select("item_id", "category").iter_rows())
    assert len(got) > 1000
    for r in profiles.head(300).iter_rows(named=True):
        shares = top_categories(r["top_categories"])
        picks = got.get(r["user_id"], [])
        assert len(picks) <= 5 and all(item in new and new[item] == cat and cat in shares for item, cat, _, _ in picks)
        assert [p[2] for p in picks] == sorted((p[2] for p in picks), reverse=True)  # their likeliest category first
        assert all(n <= 2 for n in pl.Series([p[1] for p in picks], dtype=pl.String).value_counts()["count"].to_list())
        if any(c in shares for c in new.values()):
            assert picks  # a member with a new item in a top category gets it


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("campaign")
    cfg = write_config(root, store)
    assert main(["--config", str(cfg), "-q", "train", "--model", "als"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "1"]) == 0
    return cfg


def _run(cfg: Path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(cfg), "-q", "campaign", *args])
    return code, out.getvalue() + err.getvalue()


@pytest.mark.slow
def test_campaigns_end_to_end_with_holdout_cap_and_ledger(trained: Path, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "replenish.csv"
    code, text = _run(trained, "--kind", "replenish", "--campaign-id", "r1", "--out", str(out))
    assert code == 0, text
    rows, members = pl.read_csv(out), pl.read_csv(members_path(out))
    assert members.height > 100 and set(members["campaign_id"]) == {"r1"}
    held = set(members.filter(pl.col("holdout"))["user_id"])
    assert 0.04 < len(held) / members.height < 0.18 and held == {u for u in members["user_id"] if in_holdout("r1", u, 0.1)}
    assert not held & set(rows["user_id"])  # the holdout receives nothing
    assert rows.group_by("user_id").len()["len"].max() <= 5
    order = {"replenish": 0, "bought_together": 1}  # due items, then their complements, then the member's own list
    for _, member_rows in rows.sort("rank").group_by("user_id"):
        stages = [order.get(c, 2) for c in member_rows["reason_code"].to_list()]
        assert stages == sorted(stages), member_rows
    assert (rows["reason_code"] == "bought_together").sum() > 50
    firsts = rows.filter(pl.col("rank") == 1)
    assert (firsts["reason_code"] == "replenish").all() and firsts["reason_text"].str.starts_with("Time to restock").all()
    in_stock = dict(pl.read_parquet(store / "items.parquet", columns=["item_id", "in_stock"]).iter_rows())
    assert all(in_stock[i] for i in rows["item_id"])  # nothing out of stock, due items included
    ev = json.loads(firsts["reasons"][0])[0]["evidence"]
    assert {"item_id", "last_purchase", "interval_days", "due"} <= set(ev)
    from storerec.core.settings import load_settings
    from storerec.events.campaigns import campaign_members
    from storerec.events.eventlog import make_engine

    engine = make_engine(load_settings(trained, environ={}).eventlog.url)
    try:
        ledger = campaign_members(engine, "r1")
    finally:
        engine.dispose()
    assert sorted(ledger.select("user_id", "holdout").rows()) == sorted(members.select("user_id", "holdout").rows())
    assert set(ledger["holdout_share"]) == {0.1}  # the report's sample-ratio check reads it
    treated = members.filter(~pl.col("holdout"))
    assert dict(zip(treated["user_id"], treated["n_items"])) == dict(rows.group_by("user_id").len().iter_rows())
    # the frequency cap: a second campaign within 7 days leaves the treated members out (the held-out ones got nothing)
    out2 = tmp_path / "winback.parquet"
    code, text = _run(trained, "--kind", "winback", "--campaign-id", "w1", "--out", str(out2))
    assert code == 0, text
    w_members = pl.read_parquet(members_path(out2))
    assert not set(w_members["user_id"]) & set(treated["user_id"])
    profiles = pl.read_parquet(store / "profiles" / "users.parquet")
    dormant = set(profiles.filter(pl.col("segment").cast(pl.String) == "dormant")["user_id"])
    assert set(w_members["user_id"]) <= dormant and w_members.height > 100
    w_rows = pl.read_parquet(out2)
    tops = {r["user_id"]: top_categories(r["top_categories"]) for r in profiles.iter_rows(named=True)}
    # their strongest categories (when they have any)
    assert w_rows.height > 100 and all(c in tops[u] or not tops[u] for u, c in zip(w_rows["user_id"], w_rows["category"]))
    assert (w_rows["reason_code"] == "popular_since_last_visit").mean() > 0.3
    # one campaign per id: refused, nothing written
    out3 = tmp_path / "again.csv"
    code, text = _run(trained, "--kind", "replenish", "--campaign-id", "r1", "--cap-days", "0", "--out", str(out3))
    assert code != 0 and "'r1' is already recorded" in text and "pick another --campaign-id" in text
    assert not out3.exists() and not members_path(out3).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    code, text = _run(trained, "--kind", "replenish", "--out", str(tmp_path / "x.txt"))
    assert code != 0 and ".parquet" in text
    # points-expiring on a history shorter than the points' year: nobody, and it says why
    code, text = _run(trained, "--kind", "points-expiring", "--cap-days", "0", "--out", str(tmp_path / "points.csv"))
    assert code == 0 and "no member has points expiring within 30 days" in text and "points_expiry_days" in text
    assert pl.read_csv(members_path(tmp_path / "points.csv")).height == 0
    # new arrivals: new items only, each in one of the member's top categories, with that reason
    code, text = _run(trained, "--kind", "new-arrivals", "--segment", "active", "--cap-days", "0", "--out", str(tmp_path / "new.parquet"))
    assert code == 0, text
    rows = pl.read_parquet(tmp_path / "new.parquet")
    item_feats = pl.read_parquet(store / "profiles" / "items.parquet")
    assert rows.height > 100 and set(rows["item_id"]) <= set(item_feats.filter(pl.col("is_new"))["item_id"])
    assert (rows["reason_code"] == "new_arrival_for_you").all()
    active = profiles.filter(pl.col("segment").cast(pl.String) == "active")
    assert set(pl.read_parquet(members_path(tmp_path / "new.parquet"))["user_id"]) <= set(active["user_id"])


def _movielens_shaped(folder: Path, n_users: int = 80, n_items: int = 60, n_ratings: int = 3000, seed: int = 3) -> Path:
    """A small data set in MovieLens-100K's files (u.data, u.item, u.user, u.genre): ratings only."""
    import numpy as np

    genres = ["unknown", "Action", "Comedy", "Drama", "Romance"]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    items = []
    for i in range(1, n_items + 1):
        flags = ["0"] * len(genres)
        flags[1 + i % 4] = "1"
        items.append(f"{i}|Film {i} (1997)|01-Jan-1997||http://x/{i}|" + "|".join(flags))
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("\n".join(f"{u}|{20 + u % 40}|{'MF'[u % 2]}|student|85711" for u in range(1, n_users + 1)) + "\n")
    t0 = 880_000_000
    pairs = {(int(rng.integers(1, n_users + 1)), int(rng.zipf(1.5) % n_items + 1)) for _ in range(n_ratings)}
    lines = [f"{u}\t{i}\t{int(rng.integers(1, 6))}\t{t0 + int(rng.integers(0, 200 * 86_400))}" for u, i in sorted(pairs)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_the_four_kinds_run_on_movielens_shaped_data(tmp_path: Path) -> None:
    """Ratings only (no purchases, no points): every kind runs, and says why nobody qualifies where nobody does."""
    ml = _movielens_shaped(tmp_path / "ml")
    data = tmp_path / "data"
    data.mkdir()
    cfg = write_config(tmp_path, data, extra='[training]\nsplit = "last_fraction"\ntest_fraction = 0.2\nrelevant_event_types = ["rating"]\n')
    for args in (["import", "--movielens", str(ml), "--replace"], ["features"], ["train", "--model", "als"], ["promote", "--version", "1"]):
        assert main(["--config", str(cfg), "-q", *args]) == 0, args
    texts = {}
    for kind in ("replenish", "winback", "points-expiring", "new-arrivals"):
        out = tmp_path / "out" / f"{kind}.csv"
        code, texts[kind] = _run(cfg, "--kind", kind, "--cap-days", "0", "--out", str(out))
        assert code == 0, texts[kind]
        assert out.exists() and members_path(out).exists()
    assert "no member has a replenishable item due" in texts["replenish"]
    assert "no member has points expiring" in texts["points-expiring"]
