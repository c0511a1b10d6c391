"""Contract tests every model passes (after implicit's ``RecommenderBaseTestMixin``).

Fixture with a known answer: 60 users and 60 items in 6 blocks of 10; every user interacted
with all items of their block except one (item i for user i), plus one warm user (known, no
history). A model that learns anything must put the held-out item first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from storerec.models.base import CapabilityError, ModelBase, ModelConfig, NotFittedError, top_k, top_k_row
from storerec.models.dataset import Dataset, IdMap, item_features, user_features
from storerec.models.registry import MODEL_CLASSES, get_model_class

N, BLOCK = 60, 10
WARM = "warm-user"


def _dataset() -> Dataset:
    rows, cols = [], []
    for u in range(N):
        block = u // BLOCK
        for i in range(block * BLOCK, (block + 1) * BLOCK):
            if i != u:
                rows.append(u)
                cols.append(i)
    users = IdMap.from_values([f"u{u}" for u in range(N)] + [WARM])
    items = IdMap.from_values([f"i{i}" for i in range(N)])
    mat = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N + 1, N))
    table = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N)],
            "category": [f"Block > B{i // BLOCK}" for i in range(N)],
            "brand": [f"brand{i % 3}" for i in range(N)],
            "tags": [[] for _ in range(N)],
            "trending_score": np.linspace(2.0, 1.0, N),
            "is_new": [i % 7 == 0 for i in range(N)],
        }
    )
    profiles = pl.DataFrame({"user_id": users.external.tolist(), "tier": ["bronze"] * (N + 1)})
    return Dataset(
        users=users,
        items=items,
        interactions=mat,
        user_features=user_features(users, profiles),
        item_features=item_features(items, table),
        item_table=table,
    )


FAST_CONFIGS: dict[str, dict] = {
    "popularity": {"kind": "category"},
    "itemknn": {"similarity": "cosine", "neighbours": 20},
    "als": {"factors": 8, "iterations": 15, "regularization": 0.01},
    "bpr": {"factors": 16, "iterations": 300, "learning_rate": 0.05},
    "lightfm": {"no_components": 16, "epochs": 60, "use_user_features": False},
    "ease": {"regularization": 1.0},
}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return _dataset()


@pytest.fixture(scope="module", params=sorted(MODEL_CLASSES))
def fitted(request: pytest.FixtureRequest, dataset: Dataset) -> ModelBase:
    klass = get_model_class(request.param)
    return klass(**FAST_CONFIGS[request.param]).fit(dataset)


def test_every_registered_model_has_a_fast_config() -> None:
    assert set(FAST_CONFIGS) == set(MODEL_CLASSES)


def test_known_answer_heldout_item_first(fitted: ModelBase) -> None:
    users = [f"u{u}" for u in range(N)]
    reco = fitted.recommend(users, k=1)
    got = dict(zip(reco["user_id"], reco["item_id"]))
    hits = sum(got.get(f"u{u}") == f"i{u}" for u in range(N))
    assert hits >= 0.95 * N, f"{fitted.name}: held-out item first for only {hits}/{N} users"


def test_batch_equals_single(fitted: ModelBase) -> None:
    users = ["u3", "u17", "u42", "nobody", WARM]
    batch = fitted.recommend(users, k=5)
    singles = pl.concat([fitted.recommend(u, k=5) for u in users])
    assert batch["user_id"].to_list() == singles["user_id"].to_list()
    assert batch["item_id"].to_list() == singles["item_id"].to_list()
    # float32 BLAS sums in a different order for a batch than for one row: ~1e-5 relative noise
    np.testing.assert_allclose(batch["score"].to_numpy(), singles["score"].to_numpy(), rtol=1e-4, atol=1e-6)


def test_one_user_serving_path_equals_score(fitted: ModelBase) -> None:
    """``score_user`` (what the service calls) gives the very numbers of ``score`` for hot,
    warm and unknown users, and ``None`` exactly where ``score`` says it cannot score."""
    users = ["u3", "u42", WARM, "nobody"]
    scores, ok = fitted.score(users)
    for row, user in enumerate(users):
        one = fitted.score_user(fitted.users.index_of(user))  # type: ignore[union-attr]
        if not ok[row]:
            assert one is None, user
            continue
        assert one is not None and one.dtype == np.float32 and one.shape == (N,)
        np.testing.assert_array_equal(one, fitted.score([user])[0][0])  # one row each: the same BLAS sums
    group = {u: fitted.group_of(fitted.users.index_of(u)) for u in users}  # type: ignore[union-attr]
    route = fitted.route(fitted.users.to_internal(users))  # type: ignore[union-attr]
    assert {u for u, g in group.items() if g is not None} == {users[i] for g in route.values() for i in g}
    for g, positions in route.items():
        assert all(group[users[i]] == g for i in positions)


def test_top_k_row_equals_top_k() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(20, 30)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    for k in (1, 5, 30, 40):
        idx, sc = top_k(scores, k)
        for r in range(len(scores)):
            ri, rs = top_k_row(scores[r], k)
            keep = idx[r] >= 0
            np.testing.assert_array_equal(ri, idx[r][keep])
            np.testing.assert_array_equal(rs, sc[r][keep])


def test_save_load_identical(fitted: ModelBase, tmp_path: Path) -> None:
    users = [f"u{u}" for u in range(N)] + ["nobody", WARM]
    fitted.save(tmp_path / "m")
    loaded = ModelBase.load(tmp_path / "m")
    assert type(loaded) is type(fitted) and loaded.get_params() == fitted.get_params()
    assert fitted.recommend(users, k=7).equals(loaded.recommend(users, k=7))
    items = ["i0", "i15", "i59"]
    assert fitted.similar_items(items, k=4).equals(loaded.similar_items(items, k=4))


def test_seen_and_candidates_respected(fitted: ModelBase, dataset: Dataset) -> None:
    reco = fitted.recommend([f"u{u}" for u in range(N)], k=N)
    seen = {(f"u{u}", f"i{i}") for u, i in zip(*dataset.interactions.nonzero())}
    assert not seen & set(zip(reco["user_id"], reco["item_id"]))
    cands = ["i1", "i2", "i30", "unknown-item"]
    reco = fitted.recommend(["u5", "u35"], k=10, candidate_items=cands)
    assert set(reco["item_id"]) <= set(cands)
    with_seen = fitted.recommend(["u5"], k=N, exclude_seen=False)
    assert with_seen.height == N  # nothing excluded: the whole catalogue


def test_k_larger_than_catalogue_and_ranks(fitted: ModelBase) -> None:
    reco = fitted.recommend(["u0"], k=10 * N)
    assert reco.height == N - (BLOCK - 1)  # everything the user has not seen
    assert reco["rank"].to_list() == list(range(1, reco.height + 1))
    assert (np.diff(reco["score"].to_numpy()) <= 1e-6).all()
    with pytest.raises(ValueError, match="k must be"):
        fitted.recommend(["u0"], k=0)


def test_unknown_and_empty_history_users_as_declared(fitted: ModelBase) -> None:
    cold = fitted.recommend(["nobody"], k=5)
    assert cold.height == (5 if fitted.recommends_for_cold else 0)
    warm = fitted.recommend([WARM], k=5)
    assert warm.height == (5 if (fitted.recommends_for_warm or fitted.recommends_for_cold) else 0)


def test_similar_items_exclude_self_and_share_block(fitted: ModelBase) -> None:
    sim = fitted.similar_items(["i0", "i25", "no-such-item"], k=3)
    assert set(sim["item_id"]) == {"i0", "i25"}
    assert all(a != b for a, b in zip(sim["item_id"], sim["similar_item_id"]))
    top = sim.filter(pl.col("rank") == 1)
    for item, similar in zip(top["item_id"], top["similar_item_id"]):
        assert int(item[1:]) // BLOCK == int(similar[1:]) // BLOCK, f"{fitted.name}: {item} -> {similar}"


def test_params_flat_and_unfitted_errors(fitted: ModelBase) -> None:
    params = fitted.get_params()
    assert params["model"] == fitted.name
    assert all(isinstance(v, (int, float, str, bool)) or v is None for v in params.values())
    fresh = type(fitted)()
    with pytest.raises(NotFittedError):
        fresh.recommend(["u0"], k=3)


def test_unknown_config_key_is_rejected() -> None:
    for name in MODEL_CLASSES:
        with pytest.raises(Exception, match="extra"):
            get_model_class(name)(no_such_option=1)


# ---- declared capabilities (RecTools-style flags) are true --------------------------------------


def _overrides(model: ModelBase, hook: str) -> bool:
    return getattr(type(model), hook) is not getattr(ModelBase, hook)


def test_declared_capabilities_match_the_hooks(fitted: ModelBase) -> None:
    """A model declares a capability exactly when it implements the hook behind it."""
    name = fitted.name
    assert fitted.recommends_for_warm == _overrides(fitted, "_score_warm"), name
    assert fitted.recommends_for_cold == _overrides(fitted, "_score_cold"), name
    assert fitted.has_item_vectors == _overrides(fitted, "_item_vectors"), name
    # similarity: the model's own, or the cosine of its item vectors (the base's default)
    assert fitted.has_item_similarity == (_overrides(fitted, "_item_similarity") or fitted.has_item_vectors), name
    assert {k for k, v in fitted._get_state().items() if v is not None} == set(fitted.state_keys), name


def test_declared_user_groups_are_scored(fitted: ModelBase) -> None:
    users = fitted.users
    assert users is not None
    warm, unknown = fitted.score_user(users.index_of(WARM)), fitted.score_user(-1)
    assert (fitted.group_of(users.index_of(WARM)) == "warm") == fitted.recommends_for_warm
    if fitted.recommends_for_warm or fitted.recommends_for_cold:
        assert warm is not None and warm.shape == (N,) and np.isfinite(warm).all()
    else:
        assert warm is None
    if fitted.recommends_for_cold:
        assert unknown is not None and unknown.shape == (N,) and np.isfinite(unknown).all()
    else:
        assert unknown is None


def test_item_vectors_as_declared(fitted: ModelBase) -> None:
    if fitted.has_item_vectors:
        vecs = fitted.item_vectors()
        assert vecs.ndim == 2 and vecs.shape[0] == N and vecs.shape[1] >= 1 and np.isfinite(vecs).all()
    else:
        with pytest.raises(CapabilityError, match="item vectors"):
            fitted.item_vectors()


def test_item_similarity_as_declared(fitted: ModelBase) -> None:
    idx = np.array([0, 25, 59])
    if fitted.has_item_similarity:
        sim = fitted.item_similarity(idx)
        assert sim.shape == (3, N) and not np.isnan(sim).any()
    else:
        with pytest.raises(CapabilityError, match="item similarity"):
            fitted.item_similarity(idx)
        with pytest.raises(CapabilityError):
            fitted.similar_items(["i0"], k=3)


class _Bare(ModelBase[ModelConfig]):
    """The least a model implements: hot users only, no item vectors or similarity."""

    name = "bare"
    config_class = ModelConfig
    state_keys = ("scores",)

    def _fit(self, dataset: Dataset) -> None:
        self.scores = np.arange(dataset.n_items, dtype=np.float32)

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        return np.tile(self.scores, (len(user_idx), 1))


def test_undeclared_capabilities_are_refused(dataset: Dataset) -> None:
    bare = _Bare().fit(dataset)
    assert not (bare.recommends_for_warm or bare.recommends_for_cold or bare.has_item_vectors or bare.has_item_similarity)
    assert bare.score_user(-1) is None and bare.recommend(["nobody", WARM], k=3).height == 0
    for call in (bare.item_vectors, lambda: bare.item_similarity(np.array([0])), lambda: bare.similar_items(["i0"], k=3)):
        with pytest.raises(CapabilityError):
            call()


def _similar_items_normalising_per_call(model: ModelBase, items: list[str], k: int) -> pl.DataFrame:
    """The computation before the unit vectors were cached: every item normalised again per call."""
    from storerec.core.formulas import unit_rows

    assert model.items is not None
    ids = model.items
    idx = ids.to_internal(items)
    unit = unit_rows(model._item_vectors())
    scores = (unit[idx] @ unit.T).astype(np.float32)
    scores[np.arange(len(idx)), idx] = -np.inf
    top, top_scores = top_k(scores, k)
    rows, cols = np.nonzero(top >= 0)
    return pl.DataFrame(
        {"item_id": np.asarray(items, dtype=object)[rows].tolist(), "similar_item_id": ids.to_external(top[rows, cols]).tolist(),
         "score": top_scores[rows, cols].astype(np.float32), "rank": (cols + 1).astype(np.int32)},
        schema={"item_id": pl.String, "similar_item_id": pl.String, "score": pl.Float32, "rank": pl.Int32},
    )


def test_cosine_similar_items_use_unit_vectors_made_once(fitted: ModelBase) -> None:
    """Models with the default cosine similarity normalise their item vectors once (not per
    call) and give the very answers of the per-call normalisation; a new set of vectors (a refit
    or a load) is normalised again."""
    if not (fitted.has_item_vectors and type(fitted)._item_similarity is ModelBase._item_similarity):
        pytest.skip(f"{fitted.name} has its own similarity")
    items = [f"i{i}" for i in range(N)]
    for k in (1, 3, 10, N + 5):
        assert fitted.similar_items(items, k).equals(_similar_items_normalising_per_call(fitted, items, k))
    unit = fitted._unit_item_vectors()
    assert fitted._unit_item_vectors() is unit and not unit.flags.writeable
    state = fitted._get_state()
    key = next(key for key, v in state.items() if isinstance(v, np.ndarray) and np.shares_memory(v, fitted._item_vectors()))
    try:
        fitted._set_state({**state, key: state[key] * 2.0 + 1.0})  # other vectors: the cache follows
        assert fitted._unit_item_vectors() is not unit
        assert fitted.similar_items(items, 4).equals(_similar_items_normalising_per_call(fitted, items, 4))
    finally:
        fitted._set_state(state)
    assert fitted.similar_items(items, 4).equals(_similar_items_normalising_per_call(fitted, items, 4))
