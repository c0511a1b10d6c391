"""The HTTP edge (serving/http.py): media type, streaming size limit, admin token, CORS, strict
validation, one error shape, and an OpenAPI document that matches what is enforced.

Unit tests drive the Gate in front of a stub ASGI app that records what reached it (what the
endpoints would see); then the same cases run against the service's own ASGI app in this process
(a popularity model); the last few run against the real `storerec serve` for what only a real
process shows: the printed admin token, a 200 MB chunked body against the worker's memory, the
server log, the load generator's sockets, schemathesis, a locked event log."""

from __future__ import annotations

import json
import logging
from datetime import UTC
from typing import Any

import pytest
from starlette.testclient import TestClient

from storerec.core.settings import Settings
from storerec.serving.http import ROUTES, Gate, GateConfig, openapi_spec

TOKEN = "t0ken-for-tests"
ORIGIN = "https://shop.example.com"


class Downstream:
    """Stands for BentoML's app: records the bodies that got through and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


def gate(token: str | None = TOKEN, origins: list[str] | None = None, max_bytes: int = 4096) -> tuple[TestClient, Downstream]:
    down = Downstream()
    defaults = GateConfig.from_settings(Settings())  # the default accepted window of event timestamps
    config = GateConfig(max_bytes=max_bytes, admin_token=token, cors_origins=origins or [], validation_context=defaults.validation_context)
    return TestClient(Gate(down, config=config)), down


def assert_error(r, status: int, field: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error", "code", "field", "details"}, body
    assert body["error"] and "Traceback" not in body["error"] and "IODescriptor" not in body["error"]
    if field is not None:
        assert body["field"] == field, body
    if code is not None:
        assert body["code"] == code, body
    return body


def test_direct_dispatch_hands_the_validated_request_to_the_handler_and_writes_its_answer() -> None:
    """serving.direct_dispatch: the handler gets the request model the gate validated, BentoML's
    app never sees the request, and the answer goes out as the handler made it (plus the server
    and CORS headers); invalid bodies are refused before the handler, as before."""
    from starlette.responses import Response

    from storerec.serving.schemas import ScoreRequest

    got: list[Any] = []

    async def score(req: Any) -> Response:
        got.append(req)
        return Response(b'{"items": []}', status_code=200, media_type="application/json")

    down = Downstream()
    config = GateConfig(max_bytes=4096, admin_token=TOKEN, cors_origins=[ORIGIN], handlers={"/score": score})
    client = TestClient(Gate(down, config=config))
    r = client.post("/score", json={"user_id": "u1", "k": 3}, headers={"origin": ORIGIN})
    assert r.status_code == 200 and r.json() == {"items": []}
    assert r.headers["server"] == "BentoML Service/storerec" and r.headers["access-control-allow-origin"] == ORIGIN
    assert isinstance(got[0], ScoreRequest) and (got[0].user_id, got[0].k) == ("u1", 3)
    assert down.bodies == []  # BentoML's app was not asked
    assert_error(client.post("/score", json={"user_id": "u1", "k": "3"}), 400, field="k")
    assert len(got) == 1
    client.post("/trending", json={})  # a route without a handler still goes through BentoML's app
    assert down.bodies == [b"{}"]


def test_direct_dispatch_answers_500_in_the_error_shape_when_a_handler_fails(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(req: Any) -> Any:
        raise RuntimeError("the ranker broke")

    config = GateConfig(max_bytes=4096, admin_token=TOKEN, handlers={"/score": broken})
    client = TestClient(Gate(Downstream(), config=config), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="storerec"):
        body = assert_error(client.post("/score", json={"user_id": "u1"}), 500, code="internal")
    assert "the ranker broke" not in body["error"]  # the details go to the log, not to the caller
    assert "the ranker broke" in caplog.text and "POST /score failed" in caplog.text


def test_direct_dispatch_is_a_setting() -> None:
    async def handler(req: Any) -> Any: ...

    on = GateConfig.from_settings(Settings(), handlers={"/score": handler})
    off = GateConfig.from_settings(Settings.model_validate({"serving": {"direct_dispatch": False}}), handlers={"/score": handler})
    assert on.handlers == {"/score": handler} and off.handlers == {}


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=x", None])
def test_non_json_bodies_get_415_and_never_reach_the_endpoint(ctype) -> None:
    client, down = gate()
    headers = {"content-type": ctype} if ctype else {}
    for path in ROUTES:
        r = client.post(path, content=b'{"user_id":"u1"}', headers={**headers, "x-admin-token": TOKEN})
        assert_error(r, 415, code="unsupported_media_type")
    assert down.bodies == []


def test_chunked_body_without_content_length_is_cut_at_the_limit() -> None:
    client, down = gate(max_bytes=4096)
    sent = 0

    def chunks():
        nonlocal sent
        yield b'{"user_id": "'
        for _ in range(10_000):  # 10 MB if it were all read
            sent += 1024
            yield b"x" * 1024
        yield b'"}'

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, code="payload_too_large")
    assert down.bodies == []
    r = client.post("/recommend", content=b" " * 5000, headers={"content-type": "application/json"})  # announced size
    assert_error(r, 413)
    r = client.post("/recommend", content=b'{"user_id": "u1"}', headers={"content-type": "application/json"})
    assert r.status_code == 200 and down.bodies == [b'{"user_id": "u1"}']  # the body reached the endpoint intact


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user_id": "u1", "k": True}, "k"),
        ({"user_id": "u1", "k": "5"}, "k"),
        ({"user_id": "u1", "k": 5.5}, "k"),
        ({"user_id": 5}, "user_id"),
        ({"user_id": "u1\x00"}, "user_id"),
        ({"user_id": "u1", "filters": {"in_stock_only": 1}}, "filters.in_stock_only"),
        ({"user_id": "u1", "filters": {"min_price": "3"}}, "filters.min_price"),
        ({"user_id": "u1", "surprise": True}, "surprise"),
        ({"user_id": "u1", "context": {"item_ids": [1]}}, "context.item_ids.0"),
    ],
)
def test_strict_types_name_the_field(body, field) -> None:
    client, down = gate()
    body = assert_error(client.post("/recommend", json=body), 400, field=field, code="invalid_request")
    assert body["details"] and all(set(d) == {"field", "message"} for d in body["details"])
    assert down.bodies == []


def test_integral_numbers_are_integers() -> None:
    """JSON Schema's integer: 5.0 is 5 (so a spec-valid request is never refused); 5.5 is not."""
    client, down = gate()
    assert client.post("/recommend", json={"user_id": "u1", "k": 5.0, "diversity": {"max_per_category": 2.0}}).status_code == 200
    assert_error(client.post("/recommend", json={"user_id": "u1", "k": 5.5}), 400, field="k")


