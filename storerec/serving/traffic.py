"""BentoML's request timeout without its leak (the cause of the service's tail stalls), and no
OpenTelemetry layer when tracing is off.

BentoML 1.4's ``TimeoutMiddleware`` (``bentoml._internal.server.http.traffic``) arms a timer with
``loop.call_later(timeout, ...)`` for every request and never cancels it. Each answered request
therefore leaves a timer handle, a future, a bound method and a context copy alive for the whole
timeout (30 s here): at 1,600 req/s that is ~50,000 timers and ~300,000 objects the garbage
collector tracks. Python's full collections walk them all, and each one stopped the worker's
event loop for 100-200 ms: measured with ``gc.callbacks`` in a worker under ``wrk``, the live
objects grew by ~3,400 ``TimerHandle``/``Future``/``Context`` between two full collections, and the
pauses grew with them (docs/benchmarks.md, "Tail stalls"). ``gc.freeze`` at start-up cannot help:
these objects are born after it.

:class:`CancellingTimeoutMiddleware` keeps BentoML's behaviour (a 504 when the app has not started
its answer within the timeout) and cancels the timer as soon as the answer starts; it also runs
the app in the request's own task instead of a second one. :func:`install` puts it in place of
BentoML's class, and, with tracing off, :class:`Absent` in place of the OpenTelemetry middleware
BentoML adds to every app; the service module calls it at import, before BentoML builds the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse

Scope = dict[str, Any]
Message = dict[str, Any]


class CancellingTimeoutMiddleware:
    """504 when the wrapped app has not sent its first message within ``timeout`` seconds; the
    timer is cancelled when it does (or when the app returns or fails)."""

    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        state = {"started": False, "timed_out": False}

        def expire() -> None:
            if not state["started"] and task is not None:
                state["timed_out"] = True
                task.cancel()

        timer = asyncio.get_running_loop().call_later(self.timeout, expire)

        async def _send(message: Message) -> None:
            if not state["started"]:
                state["started"] = True
                timer.cancel()
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except asyncio.CancelledError:
            if not state["timed_out"]:
                raise
            if task is not None:
                task.uncancel()
            await JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)(scope, receive, send)
        finally:
            timer.cancel()


REPLACED: dict[str, Any] = {}  # BentoML's classes that install() replaced, by name (the tests compare with them)


class Absent:
    """A middleware class that adds no layer: ``Absent(app, **options)`` is ``app`` itself."""

    def __new__(cls, app: Any, *args: Any, **kwargs: Any) -> Any:
        return app


def install(*, tracing: bool) -> bool:
    """Replace BentoML's ``TimeoutMiddleware`` with :class:`CancellingTimeoutMiddleware` where
    BentoML looks it up when it builds the app; without ``tracing`` (``serving.tracing = false``,
    when OpenTelemetry's SDK is off and every span is a no-op), leave BentoML's OpenTelemetry
    middleware out too: it still wrapped every request's ``send`` and built span attributes,
    about 7 % of a worker's CPU under load (py-spy, docs/benchmarks.md). Returns False when
    BentoML's module moved (``tests/test_traffic.py`` then fails)."""
    try:
        from bentoml._internal.server.http import traffic
    except ImportError:  # pragma: no cover - a BentoML without that module
        return False
    if not hasattr(traffic, "TimeoutMiddleware"):  # pragma: no cover
        return False
    if traffic.TimeoutMiddleware is not CancellingTimeoutMiddleware:
        REPLACED["TimeoutMiddleware"] = traffic.TimeoutMiddleware
        traffic.TimeoutMiddleware = CancellingTimeoutMiddleware  # type: ignore[misc,assignment]
    if not tracing:
        import opentelemetry.instrumentation.asgi as otel_asgi

        if otel_asgi.OpenTelemetryMiddleware is not Absent:
            REPLACED["OpenTelemetryMiddleware"] = otel_asgi.OpenTelemetryMiddleware
            otel_asgi.OpenTelemetryMiddleware = Absent  # type: ignore[misc]
    return True
