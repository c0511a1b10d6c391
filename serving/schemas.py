"""Request and response models of the HTTP service (they drive validation and the OpenAPI page)."""

from __future__ import annotations

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
    user_id: str = Field(..., min_length=1, max_length=200, description="Shopper id; unknown ids get cold-start lists.", examples=["u00042"])
    k: int = Field(10, ge=1, le=100, description="Number of items.")
    context: ContextIn = Field(default_factory=ContextIn)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    diversity: DiversityIn = Field(default_factory=DiversityIn)


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


class RecommendResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
    user_kind: Literal["hot", "warm", "cold", "any"] = Field(..., description="hot: history; warm: profile only; cold: unknown.")
    source: str = Field(..., description="model, model+context, context or trending.")
    items: list[ItemOut]


class SimilarRequest(_Strict):
    item_id: str = Field(..., min_length=1, max_length=200, examples=["i00010"])
    k: int = Field(10, ge=1, le=100)


class SimilarResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
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


class ScoreResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
    items: list[ScoredItem]
