"""Neighbour lists found once per version (storerec.ranking.neighbours): the fast methods give
brute force's lists, the serving snapshot stores them with the item order they are for, the
service uses them only for that order and finds them again otherwise (and for versions
registered before they were stored)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from storerec.models.base import ModelBase
from storerec.models.dataset import IdMap
from storerec.ranking import facts
from storerec.ranking import neighbours as nb
from storerec.ranking.facts import ItemFacts, ItemSimilarity, find_neighbours, item_neighbours, similarity_rows
from storerec.ranking.ranker import Context, Ranker
from storerec.registry.snapshot import NEIGHBOURS, SNAPSHOT_DIR, read_snapshot, write_snapshot
from tests.test_reasons import _events, _fit, _items, _profiles


@pytest.fixture(scope="module")
def store() -> dict[str, pl.DataFrame]:
    events = _events()
    return {"events": events, "items": _items(events), "profiles": _profiles(events)}


@pytest.fixture(scope="module")
def als(store: dict[str, pl.DataFrame]) -> ModelBase:
    return _fit("als", store)


def _brute_force(model: ModelBase, items: ItemFacts, k: int) -> np.ndarray:
    """The reference: every item against every item (what the service did at start before)."""
    return nb.exact(lambda idx: similarity_rows(model, items, idx, popularity_tie_break=True), items.n, k)


def _similarities(model: ModelBase, items: ItemFacts, table: np.ndarray) -> np.ndarray:
    """Each row's neighbours' similarities (nan for padding): equal for two correct lists even
    where equally similar items could be swapped."""
    sim = similarity_rows(model, items, np.arange(items.n), popularity_tie_break=True)
    out = np.where(table >= 0, np.take_along_axis(sim, np.maximum(table, 0), axis=1), np.nan)
    return out


class _NoSimilarity(ModelBase):
    """A model without a similarity of its own: neighbours are "same category" by 30-day popularity."""

    name = "no-similarity"
    has_item_similarity = False

    def _fit(self, dataset: object) -> None:  # never fitted: takes a fitted model's state
        raise NotImplementedError

    def _score_hot(self, user_idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("name", "large"),  # ALS above EXACT_MAX_ITEMS is approximate: test_hnsw_recall_against_exact
    [(name, large) for name in ("als", "itemknn", "popularity", "none") for large in (False, True) if not (name == "als" and large)],
)
def test_fast_methods_find_brute_forces_lists(name: str, large: bool, store: dict[str, pl.DataFrame], als: ModelBase,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Small catalogues: brute force itself. Large ones (here: the limit lowered to 0): the
    per-category and sparse methods give lists as similar as brute force's (HNSW for ALS: below)."""
    if large:
        monkeypatch.setattr(nb, "EXACT_MAX_ITEMS", 0)
    model = als if name in ("als", "none") else _fit(name, store)
    if name == "none":  # the ALS model's ids and seen matrix, without a similarity
        bare = _NoSimilarity.__new__(_NoSimilarity)
        bare.__dict__.update(model.__dict__)
        model = bare
    items = ItemFacts.from_table(model.items.external.tolist(), store["items"])
    k = facts.NEIGHBOURS
    found = find_neighbours(model, items, k)
    want = _brute_force(model, items, k)
    assert found.table.dtype == np.int32 and found.table.shape == (items.n, k)
    np.testing.assert_array_equal(found.table >= 0, want >= 0)  # as many neighbours per item
    np.testing.assert_allclose(_similarities(model, items, found.table), _similarities(model, items, want), rtol=1e-6)
    if not large:  # the same lists as the model's similar_items (what the reason checks compare with)
        np.testing.assert_array_equal(found.table, want)
        for i in (0, 7, items.n - 1):
            similar = set(model.similar_items([items.ids[i]], k)["similar_item_id"]) if model.has_item_similarity else None
            if similar is not None:
                assert {items.ids[j] for j in found.table[i] if j >= 0} <= similar
    assert not (found.table == np.arange(items.n)[:, None]).any()  # never its own neighbour
    sims = _similarities(model, items, found.table)
    assert (np.nan_to_num(np.diff(sims, axis=1), nan=0.0) <= 1e-6).all()  # best first


