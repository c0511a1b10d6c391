"""The coordinate search behind `storerec tune` and `storerec run`'s automatic search (#13 item 8)."""

from __future__ import annotations

from typing import Any

import pytest

from storerec.core.settings import Settings
from storerec.training.tune import coordinate_search, data_dimensions, identity_of


def _quadratic(best: dict[str, Any]) -> Any:
    calls: list[dict[str, Any]] = []

    def score(params: dict[str, Any]) -> float:
        calls.append(params)
        full = {"a": 0, "b": 0, **params}
        return -sum((full[k] - best[k]) ** 2 for k in best)

    return score, calls


def test_finds_the_optimum_of_a_separable_function_and_never_refits() -> None:
    score, calls = _quadratic({"a": 3, "b": -1})
    space = {"a": [0, 1, 2, 3, 4], "b": [-2, -1, 0, 1]}
    result = coordinate_search(score, space, identity=lambda p: tuple(sorted({"a": 0, "b": 0, **p}.items())), max_trials=50)
    params, value = result.best
    assert {"a": 0, "b": 0, **params} == {"a": 3, "b": -1} and value == 0
    keys = [tuple(sorted({"a": 0, "b": 0, **p}.items())) for p in calls]
    assert len(keys) == len(set(keys)), "a parameter set was fitted twice"
    assert result.stopped == "a full pass brought no gain"
    assert len(calls) < 5 * 4  # fewer fits than the grid


def test_budgets_stop_the_search_but_the_defaults_are_always_fitted() -> None:
    score, calls = _quadratic({"a": 3, "b": -1})
    space = {"a": [0, 1, 2, 3, 4], "b": [-2, -1, 0, 1]}
    def ident(p: dict[str, Any]) -> Any:
        return tuple(sorted({"a": 0, "b": 0, **p}.items()))

    result = coordinate_search(score, space, identity=ident, max_trials=3)
    assert len(calls) == 3 and calls[0] == {} and "trial budget (3)" in result.stopped
    calls.clear()
    result = coordinate_search(score, space, identity=ident, max_trials=50, budget_s=0.0)
    assert calls == [{}] and "time budget" in result.stopped


def test_identity_sees_through_values_equal_to_the_defaults() -> None:
    key = identity_of(Settings(), "als")
    assert key({}) == key({"factors": 64}) != key({"factors": 128})
    assert key({}) == key({"interactions.weighting": "none"}) != key({"interactions.weighting": "bm25"})


def test_quantity_strength_is_searched_only_where_quantities_vary() -> None:
    import polars as pl

    events = pl.DataFrame({
        "user_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "z"],
        "event_type": ["purchase", "purchase", "view", "view"], "quantity": [1, 5, 1, 1],
    })
    dims = data_dimensions(Settings(), events)
    assert dims == {"interactions.strength.purchase.transform": ["none", "log1p"]}
    configured = Settings.model_validate({"events": {"strength": {"purchase": {"source": "quantity", "transform": "log1p"}}}})
    assert data_dimensions(configured, events) == {"interactions.strength.purchase.transform": ["log1p", "none"]}


@pytest.mark.parametrize("model", ["als", "ease", "itemknn", "lightfm", "bpr", "popularity"])
def test_every_value_of_every_search_space_builds_a_model(model: str) -> None:
    from storerec.training.tune import SEARCH_SPACES

    key = identity_of(Settings(), model)
    for dim, values in SEARCH_SPACES[model].items():
        assert len({key({dim: v}) for v in values}) == len(values), f"{model}.{dim}: two values make the same model"


def test_the_data_dimensions_are_searched_first() -> None:
    from storerec.training.tune import _space

    extra = {"interactions.strength.purchase.transform": ["none", "log1p"]}
    assert next(iter(_space("als", extra))) == "interactions.strength.purchase.transform"
    assert "interactions.strength.purchase.transform" not in _space("popularity", extra)


def test_recency_is_not_searched_when_timestamps_carry_no_order() -> None:
    from storerec.training.tune import _space

    assert "interactions.recency_half_life" in _space("als")
    untimed = _space("als", timed=False)
    assert "interactions.recency_half_life" not in untimed and "regularization" in untimed


def test_numeric_dimensions_are_line_searched_from_the_current_value() -> None:
    """From the default 1.0 the search climbs to 30 without trying the values below 1.0, and a
    value named explicitly with weight alone is the same model as the default."""
    calls: list[dict[str, Any]] = []

    def score(params: dict[str, Any]) -> float:
        calls.append(params)
        reg = params.get("r", 1.0)
        return -abs(reg - 30.0)

    space = {"r": [0.001, 0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0]}
    result = coordinate_search(score, space, identity=lambda p: p.get("r", 1.0), max_trials=50, default_of={"r": 1.0}.get)
    assert result.best[0] == {"r": 30.0}
    assert sorted(c.get("r", 1.0) for c in calls) == [1.0, 3.0, 10.0, 30.0, 100.0]
    key = identity_of(Settings(), "als")
    assert key({}) == key({"interactions.strength.purchase.transform": "none"}) != key({"interactions.strength.purchase.transform": "log1p"})


def test_no_decay_counts_as_the_longest_half_life() -> None:
    from storerec.training.tune import _ordered

    assert _ordered([None, 5, 10, 20, 50]) == [5, 10, 20, 50, None]
    assert _ordered(["cosine", "bm25"]) is None and _ordered([True, False]) is None
