"""The service on a model trained once for this module (ALS, item-kNN second), called over HTTP
in this process through its ASGI app (tests/_serve.py: asgi_client). Reasons are checked against
the data: each one must be true. Process-level behaviour (workers, signals, memory, the printed
admin token, logs) is tested against the real `storerec serve` in test_http.py and
test_reload_workers.py."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC
from pathlib import Path

import httpx
import polars as pl
import pytest

from storerec.cli import main
from storerec.core.settings import load_settings
from storerec.models.base import ModelBase
from storerec.registry import tracking
from tests._reasons import Shown, Truth, check_reason
from tests._serve import asgi_client, free_port, write_config

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def svc(store: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("svc")
    cfg = write_config(root, store, extra='[serving]\nadmin_token = "s3cret"\n[events]\nmax_future_seconds = 3600')
    # No model yet: serve refuses with a clear message (before it would start BentoML).
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["--config", str(cfg), "serve", "--port", str(free_port())]) == 2
    assert "no model version 'champion'" in err.getvalue()
    assert main(["--config", str(cfg), "-q", "train", "--model", "als"]) == 0
    assert main(["--config", str(cfg), "-q", "train", "--model", "itemknn"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "1"]) == 0
    settings = load_settings(cfg, environ={})
    with asgi_client(cfg) as client:
        yield {"client": client, "cfg": cfg, "store": store, "settings": settings, "root": root}


def post(svc, path: str, body) -> httpx.Response:
    return svc["client"].post(path, json=body)


@pytest.fixture(scope="module")
def data(svc):
    store = svc["store"]
    return {
        "events": pl.read_parquet(store / "events.parquet"),
        "profiles": pl.read_parquet(store / "profiles" / "users.parquet"),
        "items": pl.read_parquet(store / "profiles" / "items.parquet"),
    }


def hot_users(data, n: int = 15) -> list[str]:
    counts = data["events"].filter(pl.col("event_type") == "purchase").group_by("user_id").len()
    return counts.filter(pl.col("len") >= 3).sort("user_id")["user_id"].head(n).to_list()


def test_details_give_what_a_storefront_renders_and_lean_answers_stay_lean(svc, data) -> None:
    """"details": true adds each item's title, brand, price and in_stock, as the catalogue has
    them, on every list endpoint; without it the items keep only their five fields."""
    from storerec.serving.schemas import ItemOut

    catalogue = {r["item_id"]: r for r in pl.read_parquet(svc["store"] / "items.parquet").iter_rows(named=True)}
    user = hot_users(data)[1]
    item = data["items"].sort("pop_30d", descending=True)["item_id"][0]
    lists = {
        "/recommend": post(svc, "/recommend", {"user_id": user, "k": 6, "details": True}).json()["items"],
        "/similar_items": (lambda b: b["similar"] + b["bought_together"])(post(svc, "/similar_items", {"item_id": item, "k": 4, "details": True}).json()),
        "/trending": post(svc, "/trending", {"k": 4, "details": True}).json()["items"],
        "/new_arrivals": post(svc, "/new_arrivals", {"k": 4, "details": True}).json()["items"],
    }
    for path, items in lists.items():
        assert items, path
        for it in items:
            ItemOut.model_validate(it)
            row = catalogue[it["item_id"]]
            assert (it["title"], it["brand"], it["price"], it["in_stock"]) == (row["title"], row["brand"], row["price"], row["in_stock"]), path
    lean = post(svc, "/recommend", {"user_id": user, "k": 6}).json()["items"]
    assert all(set(it) == {"item_id", "rank", "score", "category", "reasons"} for it in lean)
    assert [it["item_id"] for it in lean] == [it["item_id"] for it in lists["/recommend"]]  # the same list either way
    assert post(svc, "/recommend", {"user_id": user, "details": "yes"}).status_code == 400


def test_storerec_serve_hands_the_process_options_to_bentoml(monkeypatch: pytest.MonkeyPatch) -> None:
    """serving.workers, access_log and metrics reach BentoML's configuration through the
    variables `storerec serve` sets (serving/launch.py), over the @bentoml.service arguments; the
    real service shows it (test_reload_workers.py: 2 workers, an access log; test_http.py: none,
    no /metrics)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    from storerec.core.settings import ServingSettings
    from storerec.serving.launch import SERVICE_NAME, process_env
    from storerec.serving.service import StoreRec

    env = process_env(ServingSettings(workers=2, access_log=False, metrics=False, blas_threads=1))
    assert env["OTEL_SDK_DISABLED"] == "true" and env["OPENBLAS_NUM_THREADS"] == "1"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        StoreRec.inject_config()  # what BentoML does in the arbiter and in each worker
        config = BentoMLContainer.config.get()
        assert config["services"][SERVICE_NAME]["workers"] == 2
        assert config["services"][SERVICE_NAME]["traffic"]["timeout"] == 30  # from the decorator
        assert config["api_server"]["logging"]["access"]["enabled"] is False
        assert config["api_server"]["metrics"]["enabled"] is False
    finally:
        monkeypatch.undo()
        StoreRec.inject_config()


