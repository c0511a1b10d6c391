"""The HTTP edge of the service: one ASGI middleware in front of BentoML's endpoints.

For every request it decides, before any endpoint code runs:

* **CORS**: browsers on the storefront origins in ``serving.cors_origins`` may call the public
  endpoints (preflight answered); no origin is allowed by default and the admin endpoints are
  never open to other origins.
* **Media type**: POST bodies must be ``application/json`` (415 otherwise: form and text bodies
  are never parsed as JSON, so a web page cannot post to the service with a "simple" request).
* **Size**: a body larger than ``serving.max_body_bytes`` gets 413 whether or not it announces a
  Content-Length (chunked bodies are counted as they stream in, never buffered past the limit).
* **Admin**: ``/admin/*`` needs the ``x-admin-token`` header (compared in constant time); with no
  token configured the admin endpoints are off (403).
* **Validation**: the body is validated against the endpoint's request model in strict JSON mode
  (no ``"5"`` for 5, no ``true`` for 1, no NaN/Infinity, unknown fields refused).

Every refusal has one shape (:class:`storerec.serving.schemas.ErrorResponse`) naming the field,
and is logged at INFO in one line. :data:`ROUTES` pairs each POST path with its request and
response models (the gate and BentoML validate against the same ones), and the OpenAPI document
the service shows at ``GET /docs.json`` is built here from them, so the spec is what the service
enforces.
"""

from __future__ import annotations

import contextvars
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from pydantic_core import to_json
from starlette.responses import Response

from storerec.core.settings import Settings
from storerec.serving.launch import SERVICE_NAME
from storerec.serving.schemas import (
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    ListRequest,
    ListResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
    SimilarRequest,
    SimilarResponse,
    TrackRequest,
)

log = logging.getLogger("storerec.http")

_SERVER = [(b"server", f"BentoML Service/{SERVICE_NAME}".encode())]  # as BentoML's endpoint wrapper sets it

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Route(NamedTuple):
    request: type[BaseModel]
    response: type[BaseModel]
    summary: str
    statuses: tuple[int, ...]  # error statuses it can answer besides 400/405/413/415/429/503/504


ROUTES: dict[str, Route] = {
    "/recommend": Route(RecommendRequest, RecommendResponse, "Personalised list with reasons and diversity (home, product and cart pages).", (404, 422)),
    "/similar_items": Route(SimilarRequest, SimilarResponse, "Item page: similar items and items bought together.", (404,)),
    "/trending": Route(ListRequest, ListResponse, "Items growing fastest this week, optionally per category or region.", (404,)),
    "/new_arrivals": Route(ListRequest, ListResponse, "Popular new arrivals, optionally per category.", (404,)),
    "/events": Route(EventsRequest, EventsResponse,
                     "Record clicks, carts and purchases against the request_id of the list they came from; answers once committed.", (404, 422)),
    "/track": Route(TrackRequest, EventsResponse,
                    "Record storefront behaviour (views, carts, purchases, favourites) not tied to a served list; answers once "
                    "committed, and the shopper's next list reacts at once.", (404, 422)),
    "/score": Route(ScoreRequest, ScoreResponse, "Bare model scores for a known user (diagnostic; the baseline of the serving benchmark).", (404,)),
    "/admin/reload": Route(ReloadRequest, ReloadResponse,
                           "Load a registered version (or the configured alias again) in every worker. Needs x-admin-token.", (403, 404, 409)),
}
ADMIN_PREFIX = "/admin/"
STATUS_ROUTES = ("/readyz", "/experiments", "/docs.json", "/docs")  # the service's own GET routes (its mounted status app)
GET_ROUTES = (*STATUS_ROUTES, "/healthz", "/livez", "/metrics")  # ... and BentoML's
CODES = {
    400: "invalid_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "rule_violated", 429: "too_many_requests", 500: "internal", 503: "not_ready", 504: "timeout",
}
STATUS_TEXT = {
    400: "Bad Request: the body breaks the schema (the field is named)", 403: "Forbidden", 404: "Not Found: an id or category the catalogue does not have",
    405: "Method Not Allowed", 409: "Conflict: the version exists but cannot be loaded", 413: "Payload Too Large",
    415: "Unsupported Media Type: send application/json", 422: "Unprocessable: the body has the right shape but breaks a rule stated in the field descriptions",
    429: "Too Many Requests", 503: "Service Unavailable (not ready, or the event log cannot write)", 504: "Gateway Timeout",
}


def error_body(status: int, message: str, *, code: str | None = None, field: str | None = None,
               details: list[dict[str, Any]] | None = None) -> bytes:
    return to_json({"error": message, "code": code or CODES.get(status, "error"), "field": field, "details": details or []})


_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("storerec_request", default="")  # "POST /recommend", set by the gate


def error_response(status: int, message: str, **kw: Any) -> Response:
    """A Starlette response in the one error shape (endpoints return it instead of raising, so
    BentoML neither reshapes it nor logs a traceback for a client's mistake); logged in one line,
    at INFO for a 4xx (the client's mistake), WARNING for a 5xx."""
    log.log(logging.INFO if status < 500 else logging.WARNING, "%d %s: %s", status, _REQUEST.get(), message)
    return Response(error_body(status, message, **kw), status_code=status, media_type="application/json")


