"""The storerec HTTP service (BentoML 1.4).

Start it with ``storerec serve`` (or ``make serve``); the OpenAPI page is at ``/docs``.
Endpoints: ``POST /recommend``, ``POST /similar_items``, ``POST /trending``,
``POST /new_arrivals``, ``POST /admin/reload``; BentoML's own ``GET /healthz`` (alive) and
``GET /readyz`` (200 only once a model is loaded).
"""

from __future__ import annotations

import gc
import logging
import threading
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any

import bentoml
from pydantic_core import to_json
from starlette.responses import Response

from serving.eventlog import EventLog, EventLogRejected, EventLogUnavailable, now_utc, recent_activity
from serving.http import Gate, error_response
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
    ReloadResponse,
    ScoreRequest,
    ScoreResponse,
    SimilarRequest,
    SimilarResponse,
)
from models.base import top_k_row
from serving.state import Loaded, ServingState, load_state
from serving.control import ControlStore, ModelSync, service_key
from serving.watchdog import watch_parent
from storerec.errors import NotFoundError, UserError
from storerec.settings import load_settings

log = logging.getLogger("storerec.serving")


_SERVICE: "StoreRec | None" = None  # the instance in this worker, for the status routes below


def _readyz() -> tuple[int, dict[str, Any]]:
    """``GET /readyz``: 200 only while a model is loaded and the event log can write; else 503
    with every reason."""
    svc = _SERVICE
    state = svc.state if svc is not None else None
    if svc is None or state is None:
        return 503, {"ready": False, "reasons": ["no model loaded yet"]}
    reasons: list[str] = []
    event_log: dict[str, Any] = {"enabled": svc.eventlog is not None}
    if svc.eventlog is not None:
        event_log.update(svc.eventlog.status())
        if not event_log.get("ok", True):
            reasons.append(f"event log cannot write: {event_log.get('reason')}")
    body: dict[str, Any] = {
        "ready": not reasons,
        "reasons": reasons,
        "model": state.default.model_name,
        "model_version": state.default.version,
        "experiments": {e["name"]: {"status": e["status"], "error": e["error"]} for e in state.experiment_status()},
        "event_log": event_log,
    }
    control = getattr(svc, "control_status", None)
    if control is not None:
        body["control"] = control()
    return (200 if not reasons else 503), body


