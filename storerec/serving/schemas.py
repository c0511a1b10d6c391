"""Request and response models of the HTTP service (they drive validation and the OpenAPI page)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator

from storerec.core.schema import FEEDBACK_EVENT_TYPES, EventTypes, FeedbackTypes

# Storefront behaviour events POST /track accepts (the behaviour types but ratings, which are
# imported with their value, not tracked live).
TRACK_EVENT_TYPES: tuple[str, ...] = (EventTypes.View, EventTypes.Favorite, EventTypes.Cart, EventTypes.Purchase)

if TYPE_CHECKING:  # a Literal built from a tuple is beyond the type checker
    FeedbackType = str
    TrackType = str
else:
    FeedbackType = Literal[FEEDBACK_EVENT_TYPES]
    TrackType = Literal[TRACK_EVENT_TYPES]


class _Strict(BaseModel):
    """Requests: unknown fields are errors; no coercion (``"5"`` or ``true`` is not an integer);
    no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _integral(value: Any) -> Any:
    """JSON has one number type: 5.0 is the integer 5 (JSON Schema agrees); 5.5, "5" and true are not."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]

# Ids: printable text (no control characters: they break logs and some databases).
Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class ContextIn(_Strict):
    page: Literal["home", "product", "cart", "search", "email"] = Field("home", description="Where the list is shown.")
    item_ids: list[Id] = Field(default_factory=list, max_length=50, description="Items on the page (product page item, cart items).")
    recent_item_ids: list[Id] = Field(default_factory=list, max_length=50, description="Items viewed in this session, most recent first.")


class FiltersIn(_Strict):
    exclude_seen: bool = Field(
        True,
        description="Leave out the items of the user's history (what they viewed, carted or bought before) and of their earlier "
        "tracked sessions; the items of their current tracked session (POST /track: viewed, carted or favourited within "
        "live.context_hours of their latest event, not bought since) stay, with an in_your_session reason, unless "
        "live.session_items_eligible is false. False for reminder lists.",
    )
    exclude_purchased: bool = Field(True, description="Leave out items the user already bought (applies also when exclude_seen is false).")
    include_categories: list[Id] = Field(default_factory=list, max_length=50, description="Only these categories (full path or top level).")
    exclude_categories: list[Id] = Field(default_factory=list, max_length=50)
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    in_stock_only: bool = True
    exclude_item_ids: list[Id] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _range(self) -> FiltersIn:
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError("filters.min_price must not exceed filters.max_price")
        return self


class DiversityIn(_Strict):
    strength: float | None = Field(None, ge=0, le=1, description="MMR strength: 0 = relevance only, 1 = maximal variety (default from settings).")
    max_per_category: Annotated[int, Field(ge=1, le=100), BeforeValidator(_integral)] | None = Field(
        None, description="At most this many items of one category (honoured exactly)."
    )


class RecommendRequest(_Strict):
    user_id: Id | None = Field(None, description="Shopper id; unknown ids get cold-start lists.", examples=["u00042"])
    session_id: Id | None = Field(
        None, description="Session id: required for anonymous shoppers (no user_id); they are bucketed by it in experiments."
    )
    k: JsonInt = Field(10, ge=1, le=100, description="Number of items.")
    context: ContextIn = Field(default_factory=ContextIn)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    diversity: DiversityIn = Field(default_factory=DiversityIn)
    details: bool = Field(False, description="Add each item's title, brand, price, in_stock and image_url (to render it); off, the answer stays lean.")

    @model_validator(mode="after")
    def _who(self) -> RecommendRequest:
        if self.user_id is None and self.session_id is None:
            raise ValueError("give user_id, or session_id for an anonymous shopper")
        return self


class Reason(BaseModel):
    code: str = Field(..., description="Machine-readable reason, e.g. because_bought, trending.")
    text: str = Field(..., description="Sentence to show the shopper.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="The facts behind the reason.")


class ItemOut(BaseModel):
    item_id: str
    rank: int
    score: float
    category: str
    reasons: list[Reason]
    # with "details": true in the request (a storefront can render the item without a second lookup)
    title: str | None = Field(None, description="The catalogue's title (with details; null when the catalogue has none).")
    brand: str | None = Field(None, description="The catalogue's brand (with details; null when unknown).")
    price: float | None = Field(None, description="The catalogue's price (with details; null when unknown).")
    in_stock: bool | None = Field(None, description="In stock (with details).")
    image_url: str | None = Field(None, description="The item's picture (with details; the items table's optional image_url column, null without one).")


class _Served(BaseModel):
    request_id: str = Field(..., description="Send it back with POST /events so clicks and purchases count for this list.")
    model: str
    model_version: str


class RecommendResponse(_Served):
    experiment: str | None = Field(None, description="The experiment this shopper is in, if any.")
    variant: str | None = Field(None, description="The shopper's variant in that experiment (sticky).")
    user_kind: Literal["hot", "warm", "cold", "any"] = Field(..., description="hot: history; warm: profile only; cold: unknown.")
    source: str = Field(
        ..., description="model, model+context, context, trending (cold start: the region's trending list) or popular (cold start: best sellers)."
    )
    live_context: int = Field(
        0, description="Session context items taken from the shopper's events sent to POST /track since the model's snapshot "
        "(the source then says context or model+context, and items similar to them carry a similar_to_context reason; the session's "
        "own items in the list carry in_your_session).",
    )
    live_excluded: int = Field(
        0, description="Items left out because of those events (bought; or tracked before the current session, when filters.exclude_seen)."
    )
    items: list[ItemOut]


class SimilarRequest(_Strict):
    item_id: Id = Field(..., examples=["i00010"])
    k: JsonInt = Field(10, ge=1, le=100)
    details: bool = Field(False, description="Add each item's title, brand, price, in_stock and image_url (to render it); off, the answer stays lean.")


class SimilarResponse(_Served):
    similar: list[ItemOut]
    bought_together: list[ItemOut]


class ListRequest(_Strict):
    k: JsonInt = Field(10, ge=1, le=100)
    category: Id | None = Field(None, description="Only this category (full path or top level).")
    region: Id | None = Field(
        None,
        description="Trending among shoppers of this region (trending only): a region of the profiles, exactly as written there "
        "(an unknown or wrongly-cased one is 404, naming the known ones); a region with no activity this week gets everyone's list.",
    )
    details: bool = Field(False, description="Add each item's title, brand, price, in_stock and image_url (to render it); off, the answer stays lean.")


class ListResponse(BaseModel):
    request_id: str
    items: list[ItemOut]


class ReloadRequest(_Strict):
    model: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.@/-]+$",
        description="Alias or version to load (default: the configured one, e.g. champion).",
    )


class ReloadResponse(BaseModel):
    model: str
    model_version: str
    previous_version: str
    follows: str = Field(
        ..., description="What the service follows now: an alias (a move by `storerec promote` reaches every worker) or a pinned version."
    )
    generation: int | None = Field(
        None, description="Control generation published to every worker; null when the control store is unavailable "
        "(then only the worker that took this call changed, see sync_error).",
    )
    complete: bool = Field(
        ..., description="True once every live worker serves this generation. False after serving.reload_wait_s: "
        "`lagging` names the workers still on the old version (they keep retrying in the background).",
    )
    workers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Live workers: worker_id (host:pid), pid, generation, model_version, follows, heartbeat_age_s, last_error.",
    )
    lagging: list[str] = Field(default_factory=list, description="worker_id of each live worker not on this generation in time.")
    sync_error: str | None = Field(None, description="Why the control store could not be used, if it could not.")


class ScoreRequest(_Strict):
    user_id: Id = Field(..., examples=["u00042"])
    k: JsonInt = Field(10, ge=1, le=100)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class ScoreResponse(_Served):
    items: list[ScoredItem]


def _check_window(timestamp: datetime | None, info: ValidationInfo) -> None:
    """An event's timestamp lies within the accepted window (not in the future, not too old).

    The window comes from the settings, in the validation context the gate passes
    (serving/http.py: GateConfig.validation_context). BentoML parses the body once more, without
    a context, after the gate let it through: that parse does not check it again."""
    window = info.context or {}
    if timestamp is not None and "max_future_seconds" in window and "max_event_age_days" in window:
        ts = timestamp if timestamp.tzinfo is not None else timestamp.replace(tzinfo=UTC)
        now = datetime.now(UTC)
        max_age_days = window["max_event_age_days"]
        try:
            future = ts > now + timedelta(seconds=window["max_future_seconds"])
            old = ts < now - timedelta(days=max_age_days)
        except OverflowError:  # e.g. year 1 with a positive offset
            future, old = False, True
        if future:
            raise ValueError(f"timestamp {ts.isoformat()} is in the future")
        if old:
            raise ValueError(
                f"timestamp {ts.isoformat()} is more than {max_age_days:g} days old (eventlog.max_event_age_days): "
                "import old events with `storerec import --events` instead"
            )


EventId = Annotated[str | None, Field(
    min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$",
    description="Your id for the event: a retried event with the same id is stored once.",
)]
EventTime = Annotated[datetime | None, Field(
    description="When it happened (UTC when no offset is given); default: when received. "
    "At most events.max_future_seconds (300) in the future and at most eventlog.max_event_age_days (30) in the past.",
)]


class EventIn(_Strict):
    request_id: str = Field(..., min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$", description="request_id of the list the item was shown in.")
    item_id: Id
    event_type: FeedbackType
    revenue: float = Field(0.0, ge=0, le=1e9, description="Order value of the item; purchases only.")
    user_id: Id | None = None
    session_id: Id | None = None
    event_id: EventId = None
    timestamp: EventTime = None

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> EventIn:
        if self.revenue and self.event_type != FeedbackTypes.Purchase:
            raise ValueError(f"revenue is only allowed on purchase events, not on {self.event_type!r}")
        _check_window(self.timestamp, info)
        return self


class EventsRequest(_Strict):
    events: list[EventIn] = Field(..., min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    received: int
    stored: int = Field(..., description="Committed to the event log (a retried event_id is stored once).")


class TrackEventIn(_Strict):
    """One storefront event not tied to a served list (a product page view, an add-to-cart, an
    order line, a favourite)."""

    event_type: TrackType = Field(..., description="view, favorite, cart or purchase.")
    item_id: Id = Field(..., description="An item of the catalogue the service serves (unknown items are refused: 404).")
    user_id: Id | None = Field(None, description="Shopper id; give it, or session_id for an anonymous shopper.", examples=["u00042"])
    session_id: Id | None = Field(None, description="Session id (anonymous shoppers are known by it).")
    quantity: JsonInt = Field(1, ge=1, le=100_000, description="Units (cart and purchase only).")
    price: float | None = Field(None, ge=0, le=1e9, description="Unit price paid; purchases only.")
    event_id: EventId = None
    timestamp: EventTime = None

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> TrackEventIn:
        if self.user_id is None and self.session_id is None:
            raise ValueError("give user_id, or session_id for an anonymous shopper")
        if self.price is not None and self.event_type != EventTypes.Purchase:
            raise ValueError(f"price is only allowed on purchase events, not on {self.event_type!r}")
        if self.quantity != 1 and self.event_type not in (EventTypes.Cart, EventTypes.Purchase):
            raise ValueError(f"quantity is only allowed on cart and purchase events, not on {self.event_type!r}")
        _check_window(self.timestamp, info)
        return self


class TrackRequest(_Strict):
    events: list[TrackEventIn] = Field(..., min_length=1, max_length=1000, description="A batch, stored all or nothing.")


class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="The field, as a dotted path (e.g. filters.min_price, events.0.timestamp); null for the whole body.")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: str = Field(..., description="What is wrong and what to do, in one sentence.")
    code: str | None = Field(
        None,
        description="Machine-readable: invalid_request, forbidden, not_found, method_not_allowed, payload_too_large, "
        "unsupported_media_type, not_ready, event_log_unavailable, timeout, too_many_requests.",
    )
    field: str | None = Field(None, description="The first offending field, if any.")
    details: list[ErrorDetail] = Field(default_factory=list, description="Every problem found (validation errors).")
