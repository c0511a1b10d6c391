"""Interaction matrix and feature matrices."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from storerec.models.dataset import IdMap, InteractionConfig, interaction_matrix, item_features, user_features

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _events() -> pl.DataFrame:
    rows = [  # user, item, type, hours before T0
        ("u1", "a", "view", 48), ("u1", "a", "purchase", 47), ("u1", "b", "cart", 24),
        ("u2", "b", "view", 0), ("u2", "zz", "view", 0), ("u3", "a", "search", 0),
    ]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "event_type": [r[2] for r in rows],
            "timestamp": [T0 - timedelta(hours=r[3]) for r in rows],
        }
    )


USERS = IdMap.from_values(["u1", "u2", "u3"])
ITEMS = IdMap.from_values(["a", "b"])
W = {"view": 1.0, "favorite": 2.0, "cart": 3.0, "purchase": 5.0}


def test_weights_sum_per_pair_and_unknowns_left_out() -> None:
    m = interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W)).toarray()
    np.testing.assert_allclose(m, [[6.0, 3.0], [0.0, 1.0], [0.0, 0.0]])  # zz unknown item, 'search' unweighted


def test_binary_log_and_time_decay() -> None:
    ev = _events()
    np.testing.assert_allclose(interaction_matrix(ev, USERS, ITEMS, InteractionConfig(weights=W, binary=True)).toarray()[0], [1, 1])
    np.testing.assert_allclose(
        interaction_matrix(ev, USERS, ITEMS, InteractionConfig(weights=W, confidence="log")).toarray()[0], np.log1p([6.0, 3.0]), rtol=1e-6
    )
    decayed = interaction_matrix(ev, USERS, ITEMS, InteractionConfig(weights=W, half_life_days=1.0), as_of=T0).toarray()
    assert decayed[0, 1] == pytest.approx(3.0 * 0.5)  # a cart one day old
    assert decayed[0, 0] == pytest.approx(1.0 * 0.25 + 5.0 * 0.5 ** (47 / 24), rel=1e-5)


def test_user_recency_weights_latest_events_most() -> None:
    m = interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W, recency_half_life=1.0)).toarray()
    # u1's events from latest: cart b (k=0), purchase a (k=1), view a (k=2)
    assert m[0, 1] == pytest.approx(3.0)
    assert m[0, 0] == pytest.approx(5.0 * 0.5 + 1.0 * 0.25)


def test_feature_matrices_rows_and_names() -> None:
    items = pl.DataFrame({"item_id": ["a", "b"], "category": ["Home > Kitchen", "Beauty"], "brand": ["x", None], "tags": [["eco"], []]})
    f = item_features(ITEMS, items)
    assert {"cat:Home", "cat:Home > Kitchen", "brand:x", "tag:eco", "id:a", "cat:Beauty"} <= set(f.names)
    np.testing.assert_allclose(np.asarray(f.matrix.sum(axis=1)).ravel(), [1.0, 1.0])
    profiles = pl.DataFrame(
        {"user_id": ["u1", "u3"], "tier": ["gold", "bronze"],
         "top_categories": [[{"category": "Home", "share": 1.0}], []]}
    )
    uf = user_features(USERS, profiles, identity=False)
    row = dict(zip(uf.names, uf.matrix.toarray()[0]))
    assert row["tier:gold"] > 0 and row["likes:Home"] > 0
    assert uf.matrix[1].nnz == 0  # u2 has no profile row


# --- interaction strength (quantity / value), normalisation and BM25 / TF-IDF weighting (issue #13) ---

def _rated() -> pl.DataFrame:
    rows = [  # user, item, type, quantity, value
        ("u1", "a", "purchase", 3, None), ("u1", "b", "rating", 1, 5.0), ("u2", "a", "rating", 1, 2.0),
        ("u2", "b", "rating", 1, None), ("u3", "a", "purchase", None, None), ("u3", "b", "rating", 1, 4.0),
    ]
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows], "event_type": [r[2] for r in rows],
            "timestamp": [T0] * len(rows),
            "quantity": pl.Series([r[3] for r in rows], dtype=pl.Int32), "value": pl.Series([r[4] for r in rows], dtype=pl.Float64),
        }
    )


RW = {"purchase": 5.0, "rating": 1.0}


def test_event_strength_formula() -> None:
    from storerec.core.formulas import event_strength

    x = np.array([0.0, 2.0, 4.0, 5.0, np.nan, -1.0])
    np.testing.assert_allclose(event_strength(x, "none"), [1, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(event_strength(x, "linear"), [0, 2, 4, 5, 1, 0])  # missing -> 1, negative -> 0
    np.testing.assert_allclose(event_strength(x, "log1p"), [0, np.log1p(2), np.log1p(4), np.log1p(5), 1, 0])
    np.testing.assert_allclose(event_strength(x, "rating", threshold=4), [0, 0, 1, 1, 1, 0])
    np.testing.assert_allclose(event_strength(x, "rating", threshold=4, scaled=True), [0, 0, 1, 2, 1, 0])
    with pytest.raises(ValueError, match="threshold"):
        event_strength(x, "rating")


def test_default_strength_weights_only_except_ratings() -> None:
    m = interaction_matrix(_rated(), USERS, ITEMS, InteractionConfig(weights=RW)).toarray()
    # purchase: weight only (quantity ignored); rating: weight x stars; a missing value counts 1
    np.testing.assert_allclose(m, [[5.0, 5.0], [2.0, 1.0], [5.0, 4.0]])
    liked = InteractionConfig(weights=RW, strength={"rating": {"source": "value", "transform": "rating", "threshold": 4, "scaled": True}})
    m = interaction_matrix(_rated(), USERS, ITEMS, liked)
    np.testing.assert_allclose(m.toarray(), [[5.0, 2.0], [0.0, 1.0], [5.0, 1.0]])  # 5 stars over 4 count 2, 2 stars nothing
    assert m.nnz == 5  # the 2-star pair is left out, not stored as 0
    off = InteractionConfig(weights=RW, strength={"rating": {"transform": "none"}})
    np.testing.assert_allclose(interaction_matrix(_rated(), USERS, ITEMS, off).toarray(), [[5.0, 1.0], [1.0, 1.0], [5.0, 1.0]])


def test_strength_per_type_from_quantity_and_value() -> None:
    cfg = InteractionConfig(
        weights=RW,
        strength={"purchase": {"source": "quantity", "transform": "log1p"}, "rating": {"source": "value", "transform": "linear"}},
    )
    m = interaction_matrix(_rated(), USERS, ITEMS, cfg).toarray()
    np.testing.assert_allclose(m, [[5 * np.log1p(3), 5.0], [2.0, 1.0], [5.0, 4.0]], rtol=1e-6)  # u3's missing quantity -> 1
    lin = InteractionConfig(weights=RW, strength={"purchase": {"transform": "linear"}})  # source defaults to quantity
    assert interaction_matrix(_rated(), USERS, ITEMS, lin).toarray()[0, 0] == pytest.approx(15.0)
    # events without quantity / value columns: every row counts as if they were 1
    np.testing.assert_allclose(
        interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W, strength={"purchase": {"transform": "linear"}})).toarray(),
        interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W)).toarray(),
    )


def test_binary_ignores_strength() -> None:
    m = interaction_matrix(_rated(), USERS, ITEMS, InteractionConfig(weights=RW, binary=True)).toarray()
    np.testing.assert_allclose(m, [[1, 1], [1, 1], [1, 1]])


def test_dotted_keys_set_one_entry_and_bad_keys_are_named() -> None:
    dotted = {"strength.purchase.transform": "log1p", "strength.rating.transform": "rating", "strength.rating.threshold": 3}
    cfg = InteractionConfig(**dotted, **{"weights.view": 2.0})
    assert cfg.strength["purchase"].transform == "log1p" and cfg.strength["purchase"].source == "quantity"
    assert cfg.strength["rating"].threshold == 3 and cfg.strength["rating"].source == "value"  # the rest of the default kept
    assert cfg.weights["view"] == 2.0 and cfg.weights["purchase"] == 5.0
    liked = {"strength": {"rating": {"source": "value", "transform": "rating", "threshold": 4}}}
    assert InteractionConfig(**liked, **{"strength.rating.transform": "none"}).strength["rating"].threshold is None
    with pytest.raises(ValueError, match="threshold"):
        InteractionConfig(strength={"rating": {"source": "value", "transform": "rating"}})
    with pytest.raises(ValueError, match="strength.purchase.transform"):
        InteractionConfig(strength={"purchase": {"transform": "sqrt"}})
    with pytest.raises(ValueError, match="weighting"):
        InteractionConfig(weighting="bm52")
    with pytest.raises(ValueError, match="bm25_b"):
        InteractionConfig(bm25_b=2.0)
    with pytest.raises(ValueError, match="unknown interactions key 'strength.a.b.c'"):
        InteractionConfig(**{"strength.a.b.c": 1})


def _bigger() -> tuple[pl.DataFrame, IdMap, IdMap]:
    rng = np.random.default_rng(0)
    n = 60
    ev = pl.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 8, n)], "item_id": [f"i{i}" for i in rng.integers(0, 6, n)],
            "event_type": rng.choice(["view", "cart", "purchase"], n).tolist(), "timestamp": [T0] * n,
        }
    )
    return ev, IdMap.from_values([f"u{i}" for i in range(8)]), IdMap.from_values([f"i{i}" for i in range(6)])


def test_bm25_and_tfidf_weighting_match_implicit() -> None:
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    ev, users, items = _bigger()
    raw = interaction_matrix(ev, users, items, InteractionConfig(weights=W))
    bm = interaction_matrix(ev, users, items, InteractionConfig(weights=W, weighting="bm25", bm25_k1=1.2, bm25_b=0.75))
    np.testing.assert_allclose(bm.toarray(), bm25_weight(raw.T.tocsr(), K1=1.2, B=0.75).T.toarray(), rtol=1e-5)
    tf = interaction_matrix(ev, users, items, InteractionConfig(weights=W, weighting="tfidf"))
    np.testing.assert_allclose(tf.toarray(), tfidf_weight(raw.T.tocsr()).T.toarray(), rtol=1e-5)
    # the formula itself, for one entry: idf of the user over items, saturation, item length normalisation
    x = raw.toarray()
    u, i = np.argwhere(x > 0)[0]
    n_items = x.shape[1]
    idf = np.log(n_items) - np.log1p((x[u] > 0).sum())
    length = x.sum(axis=0)
    norm = 0.25 + 0.75 * length[i] / length.mean()
    assert bm[u, i] == pytest.approx(x[u, i] * 2.2 / (1.2 * norm + x[u, i]) * idf, rel=1e-5)
    assert bm.dtype == np.float32 and bm.shape == raw.shape


def test_normalize_types_makes_labels_irrelevant() -> None:
    ev = _events().filter(pl.col("event_type") == "view")
    as_purchase = ev.with_columns(pl.lit("purchase").alias("event_type"))
    cfg = InteractionConfig(weights=W, normalize="types")
    np.testing.assert_allclose(
        interaction_matrix(ev, USERS, ITEMS, cfg).toarray(), interaction_matrix(as_purchase, USERS, ITEMS, cfg).toarray()
    )
    # mixed types: the strongest present (purchase, 5) counts 1
    np.testing.assert_allclose(interaction_matrix(_events(), USERS, ITEMS, cfg).toarray(), [[6 / 5, 3 / 5], [0, 1 / 5], [0, 0]])


def test_normalize_user_scales_rows_to_max_one() -> None:
    m = interaction_matrix(_events(), USERS, ITEMS, InteractionConfig(weights=W, normalize="user")).toarray()
    np.testing.assert_allclose(m, [[1.0, 0.5], [0.0, 1.0], [0.0, 0.0]])


def test_settings_and_interaction_config_share_the_strength_defaults() -> None:
    from storerec.core.settings import Settings

    assert Settings().events.strength == InteractionConfig().strength
    assert set(InteractionConfig().strength) == {"rating"}  # view/favorite/cart/purchase: weight only, as before


def test_logged_flat_parameters_rebuild_the_same_config() -> None:
    """Runs log ``interactions.*`` flat (``strength.rating.threshold``); a replay passes them back."""
    from storerec.models.base import flatten

    cfg = InteractionConfig(
        strength={"purchase": {"transform": "log1p"}, "rating": {"source": "value", "transform": "rating", "threshold": 3.5, "scaled": True}},
        weighting="bm25", normalize="types", bm25_k1=1.2,
    )
    assert InteractionConfig(**flatten(cfg.model_dump())) == cfg
    assert InteractionConfig(**flatten(InteractionConfig().model_dump())) == InteractionConfig()


# --- uninformative features dropped, feature groups switchable (issue #13 item 3) ---

def _profiles(n: int = 200) -> tuple[IdMap, pl.DataFrame]:
    ids = IdMap.from_values([f"u{i}" for i in range(n)])
    return ids, pl.DataFrame(
        {
            "user_id": ids.external.tolist(),
            "tier": ["bronze"] * n,  # one value for every user: no information
            "segment": ["active"] * (n - 1) + ["new"],  # 'active' on 99.5 % of rows, 'new' on one
            "gender": ["f" if i % 2 else "m" for i in range(n)],  # informative
        }
    )


def test_constant_group_and_near_constant_column_are_dropped_informative_kept() -> None:
    ids, profiles = _profiles()
    f = user_features(ids, profiles)
    assert "tier:*" in f.dropped and not any(n.startswith("tier:") for n in f.names)
    assert "segment:active" in f.dropped and "segment:active" not in f.names
    assert "segment:new" in f.names  # rare but informative: kept
    assert {"gender:f", "gender:m"} <= set(f.names)
    assert sum(n.startswith("id:") for n in f.names) == len(ids)  # identity never dropped
    np.testing.assert_allclose(np.asarray(f.matrix.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    assert "tier" in f.describe_dropped()
    kept = user_features(ids, profiles, prune=False)
    assert "tier:bronze" in kept.names and not kept.dropped


def test_identity_kept_even_when_every_row_has_only_it() -> None:
    ids = IdMap.from_values(["a", "b", "c"])
    f = item_features(ids, pl.DataFrame({"item_id": ["a", "b", "c"], "category": ["Home"] * 3}))
    assert f.names == ["id:a", "id:b", "id:c"] and "cat:*" in f.dropped
    np.testing.assert_allclose(f.matrix.toarray(), np.eye(3))


def test_select_groups_switches_groups_off_and_keeps_identity() -> None:
    ids, profiles = _profiles()
    f = user_features(ids, profiles)
    g = f.select_groups(["segment"])
    assert g.groups() == ["segment", "id"] or set(g.groups()) == {"segment", "id"}
    assert not any(n.startswith("gender:") for n in g.names)
    np.testing.assert_allclose(np.asarray(g.matrix.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    assert set(f.select_groups([]).groups()) == {"id"}


def test_lightfm_feature_group_options() -> None:
    import scipy.sparse as sp

    from storerec.models.dataset import Dataset
    from storerec.models.lightfm import LightFMConfig, LightFMModel

    assert LightFMConfig(user_feature_groups="gender, segment").user_feature_groups == ["gender", "segment"]
    ids, profiles = _profiles(40)
    items = IdMap.from_values(["a", "b", "c", "d"])
    rng = np.random.default_rng(0)
    inter = sp.csr_matrix((rng.random((40, 4)) > 0.5).astype(np.float32))
    table = pl.DataFrame({"item_id": ["a", "b", "c", "d"], "category": ["Home", "Home", "Beauty", "Beauty"]})
    ds = Dataset(ids, items, inter, user_features(ids, profiles), item_features(items, table))
    m = LightFMModel(epochs=1, no_components=4, user_feature_groups=["segment"]).fit(ds)
    assert m.user_features is not None and set(m.user_features.groups()) == {"segment", "id"}
    params = m.get_params()
    assert params["features.user.groups"] == "segment" and "tier" in params["features.user.dropped"]
    assert params["features.item.groups"] == "cat"
    off = LightFMModel(epochs=1, no_components=4, use_user_features=False, use_item_features=False).fit(ds)
    assert off.user_features is None and off.item_features is None
    assert off.score(["u1"])[0].shape == (1, 4)


def test_tune_searches_lightfm_with_and_without_features() -> None:
    from storerec.training.tune import SEARCH_SPACES

    space = SEARCH_SPACES["lightfm"]
    assert space["use_user_features"] == [True, False] and space["use_item_features"] == [True, False]
