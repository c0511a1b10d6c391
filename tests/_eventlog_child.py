"""Code the event log tests run in other processes (``python -c``, see ``child()``), kept apart
from the test module so that a child imports only what it needs (no polars, no pytest). A child
that must start together with another prints ``ready`` and waits for a line on stdin; results
go to stdout as one JSON line."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TS = datetime(2026, 11, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def child(call: str) -> subprocess.Popen:
    """``python -c "from tests._eventlog_child import *; <call>"`` with pipes to talk to it."""
    return subprocess.Popen([sys.executable, "-c", f"from tests._eventlog_child import *; {call}"], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def rows(prefix: str, n: int, *, ts: datetime = TS, user: str = "u1") -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{i}", "ts": ts, "request_id": f"r{prefix}", "user_id": user, "session_id": None,
             "item_id": f"i{i}", "event_type": "click", "revenue": 0.0} for i in range(n)]


def _ready() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def _result(value: Any) -> None:
    print(json.dumps(value), flush=True)


def write_batches(url: str, prefix: str, batches: int, size: int) -> None:
    """``batches`` acknowledged batches of ``size`` rows (the concurrent-writers test)."""
    from storerec.events.eventlog import EventLog

    log = EventLog(url, flush_ms=5)
    _ready()
    for k in range(batches):
        assert log.store_feedback_sync(rows(f"{prefix}{k}", size), 60) == size
    log.close()
    _result("done")


def send_duplicates(url: str, ids: list[str], threads: int, seed: int) -> None:
    """Every thread sends every id (batches of 10, its own order); prints [stored sum, errors]."""
    from storerec.events.eventlog import EventLog

    log = EventLog(url, flush_ms=5)
    stored, errors = [], []

    def send(t: int) -> None:
        mine = list(ids)
        random.Random(seed * 100 + t).shuffle(mine)
        for k in range(0, len(mine), 10):
            batch = [{"event_id": e, "ts": TS, "request_id": "rdup", "user_id": "u1", "session_id": None, "item_id": e,
                      "event_type": "click", "revenue": 0.0} for e in mine[k:k + 10]]
            try:
                stored.append(log.store_feedback_sync(batch, 60))
            except Exception as exc:  # reported to the test
                errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    _ready()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    log.close()
    _result([sum(stored), errors])


def upgrade_together(url: str) -> None:
    """One of two concurrent upgrades of a fresh database; prints ["ok", [before, after]]."""
    from storerec.events.eventlog import upgrade

    _ready()
    try:
        _result(["ok", list(upgrade(url))])
    except Exception as exc:
        _result(["error", f"{type(exc).__name__}: {exc}"])


def ack_stream(url: str) -> None:
    """Write batches of 5 events for ever, printing each batch's number once acknowledged (the
    test SIGKILLs this process mid-stream)."""
    from storerec.events.eventlog import EventLog

    log = EventLog(url, flush_ms=5)
    print("ready", flush=True)
    k = 0
    while True:
        log.store_feedback_sync(rows(f"k{k}", 5), 60)
        sys.stdout.write(f"{k}\n")
        sys.stdout.flush()
        k += 1