def _experiments() -> tuple[int, dict[str, Any]]:
    svc = _SERVICE
    state = svc.state if svc is not None else None
    if state is None:
        return 503, {"error": "no model loaded yet", "code": "not_ready"}
    return 200, {"experiments": state.experiment_status()}


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
        # BentoML's server logging passes WARNING and up from other loggers; ours go at this level
        logging.getLogger("storerec").setLevel(self.settings.serving.log_level)
        self._lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        self._closed = False
        watch_parent(self._shutdown)  # exit when the arbiter dies (serving/watchdog.py)
        try:
            self.state: ServingState | None = self._initial_state()
        except UserError as exc:
            log.error("storerec cannot start: %s", exc)
            raise SystemExit(f"storerec cannot start: {exc}") from None
        log.info("serving %s version %s", self.state.default.model_name, self.state.default.version)
        ev = self.settings.eventlog
        try:
            self.eventlog = EventLog.from_settings(ev) if ev.enabled else None
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
        self.sync.start()
        _freeze_heap()

    # ---- one version on every worker (serving/control.py) -----------------------------------

    def _initial_state(self) -> ServingState:
        """Load what the service follows now (the control row: a worker restarted after a
        reload joins the others), else ``serving.model``; set up the sync with the workers."""
        cfg = self.settings.serving
        self.control = ControlStore(cfg.control_url, service_key(self.settings.registered_model_name(), cfg.host, cfg.port))
        row = self.control.read()
        follows, generation, error = (row.ref, row.generation, None) if row is not None else (cfg.model, 0, None)
        try:
            state = load_state(self.settings, follows)
        except UserError as exc:
            if follows == cfg.model:
                raise
            error = f"loading {follows!r} (generation {generation}) failed: {exc}"
            log.error("%s; starting on %s, retrying in the background", error, cfg.model)
            follows, generation = cfg.model, 0
            state = load_state(self.settings, follows)
        self._mlflow_client: Any = None
        self.sync = ModelSync(
            self.control, lock=self._lock, load=lambda ref: load_state(self.settings, ref), swap=self._swap,
            versions=lambda st: {ref: loaded.version for ref, loaded in st.by_ref.items()}, resolve=self._resolve,
            state=state, follows=follows, generation=generation, sync_s=cfg.sync_ms / 1000.0, alias_poll_s=cfg.alias_poll_s,
            error=error,
        )
        return state

    def _swap(self, state: ServingState) -> None:
        """Swap the whole serving state (called under ``self._lock``); requests in flight keep
        the one they read."""
        self.state = state
        _freeze_heap(refreeze=True)

    def _resolve(self, ref: str) -> str:
        """The version ``ref`` points at in the registry now (the sync thread's alias poll)."""
        from mlflow import MlflowClient

        from training import tracking

        if self._mlflow_client is None:
            self._mlflow_client = MlflowClient(tracking_uri=self.settings.mlflow.resolved_tracking_uri())
        return str(tracking.resolve_version(self._mlflow_client, self.settings.registered_model_name(), ref).version)

    def control_status(self) -> dict[str, Any]:
        """This worker's view (for ``GET /readyz``; no I/O): ``generation`` applied,
        ``model_version`` served, the reference it ``follows``, ``worker_id``/``pid``, the live
        ``workers`` (id, pid, generation, version, heartbeat age, last error) and ``sync_error``
        (a failing control store or load: the worker keeps serving what it has)."""
        return self.sync.status()

    def _shutdown(self) -> None:
        """Stop syncing, leave the workers list, flush the event log; once (a second caller
        waits for the first: the shutdown hook and the orphan watchdog may both call it)."""
        with self._shutdown_lock:
            if self._closed:
                return
            self._closed = True
            sync = getattr(self, "sync", None)
            if sync is not None:
                sync.stop()
            eventlog = getattr(self, "eventlog", None)
            if eventlog is not None:
                eventlog.close()
            control = getattr(self, "control", None)
            if control is not None:
                control.close()

    @bentoml.on_shutdown
    def _flush_event_log(self) -> None:
        self._shutdown()

    def __is_ready__(self) -> bool:
        return self.state is not None

    def _current(self) -> ServingState:
        state = self.state  # one read: a reload swaps the reference, in-flight requests keep theirs
        assert state is not None, "the service answers only once __init__ has loaded a model"
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
            return error_response(404, str(exc), field=exc.field)
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
            return error_response(404, "event logging is off on this service (eventlog.enabled = false)", code="event_log_off")
        now = now_utc()
        rows = []
        for e in req.events:  # types, revenue and timestamp bounds were checked by the gate (serving.http)
            ts = e.timestamp or now
            ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
            user = e.user_id or self._request_users.get(e.request_id)
            rows.append({"event_id": e.event_id, "ts": ts, "request_id": e.request_id, "user_id": user,
                         "session_id": e.session_id, "item_id": e.item_id, "event_type": e.event_type, "revenue": e.revenue})
        try:
            stored = await self.eventlog.store_feedback(rows, self.settings.eventlog.ack_timeout_ms / 1000.0)
        except EventLogRejected as exc:  # the database refuses these rows themselves: a retry cannot help
            return error_response(422, f"the event log refused these events ({exc}); none of them was stored", code="rule_violated")
        except EventLogUnavailable as exc:
            return error_response(
                503, f"the event log could not store these events ({exc}); none of them was stored: retry later",
                code="event_log_unavailable",
            )
        if self.freqcap is not None:
            for r in rows:
                if r["user_id"]:
                    self.freqcap.record_interaction(r["user_id"], r["item_id"], r["ts"])
        return _json({"received": len(rows), "stored": stored})

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, **kw: Any) -> ScoreResponse:
        """Bare model scores: the user's top k over all items, with no filters, context, diversity
        or reasons. A diagnostic, and the baseline of the serving benchmark (``make bench-serve``)."""
        req = ScoreRequest.model_construct(**kw)  # validated by BentoML against input_spec
        state = self._current().default
        model = state.ranker.model
        scores = model.score_user(state.ranker.user_index(req.user_id))
        if scores is None:
            return error_response(404, f"the {model.name} model cannot score this user_id (unknown user); use /recommend for cold start",
                                  field="user_id")
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
            return error_response(404, str(exc), field="item_id")
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
            return error_response(404, str(exc), field=exc.field)
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
            return error_response(404, str(exc), field=exc.field)
        request_id = uuid.uuid4().hex
        self._log_list(request_id, now_utc(), state, result.items, page="new_arrivals")
        return _json({"request_id": request_id, "items": _items(result.items)})

    @bentoml.api(route="/admin/reload")
    def reload(self, ctx: bentoml.Context, model: str | None = None) -> ReloadResponse:
        """Load the configured alias (or ``model``: an alias or a version number) and swap it in
        atomically on every worker.

        Requests in flight finish on the old model; if the new one fails to load, the old one
        keeps serving everywhere and the call answers 404 (no such version) or 409 (it cannot be
        loaded) with the reason. Otherwise the answer (200) comes once every live worker serves
        the new version, or after ``serving.reload_wait_s`` with ``complete: false`` and the
        ``lagging`` workers named (they keep retrying). Without ``model`` the service follows the configured alias again, so a
        later ``storerec promote`` reaches every worker within ``serving.alias_poll_s`` plus a load.
        """
        # The admin token, media type and body were checked by the gate (serving.http).
        # Load here first (a failure changes nothing), publish the new generation, swap, then
        # wait until every live worker serves it (serving/control.py).
        ref = model or self.settings.serving.model
        try:
            new, previous, generation = self.sync.reload(ref)
        except UserError as exc:
            current = self._current().default.version
            status = 404 if isinstance(exc, NotFoundError) else 409  # unknown version / exists but cannot be loaded
            ctx.response.status_code = status  # BentoML applies the context's status to a returned response
            return error_response(status, f"reload failed, still serving version {current}: {exc}", field="model")
        if generation is None:  # control store unavailable: only this worker changed
            complete, workers, lagging = False, [], []
        else:
            complete, workers, lagging = self.sync.wait_for(generation, self.settings.serving.reload_wait_s)
        log.info("reloaded: version %s -> %s (%s, generation %s, %s)", previous, new.default.version, ref, generation,
                 "every worker" if complete else f"not on {lagging or 'the other workers'}")
        return ReloadResponse(
            model=new.default.model_name, model_version=new.default.version, previous_version=previous or "", follows=ref,
            generation=generation, complete=complete, workers=workers, lagging=lagging, sync_error=self.control.error,
        )


StoreRec.add_asgi_middleware(
    Gate,
    max_bytes=SETTINGS.serving.max_body_bytes,
    admin_token=lambda: SETTINGS.serving.admin_token,
    cors_origins=SETTINGS.serving.cors_origins,
    status_routes={"/readyz": _readyz, "/experiments": _experiments},
    validation_context={"max_event_age_days": SETTINGS.eventlog.max_event_age_days},
)