def _loc(loc: tuple[Any, ...]) -> str | None:
    return ".".join(str(x) for x in loc) or None


def validation_details(exc: ValidationError) -> tuple[int, list[dict[str, Any]]]:
    """``(status, details)``: 400 when the body breaks the schema (types, ranges, unknown
    fields), 422 when it has the documented shape but breaks a rule the schema cannot state
    (a timestamp outside the accepted window, revenue on a click, min_price above max_price,
    neither user_id nor session_id)."""
    out = []
    rules_only = True
    for e in exc.errors(include_url=False, include_input=False, include_context=False):
        rules_only &= e["type"] == "value_error"
        msg = e["msg"].removeprefix("Value error, ")
        out.append({"field": _loc(tuple(e["loc"])), "message": msg})
    return (422 if rules_only and out else 400), out


@dataclass(frozen=True)
class GateConfig:
    """What the gate enforces, from the settings (:meth:`from_settings`)."""

    max_bytes: int
    admin_token: str | None
    cors_origins: list[str] = field(default_factory=list)
    validation_context: dict[str, Any] = field(default_factory=dict)  # passed to the request models' validators
    # path -> the endpoint's handler, given the request model the gate validated (serving.direct_dispatch)
    handlers: Mapping[str, Callable[[Any], Awaitable[Response]]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, handlers: Mapping[str, Callable[[Any], Awaitable[Response]]] | None = None) -> GateConfig:
        return cls(
            handlers=dict(handlers or {}) if settings.serving.direct_dispatch else {},
            max_bytes=settings.serving.max_body_bytes,
            admin_token=settings.serving.admin_token,
            cors_origins=list(settings.serving.cors_origins),
            validation_context={  # the accepted window of event timestamps (schemas.EventIn)
                "max_event_age_days": settings.eventlog.max_event_age_days,
                "max_future_seconds": settings.events.max_future_seconds,
            },
        )


class Gate:
    """ASGI middleware: CORS, media type, streaming size limit, admin token and strict validation
    in front of the POST endpoints; 405 for other methods on known paths.

    ``config`` is a :class:`GateConfig`, or a callable giving one, called at the first request
    (the service's comes from its instance, which reads the settings when a worker starts).
    ``readyz``, if given, answers ``GET /readyz`` (the service's status app: BentoML's own
    ``/readyz`` route is matched before any mounted app and answers without the reasons).
    """

    def __init__(self, app: ASGIApp, *, config: GateConfig | Callable[[], GateConfig], readyz: ASGIApp | None = None) -> None:
        self.app = app
        self.readyz = readyz
        self._config_source = config
        self._config: GateConfig | None = None
        self._cors_any = False
        self._cors_origins: set[str] = set()

    @property
    def config(self) -> GateConfig:
        if self._config is None:
            source = self._config_source
            config = source if isinstance(source, GateConfig) else source()
            self._cors_any = "*" in config.cors_origins
            self._cors_origins = {o.rstrip("/") for o in config.cors_origins if o != "*"}
            self._config = config
        return self._config

    # ---- helpers -------------------------------------------------------------------------------

    @staticmethod
    async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, send: Any, scope: dict, status: int, message: str, extra: list[tuple[bytes, bytes]] = (), **kw: Any) -> None:  # type: ignore[assignment]
        log.info("%d %s %s: %s", status, scope.get("method"), scope.get("path"), message)
        await self._send(send, status, error_body(status, message, **kw), extra)

    async def _dispatch(self, handler: Callable[[Any], Awaitable[Response]], request: Any, scope: dict, send: Any,
                        extra: list[tuple[bytes, bytes]]) -> None:
        """Direct dispatch (``serving.direct_dispatch``): the handler's response for the request
        model validated here, written out as is (with the ``server`` header BentoML's endpoint
        wrapper adds); an exception is logged and answered 500 in the error shape."""
        try:
            response = await handler(request)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await self._send(send, 500, error_body(500, "an unexpected error occurred; the service log has the details"), [*_SERVER, *extra])
            return
        headers = [*response.raw_headers, *_SERVER, *extra]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    def _origin_allowed(self, origin: str | None, path: str) -> bool:
        if not origin or path.startswith(ADMIN_PREFIX):
            return False
        return self._cors_any or origin.rstrip("/") in self._cors_origins

    # ---- the middleware --------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        config = self.config
        path: str = scope["path"]
        method: str = scope["method"]
        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(k, v)  # first occurrence wins
        origin_raw = headers.get(b"origin", b"")
        origin = origin_raw.decode("latin-1") if origin_raw else None
        cors = self._origin_allowed(origin, path)
        cors_headers = [(b"access-control-allow-origin", origin_raw), (b"vary", b"Origin")] if cors else []

        if method == "OPTIONS" and origin is not None and b"access-control-request-method" in headers:
            if not cors:
                why = "admin endpoints are not open to other origins" if path.startswith(ADMIN_PREFIX) else (
                    f"origin {origin} is not allowed (serving.cors_origins)")
                return await self._refuse(send, scope, 403, why, code="forbidden")
            await send({"type": "http.response.start", "status": 204, "headers": [
                *cors_headers,
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", b"content-type"),
                (b"access-control-max-age", b"600"),
            ]})
            await send({"type": "http.response.body", "body": b""})
            return

        if method == "GET" and path in STATUS_ROUTES:
            app = self.readyz if path == "/readyz" and self.readyz is not None else self.app
            return await app(scope, receive, _with_headers(send, cors_headers))
        if method not in ("GET", "HEAD") and path in GET_ROUTES:
            return await self._refuse(send, scope, 405, f"{path} takes GET", [(b"allow", b"GET"), *cors_headers])

        route = ROUTES.get(path)
        if route is None:
            return await self.app(scope, receive, send)
        if method != "POST":
            return await self._refuse(send, scope, 405, f"{path} takes POST with a JSON body", [(b"allow", b"POST"), *cors_headers])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            shown = ctype.decode("latin-1") or "none"
            return await self._refuse(send, scope, 415, f"send the body as application/json (got content-type {shown})", cors_headers)
        if path.startswith(ADMIN_PREFIX):
            token = config.admin_token
            if not token:
                return await self._refuse(send, scope, 403, "admin endpoints are off: set serving.admin_token (storerec serve makes one and prints it)")
            given = headers.get(b"x-admin-token", b"")
            if not hmac.compare_digest(given, token.encode()):
                return await self._refuse(send, scope, 403, "missing or wrong x-admin-token header")

        # The body, counted as it arrives (Content-Length may be absent or false).
        max_bytes = config.max_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            return await self._refuse(send, scope, 413, f"request body of {int(length)} bytes exceeds the limit of {max_bytes} bytes", cors_headers)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            part = message.get("body", b"")
            size += len(part)
            if size > max_bytes:
                return await self._refuse(send, scope, 413, f"request body exceeds the limit of {max_bytes} bytes", cors_headers)
            chunks.append(part)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = route.request.model_validate_json(body or b"{}", context=config.validation_context)
        except ValidationError as exc:
            status, details = validation_details(exc)
            first: dict[str, Any] = details[0] if details else {"field": None, "message": "invalid body"}
            msg = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
            if len(details) > 1:
                msg += f" (and {len(details) - 1} more)"
            return await self._refuse(send, scope, status, msg, cors_headers, field=first["field"], details=details)

        _REQUEST.set(f"{method} {path}")
        handler = config.handlers.get(path)
        if handler is not None:
            return await self._dispatch(handler, request, scope, send, cors_headers)

        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, _with_headers(send, cors_headers))