def test_health_readiness_and_experiments(svc) -> None:
    c = svc["client"]
    assert c.get("/healthz").status_code == 200 and c.get("/livez").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["ready"] is True and body["reasons"] == [] and (body["model"], body["model_version"]) == ("als", "1")
    assert body["event_log"]["enabled"] and body["experiments"] == {}
    assert body["control"]["model_version"] == "1" and body["control"]["follows"] == "champion"
    assert c.head("/readyz").status_code == 200  # BentoML's own route, from __is_ready__
    assert c.get("/experiments").json() == {"experiments": []}


def test_recommend_returns_k_items_with_reasons(svc, data) -> None:
    user = hot_users(data)[0]
    r = post(svc, "/recommend", {"user_id": user, "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "als" and body["model_version"] == "1" and len(body["request_id"]) == 32
    assert body["user_kind"] == "hot" and len(body["items"]) == 10
    assert [i["rank"] for i in body["items"]] == list(range(1, 11))
    assert len({i["item_id"] for i in body["items"]}) == 10
    assert all(i["reasons"] and all(x["text"] for x in i["reasons"]) for i in body["items"])


def test_responses_match_their_documented_models(svc, data) -> None:
    """The endpoints serialise plain data themselves (for speed); every body must still validate
    against the response model the OpenAPI page documents, with no extra fields."""
    from pydantic import BaseModel

    from storerec.serving.schemas import ListResponse, RecommendResponse, ScoreResponse, SimilarResponse

    def strict(model: type[BaseModel], body: dict) -> None:
        model.model_validate(body)
        assert set(body) == set(model.model_fields), (model.__name__, set(body) ^ set(model.model_fields))

    user = hot_users(data)[0]
    item = data["items"]["item_id"][0]
    for body in (
        {"user_id": user, "k": 10},
        {"user_id": "nobody-at-all", "k": 5, "context": {"page": "product", "item_ids": [item]}},
        {"session_id": "s-1", "k": 3},
    ):
        r = post(svc, "/recommend", body)
        assert r.status_code == 200, r.text
        strict(RecommendResponse, r.json())
        for it in r.json()["items"]:
            assert set(it) == {"item_id", "rank", "score", "category", "reasons"}
            assert all(set(reason) == {"code", "text", "evidence"} for reason in it["reasons"])
    strict(ScoreResponse, post(svc, "/score", {"user_id": user, "k": 5}).json())
    strict(SimilarResponse, post(svc, "/similar_items", {"item_id": item, "k": 5}).json())
    strict(ListResponse, post(svc, "/trending", {"k": 5}).json())
    strict(ListResponse, post(svc, "/new_arrivals", {"k": 5}).json())
    assert post(svc, "/recommend", {"user_id": user}).headers["content-type"] == "application/json"


def test_every_reason_is_true(svc, data, tmp_path: Path) -> None:
    """Every reason served over HTTP is checked against the data with the check registered for its
    code (tests/_reasons.py); a code without a check fails."""
    client = tracking.configure(svc["settings"].mlflow)
    version = tracking.resolve_version(client, svc["settings"].registered_model_name(), "1")
    model = ModelBase.load(tracking.download_version(client, version, tmp_path) / "model")
    truth = Truth(model, data["events"], data["items"], data["profiles"])
    seen_codes = set()
    for user in hot_users(data):
        body = post(svc, "/recommend", {"user_id": user, "k": 10}).json()
        for it in body["items"]:
            codes = tuple(r["code"] for r in it["reasons"])
            for reason in it["reasons"]:
                seen_codes.add(reason["code"])
                check_reason(truth, Shown(reason, it["item_id"], user, body["user_kind"], all_reasons=codes))
    assert {"because_viewed", "popular_in_your_category"} <= seen_codes


def test_category_cap_is_exact(svc, data) -> None:
    for user in hot_users(data, 5):
        body = post(svc, "/recommend", {"user_id": user, "k": 12, "diversity": {"max_per_category": 1}}).json()
        cats = [i["category"] for i in body["items"]]
        assert len(cats) == 12 and len(set(cats)) == 12
        body = post(svc, "/recommend", {"user_id": user, "k": 12, "diversity": {"max_per_category": 2, "strength": 0}}).json()
        cats = [i["category"] for i in body["items"]]
        assert max(cats.count(c) for c in cats) <= 2


def test_filters_are_honoured(svc, data) -> None:
    user = hot_users(data)[1]
    bought = set(data["events"].filter((pl.col("user_id") == user) & (pl.col("event_type") == "purchase"))["item_id"])
    price = dict(data["items"].select("item_id", "price").iter_rows())
    body = post(svc, "/recommend", {"user_id": user, "k": 30}).json()
    assert not bought & {i["item_id"] for i in body["items"]}
    body = post(svc, "/recommend", {"user_id": user, "k": 10, "filters": {"include_categories": ["Home"], "min_price": 10, "max_price": 80}}).json()
    assert body["items"] and all(i["category"].startswith("Home > ") and 10 <= price[i["item_id"]] <= 80 for i in body["items"])
    first = body["items"][0]["item_id"]
    filters = {"include_categories": ["Home"], "exclude_item_ids": [first], "exclude_categories": ["Home > Decor"]}
    body = post(svc, "/recommend", {"user_id": user, "k": 10, "filters": filters}).json()
    assert all(i["item_id"] != first and i["category"] != "Home > Decor" for i in body["items"])
    stock = dict(data["items"].select("item_id", "in_stock").iter_rows())
    body = post(svc, "/recommend", {"user_id": user, "k": 50}).json()
    assert all(stock[i["item_id"]] for i in body["items"])


def test_seen_items_are_left_out_unless_asked_for(svc, data) -> None:
    """Default lists leave out everything the user interacted with; exclude_seen=false lets
    viewed (not bought) items back in, for reminder lists."""
    user = hot_users(data)[2]
    mine = data["events"].filter(pl.col("user_id") == user)
    seen = set(mine["item_id"])
    bought = set(mine.filter(pl.col("event_type") == "purchase")["item_id"])
    body = post(svc, "/recommend", {"user_id": user, "k": 50}).json()
    assert len(body["items"]) == 50 and not seen & {i["item_id"] for i in body["items"]}
    body = post(svc, "/recommend", {"user_id": user, "k": 50, "filters": {"exclude_seen": False}}).json()
    got = {i["item_id"] for i in body["items"]}
    assert got & (seen - bought), "an ALS list of 50 with seen items allowed should re-show some viewed item"
    assert not got & bought


def test_bare_score_endpoint(svc, data) -> None:
    user = hot_users(data)[0]
    r = post(svc, "/score", {"user_id": user, "k": 7})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 7 and [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    r = post(svc, "/score", {"user_id": "nobody-at-all", "k": 7})
    assert r.status_code == 404 and r.json()["field"] == "user_id" and "nobody-at-all" not in r.text  # ids are not echoed


def test_events_are_stored_once_within_the_configured_window(svc, data) -> None:
    """POST /events against a served list: stored once per event_id; the accepted timestamp
    window is the settings' (events.max_future_seconds = 3600 in this module's config, checked
    by the gate and not refused again by BentoML's own parse)."""
    from datetime import datetime, timedelta

    from storerec.events.eventlog import read_frames

    user = hot_users(data)[3]
    listed = post(svc, "/recommend", {"user_id": user, "k": 3}).json()
    rid, item = listed["request_id"], listed["items"][0]["item_id"]
    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    events = [{"request_id": rid, "item_id": item, "event_type": "click", "event_id": "svc-1", "timestamp": soon},
              {"request_id": rid, "item_id": item, "event_type": "purchase", "revenue": 12.5, "event_id": "svc-2"}]
    r = post(svc, "/events", {"events": events})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 2, "stored": 2}
    assert post(svc, "/events", {"events": events}).json() == {"received": 2, "stored": 0}  # a retry is stored once
    late = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    r = post(svc, "/events", {"events": [{"request_id": rid, "item_id": item, "event_type": "click", "timestamp": late}]})
    assert r.status_code == 422 and r.json()["field"] == "events.0" and "in the future" in r.json()["error"]
    feedback = read_frames(svc["settings"].eventlog.url)["feedback"]
    mine = feedback.filter(pl.col("request_id") == rid)
    assert sorted(mine["event_id"].to_list()) == ["svc-1", "svc-2"] and set(mine["user_id"].to_list()) == {user}


def test_cold_start_paths(svc, data) -> None:
    body = post(svc, "/recommend", {"user_id": "never-seen-before", "k": 8}).json()
    assert body["user_kind"] == "cold" and body["source"] == "popular" and len(body["items"]) == 8
    assert all(i["reasons"] for i in body["items"])
    # best sellers: the first is the in-stock item with the most buyers so far, the rest from the top of that list
    sellers = data["items"].filter(pl.col("in_stock")).sort(["users_total", "item_id"], descending=[True, False])["item_id"].to_list()
    assert body["items"][0]["item_id"] == sellers[0]
    assert {i["item_id"] for i in body["items"]} <= set(sellers[:100])
    anchor = data["items"].sort("pop_30d", descending=True)["item_id"][0]
    body = post(svc, "/recommend", {"user_id": "never-seen-before", "k": 5, "context": {"page": "product", "item_ids": [anchor]}}).json()
    assert body["source"] == "context" and anchor not in {i["item_id"] for i in body["items"]}
    similar = post(svc, "/similar_items", {"item_id": anchor, "k": 5}).json()["similar"]
    assert body["items"][0]["item_id"] in {s["item_id"] for s in similar}
    assert any(r["code"] == "similar_to_context" for r in body["items"][0]["reasons"])


def test_context_shifts_the_list_at_once(svc, data) -> None:
    user = hot_users(data)[2]
    cat = dict(data["items"].select("item_id", "category").iter_rows())
    before = post(svc, "/recommend", {"user_id": user, "k": 10, "diversity": {"strength": 0}}).json()["items"]
    have = {i["category"] for i in before}
    target_cat = next(c for c in sorted(set(cat.values())) if c not in have)
    recent = data["items"].filter(pl.col("category") == target_cat).sort("pop_30d", descending=True)["item_id"].head(3).to_list()
    after = post(svc, "/recommend", {"user_id": user, "k": 10, "diversity": {"strength": 0}, "context": {"recent_item_ids": recent}}).json()
    assert after["source"] == "model+context"
    assert sum(i["category"] == target_cat for i in after["items"]) >= 3


def _readme_examples() -> list[tuple[str, dict, str]]:
    """(path, body, shown JSON) of each ``curl -X POST`` example in the README followed by its output."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    out = []
    for m in re.finditer(r"```bash\n(curl -s -X POST localhost:3000(/\w+).*?)```\s*```json\n(.*?)```", text, flags=re.S):
        body = re.search(r"-d '(.*?)'", m.group(1), flags=re.S)
        assert body, m.group(1)
        out.append((m.group(2), json.loads(body.group(1)), m.group(3)))
    return out


def _shape(value):
    """The keys of a JSON value, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k != "evidence"}  # evidence fields differ per reason
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


def test_the_readmes_examples_answer_as_shown(svc) -> None:
    """#19 item 7: each curl example of the README, sent to the service: errors word for word,
    lists in the same shape (every field shown, none missing)."""
    examples = _readme_examples()
    assert len(examples) >= 3
    for path, body, shown in examples:
        got = post(svc, path, body).json()
        want = json.loads(shown)
        if "error" in want:
            assert got == want, (path, body)
        else:
            assert set(got) == set(want), (path, sorted(set(got) ^ set(want)))
            assert _shape(got["items"][0]) == _shape(want["items"][0]), path
            assert len(got["items"]) == len(want["items"]) == body["k"], path


def test_similar_trending_new_arrivals(svc, data) -> None:
    anchor = data["items"].sort("pop_30d", descending=True)["item_id"][0]
    body = post(svc, "/similar_items", {"item_id": anchor, "k": 5}).json()
    assert len(body["similar"]) == 5 and anchor not in {i["item_id"] for i in body["similar"]}
    assert post(svc, "/similar_items", {"item_id": "no-such-item"}).status_code == 404
    trending = post(svc, "/trending", {"k": 5}).json()["items"]
    assert len(trending) == 5 and all(any(r["code"] == "trending" for r in i["reasons"]) for i in trending if i["score"] >= 2)
    home = post(svc, "/trending", {"k": 5, "category": "Home"}).json()["items"]
    assert home and all(i["category"].startswith("Home > ") for i in home)
    new = set(data["items"].filter(pl.col("is_new"))["item_id"])
    arrivals = post(svc, "/new_arrivals", {"k": 10}).json()["items"]
    assert len(arrivals) == 10 and {i["item_id"] for i in arrivals} <= new


def test_trending_regions_are_checked_like_categories(svc, data) -> None:
    """A known region gets its shoppers' list; an unknown or wrongly-cased one is 404 naming the
    known ones (as an unknown category is), never everyone's list in silence."""
    regions = sorted(data["profiles"]["region"].drop_nulls().unique().to_list())
    region = regions[0]
    ok = post(svc, "/trending", {"k": 5, "region": region})
    assert ok.status_code == 200 and ok.json()["items"]
    for bad, hint in ((region.swapcase(), f"did you mean {region!r}"), ("Atlantis", "known: ")):
        r = post(svc, "/trending", {"k": 5, "region": bad})
        assert r.status_code == 404 and r.json()["field"] == "region", r.text
        assert hint in r.json()["error"] and all(x in r.json()["error"] for x in regions)
    assert post(svc, "/trending", {"k": 5, "category": "Nope"}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u1", "k": 0},
        {"user_id": "u1", "k": 101},
        {"user_id": "u1", "k": "ten"},
        {"user_id": 5},
        {"k": 3},
        {"user_id": "u1", "filters": {"include_categories": ["Nope"]}},
        {"user_id": "u1", "filters": {"min_price": 50, "max_price": 10}},
        {"user_id": "u1", "diversity": {"strength": 2}},
        {"user_id": "u1", "surprise": True},
    ],
)
def test_bad_requests_get_4xx_naming_the_field(svc, body) -> None:
    r = post(svc, "/recommend", body)
    assert 400 <= r.status_code < 500, r.text
    assert "Traceback" not in r.text and r.text


