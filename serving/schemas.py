"""Request and response models of the HTTP service (they drive validation and the OpenAPI page)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextIn(_Strict):
    page: Literal["home", "product", "cart", "search", "email"] = Field("home", description="Where the list is shown.")
    item_ids: list[str] = Field(default_factory=list, max_length=50, description="Items on the page (product page item, cart items).")
    recent_item_ids: list[str] = Field(default_factory=list, max_length=50, description="Items viewed in this session, most recent first.")


class FiltersIn(_Strict):
    exclude_seen: bool = Field(
        True, description="Leave out every item the user already interacted with (viewed, carted, bought); false for reminder lists."
    )
    exclude_purchased: bool = Field(True, description="Leave out items the user already bought (applies also when exclude_seen is false).")
    include_categories: list[str] = Field(default_factory=list, max_length=50, description="Only these categories (full path or top level).")
    exclude_categories: list[str] = Field(default_factory=list, max_length=50)
    min_price: float | None = Field(None, ge=0)
    max_price: float | None = Field(None, ge=0)
    in_stock_only: bool = True
    exclude_item_ids: list[str] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _range(self) -> "FiltersIn":
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValueError("filters.min_price must not exceed filters.max_price")
        return self


class DiversityIn(_Strict):
    strength: float | None = Field(None, ge=0, le=1, description="MMR strength: 0 = relevance only, 1 = maximal variety (default from settings).")
    max_per_category: int | None = Field(None, ge=1, le=100, description="At most this many items of one category (honoured exactly).")


class RecommendRequest(_Strict):
    user_id: str | None = Field(
        None, min_length=1, max_length=200, description="Shopper id; unknown ids get cold-start lists.", examples=["u00042"]
    )
    session_id: str | None = Field(
        None, min_length=1, max_length=200, description="Session id: required for anonymous shoppers (no user_id); they are bucketed by it in experiments."
    )
    k: int = Field(10, ge=1, le=100, description="Number of items.")
    context: ContextIn = Field(default_factory=ContextIn)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    diversity: DiversityIn = Field(default_factory=DiversityIn)

    @model_validator(mode="after")
    def _who(self) -> "RecommendRequest":
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


class _Served(BaseModel):
    request_id: str = Field(..., description="Send it back with POST /events so clicks and purchases count for this list.")
    model: str
    model_version: str


class RecommendResponse(_Served):
    experiment: str | None = Field(None, description="The experiment this shopper is in, if any.")
    variant: str | None = Field(None, description="The shopper's variant in that experiment (sticky).")
    user_kind: Literal["hot", "warm", "cold", "any"] = Field(..., description="hot: history; warm: profile only; cold: unknown.")
    source: str = Field(..., description="model, model+context, context or trending.")
    items: list[ItemOut]


class SimilarRequest(_Strict):
    item_id: str = Field(..., min_length=1, max_length=200, examples=["i00010"])
    k: int = Field(10, ge=1, le=100)


class SimilarResponse(_Served):
    similar: list[ItemOut]
    bought_together: list[ItemOut]


class ListRequest(_Strict):
    k: int = Field(10, ge=1, le=100)
    category: str | None = Field(None, max_length=200, description="Only this category (full path or top level).")
    region: str | None = Field(None, max_length=100, description="Trending among shoppers of this region (trending only).")


class ListResponse(BaseModel):
    request_id: str
    items: list[ItemOut]


class ReloadRequest(_Strict):
    model: str | None = Field(None, description="Alias or version to load (default: the configured one, e.g. champion).")


class ReloadResponse(BaseModel):
    model: str
    model_version: str
    previous_version: str


class ScoreRequest(_Strict):
    user_id: str = Field(..., min_length=1, max_length=200, examples=["u00042"])
    k: int = Field(10, ge=1, le=100)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class ScoreResponse(_Served):
    items: list[ScoredItem]


class EventIn(_Strict):
    request_id: str = Field(..., min_length=1, max_length=64, description="request_id of the list the item was shown in.")
    item_id: str = Field(..., min_length=1, max_length=200)
    event_type: Literal["click", "cart", "purchase"]
    revenue: float = Field(0.0, ge=0, le=1e9, description="Order value of the item; purchases only.")
    user_id: str | None = Field(None, max_length=200)
    session_id: str | None = Field(None, max_length=200)
    event_id: str | None = Field(None, min_length=1, max_length=100, description="Your id for the event: a retried event with the same id is stored once.")
    timestamp: datetime | None = Field(None, description="When it happened (UTC); default: when received.")

    @model_validator(mode="after")
    def _revenue(self) -> "EventIn":
        if self.revenue and self.event_type != "purchase":
            raise ValueError(f"revenue is only allowed on purchase events, not on {self.event_type!r}")
        return self


class EventsRequest(_Strict):
    events: list[EventIn] = Field(..., min_length=1, max_length=1000)


class EventsResponse(BaseModel):
    received: int
    stored: int = Field(..., description="Committed to the event log (a retried event_id is stored once).")
