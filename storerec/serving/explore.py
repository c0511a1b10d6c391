"""The explorer: HTML pages at ``/explore`` for merchandisers and data scientists.

Served by the service itself (its status app routes ``/explore...`` here: no other server, no
network at run time; the templates, style sheet and script are files of this package,
``serving/explorer/``). Every page works without JavaScript (plain forms and links, GET);
``explore.js`` re-ranks as a control changes by fetching the same page and swapping its results.

* ``GET /explore``: a shopper (``user_id``; the busiest known shopper when none is given): their
  profile (segment, tier, points, RFM, top categories, price band), recent history with titles,
  and the list the service would serve them now, every reason with its evidence; the request's
  knobs (k, page, context items, category and price filters, diversity strength, category cap)
  are form controls.
* ``GET /explore/compare``: two versions (``a``, ``b``: aliases or numbers) side by side for one
  shopper, with their overlap and each list's diversity and novelty.
* ``GET /explore/experiments``: each experiment's variants, traffic so far, CTR and conversion
  with 95 % intervals, the comparisons with the control and the SRM check, read from the event
  log when the page is asked for.
* ``GET /explore/item``: an item, its similar items and the items bought with it, with why.
* ``POST /explore/reload``: serve another version (the admin token in the form; the explorer is
  read-only without it).

Lists shown here are ranked exactly as ``POST /recommend`` ranks them (``StoreRec.rank_request``:
experiment variant, frequency cap, live overlay) but never logged: looking at a shopper is not an
impression, and does not count in an experiment or a frequency cap.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Protocol

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from storerec.core.errors import UserError
from storerec.core.schema import Columns as C
from storerec.core.settings import Settings
from storerec.evaluation.beyond import novelty_from_histogram, per_user_diversity
from storerec.events.eventlog import now_utc
from storerec.ranking.ranker import RankedItem, Ranker
from storerec.registry.loading import Loaded
from storerec.serving.http import validation_details
from storerec.serving.schemas import RecommendRequest
from storerec.serving.state import Ranked, ServingState

log = logging.getLogger("storerec.explore")

PAGES = ("home", "product", "cart", "search", "email")
STATIC = {"explore.css": "text/css; charset=utf-8", "explore.js": "text/javascript; charset=utf-8"}
EXTRA_VERSIONS = 2  # versions loaded for comparison besides those the service serves (each holds a model)
VERSIONS_TTL_S = 30.0  # the registry's version list is read again after this


class Host(Protocol):
    """What the explorer needs of the service (``StoreRec``)."""

    settings: Settings

    def _current(self) -> ServingState: ...

    def rank_request(self, req: RecommendRequest, now: datetime, loaded: Loaded | None = None) -> Ranked | Response: ...

    def reload_model(self, ref: str) -> tuple[int, dict[str, Any]]: ...

    def _resolve(self, ref: str) -> str: ...


class BadParameter(ValueError):
    """A query parameter the page cannot use: answered 400 with the parameter named."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@cache
