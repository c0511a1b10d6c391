"""The request timeout without BentoML's timer leak (storerec/serving/traffic.py): the cause of
the service's 100-200 ms tail stalls (docs/benchmarks.md, "Tail stalls")."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from bentoml._internal.server.http import traffic as bentoml_traffic

from storerec.serving import service  # noqa: F401  (installs the fix, as a worker does at import)
from storerec.serving.traffic import REPLACED, Absent, CancellingTimeoutMiddleware


async def _ok(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _drive(middleware: Any, n: int) -> tuple[list[dict], int]:
    """``n`` requests through ``middleware`` on a fresh event loop; the messages sent and the
    number of timers still armed (not cancelled) on the loop afterwards."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> int:
        for _ in range(n):
            await middleware({"type": "http", "path": "/x", "method": "POST"}, receive, send)
            await asyncio.sleep(0)  # the loop runs between requests, as in a server
        loop = asyncio.get_running_loop()
        return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]

    loop = asyncio.new_event_loop()
    try:
        return sent, loop.run_until_complete(main())
    finally:
        loop.close()


def _leaky_class() -> type:
    """BentoML's own middleware class (the module attribute now holds ours)."""
    return REPLACED["TimeoutMiddleware"]  # type: ignore[no-any-return]


def test_bentoml_keeps_a_timer_per_request_and_ours_keeps_none() -> None:
    leaky = _leaky_class()
    assert leaky is not CancellingTimeoutMiddleware
    _, armed = _drive(leaky(_ok, timeout=30), 200)
    assert armed == 200  # the leak this module exists for: one live timer (+ future, context) per answered request
    sent, armed = _drive(CancellingTimeoutMiddleware(_ok, timeout=30), 200)
    assert armed == 0
    assert [m["type"] for m in sent[:2]] == ["http.response.start", "http.response.body"] and len(sent) == 400


def test_the_leaked_timers_are_what_full_collections_walk() -> None:
    """The objects the leak keeps alive are tracked by the garbage collector (so every full
    collection walks them); the fixed middleware leaves none behind."""
    leaky = _leaky_class()

    def tracked_after(middleware: Any) -> int:
        gc.collect()
        before = len(gc.get_objects())
        holder: list[Any] = []

        async def main() -> None:
            async def receive() -> dict:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict) -> None:
                pass

            for _ in range(500):
                await middleware({"type": "http", "path": "/x", "method": "POST"}, receive, send)
                await asyncio.sleep(0)  # the loop runs between requests, as in a server
            gc.collect()
            holder.append(len(gc.get_objects()) - before)

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        return holder[0]

    assert tracked_after(leaky(_ok, timeout=30)) >= 1500  # >= 3 tracked objects per request
    assert tracked_after(CancellingTimeoutMiddleware(_ok, timeout=30)) < 100


def test_a_slow_app_still_gets_504_and_is_cancelled() -> None:
    cancelled: list[bool] = []

    async def slow(scope: dict, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent, armed = _drive(CancellingTimeoutMiddleware(slow, timeout=0.05), 1)
    assert cancelled == [True] and armed == 0
    assert sent[0]["status"] == 504
    assert "0.05 seconds" in json.loads(sent[1]["body"])["error"]


def test_an_answer_that_started_in_time_is_not_cut() -> None:
    async def streaming(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.1)  # longer than the timeout, after the answer started
        await send({"type": "http.response.body", "body": b"done"})

    sent, armed = _drive(CancellingTimeoutMiddleware(streaming, timeout=0.02), 1)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"done" and armed == 0


def test_an_error_in_the_app_is_not_turned_into_a_timeout() -> None:
    async def broken(scope: dict, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _drive(CancellingTimeoutMiddleware(broken, timeout=30), 1)


def test_the_service_module_installed_the_fix_where_bentoml_looks_it_up() -> None:
    assert bentoml_traffic.TimeoutMiddleware is CancellingTimeoutMiddleware


def test_absent_adds_no_layer() -> None:
    assert Absent(_ok, excluded_urls=None) is _ok
