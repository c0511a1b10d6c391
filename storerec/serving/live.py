"""The live overlay: a shopper's tracked events since the serving snapshot, applied to their next list.

A registered version serves the profiles and events of its snapshot (registry/snapshot.py, as of
its training); what shoppers did since reaches the models only at the next retrain. The overlay
closes that gap without retraining. ``POST /track`` feeds it once the events are committed, and
each worker rebuilds it at start from the event log's behaviour rows since the snapshot's as-of
time (as the frequency cap is rebuilt), so a restart forgets nothing acknowledged. Per shopper
(``user_id``, else ``anonymous:<session_id>``) it keeps the latest events, and ``/recommend``
reads a :class:`LiveView` of them:

* **purchased** items are left out (``filters.exclude_purchased``), for one repurchase cycle
  (``profiles.repurchase_cycle_days``): a consumable bought is back when its cycle is due
  ("a repurchase rate above 30 %", ../shared/DOMAIN.md);
* **session** items, those viewed, carted or favourited within ``live.context_hours`` of the
  shopper's latest event and not bought since, are their current interest, not their history:
  with ``live.session_items_eligible`` (the default) they stay in the list under
  ``filters.exclude_seen`` ("keep shopping for", with an ``in_your_session`` reason naming the
  event and its time);
* **seen** items (every tracked item; the session's ones only when
  ``live.session_items_eligible`` is off) are left out when ``filters.exclude_seen``, as the
  snapshot's history is;
* the latest of the session items (``live.context_items``) become **session context**: the
  ranker blends their similarity with the model's scores, and a shopper the model does not know
  gets a context list instead of the generic cold-start list.

Bounded: at most ``live.max_users`` shoppers (least recently active dropped first) and
``live.max_events_per_user`` events each. The overlay is per worker process: an event reaches
the lists of the worker that took the ``POST /track`` at once, and those of the other workers
and replicas within ``live.poll_ms`` (:class:`LiveTail` reads the log's new behaviour rows).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from storerec.core.schema import EventTypes

if TYPE_CHECKING:
    from storerec.core.settings import LiveSettings

CONTEXT_TYPES = frozenset({EventTypes.View, EventTypes.Cart, EventTypes.Favorite})  # session context; purchases are done with
SESSION_STRENGTH = {EventTypes.Cart: 2, EventTypes.Favorite: 1, EventTypes.View: 0}  # which event a session item's reason names


def shopper_key(user_id: str | None, session_id: str | None) -> str | None:
    """The overlay's key of a shopper: the user id, else the anonymous session (as /recommend
    names anonymous shoppers to the ranker)."""
    if user_id:
        return user_id
    return f"anonymous:{session_id}" if session_id else None


@dataclass(frozen=True)
class LiveView:
    """What one shopper's tracked events change in their next list (item ids).

    ``session``: item -> (event type, time) of the items viewed, carted or favourited within the
    session window (``context_hours`` of the shopper's latest event) and not bought since, newest
    first; per item its strongest such event (cart, then favourite, then view; the latest of
    that type). ``seen`` minus ``session`` are the tracked items older than the session (or
    bought since): history."""

    purchased: tuple[str, ...] = ()  # bought within the repurchase cycle
    seen: tuple[str, ...] = ()  # every tracked item
    recent: tuple[str, ...] = ()  # session context, most recent first
    session: Mapping[str, tuple[str, datetime]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.purchased or self.seen or self.recent)

    def older(self) -> tuple[str, ...]:
        """The tracked items that are not the session's (older than its window, or bought since)."""
        return tuple(i for i in self.seen if i not in self.session)


EMPTY = LiveView()


class LiveOverlay:
    """Per-shopper tracked events since the snapshot (thread-safe; no I/O).

    Parameters
    ----------
    context_items
        Latest distinct viewed/carted/favourited items used as session context.
    context_hours
        Only events within this many hours of the shopper's latest event are context.
    repurchase_days
        A purchased item is left out for this many days after the purchase.
    max_users, max_events_per_user
        Memory bounds.
    """

    def __init__(self, *, context_items: int = 5, context_hours: float = 24.0, repurchase_days: float = 60.0,
                 max_users: int = 200_000, max_events_per_user: int = 100) -> None:
        self.context_items = context_items
        self.context_window = timedelta(hours=context_hours)
        self.repurchase = timedelta(days=repurchase_days)
        self.max_users = max_users
        self.max_events = max_events_per_user
        self._users: OrderedDict[str, deque[tuple[datetime, str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, live: LiveSettings, repurchase_days: float) -> LiveOverlay:
        """From ``[live]`` (core/settings.py: LiveSettings) and ``profiles.repurchase_cycle_days``."""
        return cls(context_items=live.context_items, context_hours=live.context_hours, repurchase_days=repurchase_days,
                   max_users=live.max_users, max_events_per_user=live.max_events_per_user)

    def __len__(self) -> int:
        return len(self._users)

    def record(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add committed behaviour rows (``user_id``, ``session_id``, ``item_id``, ``event_type``,
        ``ts``), in any order; an event already there (same time, item and type) is kept once,
        so replaying rows is harmless."""
        with self._lock:
            for r in rows:
                key = shopper_key(r.get("user_id"), r.get("session_id"))
                if key is None:
                    continue
                events = self._users.get(key)
                if events is None:
                    events = self._users[key] = deque(maxlen=self.max_events)
                    if len(self._users) > self.max_users:
                        self._users.popitem(last=False)
                else:
                    self._users.move_to_end(key)
                event = (r["ts"], r["item_id"], r["event_type"])
                if event in events:
                    continue
                if events and event[0] < events[-1][0]:  # out of order (a late event): keep them sorted by time
                    ordered = sorted([*events, event])
                    events.clear()
                    events.extend(ordered[-self.max_events :])
                else:
                    events.append(event)

    def view(self, keys: Iterable[str | None], now: datetime) -> LiveView:
        """What the events of the shopper known by ``keys`` (user id, anonymous session) change
        at ``now``."""
        with self._lock:
            events = [e for k in keys if k is not None and k in self._users for e in self._users[k]]
        if not events:
            return EMPTY
        if len(events) > 1:
            events.sort()
        latest = events[-1][0]
        bought_since = now - self.repurchase
        purchased: dict[str, None] = {}
        bought: set[str] = set()  # bought at any time (after the events still to come in this newest-first pass)
        seen: dict[str, None] = {}
        recent: dict[str, None] = {}
        session: dict[str, tuple[str, datetime]] = {}
        for ts, item, kind in reversed(events):  # newest first
            seen.setdefault(item, None)
            if kind == EventTypes.Purchase:
                bought.add(item)
                if ts >= bought_since:
                    purchased.setdefault(item, None)
            elif kind in CONTEXT_TYPES and latest - ts <= self.context_window and item not in bought:
                # (an item bought after it was viewed is done with: its purchase came first here)
                had = session.get(item)
                if had is None or SESSION_STRENGTH[kind] > SESSION_STRENGTH[had[0]]:
                    session[item] = (kind, ts)
                if len(recent) < self.context_items:
                    recent.setdefault(item, None)
        return LiveView(tuple(purchased), tuple(seen), tuple(recent), session)

    def drop_users(self, hashes: set[str]) -> int:
        """Forget the shoppers whose user id hashes (``storerec.features.forget.user_hash``) are in
        ``hashes``: users erased with ``storerec forget-user``. Returns how many were held."""
        from storerec.features.forget import user_hash

        if not hashes:
            return 0
        with self._lock:
            gone = [k for k in self._users if not k.startswith("anonymous:") and user_hash(k) in hashes]
            for k in gone:
                del self._users[k]
        return len(gone)

    def drop_before(self, ts: datetime) -> None:
        """Forget events at or before ``ts`` (a newly loaded snapshot as of ``ts`` holds them)."""
        with self._lock:
            for key in list(self._users):
                kept = [e for e in self._users[key] if e[0] > ts]
                if kept:
                    self._users[key] = deque(kept, maxlen=self.max_events)
                else:
                    del self._users[key]


class LiveTail:
    """Follows the event log's behaviour table into an overlay: every ``poll_s`` it reads the rows
    with a higher id than the last seen (:func:`storerec.events.eventlog.behaviour_after`), so an
    event another worker or replica took reaches this worker's lists within ``poll_s``. On
    PostgreSQL ids become visible out of order (two writers), so the last :data:`OVERLAP` ids are
    read again each time; the overlay keeps an event once. A failing read is logged (at most
    once a minute) and retried at the next poll: the lists keep what the overlay has."""

    OVERLAP = 200

    def __init__(self, overlay: LiveOverlay, engine: Any, after_id: int, poll_s: float) -> None:
        self.overlay = overlay
        self.engine = engine
        self.last_id = after_id
        self.poll_s = poll_s
        self.overlap = self.OVERLAP if engine.dialect.name == "postgresql" else 0
        self.error: str | None = None
        self._logged_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storerec-live-tail", daemon=True)

    def start(self) -> LiveTail:
        self._thread.start()
        return self

    def poll(self) -> int:
        """One read; returns the rows read."""
        from storerec.events.eventlog import behaviour_after

        rows, top = behaviour_after(self.engine, max(0, self.last_id - self.overlap))
        self.overlay.record(rows)
        self.last_id = max(self.last_id, top)
        return len(rows)

    def _run(self) -> None:
        import logging
        import time

        from storerec.events.eventlog import error_line

        log = logging.getLogger("storerec.serving")
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
                self.error = None
            except Exception as exc:  # the database away: keep serving what the overlay has
                self.error = error_line(exc)
                if time.monotonic() - self._logged_at >= 60.0:
                    log.warning("live overlay: reading tracked events failed (%s); retrying every %g s", self.error, self.poll_s)
                    self._logged_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
