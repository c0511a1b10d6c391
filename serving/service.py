"""The storerec HTTP service (BentoML 1.4).

Start it with ``storerec serve`` (or ``make serve``); the OpenAPI page is at ``/docs``.
Endpoints: ``POST /recommend``, ``POST /similar_items``, ``POST /trending``,
``POST /new_arrivals``, ``POST /admin/reload``; BentoML's own ``GET /healthz`` (alive) and
``GET /readyz`` (200 only once a model is loaded).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable
from pydantic_core import to_json
from starlette.responses import Response

from serving.eventlog import EventLog, now_utc, recent_activity
from serving.experiments import assign
from serving.freqcap import FrequencyCap
from serving.ranking import Context, Diversity, Filters, RankedItem, RankingInputError
from serving.schemas import (
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
)
from models.base import top_k_row
from serving.state import Loaded, ServingState, load_state
from storerec.errors import UserError
from storerec.settings import load_settings

log = logging.getLogger("storerec.serving")


class Forbidden(bentoml.exceptions.BentoMLException):
    error_code = HTTPStatus.FORBIDDEN


class PayloadTooLarge:
    """ASGI middleware: bodies larger than ``max_bytes`` get 413 before they are read."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                body = f'{{"error":"request body of {int(length)} bytes exceeds the limit of {self.max_bytes} bytes"}}'.encode()
                await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


_SERVICE: "StoreRec | None" = None  # the instance in this worker, for the status routes below


