"""The explorer's form handling, without a service (its pages are tested against the real service,
in a browser, in test_explore.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from starlette.datastructures import QueryParams

from storerec.serving.explore import STATIC, BadParameter, shopper_request, static_file


def test_the_form_becomes_the_api_request() -> None:
    q = QueryParams("form=1&user_id=u1&k=7&page=cart&context=i1,i2&context=i3&include=Home&include=Beauty%20%3E%20Makeup"
                    "&min_price=5&max_price=50&in_stock=1&strength=0.25&cap=2")
    req = shopper_request(q)
    assert req.user_id == "u1" and req.k == 7 and req.context.page == "cart"
    assert req.context.item_ids == ["i1", "i2", "i3"]
    assert req.filters.include_categories == ["Home", "Beauty > Makeup"]
    assert (req.filters.min_price, req.filters.max_price) == (5.0, 50.0)
    assert req.filters.in_stock_only and not req.filters.exclude_seen and not req.filters.exclude_purchased  # unticked boxes of a sent form
    assert (req.diversity.strength, req.diversity.max_per_category) == (0.25, 2)


def test_a_bare_link_keeps_the_apis_defaults() -> None:
    req = shopper_request(QueryParams("user_id=u1"))
    assert req.filters.exclude_seen and req.filters.exclude_purchased and req.filters.in_stock_only
    assert req.k == 10 and req.diversity.strength is None and req.diversity.max_per_category is None
    anonymous = shopper_request(QueryParams(""))
    assert anonymous.user_id is None and anonymous.session_id == "explorer"


@pytest.mark.parametrize(("query", "field"), [
    ("k=abc", "k"), ("k=101", "k"), ("cap=0", "cap"), ("cap=1.5", "cap"), ("strength=1.5", "strength"), ("strength=nan", "strength"),
    ("page=checkout", "page"), ("min_price=-1", "min_price"), ("min_price=9&max_price=1", "min_price"),
    ("user_id=" + "x" * 201, "user_id"), ("context=" + ",".join(f"i{n}" for n in range(51)), "context"),
])
def test_a_bad_parameter_is_named(query: str, field: str) -> None:
    with pytest.raises(BadParameter) as err:
        shopper_request(QueryParams(query))
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


def test_assets_ship_in_the_package() -> None:
    for name in STATIC:
        assert len(static_file(name)) > 500
    assert b"http" not in static_file("explore.css")  # no fonts or images from another host


def test_the_explorer_can_be_turned_off() -> None:
    from storerec.serving.service import StoreRec

    inner = StoreRec.inner  # type: ignore[attr-defined]  # the class BentoML wraps
    response = asyncio.run(inner.explore(SimpleNamespace(explorer=None), None))
    assert response.status_code == 404 and json.loads(response.body)["code"] == "explorer_off"
