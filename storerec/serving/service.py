"""The storerec HTTP service (BentoML 1.4): the ``StoreRec`` service class.

Start it with ``storerec serve`` (or ``make serve``): it checks the registered version and the
event log, then runs ``bentoml serve storerec.serving.service:StoreRec`` with the process-level
options (workers, access log, metrics) in BentoML's configuration (serving/launch.py). Each
worker reads the settings in ``__init__`` and loads the model there; nothing happens at import.

Endpoints (``serving/http.py`` holds their request and response models, ``ROUTES``):

* ``POST /recommend``, ``/similar_items``, ``/trending``, ``/new_arrivals``: lists with reasons;
* ``POST /events``: clicks, carts and purchases on a served list (the event log);
* ``POST /track``: storefront views, carts, purchases and favourites not tied to a list (the event
  log's behaviour table), applied to the shopper's next list at once (serving/live.py);
* ``POST /score``: bare model scores (a diagnostic);
* ``POST /admin/reload``: load another version in every worker (needs ``x-admin-token``);
* ``GET /readyz`` (200 once a model is loaded and the event log can write, else 503 with the
  reasons), ``GET /experiments``, ``GET /docs.json`` (the OpenAPI document; BentoML's page at
  ``GET /`` shows it, and ``GET /docs`` leads there), ``GET /explore`` (the explorer,
  serving/explore.py): the service's status app, a FastAPI app mounted on the service whose
  methods BentoML calls on the worker's instance;
* BentoML's own ``GET /healthz`` and ``/livez`` (alive) and ``GET /metrics`` (Prometheus, unless
  ``serving.metrics = false``).

Every request passes the gate first (serving/http.py: CORS, media type, size, admin token, strict
validation). BentoML matches its own ``/readyz`` route before any mounted app, and it answers a
bare 200/503; the gate hands ``GET /readyz`` to the status app instead, so the answer carries the
reasons (BentoML's route still answers ``HEAD /readyz``, from ``__is_ready__``).
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import bentoml
import orjson
from fastapi import FastAPI
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from storerec.core.errors import NotFoundError, UserError
from storerec.core.settings import load_settings
from storerec.events.eventlog import (
    EventLog,
    EventLogRejected,
    EventLogUnavailable,
    behaviour_max_id,
    behaviour_since,
    now_utc,
    recent_activity,
)
from storerec.events.experiments import assign
from storerec.features.forget import forgotten_hashes
from storerec.models.base import top_k_row
from storerec.ranking.ranker import Context, Diversity, Filters, RankedItem, Ranker, RankingInputError, RankResult
from storerec.serving.control import ControlStore, ModelSync, service_key
from storerec.serving.explore import Explorer
from storerec.serving.freqcap import FrequencyCap
from storerec.serving.http import ROUTES, Gate, GateConfig, error_response, openapi_json
from storerec.serving.launch import SERVICE_NAME
from storerec.serving.live import EMPTY, LiveOverlay, LiveTail, LiveView, shopper_key
from storerec.serving.schemas import (
    EventsRequest,
    ListRequest,
    RecommendRequest,
    ReloadRequest,
    ReloadResponse,
    ScoreRequest,
    SimilarRequest,
    TrackRequest,
)
from storerec.serving.state import Loaded, Ranked, ServingState, baked_version, load_state
from storerec.serving.traffic import install as install_traffic_fixes
from storerec.serving.watchdog import watch_parent

log = logging.getLogger("storerec.serving")

TRAFFIC_TIMEOUT_S = 30  # BentoML answers 504 past this (eventlog.ack_timeout_ms stays below it)
# BentoML's timeout middleware leaks a timer per request (the tail stalls); OpenTelemetry's is left out when
# `storerec serve` turned its SDK off (serving.tracing = false): serving/traffic.py
install_traffic_fixes(tracing=os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true")


def _endpoint(path: str) -> Any:
    """``@bentoml.api`` on ``path`` with its request and response models from :data:`ROUTES`.

    The endpoints take the validated fields (the gate validated the body strictly, BentoML parses
    it once more into the request model) and return a Starlette response: the JSON they build
    themselves (:func:`_json`), or an error (:func:`error_response`). The response model is the
    contract the OpenAPI document shows and the tests hold the bodies to.
    """
    route = ROUTES[path]
    return bentoml.api(route=path, input_spec=route.request, output_spec=route.response)


def _items(items: list[RankedItem], ranker: Ranker | None = None) -> list[dict[str, Any]]:
    """Items in the :class:`ItemOut` shape; with ``ranker`` (the request asked for details) each
    with its catalogue title, brand, price and stock from the ranker's item facts."""
    out = [{"item_id": i.item_id, "rank": i.rank, "score": round(i.score, 6), "category": i.category, "reasons": i.reasons} for i in items]
    if ranker is not None:
        index_of = ranker.model.items.index_of  # type: ignore[union-attr]
        for row in out:
            row.update(ranker.items.details(index_of(str(row["item_id"]))))
    return out