class StatusRoutes:
    """ASGI middleware answering ``GET /readyz`` (200 with the model, version and experiment
    status once a model is loaded, else 503) and ``GET /experiments``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET" and scope.get("path") in ("/readyz", "/experiments"):
            svc = _SERVICE
            state = svc.state if svc is not None else None
            if state is None:
                status, body = 503, {"ready": False, "reason": "no model loaded yet"}
            elif scope["path"] == "/readyz":
                status, body = 200, {
                    "ready": True,
                    "model": state.default.model_name,
                    "model_version": state.default.version,
                    "experiments": {e["name"]: {"status": e["status"], "error": e["error"]} for e in state.experiment_status()},
                    "event_log": svc.eventlog is not None,  # type: ignore[union-attr]
                }
            else:
                status, body = 200, {"experiments": state.experiment_status()}
            data = json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": data})
            return
        await self.app(scope, receive, send)


def _items(items: list[RankedItem]) -> list[dict[str, Any]]:
    """Items in the :class:`ItemOut` shape."""
    return [{"item_id": i.item_id, "rank": i.rank, "score": round(i.score, 6), "category": i.category, "reasons": i.reasons} for i in items]


def _json(body: dict[str, Any]) -> Any:
    """The response, serialised by pydantic-core straight from plain data.

    Each endpoint's annotated response model is its contract (the OpenAPI page shows it, and the
    end-to-end tests validate real responses against it); building the pydantic objects only to
    serialise them cost more than the ranking pipeline's reasons step, so they are skipped.
    """
    return Response(to_json(body), media_type="application/json")


def _freeze_heap(refreeze: bool = False) -> None:
    """Move everything alive now (models, profiles, histories, libraries: ~400,000 objects) out
    of the garbage collector's reach. A full collection over them takes ~250 ms here, a stall
    every request in flight would wait for; they live as long as the process (or until the next
    reload, which unfreezes, collects what the old model left and freezes again)."""
    if refreeze:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


SETTINGS = load_settings()


@bentoml.service(
    name="storerec",
    workers=SETTINGS.serving.workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": SETTINGS.serving.access_log}},
    metrics={"enabled": SETTINGS.serving.metrics},
)
class StoreRec:
    def __init__(self) -> None:
        global _SERVICE
        self.settings = SETTINGS
        self._lock = threading.Lock()
        try:
            self.state: ServingState | None = load_state(self.settings)
        except UserError as exc:
            log.error("storerec cannot start: %s", exc)
            raise SystemExit(f"storerec cannot start: {exc}") from None
        log.info("serving %s version %s", self.state.default.model_name, self.state.default.version)
        ev = self.settings.eventlog
        try:
            self.eventlog = EventLog(ev.url, flush_ms=ev.flush_ms) if ev.enabled else None
        except UserError as exc:
            log.error("storerec cannot start: %s", exc)
            raise SystemExit(f"storerec cannot start: {exc}") from None
        fc = self.settings.frequency_cap
        self.freqcap = FrequencyCap(fc.max_impressions, fc.window_hours, fc.hold_hours) if fc.enabled else None
        if self.freqcap is not None and self.eventlog is not None:
            since = now_utc() - timedelta(hours=fc.window_hours + fc.hold_hours)
            shown, touched = recent_activity(self.eventlog.engine, since)
            for user, item, ts in shown:
                self.freqcap.record_impression(user, [item], ts)
            for user, item, ts in touched:
                self.freqcap.record_interaction(user, item, ts)
        self._request_users: OrderedDict[str, str] = OrderedDict()  # recent request_id -> user_id
        _SERVICE = self
        _freeze_heap()

    @bentoml.on_shutdown
    def _flush_event_log(self) -> None:
        if self.eventlog is not None:
            self.eventlog.close()

    def __is_ready__(self) -> bool:
        return self.state is not None

    def _current(self) -> ServingState:
        state = self.state  # one read: a reload swaps the reference, in-flight requests keep theirs
        if state is None:
            raise ServiceUnavailable("no model loaded")
        return state

    def _log_list(
        self, request_id: str, now: datetime, loaded: Loaded, items: list[RankedItem], *, page: str,
        user_id: str | None = None, session_id: str | None = None, experiment: str | None = None, variant: str | None = None,
    ) -> None:
        """Queue the impression (never waits for the database)."""
        item_ids = [i.item_id for i in items]
        if self.eventlog is not None:
            self.eventlog.log_impression(
                {"request_id": request_id, "ts": now, "user_id": user_id, "session_id": session_id, "experiment": experiment,
                 "variant": variant, "model": loaded.model_name, "model_version": loaded.version, "page": page},
                item_ids,
            )
        if user_id is not None:
            self._request_users[request_id] = user_id
            if len(self._request_users) > 200_000:
                self._request_users.popitem(last=False)
            if self.freqcap is not None:
                self.freqcap.record_impression(user_id, item_ids, now)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **kw: Any) -> RecommendResponse:
        """Personalised list with reasons and diversity (home, product and cart pages)."""
        req = RecommendRequest.model_construct(**kw)  # validated by BentoML against input_spec
        state = self._current()
        now = now_utc()
        profile = state.default.ranker.profiles.get(req.user_id) if req.user_id else None
        a = assign(state.experiments, set(state.disabled), user_id=req.user_id, session_id=req.session_id, profile=profile, now=now)
        loaded = state.by_ref[a.config.model] if a.config is not None else state.default
        strength = req.diversity.strength
        if strength is None:
            strength = a.config.diversity_strength if a.config is not None and a.config.diversity_strength is not None else self.settings.serving.diversity_strength
        cap = req.diversity.max_per_category
        if cap is None and a.config is not None:
            cap = a.config.max_per_category
        exclude = list(req.filters.exclude_item_ids)
        if self.freqcap is not None and req.user_id:
            exclude += self.freqcap.held_back(req.user_id, now)
        user_key = req.user_id or f"anonymous:{req.session_id}"  # unknown to every model: cold start
        try:
            result = loaded.ranker.rank(
                user_key,
                req.k,
                Context(req.context.page, tuple(req.context.item_ids), tuple(req.context.recent_item_ids)),
                Filters(
                    exclude_seen=req.filters.exclude_seen,
                    exclude_purchased=req.filters.exclude_purchased,
                    include_categories=tuple(req.filters.include_categories),
                    exclude_categories=tuple(req.filters.exclude_categories),
                    min_price=req.filters.min_price,
                    max_price=req.filters.max_price,
                    in_stock_only=req.filters.in_stock_only,
                    exclude_item_ids=tuple(exclude),
                ),
                Diversity(strength, cap),
            )
        except RankingInputError as exc:
            raise InvalidArgument(str(exc)) from None
        request_id = uuid.uuid4().hex
        self._log_list(request_id, now, loaded, result.items, page=req.context.page, user_id=req.user_id,
                       session_id=req.session_id, experiment=a.experiment, variant=a.variant)
        return _json({
            "request_id": request_id,
            "model": loaded.model_name,
            "model_version": loaded.version,
            "experiment": a.experiment,
            "variant": a.variant,
            "user_kind": result.user_kind,
            "source": result.source,
            "items": _items(result.items),
        })

    @bentoml.api(route="/events", input_spec=EventsRequest)
    async def events(self, **kw: Any) -> EventsResponse:
        """Record clicks, add-to-carts and purchases (with revenue) against the request_id of the
        list they came from. Answers only once the events are committed to the event log."""
        req = EventsRequest.model_construct(**kw)  # validated by BentoML against input_spec
        if self.eventlog is None:
            raise InvalidArgument("event logging is off on this service (eventlog.enabled = false)")
        now = now_utc()
        rows = []
        for n, e in enumerate(req.events):
            ts = e.timestamp or now
            ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
            if ts > now + timedelta(minutes=5):
                raise InvalidArgument(f"events[{n}].timestamp {ts.isoformat()} is in the future")
            user = e.user_id or self._request_users.get(e.request_id)
            rows.append({"event_id": e.event_id, "ts": ts, "request_id": e.request_id, "user_id": user,
                         "session_id": e.session_id, "item_id": e.item_id, "event_type": e.event_type, "revenue": e.revenue})
        try:
            await asyncio.wrap_future(self.eventlog.log_feedback(rows))
        except Exception as exc:
            log.error("events not stored: %s", exc)
            raise ServiceUnavailable("the event log could not store these events; retry with the same event_id") from None
        if self.freqcap is not None:
            for r in rows:
                if r["user_id"]:
                    self.freqcap.record_interaction(r["user_id"], r["item_id"], r["ts"])
        return EventsResponse(received=len(rows), stored=len(rows))

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, **kw: Any) -> ScoreResponse:
        """Bare model scores: the user's top k over all items, with no filters, context, diversity
        or reasons. A diagnostic, and the baseline of the serving benchmark (``make bench-serve``)."""
        req = ScoreRequest.model_construct(**kw)  # validated by BentoML against input_spec
        state = self._current().default
        model = state.ranker.model
        scores = model.score_user(model.users.index_of(req.user_id))  # type: ignore[union-attr]
        if scores is None:
            raise NotFound(f"the {model.name} model cannot score user_id {req.user_id!r} (unknown user); use /recommend for cold start")
        idx, sc = top_k_row(scores, req.k)
        return _json({
            "request_id": uuid.uuid4().hex, "model": state.model_name, "model_version": state.version,
            "items": [{"item_id": i, "score": s} for i, s in zip(model.items.to_external(idx).tolist(), sc.tolist())],  # type: ignore[union-attr]
        })

    @bentoml.api(route="/similar_items", input_spec=SimilarRequest)
    async def similar_items(self, **kw: Any) -> SimilarResponse:
        """Item page: similar items (the model's item-item similarity) and items bought together."""
        req = SimilarRequest.model_construct(**kw)  # validated by BentoML against input_spec
        state = self._current().default
        try:
            similar, together = state.ranker.similar(req.item_id, req.k)
        except RankingInputError as exc:
            raise NotFound(str(exc)) from None
        request_id = uuid.uuid4().hex
        self._log_list(request_id, now_utc(), state, similar + together, page="product")
        return _json({
            "request_id": request_id, "model": state.model_name, "model_version": state.version,
            "similar": _items(similar), "bought_together": _items(together),
        })

    @bentoml.api(route="/trending", input_spec=ListRequest)
    async def trending(self, **kw: Any) -> ListResponse:
        """Items growing fastest this week (established items), optionally per category or region."""
        req = ListRequest.model_construct(**kw)  # validated by BentoML against input_spec
        state = self._current().default
        try:
            result = state.ranker.trending(req.k, req.category, req.region)
        except RankingInputError as exc:
            raise InvalidArgument(str(exc)) from None
        request_id = uuid.uuid4().hex
        self._log_list(request_id, now_utc(), state, result.items, page="trending")
        return _json({"request_id": request_id, "items": _items(result.items)})

    @bentoml.api(route="/new_arrivals", input_spec=ListRequest)
    async def new_arrivals(self, **kw: Any) -> ListResponse:
        """Popular new arrivals, optionally per category."""
        req = ListRequest.model_construct(**kw)  # validated by BentoML against input_spec
        state = self._current().default
        try:
            result = state.ranker.new_arrivals(req.k, req.category)
        except RankingInputError as exc:
            raise InvalidArgument(str(exc)) from None
        request_id = uuid.uuid4().hex
        self._log_list(request_id, now_utc(), state, result.items, page="new_arrivals")
        return _json({"request_id": request_id, "items": _items(result.items)})

    @bentoml.api(route="/admin/reload")
    def reload(self, ctx: bentoml.Context, model: str | None = None) -> ReloadResponse:
        """Load the configured alias (or ``model``) again and swap it in atomically.

        Requests in flight finish on the old model; if the new one fails to load, the old one
        keeps serving and the call answers 4xx with the reason.
        """
        ReloadRequest(model=model)
        token = self.settings.serving.admin_token
        if token and ctx.request.headers.get("x-admin-token") != token:
            raise Forbidden("missing or wrong x-admin-token header")
        with self._lock:
            previous = self._current().default
            try:
                new = load_state(self.settings, model)
            except UserError as exc:
                log.error("reload failed, still serving version %s: %s", previous.version, exc)
                raise InvalidArgument(f"reload failed, still serving version {previous.version}: {exc}") from None
            self.state = new
            _freeze_heap(refreeze=True)
        log.info("reloaded: version %s -> %s", previous.version, new.default.version)
        return ReloadResponse(model=new.default.model_name, model_version=new.default.version, previous_version=previous.version)


StoreRec.add_asgi_middleware(PayloadTooLarge, max_bytes=SETTINGS.serving.max_body_bytes)
StoreRec.add_asgi_middleware(StatusRoutes)