@pytest.mark.parametrize("body, field", [
    ({"k": 3}, None),
    ({"user_id": "u1", "filters": {"min_price": 50, "max_price": 10}}, "filters"),
])
def test_rules_beyond_the_schema_get_422(body, field) -> None:
    client, down = gate()
    assert_error(client.post("/recommend", json=body), 422, field=field, code="rule_violated")
    assert down.bodies == []


@pytest.mark.parametrize("raw", [b'{"user_id": "u1", "filters": {"min_price": Infinity}}', b'{"user_id": "u1", "filters": {"max_price": NaN}}',
                                 b'{"user_id": "u1", "filters": {"max_price": 1e999}}', b"{not json", b"[]", b'"u1"'])
def test_non_finite_numbers_and_malformed_json_get_400(raw) -> None:
    client, down = gate()
    assert_error(client.post("/recommend", content=raw, headers={"content-type": "application/json"}), 400)
    assert down.bodies == []


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00"])
def test_event_timestamps_out_of_range_are_refused(ts) -> None:
    client, down = gate()
    body = {"events": [{"request_id": "r", "item_id": "i1", "event_type": "click", "timestamp": ts}]}
    assert_error(client.post("/events", json=body), 422, field="events.0")
    assert down.bodies == []


def test_a_recent_event_passes() -> None:
    from datetime import datetime, timedelta

    client, down = gate()
    ts = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = client.post("/events", json={"events": [{"request_id": "r", "item_id": "i1", "event_type": "purchase", "revenue": 3, "timestamp": ts}]})
    assert r.status_code == 200 and len(down.bodies) == 1