def _json(body: dict[str, Any] | BaseModel, code: int = 200) -> Response:
    """The response, serialised straight from plain data (orjson; pydantic-core for a model).

    Each endpoint's response model (:func:`_endpoint`) is its contract; building the pydantic
    objects only to serialise them cost more than the ranking pipeline's reasons step, so the
    list endpoints build plain data in that shape. orjson writes a /recommend answer in ~3 us
    where pydantic-core's ``to_json`` took ~11 us; both give the same JSON for these bodies
    (str, int, float, bool, None, lists and dicts: ``tests/test_service.py``).
    """
    data = to_json(body) if isinstance(body, BaseModel) else orjson.dumps(body)
    return Response(data, status_code=code, media_type="application/json")


class _RequestIds:
    """Request ids: 32 hex characters, 16 drawn at random when the worker starts (64 bits: two
    processes share them with odds of about n^2 / 2^65) and a 64-bit counter. ``uuid4`` cost a
    system call for 16 random bytes per request, about 3 % of a worker's time under load (py-spy)."""

    def __init__(self) -> None:
        self.draw()
        os.register_at_fork(after_in_child=self.draw)  # a forked child draws its own

    def draw(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_request_id = _RequestIds()


def _freeze_heap(refreeze: bool = False) -> None:
    """Move everything alive now (models, profiles, histories, libraries: ~400,000 objects) out
    of the garbage collector's reach. A full collection over them takes ~250 ms here, a stall
    every request in flight would wait for; they live as long as the process (or until the next
    reload, which unfreezes, collects what the old model left and freezes again)."""
    if refreeze:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


status_app = FastAPI(title="storerec status", docs_url=None, redoc_url=None, openapi_url=None)  # the GET routes, mounted below


@status_app.get("/docs.json")
async def docs_json() -> Response:
    """The OpenAPI document (serving/http.py)."""
    return Response(openapi_json(), media_type="application/json")


@status_app.get("/docs")
async def docs_page() -> Response:
    """The API page is BentoML's, at ``/`` (it shows ``/docs.json``): ``/docs``, where people
    look for it, leads there."""
    return RedirectResponse("/", status_code=307)


@bentoml.service(name=SERVICE_NAME, traffic={"timeout": TRAFFIC_TIMEOUT_S})
@bentoml.asgi_app(status_app, path="/", name="status")
class StoreRec:
    """Recommendations for online stores. BentoML makes one instance per worker; it holds what
    the worker serves (swapped whole by a reload), the event log writer and the sync with the
    other workers."""

    def __init__(self) -> None:
        self.settings = load_settings()  # $STOREREC_CONFIG and STOREREC__* (set by `storerec serve`)
        # BentoML's server logging passes WARNING and up from other loggers; ours go at this level
        logging.getLogger("storerec").setLevel(self.settings.serving.log_level)
        # the gate calls the handlers with the request it validated (serving.direct_dispatch; BentoML's routes stay)
        self.gate = GateConfig.from_settings(self.settings, handlers={
            "/recommend": self._recommend, "/similar_items": self._similar_items, "/trending": self._trending,
            "/new_arrivals": self._new_arrivals, "/events": self._events, "/track": self._track, "/score": self._score,
        })
        self._lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        self._closed = False
        if bentoml.server_context.worker_index is not None:  # a worker of `bentoml serve` (not an app in a test)
            watch_parent(self._shutdown)  # exit when the arbiter dies (serving/watchdog.py)
        try:
            self.state: ServingState = self._initial_state()
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
        self.live_tail: LiveTail | None = None
        self.live = self._rebuild_live()
        self._request_users: OrderedDict[str, str] = OrderedDict()  # recent request_id -> user_id
        self.explorer = Explorer(self) if self.settings.serving.explorer else None  # GET /explore (serving/explore.py)
        self.sync.start()
        _freeze_heap()

    def _rebuild_live(self) -> LiveOverlay | None:
        """The live overlay (serving/live.py), rebuilt from the event log's behaviour rows since
        the served snapshot's as-of time (or one repurchase cycle back, for a version without a
        snapshot)."""
        live = self.settings.live
        if not live.enabled:
            return None
        cycle = self.settings.profiles.repurchase_cycle_days
        overlay = LiveOverlay.from_settings(live, cycle)
        if self.eventlog is None:
            return overlay
        engine = self.eventlog.engine
        top = behaviour_max_id(engine)  # the tail follows from here (read first: nothing stored meanwhile is missed)
        if live.rebuild_max_rows:
            since = self.state.default.as_of or (now_utc() - timedelta(days=cycle))
            rows = behaviour_since(engine, since, live.rebuild_max_rows)
            overlay.record(rows)
            top = max([top, *(r["id"] for r in rows)])
            if rows:
                log.info("live overlay: %d tracked events of %d shoppers since %s", len(rows), len(overlay), f"{since:%Y-%m-%d %H:%M:%S} UTC")
        if live.poll_ms:
            self.live_tail = LiveTail(overlay, engine, top, live.poll_ms / 1000.0).start()
        return overlay

    # ---- the status app (GET) -------------------------------------------------------------------

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 while the event log can write (a model is loaded once ``__init__`` returned), else
        503; the body names every reason, the model served, the experiments, the event log, the
        live overlay and this worker's view of the control store. No I/O."""
        state = self.state
        reasons: list[str] = []
        event_log: dict[str, Any] = {"enabled": self.eventlog is not None}
        if self.eventlog is not None:
            event_log.update(self.eventlog.status())
            if not event_log.get("ok", True):
                reasons.append(f"event log cannot write: {event_log.get('reason')}")
        body: dict[str, Any] = {
            "ready": not reasons,
            "reasons": reasons,
            "model": state.default.model_name,
            "model_version": state.default.version,
            "experiments": {e["name"]: {"status": e["status"], "error": e["error"]} for e in state.experiment_status()},
            "event_log": event_log,
            "live": self.live_status(),
            "control": self.control_status(),
        }
        return (200 if not reasons else 503), body

    def live_status(self) -> dict[str, Any]:
        """The live overlay (no I/O): on or off, shoppers held, the tail's last read error."""
        live = getattr(self, "live", None)
        tail = getattr(self, "live_tail", None)
        return {"enabled": live is not None, "shoppers": len(live) if live is not None else 0,
                "follows_log": tail is not None, "error": tail.error if tail is not None else None}

    @status_app.get("/readyz")
    async def readyz(self) -> Response:
        """Ready to serve (:meth:`readiness`)."""
        code, body = self.readiness()
        return _json(body, code)

    @status_app.get("/experiments")
    async def experiments(self) -> Response:
        """Experiments from the experiments file, their status and variants."""
        return _json({"experiments": self.state.experiment_status()})

    @status_app.api_route("/explore{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def explore(self, request: Request) -> Response:
        """The explorer's pages (serving/explore.py)."""
        if self.explorer is None:
            return error_response(404, "the explorer is off on this service (serving.explorer = false)", code="explorer_off")
        return await self.explorer.handle(request)

    def __is_ready__(self) -> bool:
        """BentoML's own ``/readyz`` (``HEAD /readyz``; the gate sends ``GET`` to :meth:`readyz`)."""
        return self.readiness()[0] == 200

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
        previous = getattr(self, "state", None)
        self.state = state
        self._purge_forgotten(previous, state)
        live = getattr(self, "live", None)
        if live is not None and state.default.as_of is not None:
            live.drop_before(state.default.as_of)  # the new snapshot holds what happened up to then
        if live is not None:  # users erased since: forget-user deleted their tracked rows, the overlay still held them
            live.drop_users(forgotten_hashes(Path(self.settings.data.dir)))
        _freeze_heap(refreeze=True)

    def _purge_forgotten(self, previous: ServingState | None, state: ServingState) -> None:
        """Users erased since the previous state (``storerec forget-user``) whose rows this service
        may have written after the erasure ran: impressions and events still in its buffers then
        (they are flushed within ``eventlog.flush_ms``). Delete them from the event log again, once,
        for the users the new version knows (the ids in clear are the model's own). A failure is
        logged: ``storerec forget-user`` can be run again."""
        if previous is None or self.eventlog is None:
            return
        newly = state.default.ranker.forgotten - previous.default.ranker.forgotten
        if not newly:
            return
        from storerec.events.eventlog import delete_users

        try:
            with self.eventlog.engine.begin() as conn:
                counts = delete_users(conn, sorted(newly))
            log.info("event log: %d impressions, %d feedback, %d tracked and %d campaign ledger rows of %d forgotten user(s) "
                     "written since the erasure deleted", *counts, len(newly))
        except Exception as exc:  # the service keeps serving; the erasure can be run again
            log.warning("event log: rows of %d forgotten user(s) could not be deleted (%s): run `storerec forget-user` again",
                        len(newly), type(exc).__name__)

    def _resolve(self, ref: str) -> str:
        """The version ``ref`` points at in the registry now (the sync thread's alias poll); a
        service on a baked version (``serving.model_dir``) never asks MLflow."""
        if self.settings.serving.model_dir is not None:
            return baked_version(self.settings, ref)
        from mlflow import MlflowClient

        from storerec.registry import tracking

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
            tail = getattr(self, "live_tail", None)
            if tail is not None:
                tail.stop()
            eventlog = getattr(self, "eventlog", None)
            if eventlog is not None:
                eventlog.close()
            control = getattr(self, "control", None)
            if control is not None:
                control.close()

    @bentoml.on_shutdown
    def _flush_event_log(self) -> None:
        self._shutdown()

    def _current(self) -> ServingState:
        return self.state  # one read: a reload swaps the reference, in-flight requests keep theirs

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

    @_endpoint("/recommend")
    async def recommend(self, **kw: Any) -> Response:
        """Personalised list with reasons and diversity (home, product and cart pages)."""
        return await self._recommend(RecommendRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _recommend(self, req: RecommendRequest) -> Response:
        now = now_utc()
        ranked = self.rank_request(req, now)
        if isinstance(ranked, Response):
            return ranked
        request_id = _request_id()
        self._log_list(request_id, now, ranked.loaded, ranked.result.items, page=req.context.page, user_id=req.user_id,
                       session_id=req.session_id, experiment=ranked.experiment, variant=ranked.variant)
        return _json({
            "request_id": request_id,
            "model": ranked.loaded.model_name,
            "model_version": ranked.loaded.version,
            "experiment": ranked.experiment,
            "variant": ranked.variant,
            "user_kind": ranked.result.user_kind,
            "source": ranked.result.source,
            "live_context": ranked.live_context,
            "live_excluded": ranked.live_excluded,
            "items": _items(ranked.result.items, ranked.loaded.ranker if req.details else None),
        })

    def rank_request(self, req: RecommendRequest, now: datetime, loaded: Loaded | None = None) -> Ranked | Response:
        """The list ``req`` gets now: its experiment variant's version (or ``loaded``, which skips
        the assignment: the explorer's comparison of two versions), the variant's and the
        settings' diversity, the frequency cap's held-back items and the live overlay applied;
        or the 404 answer. Nothing is logged (the explorer shows lists without serving them)."""
        state = self._current()
        experiment = variant = None
        config = None
        if loaded is None:
            profile = state.default.ranker.profiles.get(req.user_id) if req.user_id else None
            a = assign(state.experiments, set(state.disabled), user_id=req.user_id, session_id=req.session_id, profile=profile, now=now)
            loaded = state.by_ref[a.config.model] if a.config is not None else state.default
            experiment, variant, config = a.experiment, a.variant, a.config
        strength = req.diversity.strength
        if strength is None and config is not None:
            strength = config.diversity_strength
        if strength is None:
            strength = self.settings.serving.diversity_strength
        cap = req.diversity.max_per_category
        if cap is None and config is not None:
            cap = config.max_per_category
        exclude = list(req.filters.exclude_item_ids)
        if self.freqcap is not None and req.user_id:
            exclude += self.freqcap.held_back(req.user_id, now)
        user_key = req.user_id or f"anonymous:{req.session_id}"  # unknown to every model: cold start
        live = self._live_view(req, now)
        session: tuple[str, ...] = ()
        session_events: Mapping[str, tuple[str, datetime]] | None = None
        n_excluded = 0
        if live:
            gone = set(exclude)
            extra: dict[str, None] = {}
            if req.filters.exclude_seen:  # the session's items stay unless live.session_items_eligible is off (docs/live.md)
                extra.update(dict.fromkeys(live.older() if self.settings.live.session_items_eligible else live.seen))
            if req.filters.exclude_purchased:
                extra.update(dict.fromkeys(live.purchased))
            dropped = [i for i in extra if i not in gone]
            exclude += dropped
            n_excluded = len(dropped)
            session = tuple(i for i in live.recent if i not in req.context.item_ids and i not in req.context.recent_item_ids)
            session_events = live.session
        try:
            result = loaded.ranker.rank(
                user_key,
                req.k,
                Context(req.context.page, tuple(req.context.item_ids), tuple(req.context.recent_item_ids), session, session_events),
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
        return Ranked(loaded, result, experiment, variant, strength, cap, len(session), n_excluded)

    def _live_view(self, req: RecommendRequest, now: datetime) -> LiveView:
        """What the shopper's tracked events change (their user id's and their session's)."""
        if self.live is None:
            return EMPTY
        keys = {shopper_key(req.user_id, None), shopper_key(None, req.session_id)}
        return self.live.view(keys, now)

    @_endpoint("/track")
    async def track(self, **kw: Any) -> Response:
        """Record storefront behaviour not tied to a served list (views, carts, purchases with
        quantity and unit price, favourites). Answers once the whole batch is committed to the
        event log; the shoppers' next lists react at once (serving/live.py)."""
        return await self._track(TrackRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _track(self, req: TrackRequest) -> Response:
        if self.eventlog is None:
            return error_response(404, "event logging is off on this service (eventlog.enabled = false)", code="event_log_off")
        index_of = self._current().default.ranker.model.items.index_of  # type: ignore[union-attr]
        unknown = [k for k, e in enumerate(req.events) if index_of(e.item_id) < 0]
        if unknown:
            first = req.events[unknown[0]].item_id
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            return error_response(
                404, f"events.{unknown[0]}.item_id: unknown item_id {first!r}{more}: not in the catalogue this service serves; "
                "none of the events was stored", field=f"events.{unknown[0]}.item_id",
                details=[{"field": f"events.{k}.item_id", "message": f"unknown item_id {req.events[k].item_id!r}"} for k in unknown],
            )
        now = now_utc()
        rows: list[dict[str, Any]] = []
        for e in req.events:  # types, quantity, price and timestamp bounds were checked by the gate (serving.http)
            ts = e.timestamp or now
            ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
            rows.append({"event_id": e.event_id, "ts": ts.astimezone(UTC), "user_id": e.user_id, "session_id": e.session_id,
                         "item_id": e.item_id, "event_type": e.event_type, "quantity": e.quantity, "price": e.price})
        stored = await self._commit(self.eventlog.store_behaviour, rows)
        if isinstance(stored, Response):
            return stored
        if self.live is not None:
            self.live.record(rows)  # a retried event is already there: kept once
        return _json({"received": len(rows), "stored": stored})

    async def _commit(self, store: Callable[..., Any], rows: list[dict[str, Any]]) -> int | Response:
        """Store ``rows`` with ``store`` (the event log's feedback or behaviour writer), waiting for
        the commit: the number stored, or the 422/503 answer when nothing was; the frequency cap
        counts the committed interactions."""
        try:
            stored: int = await store(rows, self.settings.eventlog.ack_timeout_ms / 1000.0)
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
        return stored

    @_endpoint("/events")
    async def events(self, **kw: Any) -> Response:
        """Record clicks, add-to-carts and purchases (with revenue) against the request_id of the
        list they came from. Answers only once the events are committed to the event log."""
        return await self._events(EventsRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _events(self, req: EventsRequest) -> Response:
        if self.eventlog is None:
            return error_response(404, "event logging is off on this service (eventlog.enabled = false)", code="event_log_off")
        now = now_utc()
        rows: list[dict[str, Any]] = []
        for e in req.events:  # types, revenue and timestamp bounds were checked by the gate (serving.http)
            ts = e.timestamp or now
            ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
            user = e.user_id or self._request_users.get(e.request_id)
            rows.append({"event_id": e.event_id, "ts": ts, "request_id": e.request_id, "user_id": user,
                         "session_id": e.session_id, "item_id": e.item_id, "event_type": e.event_type, "revenue": e.revenue})
        stored = await self._commit(self.eventlog.store_feedback, rows)
        if isinstance(stored, Response):
            return stored
        return _json({"received": len(rows), "stored": stored})

    @_endpoint("/score")
    async def score(self, **kw: Any) -> Response:
        """Bare model scores: the user's top k over all items, with no filters, context, diversity
        or reasons. A diagnostic, and the baseline of the serving benchmark (``make bench-serve``)."""
        return await self._score(ScoreRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _score(self, req: ScoreRequest) -> Response:
        state = self._current().default
        model = state.ranker.model
        scores = model.score_user(state.ranker.user_index(req.user_id))
        if scores is None:
            return error_response(404, f"the {model.name} model cannot score this user_id (unknown user); use /recommend for cold start",
                                  field="user_id")
        idx, sc = top_k_row(scores, req.k)
        return _json({
            "request_id": _request_id(), "model": state.model_name, "model_version": state.version,
            "items": [{"item_id": i, "score": s} for i, s in zip(model.items.to_external(idx).tolist(), sc.tolist())],  # type: ignore[union-attr]
        })

    @_endpoint("/similar_items")
    async def similar_items(self, **kw: Any) -> Response:
        """Item page: similar items (the model's item-item similarity) and items bought together."""
        return await self._similar_items(SimilarRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _similar_items(self, req: SimilarRequest) -> Response:
        state = self._current().default
        try:
            similar, together = state.ranker.similar(req.item_id, req.k)
        except RankingInputError as exc:
            return error_response(404, str(exc), field="item_id")
        request_id = _request_id()
        self._log_list(request_id, now_utc(), state, similar + together, page="product")
        return _json({
            "request_id": request_id, "model": state.model_name, "model_version": state.version,
            "similar": _items(similar, state.ranker if req.details else None),
            "bought_together": _items(together, state.ranker if req.details else None),
        })

    @_endpoint("/trending")
    async def trending(self, **kw: Any) -> Response:
        """Items growing fastest this week (established items), optionally per category or region."""
        return await self._trending(ListRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _trending(self, req: ListRequest) -> Response:
        return self._list("trending", lambda ranker: ranker.trending(req.k, req.category, req.region), req.details)

    @_endpoint("/new_arrivals")
    async def new_arrivals(self, **kw: Any) -> Response:
        """Popular new arrivals, optionally per category."""
        return await self._new_arrivals(ListRequest.model_construct(**kw))  # validated by BentoML against the input spec

    async def _new_arrivals(self, req: ListRequest) -> Response:
        return self._list("new_arrivals", lambda ranker: ranker.new_arrivals(req.k, req.category), req.details)

    def _list(self, page: str, rank: Callable[[Ranker], RankResult], details: bool = False) -> Response:
        """A list for no one in particular (``page``: trending, new arrivals), from the default
        model's ranker; logged as an impression."""
        loaded = self._current().default
        try:
            result = rank(loaded.ranker)
        except RankingInputError as exc:
            return error_response(404, str(exc), field=exc.field)
        request_id = _request_id()
        self._log_list(request_id, now_utc(), loaded, result.items, page=page)
        return _json({"request_id": request_id, "items": _items(result.items, loaded.ranker if details else None)})

    @_endpoint("/admin/reload")
    def reload(self, **kw: Any) -> Response:
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
        req = ReloadRequest.model_construct(**kw)  # validated by BentoML against the input spec
        status, body = self.reload_model(req.model or self.settings.serving.model)
        return error_response(status, body["error"], field="model") if status != 200 else _json(body)

    def reload_model(self, ref: str) -> tuple[int, dict[str, Any]]:
        """Load ``ref`` here, publish it to the other workers and wait for them (``POST
        /admin/reload`` and the explorer's reload form): ``(200, ReloadResponse fields)``, or
        ``(404 | 409, {"error": ...})`` with the old version still served everywhere."""
        try:
            new, previous, generation = self.sync.reload(ref)
        except UserError as exc:
            current = self._current().default.version
            code = 404 if isinstance(exc, NotFoundError) else 409  # unknown version / exists but cannot be loaded
            return code, {"error": f"reload failed, still serving version {current}: {exc}"}
        workers: list[dict[str, Any]]
        lagging: list[str]
        if generation is None:  # control store unavailable: only this worker changed
            complete, workers, lagging = False, [], []
        else:
            complete, workers, lagging = self.sync.wait_for(generation, self.settings.serving.reload_wait_s)
        log.info("reloaded: version %s -> %s (%s, generation %s, %s)", previous, new.default.version, ref, generation,
                 "every worker" if complete else f"not on {lagging or 'the other workers'}")
        return 200, ReloadResponse(
            model=new.default.model_name, model_version=new.default.version, previous_version=previous or "", follows=ref,
            generation=generation, complete=complete, workers=workers, lagging=lagging, sync_error=self.control.error,
        ).model_dump()


# Each worker's gate reads its configuration from the worker's service instance (at the first
# request, once BentoML has made it); GET /readyz goes to the status app (module docstring).
# (cast: the class decorators made StoreRec a bentoml.Service; a type checker keeps the class)
cast("bentoml.Service[StoreRec]", StoreRec).add_asgi_middleware(Gate, config=lambda: bentoml.get_current_service().gate, readyz=status_app)