def test_malformed_and_oversized_bodies(svc) -> None:
    c = svc["client"]
    r = c.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.text
    r = c.post("/recommend", content=b'{"user_id": "' + b"x" * 200_000 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.text


def test_direct_dispatch_answers_as_bentomls_routes_do(svc, data) -> None:
    """serving.direct_dispatch (the default) skips BentoML's router and request parsing; a
    service with it off answers every endpoint the same (the request id aside), errors included."""
    users = hot_users(data, 60)[45:55]  # shoppers no other test here asks for (one impression each per service)
    anchor = data["items"].sort("pop_30d", descending=True)["item_id"][1]
    calls: list[tuple[str, dict]] = [
        *[("/recommend", {"user_id": u, "k": 6, "filters": {"exclude_purchased": True}, "diversity": {"max_per_category": 2}}) for u in users],
        ("/recommend", {"session_id": "direct-dispatch-anon", "k": 4, "context": {"page": "product", "item_ids": [anchor]}}),
        ("/recommend", {"user_id": users[0], "k": 3, "filters": {"include_categories": ["No such category"]}}),
        ("/score", {"user_id": users[1], "k": 5}),
        ("/score", {"user_id": "nobody-at-all"}),
        ("/similar_items", {"item_id": anchor, "k": 4}),
        ("/similar_items", {"item_id": "no-such-item"}),
        ("/trending", {"k": 3}),
        ("/new_arrivals", {"k": 3, "category": "Home"}),
        ("/recommend", {"user_id": "u1", "k": "ten"}),
    ]
    import bentoml

    handlers = bentoml.get_current_service().gate.handlers  # the dict the running gate reads
    saved = dict(handlers)
    assert set(saved) == {"/recommend", "/similar_items", "/trending", "/new_arrivals", "/events", "/track", "/score"}

    def routed(path: str, body: dict) -> httpx.Response:  # the same service with direct dispatch off
        handlers.clear()
        try:
            return post(svc, path, body)
        finally:
            handlers.update(saved)

    for path, body in calls:  # one impression per shopper per path: the frequency cap (3) stays out of it
        a, b = post(svc, path, body), routed(path, body)
        assert a.status_code == b.status_code, (path, body, a.text, b.text)
        ja, jb = a.json(), b.json()
        if a.status_code == 200:
            assert len(ja.pop("request_id")) == 32 and len(jb.pop("request_id")) == 32
        assert ja == jb, (path, body)
    # ... and a feedback event on a direct-dispatch list is stored through either path, once
    rid = post(svc, "/recommend", {"user_id": users[2], "k": 2}).json()["request_id"]
    ev = {"events": [{"request_id": rid, "item_id": anchor, "event_type": "click", "event_id": f"dd-{rid}"}]}
    assert routed("/events", ev).json() == {"received": 1, "stored": 1}
    assert post(svc, "/events", ev).json() == {"received": 1, "stored": 0}


def test_reload_swaps_models_and_survives_a_corrupt_one(svc, data) -> None:
    c = svc["client"]
    assert c.post("/admin/reload", json={}).status_code == 403
    headers = {"x-admin-token": "s3cret"}
    assert main(["--config", str(svc["cfg"]), "-q", "promote", "--version", "2"]) == 0
    r = c.post("/admin/reload", json={}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("model", "model_version", "previous_version", "follows")} == {
        "model": "itemknn", "model_version": "2", "previous_version": "1", "follows": "champion"}
    assert body["complete"] and [w["model_version"] for w in body["workers"]] == ["2"] and body["generation"] >= 1
    user = hot_users(data)[0]
    assert post(svc, "/recommend", {"user_id": user, "k": 3}).json()["model_version"] == "2"
    # Corrupt version 1's stored model files, point champion at it, reload: refused, v2 keeps serving.
    client = tracking.configure(svc["settings"].mlflow)
    v1 = client.get_model_version(svc["settings"].registered_model_name(), "1")
    model_id = v1.source.split("/")[-1]  # models:/m-...
    art = Path(client.get_logged_model(model_id).artifact_location.replace("file://", ""))
    metas = list(art.rglob("meta.json"))
    assert metas
    for meta in metas:
        meta.write_text("{ corrupt")
    assert main(["--config", str(svc["cfg"]), "-q", "promote", "--version", "1"]) == 0
    r = c.post("/admin/reload", json={}, headers=headers)
    assert r.status_code == 409 and "still serving version 2" in r.text
    assert post(svc, "/recommend", {"user_id": user, "k": 3}).json()["model_version"] == "2"
    assert c.get("/readyz").status_code == 200