def test_admin_endpoints_need_the_token_and_are_off_without_one() -> None:
    client, down = gate(token=None)
    assert_error(client.post("/admin/reload", json={}), 403, code="forbidden")
    client, down = gate()
    assert_error(client.post("/admin/reload", json={}), 403)
    assert_error(client.post("/admin/reload", json={}, headers={"x-admin-token": TOKEN + "x"}), 403)
    assert_error(client.post("/admin/reload", json={}, headers={"x-admin-token": TOKEN[:-1]}), 403)
    assert down.bodies == []
    assert client.post("/admin/reload", json={"model": "1"}, headers={"x-admin-token": TOKEN}).status_code == 200
    assert down.bodies == [b'{"model":"1"}']


def test_cross_site_reload_is_impossible() -> None:
    """The issue's reproduction: a text/plain POST from another origin (a "simple" request a web
    page can send without preflight) with the token unknown to the page."""
    client, down = gate(origins=["https://shop.example.com"])
    r = client.post("/admin/reload", content=b'{"model":"1"}', headers={"content-type": "text/plain", "origin": "http://evil.example"})
    assert r.status_code in (403, 415) and "access-control-allow-origin" not in r.headers
    r = client.options("/admin/reload", headers={"origin": "https://shop.example.com", "access-control-request-method": "POST"})
    assert_error(r, 403)  # admin is never open to other origins, even allowed storefronts
    assert down.bodies == []


