"""Frequency cap ("do not over-market", ../shared/DOMAIN.md).

An item shown to a user ``max_impressions`` times within ``window_hours`` without any
interaction (click, cart, purchase) is held back from that user's lists for ``hold_hours``
after the last of those impressions. Any interaction with the item resets its count.

The state lives in memory per worker and is rebuilt from the event log at start-up, so a
restart does not forget it; with several workers each one sees the impressions it served plus
what was in the log when it started.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import datetime, timedelta


class FrequencyCap:
    def __init__(self, max_impressions: int, window_hours: float, hold_hours: float) -> None:
        if max_impressions < 1:
            raise ValueError("frequency_cap.max_impressions must be at least 1")
        self.max_impressions = max_impressions
        self.window = timedelta(hours=window_hours)
        self.hold = timedelta(hours=hold_hours)
        self._shown: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
        self._lock = threading.Lock()

    def record_impression(self, user_id: str, item_ids: list[str], ts: datetime) -> None:
        with self._lock:
            per_item = self._shown[user_id]
            for item in item_ids:
                per_item[item].append(ts)

    def record_interaction(self, user_id: str, item_id: str, ts: datetime) -> None:
        """A click, cart or purchase: impressions of the item up to ``ts`` no longer count."""
        with self._lock:
            per_item = self._shown.get(user_id)
            if per_item and item_id in per_item:
                per_item[item_id] = [t for t in per_item[item_id] if t > ts]

    def held_back(self, user_id: str, now: datetime) -> list[str]:
        """Items to leave out of ``user_id``'s lists at ``now``."""
        with self._lock:
            per_item = self._shown.get(user_id)
            if not per_item:
                return []
            out = []
            keep_from = now - self.window - self.hold
            for item, times in list(per_item.items()):
                times = [t for t in times if t >= keep_from]  # forget what can no longer matter
                if not times:
                    del per_item[item]
                    continue
                per_item[item] = times
                if self._capped(times, now):
                    out.append(item)
            return out

    def _capped(self, times: list[datetime], now: datetime) -> bool:
        """Some run of ``max_impressions`` impressions within one window ended less than
        ``hold`` ago."""
        n = self.max_impressions
        if len(times) < n:
            return False
        times = sorted(times)
        return any(times[j] - times[j - n + 1] <= self.window and now - times[j] < self.hold for j in range(n - 1, len(times)))