def _with_headers(send: Any, extra: list[tuple[bytes, bytes]]) -> Any:
    """``send``, adding ``extra`` headers to the response start (``send`` itself when none)."""
    if not extra:
        return send

    async def send_with(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with


# ---- OpenAPI ---------------------------------------------------------------------------------------


def _schemas(models: list[tuple[type[BaseModel], JsonSchemaMode]]) -> dict[str, Any]:
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return defs.get("$defs", {})


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service, from the models the gate and endpoints use."""
    from storerec import __version__

    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorResponse, "serialization")]
    for route in ROUTES.values():
        models += [(route.request, "validation"), (route.response, "serialization")]
    schemas = _schemas(models)
    err = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    paths: dict[str, Any] = {}
    for path, (req, resp, summary, extra) in ROUTES.items():
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": ref(resp)}}}}
        for status in sorted({400, 405, 413, 415, 429, 503, 504, *extra}):
            responses[str(status)] = {"description": STATUS_TEXT[status], "content": err}
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": path.strip("/").replace("/", "_"),
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(req)}}},
            "responses": responses,
        }
        if path.startswith(ADMIN_PREFIX):
            op["parameters"] = [{"name": "x-admin-token", "in": "header", "required": True, "schema": {"type": "string"}}]
        paths[path] = {"post": op}
    status_obj = {"type": "object", "additionalProperties": True}
    paths["/readyz"] = {"get": {
        "summary": "Ready to serve: model loaded, event log writing. 503 with the reasons otherwise.",
        "operationId": "readyz",
        "responses": {"200": {"description": "ready", "content": {"application/json": {"schema": status_obj}}},
                      "503": {"description": "not ready", "content": {"application/json": {"schema": status_obj}}}},
    }}
    paths["/experiments"] = {"get": {
        "summary": "Experiments from the experiments file, their status and variants.",
        "operationId": "experiments",
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": status_obj}}}},
    }}
    paths["/healthz"] = {"get": {"summary": "Alive (the process answers).", "operationId": "healthz",
                                 "responses": {"200": {"description": "alive"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "storerec", "version": __version__,
                 "description": "Recommendations for online stores. Every error has the ErrorResponse shape."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


@functools.cache
def openapi_json() -> bytes:
    """:func:`openapi_spec` as JSON (built once per process)."""
    return json.dumps(openapi_spec()).encode()