def test_cors_allow_list_for_public_endpoints() -> None:
    client, down = gate()  # nothing allowed by default
    r = client.options("/recommend", headers={"origin": "https://shop.example.com", "access-control-request-method": "POST"})
    assert_error(r, 403)
    r = client.post("/recommend", json={"user_id": "u1"}, headers={"origin": "https://shop.example.com"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers

    client, down = gate(origins=["https://shop.example.com"])
    r = client.options("/recommend", headers={"origin": "https://shop.example.com", "access-control-request-method": "POST",
                                              "access-control-request-headers": "content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "POST" in r.headers["access-control-allow-methods"] and "content-type" in r.headers["access-control-allow-headers"]
    r = client.post("/recommend", json={"user_id": "u1"}, headers={"origin": "https://shop.example.com"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example.com"
    r = client.post("/recommend", json={"user_id": "u1"}, headers={"origin": "https://other.example.com"})
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/recommend", headers={"origin": "https://other.example.com", "access-control-request-method": "POST"})
    assert_error(r, 403)


def test_the_window_of_event_timestamps_comes_from_the_settings() -> None:
    """events.max_future_seconds and eventlog.max_event_age_days reach the validators through the
    gate's validation context; BentoML's own parse (no context) does not refuse again what the
    gate let through."""
    from datetime import datetime, timedelta

    from storerec.serving.schemas import EventsRequest

    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    body = {"events": [{"request_id": "r", "item_id": "i1", "event_type": "click", "timestamp": soon}]}
    client, down = gate()  # the defaults: 300 s ahead at most
    assert_error(client.post("/events", json=body), 422, field="events.0")
    settings = Settings.model_validate({"events": {"max_future_seconds": 3600}, "eventlog": {"max_event_age_days": 400}})
    down = Downstream()
    client = TestClient(Gate(down, config=lambda: GateConfig.from_settings(settings)))
    assert client.post("/events", json=body).status_code == 200 and len(down.bodies) == 1
    old = {"events": [{"request_id": "r", "item_id": "i1", "event_type": "click", "timestamp": "2000-01-01T00:00:00Z"}]}
    assert_error(client.post("/events", json=old), 422, field="events.0")
    EventsRequest.model_validate_json(json.dumps(old))  # no context: not checked (the gate did)


def test_get_readyz_goes_to_the_status_app_with_cors_headers() -> None:
    """BentoML's own /readyz route shadows a mounted one; the gate hands GET /readyz to the app
    given as ``readyz`` (the service's status app), other GETs go on to BentoML's app."""
    seen: list[str] = []

    async def status_app(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ready": false, "reasons": ["x"]}'})

    down = Downstream()
    config = GateConfig(max_bytes=4096, admin_token=None, cors_origins=[ORIGIN])
    client = TestClient(Gate(down, config=config, readyz=status_app))
    r = client.get("/readyz", headers={"origin": ORIGIN})
    assert r.status_code == 503 and r.json()["reasons"] == ["x"] and r.headers["access-control-allow-origin"] == ORIGIN
    assert seen == ["/readyz"] and down.bodies == []
    assert client.get("/experiments", headers={"origin": ORIGIN}).headers["access-control-allow-origin"] == ORIGIN
    assert client.get("/healthz").status_code == 200 and len(down.bodies) == 2 and seen == ["/readyz"]


def test_wrong_method_is_405_in_the_error_shape() -> None:
    client, _ = gate()
    r = client.get("/recommend")
    assert_error(r, 405)
    assert r.headers["allow"] == "POST"
    r = client.request("TRACE", "/readyz")
    assert_error(r, 405)
    assert r.headers["allow"] == "GET"
    assert client.post("/healthz", json={}).status_code == 405


def test_refusals_are_logged_at_info_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    client, _ = gate()
    with caplog.at_level(logging.DEBUG, logger="storerec.http"):
        client.post("/recommend", json={"user_id": "u1", "k": "5"})
        client.post("/recommend", content=b"x", headers={"content-type": "text/plain"})
    recs = [r for r in caplog.records if r.name == "storerec.http"]
    assert len(recs) == 2 and all(r.levelno == logging.INFO and "\n" not in r.getMessage() and not r.exc_info for r in recs)


def test_openapi_documents_every_status_the_service_answers() -> None:
    spec = openapi_spec()
    json.dumps(spec)
    schemas = spec["components"]["schemas"]
    assert "ErrorResponse" in schemas and not any("IODescriptor" in name for name in schemas)
    for path in ROUTES:
        responses = spec["paths"][path]["post"]["responses"]
        for status in ("400", "413", "415", "503", "504"):
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "403" in spec["paths"]["/admin/reload"]["post"]["responses"]
    assert "404" in spec["paths"]["/similar_items"]["post"]["responses"]
    # nullable fields say so
    rec = schemas["RecommendResponse"]["properties"]
    assert {"type": "null"} in rec["experiment"]["anyOf"] and {"type": "null"} in rec["variant"]["anyOf"]


# ---- the service's own ASGI app, in this process ----------------------------------------------------

import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from storerec.cli import main  # noqa: E402
from tests._serve import asgi_client, descendants, rss_mb, sqlite_locked, start, stop, write_config  # noqa: E402


@pytest.fixture(scope="module")
def trained(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A popularity champion in a private registry, with CORS open to ORIGIN, metrics and the
    access log off and no admin token configured (`storerec serve` makes and prints one)."""
    root = tmp_path_factory.mktemp("http")
    cfg = write_config(root, store, extra=f'[serving]\naccess_log = false\nmetrics = false\ncors_origins = ["{ORIGIN}"]')
    assert main(["--config", str(cfg), "-q", "train", "--model", "popularity"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "1"]) == 0
    return {"root": root, "cfg": cfg}


@pytest.fixture(scope="module")
def app(trained: dict):
    with asgi_client(trained["cfg"], env={"STOREREC__SERVING__ADMIN_TOKEN": TOKEN}) as client:
        yield client


@pytest.mark.slow
def test_app_non_json_bodies_get_415_on_every_post_endpoint(app) -> None:
    for path in ROUTES:
        for ctype in ("multipart/form-data", "text/plain", "application/x-www-form-urlencoded"):
            r = app.post(path, content=b'{"user_id":"u1","k":3}', headers={"content-type": ctype, "x-admin-token": TOKEN})
            assert_error(r, 415)


@pytest.mark.slow
@pytest.mark.parametrize("path, raw, field, status", [
    ("/recommend", b'{"user_id": "u1", "k": true}', "k", 400),
    ("/recommend", b'{"user_id": "u1", "k": "5"}', "k", 400),
    ("/recommend", b'{"user_id": "u1", "filters": {"min_price": Infinity}}', "filters.min_price", 400),
    ("/events", b'{"events": [{"request_id": "r", "item_id": "i1", "event_type": "click", "timestamp": "0001-01-01T00:00:00Z"}]}', "events.0", 422),
    ("/recommend", b'{"user_id": "u1", "filters": {"include_categories": ["Nope"]}}', "filters.include_categories", 404),
    ("/trending", b'{"category": "Nope"}', "category", 404),
])
def test_app_strict_input_and_one_error_shape(app, path, raw, field, status) -> None:
    r = app.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(r, status, field=field)


@pytest.mark.slow
def test_app_unknown_ids_get_404_in_the_error_shape(app) -> None:
    assert_error(app.post("/similar_items", json={"item_id": "no-such-item"}), 404, field="item_id")
    assert_error(app.post("/recommend", json={"user_id": "u1", "filters": {"exclude_categories": ["Nope"]}}), 404,
                 field="filters.exclude_categories")


@pytest.mark.slow
def test_app_admin_needs_the_token_and_json(app) -> None:
    bare = {"content-type": "application/json"}
    assert_error(app.post("/admin/reload", content=b"{}", headers=bare), 403)
    r = app.post("/admin/reload", content=b'{"model":"1"}', headers={"content-type": "text/plain", "origin": "http://evil.example"})
    assert r.status_code in (403, 415) and "access-control-allow-origin" not in r.headers
    r = app.post("/admin/reload", json={"model": "1"}, headers={"x-admin-token": TOKEN})
    assert r.status_code == 200 and r.json()["model_version"] == "1", r.text
    assert_error(app.post("/admin/reload", json={"model": "77"}, headers={"x-admin-token": TOKEN}), 404, field="model")


@pytest.mark.slow
def test_app_cors_preflight_and_headers(app) -> None:
    r = app.options("/recommend", headers={"origin": ORIGIN, "access-control-request-method": "POST"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == ORIGIN
    r = app.post("/recommend", json={"user_id": "u1", "k": 3}, headers={"origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    for path in ("/readyz", "/experiments", "/docs.json"):
        r = app.get(path, headers={"origin": ORIGIN})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN, path
    r = app.options("/recommend", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert_error(r, 403)


@pytest.mark.slow
def test_app_spec_is_the_one_enforced_and_other_methods_get_405(app) -> None:
    r = app.get("/docs.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(json.dumps(openapi_spec()))
    assert app.get("/").status_code == 200  # BentoML's page showing it
    docs = app.get("/docs", follow_redirects=False)  # where the README and `storerec serve` send people
    assert docs.status_code == 307 and docs.headers["location"] == "/"
    assert app.get("/docs").text == app.get("/").text  # followed: the API page
    assert_error(app.get("/recommend"), 405)
    for path in ("/readyz", "/experiments", "/docs.json", "/docs", "/healthz"):
        r = app.post(path, json={})
        assert_error(r, 405)
        assert r.headers["allow"] == "GET"
    assert app.get("/no-such-path").status_code == 404


# ---- the real service (`storerec serve`) -------------------------------------------------------------


@pytest.fixture(scope="module")
def live(trained: dict):
    root = trained["root"]
    env = {"STOREREC__EVENTLOG__URL": f"sqlite:///{root / 'live-events.db'}"}  # apart from the in-process app's
    proc, client = start(trained["cfg"], root / "serve.log", env=env)
    yield {"proc": proc, "client": client, "log": root / "serve.log", "cfg": trained["cfg"], "root": root,
           "events_db": root / "live-events.db"}
    stop(proc)


def _raw_chunked(port: int, path: str, total_mb: int) -> tuple[bytes, int]:
    """POST ``total_mb`` MB as a chunked body with no Content-Length; stops sending as soon as the
    server answers. Returns (response bytes, bytes sent)."""
    import select

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, resp = 0, b""
    try:
        while sent < total_mb * 2**20:
            if select.select([s], [], [], 0)[0]:
                break
            s.sendall(frame)
            sent += len(chunk)
        s.settimeout(10)
        while b"\r\n\r\n" not in resp:
            part = s.recv(65536)
            if not part:
                break
            resp += part
        resp += s.recv(65536) if b"\r\n\r\n" in resp and not resp.rstrip().endswith(b"}") else b""
    except (BrokenPipeError, ConnectionResetError):
        resp += s.recv(65536)
    finally:
        s.close()
    return resp, sent


@pytest.mark.e2e
@pytest.mark.slow
def test_live_chunked_200mb_body_gets_413_without_growing_the_worker(live) -> None:
    port = live["client"].base_url.port
    pids = [live["proc"].pid, *descendants(live["proc"].pid)]
    before = sum(rss_mb(p) for p in pids)
    resp, sent = _raw_chunked(port, "/recommend", 200)
    after = sum(rss_mb(p) for p in pids)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:300]
    assert b"exceeds the limit" in resp
    assert sent < 50 * 2**20, f"the server read {sent / 2**20:.0f} MB before refusing"
    assert after - before < 20, f"service RSS grew {after - before:.0f} MB ({before:.0f} -> {after:.0f})"
    assert live["client"].get("/readyz").status_code == 200


@pytest.mark.e2e
@pytest.mark.slow
def test_live_start_says_when_it_is_ready_and_records_the_time_for_the_next_estimate(live, store: Path) -> None:
    """`storerec serve` prints, beside BentoML's lines, when GET /readyz answered 200 and how long
    the start took; the data folder keeps it (serving/startwatch.py), and the next start of this
    version reads it as its estimate."""
    import re

    from storerec.serving.startwatch import StartWatch, record_path

    port = live["client"].base_url.port
    text = live["log"].read_text()
    found = re.findall(rf"\[serve\] ready in (\d+\.\d) s: http://127\.0\.0\.1:{port} \(GET /readyz 200\)", text)
    assert len(found) == 1, text[-3000:]
    starts = json.loads(record_path(store).read_text())["starts"]
    mine = [s for s in starts if abs(s["ready_s"] - float(found[0])) < 0.06 and s["version"] == "1"]
    assert mine and mine[-1]["workers"] == 1
    nxt = StartWatch(url="http://127.0.0.1:1/readyz", record=record_path(store), version="1", workers=1)
    assert nxt.estimate(nxt.earlier_starts()) is not None


@pytest.mark.e2e
@pytest.mark.slow
def test_live_printed_admin_token_opens_the_admin_endpoints(live) -> None:
    c = live["client"]
    token = c.headers["x-admin-token"]  # printed by `storerec serve` (no token in the config)
    assert token.startswith("sr-")
    assert_error(c.post("/admin/reload", json={}, headers={"x-admin-token": ""}), 403)
    r = c.post("/admin/reload", json={"model": "1"}, headers={"x-admin-token": token})
    assert r.status_code == 200, r.text


@pytest.mark.e2e
@pytest.mark.slow
def test_live_log_has_one_info_line_per_4xx_and_no_access_lines(live) -> None:
    """The process-level options reach BentoML: the access log is off (serving.access_log =
    false: no access lines), /metrics is off (serving.metrics = false: 404), and storerec's own
    INFO lines pass BentoML's server logging."""
    c = live["client"]
    c.post("/recommend", json={"user_id": "u1", "k": "five"})
    c.post("/recommend", content=b"{}", headers={"content-type": "multipart/form-data"})
    assert c.post("/recommend", json={"user_id": "u1", "k": 3}).status_code == 200
    assert c.get("/metrics").status_code == 404
    time.sleep(0.5)
    text = live["log"].read_text()
    assert "Traceback" not in text and "IODescriptor" not in text
    lines = [line for line in text.splitlines() if "400 POST /recommend: k:" in line]
    assert lines and all("[INFO]" in line for line in lines)
    assert "(scheme=http" not in text, "an access log line although serving.access_log = false"


@pytest.mark.e2e
@pytest.mark.slow
def test_live_load_generator_against_the_service(live) -> None:
    """The benchmark's client (raw sockets): every request answered 200, latencies recorded."""
    from storerec.tools.loadgen import post_request, run_load

    port = live["client"].base_url.port
    reqs = [post_request("127.0.0.1", port, "/recommend", {"user_id": f"u{i:05d}", "k": 10}) for i in range(1, 6)]
    res = run_load("127.0.0.1", port, reqs, concurrency=2, warmup_s=0.2, duration_s=1.0)
    summary = res.summary()
    assert summary["errors"] == 0 and summary["requests"] > 10
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    bad = [post_request("127.0.0.1", port, "/recommend", {"user_id": "u", "k": 0})]
    res = run_load("127.0.0.1", port, bad, concurrency=1, warmup_s=0.0, duration_s=0.3)
    assert res.requests == 0 and res.errors.get("HTTP 400", 0) > 0


@pytest.mark.e2e
@pytest.mark.slow
def test_live_fuzz_finds_no_server_error_or_schema_violation(live, tmp_path: Path) -> None:
    """A short `make fuzz`: schemathesis against the live spec (the full run is `make fuzz`)."""
    from storerec.tools.fuzz import run_schemathesis

    url = str(live["client"].base_url).rstrip("/")
    summary = run_schemathesis(url, tmp_path, examples=int(os.environ.get("STOREREC_FUZZ_EXAMPLES", "5")),
                               token=live["client"].headers["x-admin-token"], log=lambda s: None)
    assert summary["exit_code"] == 0, summary["tail"]
    assert summary["cases"] and summary["cases"] >= 7 * 10, summary
    assert "Traceback" not in live["log"].read_text()


@pytest.mark.e2e
@pytest.mark.slow
def test_live_locked_event_log_turns_readyz_503_and_recovers(live) -> None:
    """Issue #10, case 1, against the real service: while another process holds an exclusive
    lock on the event log, POST /events answers 503 within eventlog.ack_timeout_ms (nothing
    stored), /readyz answers 503 with the reason; after the lock both recover and later
    events and impressions are written."""

    from storerec.events.eventlog import read_frames

    c = live["client"]
    db = live["events_db"]
    rid = c.post("/recommend", json={"user_id": "u00001", "k": 3}).json()["request_id"]
    with sqlite_locked(db):
        t0 = time.monotonic()
        r = c.post("/events", json={"events": [{"request_id": rid, "item_id": "i00001", "event_type": "click", "event_id": "lock-1"}]})
        assert_error(r, 503, code="event_log_unavailable")
        assert time.monotonic() - t0 < 15
        deadline = time.monotonic() + 15
        while (ready := c.get("/readyz")).status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert ready.status_code == 503 and any("event log" in x for x in ready.json()["reasons"]), ready.text
    deadline = time.monotonic() + 20
    while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert c.get("/readyz").status_code == 200
    r = c.post("/events", json={"events": [{"request_id": rid, "item_id": "i00001", "event_type": "click", "event_id": "lock-2"}]})
    assert r.status_code == 200 and r.json() == {"received": 1, "stored": 1}
    rid2 = c.post("/recommend", json={"user_id": "u00002", "k": 3}).json()["request_id"]
    c.post("/events", json={"events": [{"request_id": rid2, "item_id": "i00001", "event_type": "click", "event_id": "lock-3"}]})
    frames = read_frames(f"sqlite:///{db}")
    ids = set(frames["feedback"]["event_id"].to_list())
    assert "lock-2" in ids and "lock-3" in ids and "lock-1" not in ids  # the refused event was withdrawn
    assert rid2 in frames["impressions"]["request_id"].to_list()
