"""The reason registry: every reason a recommendation can carry (推荐理由), in one place.

A reason is shown to the shopper, so it must be true for that user and item. Each one is a
:class:`ReasonSpec` registered below with the ``@reason`` decorator: its code, when it is true
(in words, for the docs and the tests), the text template, the evidence fields and the function
that decides it (returning the template's fields, or None). Thresholds are the named constants
just below. Adding a reason = one decorated function here; ``tests/test_reasons.py`` then asks
for a check of the new code and fails on any code that is not registered.

Order: a list's reasons come in registry order. *Fallback* reasons are used only when no other
reason holds, and then only the first that holds (``recommended`` always does). Reasons without
a decide function (``bought_together``) are attached by the list that shows them (the item page:
:meth:`storerec.ranking.ranker.Ranker.similar`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from storerec.core.schema import EventTypes
from storerec.ranking import facts

TOP_IN_CATEGORY_SHARE = 0.1  # "popular in your category": the top 10 % of its category by 30-day users
TRENDING_MIN_SCORE = 2.0  # "trending": users this week >= 2 x the weekly average of the 4 weeks before
TRENDING_MIN_USERS_7D = 3  # ... and at least 3 users this week
POPULAR_NOW_MIN_USERS_7D = 3  # "popular now": at least 3 users in the last 7 days
TIER_MIN_BUYERS = 3  # "your tier also bought": at least 3 customers of the user's tier bought it
PURCHASE_RANK = facts.TYPE_RANK[EventTypes.Purchase]
MADE_CACHE = 100_000  # reasons remembered per model (each a small dict)


class Subject(NamedTuple):
    """One recommended item as the reasons see it."""

    item: int  # internal item index
    profile: dict[str, Any] | None  # the user's profile row (None: anonymous or no profile)
    hot: bool  # the model scored the item from this user's own history
    context_item: int | None = None  # a context item that has ``item`` among its neighbours
    history_item: int | None = None  # a history item that has ``item`` among its neighbours
    history_type: int | None = None  # TYPE_RANK of the user's strongest event on history_item
    session: Mapping[int, tuple[str, datetime]] | None = None  # the shopper's tracked session: item -> (event type, time)


class ItemRow(NamedTuple):
    """The facts of one item that reasons read (one record per item: a single look-up)."""

    category: str
    price_band: str  # "" when unknown
    is_new: bool
    trending: bool  # the trending reason's condition (trending_items)
    trending_score: float  # rounded to 2 decimals, as shown
    users_7d: int
    popular_now: bool  # at least POPULAR_NOW_MIN_USERS_7D users in the last 7 days
    top_in_category: bool  # top_in_category


Fields = dict[str, Any]
Decide = Callable[["ReasonBook", Subject, ItemRow], "Fields | None"]


@dataclass(frozen=True)
class ReasonSpec:
    """A registered reason. ``text`` (and ``item_page_text``, for the item page's lists) are
    ``str.format`` templates over the fields the decide function returns; ``evidence`` names the
    fields returned as evidence, in this order. ``text_by`` = (field, {value: template}): the
    text for those values of that field (``text`` for the others), when one template cannot say
    each case truly."""

    code: str
    when: str
    text: str
    evidence: tuple[str, ...]
    decide: Decide | None = None
    fallback: bool = False
    item_page_text: str | None = None
    text_by: tuple[str, Mapping[Any, str]] | None = None

    def make(self, fields: Fields, *, item_page: bool = False) -> dict[str, Any]:
        """The reason as served: ``{"code", "text", "evidence"}``."""
        template = self.item_page_text if item_page and self.item_page_text else self.text
        if self.text_by is not None and not item_page:
            template = self.text_by[1].get(fields.get(self.text_by[0]), template)
        return {"code": self.code, "text": template.format(**fields), "evidence": {k: fields[k] for k in self.evidence}}


REASONS: dict[str, ReasonSpec] = {}


def reason(
    code: str, text: str, evidence: tuple[str, ...], *, fallback: bool = False, item_page_text: str | None = None,
    text_by: tuple[str, Mapping[Any, str]] | None = None,
) -> Callable[[Decide], Decide]:
    """Register the decorated function as the decide function of reason ``code``; its docstring
    says when the reason is true (``{NAME}`` fields: this module's thresholds, ``{facts.NAME}``
    those of :mod:`storerec.ranking.facts`)."""

    def register(decide: Decide) -> Decide:
        _register(ReasonSpec(code, _when(decide.__doc__), text, evidence, decide, fallback, item_page_text, text_by))
        return decide

    return register


def _when(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").format(**globals()).split())


def _register(spec: ReasonSpec) -> None:
    if not spec.when:
        raise ValueError(f"reason {spec.code!r} does not say when it is true")
    if spec.code in REASONS:
        raise ValueError(f"reason {spec.code!r} is registered twice")
    REASONS[spec.code] = spec


def reason_spec(code: str) -> ReasonSpec:
    """The registered reason ``code`` (KeyError naming the known codes otherwise)."""
    try:
        return REASONS[code]
    except KeyError:
        raise KeyError(f"unknown reason code {code!r}; registered: {sorted(REASONS)}") from None


# ---- the registry -------------------------------------------------------------------------------


@reason(
    "in_your_session", "You viewed this", ("event_type", "at"),
    text_by=("event_type", {EventTypes.Cart: "You added this to your cart", EventTypes.Favorite: "You added this to your favourites"}),
)
def _in_your_session(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """The shopper viewed, carted or favourited the item in their current tracked session (POST
    /track, within live.context_hours of their latest event) and has not bought it since; the
    evidence names the strongest of those events (cart, favourite, view) and its time (UTC)."""
    hit = s.session.get(s.item) if s.session else None
    if hit is None:
        return None
    kind, ts = hit
    return {"event_type": kind, "at": ts.isoformat().replace("+00:00", "Z")}


@reason(
    "similar_to_context", "Similar to {name}, which you are looking at", ("item_id",), item_page_text="Similar to {name}",
    text_by=("via", {"session": "Similar to {name}, which you looked at"}),
)
def _similar_to_context(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """An item in the request's context (on the page, recently viewed, or in the shopper's
    tracked session) other than the recommended item has it among its {facts.NEIGHBOURS} most
    similar items for the model. On the item page: the model's similar items."""
    if s.context_item is None or s.context_item == s.item:  # never "similar to itself"
        return None
    fields = book.item_fields(s.context_item)
    if s.session and s.context_item in s.session:  # tracked earlier, maybe not on the page now
        fields["via"] = "session"
    return fields