def _env() -> Environment:
    env = Environment(loader=PackageLoader("storerec.serving", "explorer"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v, digits=1: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f} %"
    env.filters["num"] = _num
    env.filters["date"] = lambda v: "–" if v is None else f"{v:%Y-%m-%d}"
    return env


def _num(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "–"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    return f"{float(v):,.{digits}f}"


@cache
def static_file(name: str) -> bytes:
    return resources.files("storerec.serving").joinpath("explorer", "static", name).read_bytes()


# ---- query parameters ----------------------------------------------------------------------------


def _one(q: Mapping[str, str], name: str) -> str | None:
    v = q.get(name)
    v = v.strip() if v is not None else None
    return v or None


def _int(q: Mapping[str, str], name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = _one(q, name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadParameter(name, f"must be a whole number from {lo} to {hi}, got {raw!r}") from None
    if not lo <= v <= hi:
        raise BadParameter(name, f"must be from {lo} to {hi}, got {v}")
    return v


def _float(q: Mapping[str, str], name: str, lo: float, hi: float | None = None) -> float | None:
    raw = _one(q, name)
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BadParameter(name, f"must be a number, got {raw!r}") from None
    if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
        raise BadParameter(name, f"must be from {lo} to {hi}" if hi is not None else f"must be at least {lo}")
    return v


def _ids(q: Any, name: str) -> list[str]:
    """Repeated parameters and comma-separated values, in order, once each."""
    out: dict[str, None] = {}
    for raw in q.getlist(name):
        for part in raw.split(","):
            if part.strip():
                out[part.strip()] = None
    return list(out)


def _flag(q: Mapping[str, str], name: str, default: bool) -> bool:
    """A checkbox: absent from a submitted form (``form=1``) is off; absent from a bare link is
    ``default``."""
    if name in q:
        return q[name] not in ("0", "false", "off", "")
    return False if "form" in q else default


_FORM_FIELD = {  # request model field -> the form's parameter (for error messages)
    "user_id": "user_id", "k": "k", "context.page": "page", "context.item_ids": "context", "filters.include_categories": "include",
    "filters.exclude_categories": "exclude", "filters.min_price": "min_price", "filters.max_price": "max_price",
    "diversity.strength": "strength", "diversity.max_per_category": "cap", "filters": "min_price",  # (the price range rule)
}


def shopper_request(q: Any) -> RecommendRequest:
    """The ``RecommendRequest`` of the shopper form (validated as the API validates it)."""
    page = _one(q, "page") or "home"
    if page not in PAGES:
        raise BadParameter("page", f"must be one of {', '.join(PAGES)}, got {page!r}")
    body = {
        "user_id": _one(q, "user_id"),
        "session_id": None if _one(q, "user_id") else "explorer",
        "k": _int(q, "k", 10, 1, 100),
        "context": {"page": page, "item_ids": _ids(q, "context")},
        "filters": {
            "exclude_seen": _flag(q, "exclude_seen", True), "exclude_purchased": _flag(q, "exclude_purchased", True),
            "include_categories": _ids(q, "include"), "exclude_categories": _ids(q, "exclude"),
            "min_price": _float(q, "min_price", 0.0), "max_price": _float(q, "max_price", 0.0),
            "in_stock_only": _flag(q, "in_stock", True),
        },
        "diversity": {"strength": _float(q, "strength", 0.0, 1.0), "max_per_category": _int(q, "cap", None, 1, 100)},
    }
    try:
        return RecommendRequest.model_validate(body)
    except ValidationError as exc:
        _, details = validation_details(exc)
        first = details[0] if details else {"field": None, "message": "invalid request"}
        name = _FORM_FIELD.get(first["field"] or "", first["field"] or "request")
        raise BadParameter(str(name), str(first["message"])) from None


# ---- what the pages show ------------------------------------------------------------------------


def list_stats(ranker: Ranker, item_ids: Sequence[str]) -> dict[str, Any]:
    """A list's diversity (share of its item pairs from different categories, as the evaluation's
    ``intra_list_diversity``), novelty (mean self-information ``-log2(users_i / users)`` of its
    items, as the evaluation's ``novelty``, over the version's users), distinct categories and
    mean price."""
    import polars as pl

    index_of = ranker.model.items.index_of  # type: ignore[union-attr]
    idx = [j for j in (index_of(i) for i in item_ids) if j >= 0]
    cats = Counter(ranker.items.category[j] for j in idx)
    n = len(idx)
    ids = [str(ranker.items.ids[j]) for j in idx]
    ild = per_user_diversity(pl.DataFrame({C.User: ["list"] * n, C.Item: ids}, schema={C.User: pl.String, C.Item: pl.String}),
                             pl.DataFrame({C.Item: ids, C.Category: [ranker.items.category[j] for j in idx]},
                                          schema={C.Item: pl.String, C.Category: pl.String}))["ild"]
    diversity = float(ild[0]) if len(ild) else math.nan
    n_users = len(ranker.model.users.external) if ranker.model.users is not None else 1
    novelty, _ = novelty_from_histogram(Counter(int(ranker.items.users_total[j]) for j in idx), n_users)
    prices = [float(ranker.items.price[j]) for j in idx if not math.isnan(float(ranker.items.price[j]))]
    return {"diversity": diversity, "novelty": novelty if n else math.nan, "categories": len(cats),
            "mean_price": sum(prices) / len(prices) if prices else math.nan}


class Explorer:
    """The pages; one per worker, given the service instance (:class:`Host`)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._versions: tuple[float, list[dict[str, Any]]] | None = None
        self._extra: OrderedDict[str, Loaded] = OrderedDict()  # versions loaded for comparisons (load()'s cache), oldest first
        self._picks_of: dict[int, tuple[weakref.ref[Loaded], str | None, list[dict[str, str]]]] = {}  # see _picks

    # ---- dispatch ----------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/explore"
        if path.startswith("/explore/static/"):
            name = path.removeprefix("/explore/static/")
            if name not in STATIC:
                return self._page("error.html", {"title": "Not found", "message": f"no such file: {name}"}, 404)
            return Response(static_file(name), media_type=STATIC[name], headers={"cache-control": "max-age=300"})
        if request.method == "POST":
            if path == "/explore/reload":
                return await self.reload(request)
            return self._page("error.html", {"title": "Method not allowed", "message": f"{path} takes GET"}, 405)
        pages: dict[str, Callable[[Request], Any]] = {
            "/explore": self.shopper, "/explore/compare": self.compare, "/explore/experiments": self.experiments, "/explore/item": self.item,
        }
        page = pages.get(path)
        if page is None:
            return self._page("error.html", {"title": "Not found", "message": f"no explorer page at {path}: see the menu"}, 404)
        try:
            return await page(request)
        except BadParameter as exc:
            return self._page("error.html", {"title": "Bad parameter", "message": str(exc), "field": exc.field}, 400)
        except Exception:
            log.exception("GET %s failed", path)
            return self._page("error.html", {"title": "Error", "message": "the page could not be built; the service log has the details"}, 500)

    def _page(self, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        state = self.host._current()
        base = {"served": state.default, "nav": template.removesuffix(".html"), "admin": bool(self.host.settings.serving.admin_token)}
        html = _env().get_template(template).render(**base, **context)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    # ---- helpers ----------------------------------------------------------------------------

    def _item_view(self, ranker: Ranker, items: list[RankedItem]) -> list[dict[str, Any]]:
        index_of = ranker.model.items.index_of  # type: ignore[union-attr]
        out = []
        for it in items:
            i = index_of(it.item_id)
            reasons = [{**r, "evidence": self._evidence(ranker, r.get("evidence") or {})} for r in it.reasons]
            out.append({"item_id": it.item_id, "rank": it.rank, "score": it.score, "category": it.category, "reasons": reasons,
                        **ranker.items.details(i)})
        return out

    def _evidence(self, ranker: Ranker, evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each evidence field as (name, text, item link when it names an item)."""
        out = []
        for key, value in evidence.items():
            row: dict[str, Any] = {"name": key, "text": _num(value) if isinstance(value, float) else str(value), "item": None}
            if key == "item_id":
                row["item"] = {"item_id": value, "title": self._title(ranker, str(value))}
                row["text"] = row["item"]["title"]
            elif key == "your_share":
                row["text"] = f"{100 * float(value):.0f} % of your purchases"
            out.append(row)
        return out

    @staticmethod
    def _title(ranker: Ranker, item_id: str) -> str:
        i = ranker.model.items.index_of(item_id)  # type: ignore[union-attr]
        return (ranker.items.titles[i] or item_id) if i >= 0 else item_id

    def _picks(self, loaded: Loaded) -> tuple[str | None, list[dict[str, str]]]:
        """(the default shopper, one shopper per segment to try) of a version, found once per
        loaded version: both scan every shopper."""
        got = self._picks_of.get(id(loaded))
        if got is not None and got[0]() is loaded:
            return got[1], got[2]
        bought = loaded.ranker.users.purchased  # the shopper who bought the most distinct items (then the smallest id)
        shopper = min(bought, key=lambda u: (-len(bought[u]), u), default=None)
        if shopper is None:
            shopper = next(iter(sorted(loaded.ranker.users.history)), None)
        examples: list[dict[str, str]] = []
        if loaded.profiles is not None and "segment" in loaded.profiles.columns:
            import polars as pl

            known = list(loaded.ranker.users.history)
            rows = (loaded.profiles.select("user_id", pl.col("segment").cast(pl.String)).filter(pl.col("user_id").is_in(known))
                    .sort("user_id").unique("segment", keep="first", maintain_order=True))
            examples = [{"user_id": u, "segment": seg} for u, seg in rows.iter_rows() if seg]
        self._picks_of = {k: v for k, v in self._picks_of.items() if v[0]() is not None}  # versions swapped out go
        self._picks_of[id(loaded)] = (weakref.ref(loaded), shopper, examples)
        return shopper, examples

    def _profile(self, loaded: Loaded, user_id: str) -> dict[str, Any] | None:
        if loaded.profiles is None or user_id in loaded.ranker.forgotten:
            return None
        import polars as pl

        rows = loaded.profiles.filter(pl.col("user_id") == user_id)
        if not rows.height:
            return None
        row = rows.row(0, named=True)
        for key in ("segment", "tier", "price_band"):
            if row.get(key) is not None:
                row[key] = str(row[key])
        if loaded.as_of is not None:
            row["points_expiry_by"] = loaded.as_of + timedelta(days=30)
        row["top_categories"] = row.get("top_categories") or []
        return row

    def _history(self, ranker: Ranker, user_id: str) -> list[dict[str, Any]]:
        from storerec.ranking.facts import TYPE_RANK

        names = {rank: name for name, rank in TYPE_RANK.items()}
        if user_id in ranker.forgotten:  # erased (forget-user): served as unknown, nothing of theirs is shown
            return []
        items, types = ranker.users.history.get(user_id, (np.empty(0, np.int64), np.empty(0, np.int8)))
        return [{"item_id": str(ranker.items.ids[i]), "title": ranker.items.titles[i] or str(ranker.items.ids[i]),
                 "category": ranker.items.category[i], "event": names.get(int(t), str(t))} for i, t in zip(items.tolist(), types.tolist())]

    def _versions_list(self) -> tuple[list[dict[str, Any]], str | None]:
        """Registered versions (newest first) for the comparison's choices, read at most every
        :data:`VERSIONS_TTL_S`; (versions, error)."""
        settings = self.host.settings
        now = time.monotonic()
        if self._versions is not None and now - self._versions[0] < VERSIONS_TTL_S:
            return self._versions[1], None
        try:
            if settings.serving.model_dir is not None:
                from storerec.registry.loading import baked_info

                info = baked_info(settings)
                rows = [{"version": str(info.get("version")), "aliases": str(info.get("ref") or ""), "model": ""}]
            else:
                from storerec.registry import tracking

                client = tracking.configure(settings.mlflow)
                rows = tracking.list_versions(client, settings.registered_model_name())
        except Exception as exc:  # the registry is down or locked: the page says so, the service serves on
            return [], f"the model registry could not be read ({exc})"
        self._versions = (now, rows)
        return rows, None

    def _loaded(self, ref: str) -> Loaded:
        """The version ``ref`` names: one the service serves, else loaded for the comparison (at
        most :data:`EXTRA_VERSIONS` kept)."""
        state = self.host._current()
        if ref in state.by_ref:
            return state.by_ref[ref]
        if "/" not in ref and "@" not in ref:  # a version of the served registered model: resolve the number only
            try:
                number = self.host._resolve(ref)
            except Exception as exc:
                raise UserError(str(exc)) from None
            for served in state.by_ref.values():
                if served.version == number:
                    return served  # served already: not loaded a second time
        from storerec.registry.loading import load

        loaded = load(self.host.settings, ref, self._extra)
        key = next(k for k, v in self._extra.items() if v is loaded)
        self._extra.move_to_end(key)
        while len(self._extra) > EXTRA_VERSIONS:
            self._extra.popitem(last=False)
        return loaded

    # ---- pages ---------------------------------------------------------------------------------

    async def shopper(self, request: Request) -> Response:
        q = request.query_params
        state = self.host._current()
        ranker = state.default.ranker
        user_id = _one(q, "user_id")
        picked = user_id is None
        shopper, examples = self._picks(state.default)
        if user_id is None:
            user_id = shopper
        params = dict(q) | ({"user_id": user_id} if user_id else {})
        req = shopper_request(_Query(q, params))
        ranked = self.host.rank_request(req, now_utc())
        context: dict[str, Any] = {
            "title": f"Shopper {user_id}" if user_id else "Shopper", "q": params, "req": req, "picked": picked,
            "categories": ranker.items.categories, "pages": PAGES, "examples": examples,
            "default_strength": self.host.settings.serving.diversity_strength,
        }
        if isinstance(ranked, Response):
            context["error"] = bytes(ranked.body).decode()
            return self._page("shopper.html", context, ranked.status_code)
        context.update(self._shopper_view(ranked, user_id))
        return self._page("shopper.html", context)

    def _shopper_view(self, ranked: Ranked, user_id: str | None) -> dict[str, Any]:
        ranker = ranked.loaded.ranker
        items = self._item_view(ranker, ranked.result.items)
        return {
            "ranked": ranked, "items": items, "stats": list_stats(ranker, [i["item_id"] for i in items]),
            "profile": self._profile(ranked.loaded, user_id) if user_id else None,
            "history": self._history(ranker, user_id) if user_id else [],
        }

    async def compare(self, request: Request) -> Response:
        q = request.query_params
        state = self.host._current()
        versions, registry_error = await asyncio.to_thread(self._versions_list)
        refs = [r for r in ("champion", "challenger") if any(r in str(v.get("aliases", "")).split(",") for v in versions)]
        a_ref = _one(q, "a") or (refs[0] if refs else state.default.version)
        b_ref = _one(q, "b") or (refs[1] if len(refs) > 1 else state.default.version)
        user_id = _one(q, "user_id") or self._picks(state.default)[0]
        req = shopper_request(_Query(q, dict(q) | ({"user_id": user_id} if user_id else {})))
        context: dict[str, Any] = {"title": "Compare versions", "q": dict(q), "a": a_ref, "b": b_ref, "user_id": user_id, "k": req.k,
                                   "versions": versions, "registry_error": registry_error, "sides": [], "error": None}
        now = now_utc()
        sides: list[dict[str, Any]] = []
        for name, ref in (("a", a_ref), ("b", b_ref)):
            try:
                loaded = await asyncio.to_thread(self._loaded, ref)
            except UserError as exc:
                raise BadParameter(name, f"version {ref!r} cannot be loaded: {exc}") from None
            ranked = self.host.rank_request(req, now, loaded)
            if isinstance(ranked, Response):
                context["error"] = bytes(ranked.body).decode()
                return self._page("compare.html", context, ranked.status_code)
            items = self._item_view(loaded.ranker, ranked.result.items)
            sides.append({"ref": ref, "loaded": loaded, "ranked": ranked, "items": items,
                          "stats": list_stats(loaded.ranker, [i["item_id"] for i in items])})
        a_ids = [i["item_id"] for i in sides[0]["items"]]
        b_ids = [i["item_id"] for i in sides[1]["items"]]
        both = set(a_ids) & set(b_ids)
        for side, other in ((sides[0], b_ids), (sides[1], a_ids)):
            for it in side["items"]:
                it["other_rank"] = other.index(it["item_id"]) + 1 if it["item_id"] in both else None
        union = len(set(a_ids) | set(b_ids))
        context.update({"sides": sides, "overlap": len(both), "jaccard": len(both) / union if union else math.nan})
        return self._page("compare.html", context)

    async def experiments(self, request: Request) -> Response:
        state = self.host._current()
        settings = self.host.settings
        rows = state.experiment_status()
        read_at = now_utc()
        results = await asyncio.to_thread(self._experiment_results, state, settings) if rows and settings.eventlog.enabled else {}
        return self._page("experiments.html", {"title": "Experiments", "experiments": rows, "results": results, "read_at": read_at,
                                               "eventlog_enabled": settings.eventlog.enabled})

    @staticmethod
    def _experiment_results(state: ServingState, settings: Settings) -> dict[str, dict[str, Any]]:
        """experiment name -> the A/B analysis of its logged traffic (``storerec ab-report``'s),
        or ``{"error": ...}``."""
        from storerec.evaluation.ab import analyze, per_unit
        from storerec.events.eventlog import read_frames

        out: dict[str, dict[str, Any]] = {}
        for exp in state.experiments:
            try:
                frames = read_frames(settings.eventlog.url, experiment=exp.name)
            except UserError as exc:
                out[exp.name] = {"error": str(exc)}
                continue
            if frames["impressions"].is_empty():
                out[exp.name] = {"empty": True}
                continue
            result = analyze(per_unit(frames), exp.shares(), exp.control.name, bootstrap=500)
            result["first"] = frames["impressions"]["ts"].min()
            result["last"] = frames["impressions"]["ts"].max()
            out[exp.name] = result
        return out

    async def item(self, request: Request) -> Response:
        q = request.query_params
        state = self.host._current()
        ranker = state.default.ranker
        item_id = _one(q, "item_id")
        k = _int(q, "k", 10, 1, 100)
        if item_id is None:  # the best seller: something to show
            item_id = str(ranker.items.ids[int(np.argmax(ranker.items.users_total))]) if ranker.n else None
        context: dict[str, Any] = {"title": f"Item {item_id}", "item_id": item_id, "k": k}
        i = ranker.model.items.index_of(item_id) if item_id else -1  # type: ignore[union-attr]
        if i < 0:
            context["error"] = f"unknown item_id {item_id!r}: not in the catalogue this service serves"
            return self._page("item.html", context, 404)
        similar, together = ranker.similar(item_id, k or 10)  # type: ignore[arg-type]
        context.update({
            "item": {"item_id": item_id, "category": ranker.items.category[i], **ranker.items.details(i),
                     "users_total": int(ranker.items.users_total[i]), "pop_7d": int(ranker.items.pop_7d[i])},
            "similar": self._item_view(ranker, similar), "together": self._item_view(ranker, together),
        })
        return self._page("item.html", context)

    async def reload(self, request: Request) -> Response:
        """Serve another version: the form's ``token`` must be the admin token (compared in constant
        time; with none configured, reloading from here is off)."""
        form = await request.form()
        token = self.host.settings.serving.admin_token
        given = str(form.get("token") or "")
        ref = str(form.get("model") or "").strip() or None
        if not token:
            return self._page("error.html", {"title": "Forbidden", "message": "admin actions are off: the service has no "
                                             "serving.admin_token (storerec serve makes one and prints it)"}, 403)
        if not hmac.compare_digest(given.encode(), token.encode()):
            return self._page("error.html", {"title": "Forbidden", "message": "missing or wrong admin token: nothing was changed"}, 403)
        status, body = await asyncio.to_thread(self.host.reload_model, ref or self.host.settings.serving.model)
        return self._page("reloaded.html", {"title": "Reload", "status": status, "body": body}, status)


class _Query(Mapping[str, str]):
    """The request's query parameters with some replaced (``getlist`` keeps repeated ones)."""

    def __init__(self, q: Any, values: dict[str, str]) -> None:
        self.q, self._values = q, values

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getlist(self, key: str) -> list[str]:
        return list(self.q.getlist(key)) or ([self._values[key]] if key in self._values else [])