def test_hnsw_recall_against_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above EXACT_MAX_ITEMS, cosine neighbours come from the HNSW graph: most of them right."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    vectors = centres[rng.integers(0, 40, 3000)] + 0.6 * rng.normal(size=(3000, 16))
    vectors[::60] = 0.0  # items without interactions: no neighbours, nobody's neighbour
    monkeypatch.setattr(nb, "BLOCK", 700)  # added and queried in several blocks
    approx = nb.cosine_hnsw(vectors, 50)  # scales the rows itself
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    exact = nb.exact(lambda idx: unit[idx] @ unit.T, len(unit), 50)
    hits = sum(len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx, exact))
    assert hits / (exact >= 0).sum() >= 0.95
    assert not (approx == np.arange(len(unit))[:, None]).any()
    assert (approx[::60] == -1).all() and not np.isin(approx, np.arange(0, len(unit), 60)).any()


def test_the_digest_follows_the_item_order() -> None:
    assert nb.items_digest(["a", "b"]) == nb.items_digest(["a", "b"])
    assert nb.items_digest(["a", "b"]) != nb.items_digest(["b", "a"])
    assert nb.items_digest(["ab"]) != nb.items_digest(["a", "b"])


def test_the_snapshot_stores_the_lists_and_the_service_uses_them(tmp_path: Path, store: dict[str, pl.DataFrame], als: ModelBase,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    write_snapshot(tmp_path, profiles=store["profiles"], events=store["events"], as_of=None, fingerprint="f", model=als,
                   item_table=store["items"])
    manifest = json.loads((tmp_path / SNAPSHOT_DIR / "manifest.json").read_text())
    entry = manifest["neighbours"]
    assert entry["file"] == NEIGHBOURS and entry["k"] == facts.NEIGHBOURS and entry["method"] == "exact"
    assert entry["items_digest"] == nb.items_digest(als.items.external.tolist())
    snap = read_snapshot(tmp_path)
    assert snap is not None and snap.neighbours is not None
    items = ItemFacts.from_table(als.items.external.tolist(), store["items"])
    np.testing.assert_array_equal(snap.neighbours.table, find_neighbours(als, items, facts.NEIGHBOURS).table)
    with caplog.at_level(logging.INFO, logger="storerec.ranking"):
        ranker = Ranker(als, store["items"], store["profiles"], store["events"], neighbours=snap.neighbours)
    assert ranker.similarity.neighbours is snap.neighbours.table  # loaded, not found again
    assert "found now" not in caplog.text


def test_lists_for_another_item_order_are_found_again(store: dict[str, pl.DataFrame], als: ModelBase,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    stored = item_neighbours(als, store["items"])
    shuffled = als.items.external.tolist()[::-1]  # the same items, another order: the stored rows would be wrong
    model = type(als).__new__(type(als))
    model.__dict__.update(als.__dict__)
    model.items = IdMap.from_values(shuffled)
    model.item_factors = als.item_factors[::-1].copy()
    items = ItemFacts.from_table(shuffled, store["items"])
    with caplog.at_level(logging.WARNING, logger="storerec.ranking"):
        sim = ItemSimilarity.build(model, items, stored)
    assert "another item order" in caplog.text
    assert not np.array_equal(sim.neighbours, stored.table)
    np.testing.assert_array_equal(sim.neighbours >= 0, _brute_force(model, items, facts.NEIGHBOURS) >= 0)
    # and a k the service no longer uses
    fewer = nb.Neighbours(stored.table[:, :10], stored.items_digest, stored.method)
    assert "10 neighbours per item" in (fewer.mismatch(als.items.external.tolist(), facts.NEIGHBOURS) or "")


def test_a_file_that_disagrees_with_its_manifest_is_refused(tmp_path: Path, store: dict[str, pl.DataFrame], als: ModelBase) -> None:
    write_snapshot(tmp_path, profiles=store["profiles"], events=store["events"], as_of=None, fingerprint="f", model=als,
                   item_table=store["items"])
    np.save(tmp_path / SNAPSHOT_DIR / NEIGHBOURS, np.zeros((3, facts.NEIGHBOURS), dtype=np.int32))
    with pytest.raises(ValueError, match="neighbour lists of shape"):
        read_snapshot(tmp_path)


def test_a_version_without_stored_lists_still_serves(tmp_path: Path, store: dict[str, pl.DataFrame], als: ModelBase,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Registered before the lists were stored (or baked from the data folder): found at start, logged."""
    write_snapshot(tmp_path, profiles=store["profiles"], events=store["events"], as_of=None, fingerprint="f")
    snap = read_snapshot(tmp_path)
    assert snap is not None and snap.neighbours is None and snap.manifest["neighbours"] is None
    with caplog.at_level(logging.INFO, logger="storerec.ranking"):
        ranker = Ranker(als, store["items"], snap.profiles, snap.events, neighbours=snap.neighbours)
    assert "found now" in caplog.text and "none stored" in caplog.text
    items = ItemFacts.from_table(als.items.external.tolist(), store["items"])
    np.testing.assert_array_equal(ranker.similarity.neighbours >= 0, _brute_force(als, items, facts.NEIGHBOURS) >= 0)
    result = ranker.rank("u1", 10, Context("product", ("i12",)))
    assert len(result.items) == 10
    assert any(r["code"] == "similar_to_context" for it in result.items for r in it.reasons)


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "registered-before"])
def test_the_service_loads_a_versions_lists(stored: bool, tmp_path: Path, store: dict[str, pl.DataFrame], als: ModelBase) -> None:
    """storerec.serving.state builds the Ranker with the snapshot's lists (or finds them: old versions)."""
    from storerec.core.settings import Settings
    from storerec.serving import state

    extra = {"model": als, "item_table": store["items"]} if stored else {}
    write_snapshot(tmp_path, profiles=store["profiles"], events=store["events"], as_of=None, fingerprint="f", **extra)
    snap = read_snapshot(tmp_path)
    assert snap is not None
    settings = Settings(data={"dir": str(tmp_path / "no-data-folder")})
    loaded = state._build(settings, als, store["items"], snap, version="1", label="test version", data={})
    if stored:
        assert snap.neighbours is not None and loaded.ranker.similarity.neighbours is snap.neighbours.table
    else:
        assert snap.neighbours is None and loaded.ranker.similarity.neighbours.shape == (als.items.external.size, facts.NEIGHBOURS)
    assert len(loaded.ranker.rank("u3", 5).items) == 5


def _ids(model: ModelBase) -> IdMap:
    assert model.items is not None
    return model.items


def _old_similar_page(ranker: Ranker, item_id: str, k: int) -> list[tuple[str, float, str]]:
    """The item page's similar list as the service computed it before: ``model.similar_items``
    with every item vector normalised again per request."""
    from storerec.core.formulas import unit_rows
    from storerec.models.base import top_k

    model = ranker.model
    ids = _ids(model)
    i = ids.index_of(item_id)
    if model.has_item_vectors and type(model)._item_similarity is ModelBase._item_similarity:
        unit = unit_rows(model._item_vectors())
        scores = (unit[np.array([i])] @ unit.T).astype(np.float32)
    else:
        scores = model.item_similarity(np.array([i])).astype(np.float32)
    scores[0, i] = -np.inf
    top, top_scores = top_k(scores, k)
    keep = top[0] >= 0
    return [(ids.external[j], float(s), ranker.items.category[j]) for j, s in zip(top[0][keep], top_scores[0][keep])]


def _page(ranker: Ranker, item_id: str, k: int) -> list[tuple[str, float, str]]:
    similar, _ = ranker.similar(item_id, k)
    assert [it.rank for it in similar] == list(range(1, len(similar) + 1))
    return [(it.item_id, it.score, it.category) for it in similar]


def _with_edge_vectors(model: ModelBase) -> Any:
    """A copy of an ALS model whose item vectors have zero rows (items without interactions) and
    duplicates (ties)."""
    import copy

    edged: Any = copy.copy(model)
    vectors = edged.item_factors.copy()
    vectors[[3, 17]] = 0.0
    vectors[[5, 6, 9]] = vectors[4]  # four equally similar items
    edged.item_factors = vectors
    edged._unit_cache = None
    return edged


@pytest.mark.parametrize("name", ["als", "als-edges", "itemknn", "popularity"])
def test_the_similar_page_equals_the_per_request_computation(name: str, store: dict[str, pl.DataFrame], als: ModelBase) -> None:
    """/similar_items (Ranker.similar) from the unit vectors made at start: the same items,
    scores (bit for bit) and order as the old per-request normalisation, for every item, with
    zero vectors and ties, k from 1 to above the catalogue; models with a similarity of their
    own answer as before."""
    model = _with_edge_vectors(als) if name == "als-edges" else als if name == "als" else _fit(name, store)
    ranker = Ranker(model, store["items"], store["profiles"], store["events"])
    ids = _ids(model)
    for item_id in ids.external.tolist():
        for k in (1, 10, 50, 100, len(ids) + 3):
            old = _old_similar_page(ranker, item_id, k)
            new = _page(ranker, item_id, k)
            assert new == old, (name, item_id, k)
            assert all(np.signbit(s) == np.signbit(o) for (_, s, _), (_, o, _) in zip(new, old))


def test_above_the_exact_limit_the_page_comes_from_the_stored_lists(store: dict[str, pl.DataFrame], als: ModelBase,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the lists are approximate (above EXACT_MAX_ITEMS), an item with at least k listed
    neighbours is answered from them (re-scored: no product with the catalogue); the others
    (k above the list, fewer listed neighbours) by the exact product. With exact lists in
    place of HNSW's, the answers are the exact ones."""
    from storerec.ranking import ranker as ranker_module

    model = _with_edge_vectors(als)
    ranker = Ranker(model, store["items"], store["profiles"], store["events"])  # exact lists (the small catalogue)
    monkeypatch.setattr(ranker_module, "EXACT_MAX_ITEMS", 0)
    full_products: list[int] = []
    real_top_k_row = ranker_module.top_k_row

    def counted_top_k_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # the product with every item
        full_products.append(k)
        return real_top_k_row(scores, k)

    monkeypatch.setattr(ranker_module, "top_k_row", counted_top_k_row)
    listed = (ranker.similarity.neighbours >= 0).sum(axis=1)
    ids = _ids(model)
    for i, item_id in enumerate(ids.external.tolist()):
        for k in (1, 10, 50, 60):
            before = len(full_products)
            new = _page(ranker, item_id, k)
            old = _old_similar_page(ranker, item_id, k)
            zero_vector = not model.item_factors[i].any()  # 3 and 17, and items nobody interacted with
            assert len(full_products) - before == (0 if zero_vector or (k <= facts.NEIGHBOURS and listed[i] >= k) else 1)
            if zero_vector:  # equally similar (0) to every item: the lowest indices, not argpartition's pick of the zeros
                want = [j for j in range(min(k + 1, len(ids))) if j != i][:k]
                assert new == [(ids.external[j], 0.0, ranker.items.category[j]) for j in want]
                assert [s for _, s, _ in old] == [0.0] * len(want)
                continue
            np.testing.assert_allclose([s for _, s, _ in new], [s for _, s, _ in old], rtol=1e-6, atol=1e-7)
            exact = dict((it, s) for it, s, _ in _old_similar_page(ranker, item_id, len(ids)))
            assert len({it for it, _, _ in new}) == len(new)
            for it, s, _ in new:  # each item as similar as the item the exact answer has there (ties may swap)
                assert abs(exact[it] - s) <= 1e-6
            head = sorted(exact.values(), reverse=True)[: k + 1]
            if (np.abs(np.diff(head)) > 1e-6).all():  # no near-ties within the first k + 1: the very same items
                assert [it for it, _, _ in new] == [it for it, _, _ in old], (item_id, k)