@reason("because_bought", "Because you bought {name}", ("item_id",))
def _because_bought(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """The user bought item X, one of their latest {facts.HISTORY_N} items, and the recommended
    item is among X's {facts.NEIGHBOURS} most similar items for the model."""
    if s.history_item is None or s.history_type != PURCHASE_RANK or s.history_item == s.item:
        return None
    return book.item_fields(s.history_item)


@reason("because_viewed", "Because you viewed {name}", ("item_id",))
def _because_viewed(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """As because_bought, for an item the user viewed, favourited, carted or rated but did not buy."""
    if s.history_item is not None and s.history_type != PURCHASE_RANK and s.history_item != s.item:
        return book.item_fields(s.history_item)
    return None


@reason("popular_in_your_category", "Popular in {category}, a category you often buy", ("category", "your_share"))
def _popular_in_your_category(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """The item's category is among the user's profile top categories, and the item is in the
    top {TOP_IN_CATEGORY_SHARE:.0%} of its category by 30-day popularity."""
    if not s.profile or not item.top_in_category:
        return None
    share = s.profile["top_categories"].get(item.category)
    return None if share is None else {"category": item.category, "your_share": round(share, 3)}


@reason("new_arrival", "New arrival in {category}", ("category",))
def _new_arrival(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """The item is a new arrival (is_new in the item features)."""
    return {"category": item.category} if item.is_new else None


@reason("trending", "Trending this week", ("trending_score", "users_7d"))
def _trending(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """The item's trending score (users this week over the weekly average of the four weeks
    before) is at least {TRENDING_MIN_SCORE:g}, with at least {TRENDING_MIN_USERS_7D} users this week."""
    if not item.trending:
        return None
    return {"trending_score": item.trending_score, "users_7d": item.users_7d}


@reason("price_fit", "Fits your usual price range", ("price_band",))
def _price_fit(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """The user's price band (profile) equals the item's price band."""
    if s.profile and item.price_band and s.profile["price_band"] == item.price_band:
        return {"price_band": item.price_band}
    return None


@reason("tier_also_bought", "Customers in your {tier} tier also bought this", ("tier", "buyers"))
def _tier_also_bought(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """At least {TIER_MIN_BUYERS} customers of the user's membership tier bought the item."""
    tier = s.profile["tier"] if s.profile else None
    buyers = book.tier_buyers.get(tier) if tier else None
    if buyers is None or buyers[s.item] < TIER_MIN_BUYERS:
        return None
    return {"tier": tier, "buyers": buyers[s.item]}


@reason("picked_for_you", "Picked for you from your shopping history", ("model",), fallback=True)
def _picked_for_you(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """Fallback: the model scored the item from this user's own history (hot users)."""
    return book.model_fields if s.hot else None


@reason("popular_now", "Popular with shoppers this week", ("users_7d",), fallback=True)
def _popular_now(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """Fallback: at least {POPULAR_NOW_MIN_USERS_7D} users interacted with the item in the last 7 days."""
    return {"users_7d": item.users_7d} if item.popular_now else None


@reason("recommended", "Recommended by the {model} model", ("model",), fallback=True)
def _recommended(book: ReasonBook, s: Subject, item: ItemRow) -> Fields | None:
    """Fallback, always true: the item was ranked by the named model (or list)."""
    return book.model_fields


_register(ReasonSpec(
    "bought_together",
    when="The item was bought in the same order as the page's item (co-purchases in the item features); "
    "attached by the item page's list (Ranker.similar), not decided per item.",
    text="Often bought together with {name}",
    evidence=("item_id",),
))


# ---- applying the registry ---------------------------------------------------------------------


def trending_items(items: facts.ItemFacts) -> np.ndarray:
    """Items the ``trending`` reason holds for (also the trending items that join personal lists)."""
    return (items.trending_score >= TRENDING_MIN_SCORE) & (items.pop_7d >= TRENDING_MIN_USERS_7D)


def top_in_category(items: facts.ItemFacts) -> np.ndarray:
    """The top ``TOP_IN_CATEGORY_SHARE`` of each category by 30-day popularity (at least its best
    item; only items with some popularity)."""
    top = np.zeros(items.n, dtype=bool)
    for code in range(len(items.categories)):
        members = np.flatnonzero(items.cat_code == code)
        if len(members):
            n_top = max(1, int(np.ceil(TOP_IN_CATEGORY_SHARE * len(members))))
            best = members[np.argsort(-items.pop_30d[members], kind="stable")[:n_top]]
            top[best[items.pop_30d[best] > 0]] = True
    return top


class ReasonBook:
    """The facts the decide functions read (an :class:`ItemRow` per item, plain Python values),
    and :meth:`explain`, which applies the registry to one item. Built once per loaded model."""

    def __init__(self, items: facts.ItemFacts, users: facts.UserFacts, model_name: str) -> None:
        self.ids: list[str] = items.ids.tolist()
        self.names = items.display_names()
        self.items = [
            ItemRow(*row)
            for row in zip(
                items.category.tolist(),
                items.price_band.tolist(),
                items.is_new.tolist(),
                trending_items(items).tolist(),
                [round(float(x), 2) for x in items.trending_score],
                [int(x) for x in items.pop_7d],
                (items.pop_7d >= POPULAR_NOW_MIN_USERS_7D).tolist(),
                top_in_category(items).tolist(),
            )
        ]
        self.tier_buyers: dict[str, list[int]] = {tier: counts.tolist() for tier, counts in users.tier_buyers.items()}
        self.model_fields: Fields = {"model": model_name}
        self._regular = [(s.decide, s) for s in REASONS.values() if s.decide is not None and not s.fallback]
        self._fallbacks = [(s.decide, s) for s in REASONS.values() if s.decide is not None and s.fallback]
        self._made: dict[tuple[Any, ...], dict[str, Any]] = {}

    def item_fields(self, i: int) -> Fields:
        """Fields of reasons that name another item (``{name}`` in the text, ``item_id`` evidence)."""
        return {"name": self.names[i], "item_id": self.ids[i]}

    def explain(self, subject: Subject) -> list[dict[str, Any]]:
        """Every regular reason that holds for ``subject``, in registry order; else the first
        fallback reason that holds."""
        out = []
        made = self._made
        item = self.items[subject.item]
        for decide, spec in self._regular:
            fields = decide(self, subject, item)
            if fields is not None:
                out.append(made.get((spec.code, *fields.values())) or self._make(spec, fields))
        if out:
            return out
        for decide, spec in self._fallbacks:
            fields = decide(self, subject, item)
            if fields is not None:
                return [made.get((spec.code, *fields.values())) or self._make(spec, fields)]
        return out

    def _make(self, spec: ReasonSpec, fields: Fields) -> dict[str, Any]:
        """``spec.make(fields)``, remembered by :meth:`explain` (the same reasons recur across
        requests; served reasons are read-only): up to ``MADE_CACHE`` of them."""
        if len(self._made) >= MADE_CACHE:
            self._made.clear()
        made = self._made[(spec.code, *fields.values())] = spec.make(fields)
        return made

    def item_page(self, code: str, about: int) -> dict[str, Any]:
        """Reason ``code`` for an item-page list about item ``about`` (similar, bought together)."""
        return reason_spec(code).make(self.item_fields(about), item_page=True)
