"""The storerec HTTP service (BentoML 1.4).

Start it with ``storerec serve`` (or ``make serve``); the OpenAPI page is at ``/docs``.
Endpoints: ``POST /recommend``, ``POST /similar_items``, ``POST /trending``,
``POST /new_arrivals``, ``POST /admin/reload``; BentoML's own ``GET /healthz`` (alive) and
``GET /readyz`` (200 only once a model is loaded).
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
import uuid
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable

from serving.ranking import Context, Diversity, Filters, RankedItem, RankingInputError
from serving.schemas import (
    ItemOut,
    ListRequest,
    ListResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadRequest,
    ReloadResponse,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
    SimilarRequest,
    SimilarResponse,
)
from models.base import top_k
from serving.state import Loaded, load
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


def _items(items: list[RankedItem]) -> list[ItemOut]:
    return [ItemOut(item_id=i.item_id, rank=i.rank, score=round(i.score, 6), category=i.category, reasons=i.reasons) for i in items]  # type: ignore[arg-type]


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
        self.settings = SETTINGS
        self._lock = threading.Lock()
        try:
            self.state: Loaded | None = load(self.settings)
        except UserError as exc:
            log.error("storerec cannot start: %s", exc)
            raise SystemExit(f"storerec cannot start: {exc}") from None
        log.info("serving %s version %s", self.state.model_name, self.state.version)

    def __is_ready__(self) -> bool:
        return self.state is not None

    def _current(self) -> Loaded:
        state = self.state  # one read: a reload swaps the reference, in-flight requests keep theirs
        if state is None:
            raise ServiceUnavailable("no model loaded")
        return state

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **kw: Any) -> RecommendResponse:
        """Personalised list with reasons and diversity (home, product and cart pages)."""
        req = RecommendRequest.model_validate(kw)
        state = self._current()
        strength = req.diversity.strength if req.diversity.strength is not None else self.settings.serving.diversity_strength
        try:
            result = state.ranker.rank(
                req.user_id,
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
                    exclude_item_ids=tuple(req.filters.exclude_item_ids),
                ),
                Diversity(strength, req.diversity.max_per_category),
            )
        except RankingInputError as exc:
            raise InvalidArgument(str(exc)) from None
        return RecommendResponse(
            request_id=uuid.uuid4().hex,
            model=state.model_name,
            model_version=state.version,
            user_kind=result.user_kind,  # type: ignore[arg-type]
            source=result.source,
            items=_items(result.items),
        )

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, **kw: Any) -> ScoreResponse:
        """Bare model scores: the user's top k over all items, with no filters, context, diversity
        or reasons. A diagnostic, and the baseline of the serving benchmark (``make bench-serve``)."""
        req = ScoreRequest.model_validate(kw)
        state = self._current()
        model = state.ranker.model
        scores, ok = model.score([req.user_id])
        if not ok[0]:
            raise NotFound(f"the {model.name} model cannot score user_id {req.user_id!r} (unknown user); use /recommend for cold start")
        idx, sc = top_k(scores, req.k)
        keep = idx[0] >= 0
        ids = model.items.to_external(idx[0][keep])  # type: ignore[union-attr]
        return ScoreResponse(
            request_id=uuid.uuid4().hex, model=state.model_name, model_version=state.version,
            items=[ScoredItem(item_id=i, score=float(s)) for i, s in zip(ids.tolist(), sc[0][keep].tolist())],
        )

    @bentoml.api(route="/similar_items", input_spec=SimilarRequest)
    async def similar_items(self, **kw: Any) -> SimilarResponse:
        """Item page: similar items (the model's item-item similarity) and items bought together."""
        req = SimilarRequest.model_validate(kw)
        state = self._current()
        try:
            similar, together = state.ranker.similar(req.item_id, req.k)
        except RankingInputError as exc:
            raise NotFound(str(exc)) from None
        return SimilarResponse(
            request_id=uuid.uuid4().hex, model=state.model_name, model_version=state.version,
            similar=_items(similar), bought_together=_items(together),
        )

    @bentoml.api(route="/trending", input_spec=ListRequest)
    async def trending(self, **kw: Any) -> ListResponse:
        """Items growing fastest this week (established items), optionally per category or region."""
        req = ListRequest.model_validate(kw)
        try:
            result = self._current().ranker.trending(req.k, req.category, req.region)
        except RankingInputError as exc:
            raise InvalidArgument(str(exc)) from None
        return ListResponse(request_id=uuid.uuid4().hex, items=_items(result.items))

    @bentoml.api(route="/new_arrivals", input_spec=ListRequest)
    async def new_arrivals(self, **kw: Any) -> ListResponse:
        """Popular new arrivals, optionally per category."""
        req = ListRequest.model_validate(kw)
        try:
            result = self._current().ranker.new_arrivals(req.k, req.category)
        except RankingInputError as exc:
            raise InvalidArgument(str(exc)) from None
        return ListResponse(request_id=uuid.uuid4().hex, items=_items(result.items))

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
            previous = self._current()
            try:
                new = load(self.settings, model)
            except UserError as exc:
                log.error("reload failed, still serving version %s: %s", previous.version, exc)
                raise InvalidArgument(f"reload failed, still serving version {previous.version}: {exc}") from None
            self.state = new
        log.info("reloaded: version %s -> %s", previous.version, new.version)
        return ReloadResponse(model=new.model_name, model_version=new.version, previous_version=previous.version)


StoreRec.add_asgi_middleware(PayloadTooLarge, max_bytes=SETTINGS.serving.max_body_bytes)
