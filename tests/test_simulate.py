"""The built-in storefront: deterministic, valid, and its planted structure is visible in the data."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from storerec.core.errors import UserError
from storerec.core.schema import check_schema
from storerec.core.settings import Settings
from storerec.features import io
from storerec.features.simulate import ensure_simulated, load_truth, simulate_store

S = Settings()
SMALL = S.simulate.model_copy(update=dict(n_users=300, n_items=200, n_events=20_000))


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    simulate_store(SMALL, S.events, tmp_path / "a")
    simulate_store(SMALL, S.events, tmp_path / "b")
    simulate_store(SMALL.model_copy(update={"seed": 7}), S.events, tmp_path / "c")
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert len(a) == 9 and a == b
    assert a["events.parquet"] != c["events.parquet"]


def test_tables_match_schemas_and_sizes(store: Path) -> None:
    tables = {t: io.read_table(store, t) for t in ("events", "items", "users")}
    for name, df in tables.items():
        check_schema(df, name)
    assert tables["users"].height == S.simulate.n_users
    assert tables["items"].height == S.simulate.n_items
    assert abs(tables["events"].height - S.simulate.n_events) <= 0.01 * S.simulate.n_events
    cats = tables["items"]["category"].unique()
    assert 18 <= len(cats) <= 22 and all(" > " in c for c in cats)
    assert tables["items"]["brand"].n_unique() >= 20
    ev = tables["events"]
    assert ev["timestamp"].min() >= S.simulate.end - timedelta(days=S.simulate.days)
    assert ev["timestamp"].max() < S.simulate.end
    buys = ev.filter(pl.col("event_type") == "purchase")
    assert buys["price"].null_count() == 0 and (buys["price"] > 0).all()
    assert ev.filter(pl.col("event_type") != "purchase")["price"].null_count() == ev.height - buys.height


def test_no_event_before_signup_or_listing(store: Path) -> None:
    ev = io.read_table(store, "events")
    users = io.read_table(store, "users").select("user_id", "signup_at")
    items = io.read_table(store, "items").select("item_id", "created_at")
    joined = ev.join(users, on="user_id").join(items, on="item_id")
    assert joined.height == ev.height
    assert joined.filter(pl.col("timestamp") < pl.col("signup_at")).height == 0
    assert joined.filter(pl.col("timestamp") < pl.col("created_at")).height == 0


def test_funnel(store: Path) -> None:
    n = dict(io.read_table(store, "events").group_by("event_type").len().iter_rows())
    assert n["view"] > n["cart"] > n["purchase"] > 0 and n["favorite"] > 0
    assert 0.08 < n["cart"] / n["view"] < 0.18
    assert 0.4 < n["purchase"] / n["cart"] < 0.75


def test_users_buy_mostly_from_their_top_true_categories(store: Path) -> None:
    truth = load_truth(store)
    top3 = truth["user_tastes"].group_by("user_id").head(3).select("user_id", "category", pl.lit(True).alias("top"))
    buys = (
        io.read_table(store, "events")
        .filter(pl.col("event_type") == "purchase")
        .join(io.read_table(store, "items").select("item_id", "category"), on="item_id")
        .join(top3, on=["user_id", "category"], how="left")
    )
    share = buys["top"].fill_null(False).mean()
    # Under no taste structure the top 3 of 20 categories would get about 15 %.
    assert share > 0.5


def test_complementary_pairs_are_bought_together_far_above_chance(store: Path) -> None:
    pairs = load_truth(store)["complementary_pairs"]
    assert pairs.height == pytest.approx(S.simulate.share_complementary * S.simulate.n_items, rel=0.05)
    orders = io.read_table(store, "events").filter(pl.col("event_type") == "purchase").select("session_id", "item_id").unique()
    n_orders = orders["session_id"].n_unique()
    with_anchor = orders.join(pairs, on="item_id")
    together = with_anchor.join(
        orders.rename({"item_id": "partner_id"}), on=["session_id", "partner_id"], how="semi"
    ).height
    p_partner_given_anchor = together / with_anchor.height
    partner_rate = orders.join(pairs.select(pl.col("partner_id").alias("item_id")).unique(), on="item_id").group_by("item_id").len()
    # Chance: the average share of orders that contain a given partner item.
    p_partner = partner_rate["len"].sum() / partner_rate.height / n_orders
    assert p_partner_given_anchor > 0.3
    assert p_partner_given_anchor / p_partner > 20


def test_consumables_are_bought_repeatedly(store: Path) -> None:
    cats = load_truth(store)["categories"].select("category", "consumable")
    per_pair = (
        io.read_table(store, "events")
        .filter(pl.col("event_type") == "purchase")
        .join(io.read_table(store, "items").select("item_id", "category"), on="item_id")
        .join(cats, on="category")
        .group_by("user_id", "item_id", "consumable")
        .len()
        .group_by("consumable")
        .agg((pl.col("len") > 1).mean().alias("repeat"))
    )
    rate = dict(per_pair.iter_rows())
    assert rate[True] > 0.25 and rate[True] > 5 * rate[False]


def test_power_law_popularity(store: Path) -> None:
    counts = io.read_table(store, "events").group_by("item_id").len().sort("len", descending=True)["len"]
    top_share = counts.head(len(counts) // 10).sum() / counts.sum()
    assert top_share > 0.35  # the top 10 % of items get over a third of the events


def test_new_arrivals_new_users_and_trending(store: Path) -> None:
    end = S.simulate.end
    items = io.read_table(store, "items")
    new_items = items.filter(pl.col("created_at") >= end - timedelta(days=S.simulate.new_arrival_days))
    assert new_items.height == pytest.approx(S.simulate.share_new_items * S.simulate.n_items, rel=0.1)
    ev = io.read_table(store, "events")
    assert ev.join(new_items, on="item_id", how="semi")["item_id"].n_unique() > new_items.height / 2
    users = io.read_table(store, "users")
    assert users.filter(pl.col("signup_at") >= end - timedelta(days=S.simulate.new_user_days)).height >= S.simulate.share_new_users * S.simulate.n_users

    trending = load_truth(store)["trending_items"]
    views = ev.filter(pl.col("event_type") == "view").with_columns(
        (pl.col("timestamp") >= end - timedelta(days=7)).alias("recent"),
        pl.col("item_id").is_in(trending["item_id"].implode()).alias("trending"),
    )
    share = views.group_by("recent").agg(pl.col("trending").mean())
    share = dict(share.iter_rows())
    assert share[True] > 3 * share[False]


def test_lifecycle_is_visible_in_profiles(store: Path) -> None:
    traits = load_truth(store)["user_traits"]
    ev = io.read_table(store, "events")
    last = ev.group_by("user_id").agg(pl.col("timestamp").max().alias("last"))
    stopped = traits.filter(pl.col("lifecycle").is_in(["dormant", "churned"])).join(last, on="user_id")
    assert stopped.filter(pl.col("last") > pl.col("active_until")).height == 0
    seg = pl.read_parquet(store / "profiles" / "users.parquet").select("user_id", pl.col("segment").cast(pl.String))
    agree = traits.join(seg, on="user_id").group_by("lifecycle").agg((pl.col("lifecycle") == pl.col("segment")).mean().alias("agree"))
    agree = dict(agree.iter_rows())
    assert agree["churned"] > 0.9 and agree["new"] > 0.9
    # A dormant user who bought nothing in the history looks churned (signed up long ago).
    lapsed = traits.filter(pl.col("lifecycle") == "dormant").join(seg, on="user_id")["segment"]
    assert lapsed.is_in(["dormant", "churned"]).mean() > 0.95 and (lapsed == "dormant").mean() > 0.45


def test_refuses_to_overwrite_imported_data(tmp_path: Path) -> None:
    (tmp_path / "import.json").write_text("{}")
    with pytest.raises(UserError, match="--force"):
        simulate_store(SMALL, S.events, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["import.json"]
    simulate_store(SMALL, S.events, tmp_path, force=True)
    assert not (tmp_path / "import.json").exists() and (tmp_path / "simulation.json").exists()


def test_refuses_tables_without_a_simulation_record(tmp_path: Path) -> None:
    simulate_store(SMALL, S.events, tmp_path)
    (tmp_path / "simulation.json").unlink()
    before = digest(tmp_path)
    with pytest.raises(UserError, match="--force"):
        simulate_store(SMALL, S.events, tmp_path)
    assert digest(tmp_path) == before


def test_ensure_simulated_reuses_same_settings(tmp_path: Path) -> None:
    first = ensure_simulated(SMALL, S.events, tmp_path)
    assert "simulated store" in first
    before = digest(tmp_path)
    assert "reusing" in ensure_simulated(SMALL, S.events, tmp_path)
    assert digest(tmp_path) == before
    assert "simulated store" in ensure_simulated(SMALL.model_copy(update={"seed": 3}), S.events, tmp_path)
    assert json.loads((tmp_path / "simulation.json").read_text())["settings"]["seed"] == 3
    (tmp_path / "import.json").write_text("{}")
    assert "imported" in ensure_simulated(SMALL, S.events, tmp_path)


def test_unknown_event_types_are_refused(tmp_path: Path) -> None:
    events = S.events.model_copy(update={"types": ["view", "purchase"], "weights": {}})
    with pytest.raises(UserError, match="favorite"):
        simulate_store(SMALL, events, tmp_path)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    assert "--seed" in capsys.readouterr().out
    args = ["-q", "simulate", "--users", "200", "--items", "100", "--events", "5000", "--data-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "users 200, items 100" in out
    assert io.read_table(tmp_path, "events").height == pytest.approx(5000, rel=0.01)
    assert main(["-q", "simulate", "--users", "0", "--data-dir", str(tmp_path)]) == 2
    assert "n_users" in capsys.readouterr().err
