"""The load generators of the serving benchmark (storerec/tools/loadgen.py, storerec/tools/wrk.py)
against a tiny HTTP server in this process that can stall on purpose: the open loop counts a
stall for every request that fell due during it (a closed loop sends nothing meanwhile and
counts it once per connection), keeps its rate, and wrk's figures come back parsed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from storerec.tools.loadgen import post_request, run_load, run_open_loop
from storerec.tools.wrk import run_wrk, wrk_available

BODY = b'{"ok": true}'


class StallServer:
    """HTTP/1.1 keep-alive server on a free port in a thread; answers every POST with 200 and a
    small JSON body. ``stall_at(seconds, ms)``: from ``seconds`` after the call, the first request
    blocks the whole server for ``ms`` (as a garbage collection pause would)."""

    def __init__(self, close_after: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.stall: tuple[float, float] | None = None
        self.answered = 0
        ready = threading.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served = 0
            try:
                while not close_after or served < close_after:  # then it closes the connection, as servers close idle ones
                    served += 1
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await reader.readexactly(length)
                    if self.stall is not None and time.perf_counter() >= self.stall[0]:
                        ms = self.stall[1]
                        self.stall = None
                        time.sleep(ms / 1000.0)  # blocks the event loop: every connection waits
                    self.answered += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def start() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stall_at(self, seconds: float, ms: float) -> None:
        self.stall = (time.perf_counter() + seconds, ms)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server() -> Iterator[StallServer]:
    s = StallServer()
    yield s
    s.close()


def requests(port: int) -> list[bytes]:
    return [post_request("127.0.0.1", port, "/x", {"i": i}) for i in range(10)]


def test_open_loop_keeps_its_rate_and_counts_a_stall_for_every_request_due_during_it(server: StallServer) -> None:
    server.stall_at(1.5, 300)  # 1 s of warm-up + 0.5 s into the measured window
    res = run_open_loop("127.0.0.1", server.port, requests(server.port), rate=200, warmup_s=1.0, duration_s=2.0)
    s = res.summary()
    assert s["errors"] == 0 and s["requests"] == 400  # exactly rate x duration, all answered
    lat = np.asarray(res.latencies_ms)
    # the ~60 requests due during the 300 ms stall all waited for it: from up to 300 ms down to ~0
    assert (lat >= 100).sum() >= 30, sorted(lat)[-70:]
    assert s["p99_ms"] >= 200 and s["max_ms"] >= 250
    assert s["p50_ms"] < 50  # the rest were quick


def test_a_closed_loop_hides_the_same_stall(server: StallServer) -> None:
    server.stall_at(1.5, 300)
    res = run_load("127.0.0.1", server.port, requests(server.port), concurrency=2, warmup_s=1.0, duration_s=2.0)
    lat = np.asarray(res.latencies_ms)
    assert res.requests > 400 and not res.errors
    assert (lat >= 100).sum() <= 2  # one waiting request per connection: the clients stopped sending meanwhile
    assert float(np.percentile(lat, 99)) < 50


def test_open_loop_replaces_connections_the_server_closes() -> None:
    server = StallServer(close_after=15)
    try:
        res = run_open_loop("127.0.0.1", server.port, requests(server.port), rate=300, warmup_s=0.5, duration_s=1.5, connections=8)
    finally:
        server.close()
    s = res.summary()
    # every request is answered (a request sent in the instant a close was on its way may fail)
    assert s["errors"] <= 2 and s["requests"] + s["errors"] == 450, s


def test_open_loop_refuses_a_rate_of_zero(server: StallServer) -> None:
    with pytest.raises(ValueError, match="rate"):
        run_open_loop("127.0.0.1", server.port, requests(server.port), rate=0)


@pytest.mark.skipif(not wrk_available(), reason="wrk is not installed (apt-get install wrk): the benchmark's closed-loop client")
def test_wrk_figures_are_parsed(server: StallServer) -> None:
    res = run_wrk(server.port, "/x", [b'{"i": 1}', b'{"i": 2}'], connections=2, duration_s=1.0)
    assert res["requests"] > 100 and res["errors"] == 0 and res["requests"] <= server.answered
    assert 0 < res["p50_ms"] <= res["p99_ms"] <= res["p999_ms"] <= res["max_ms"]
    assert res["rps"] == pytest.approx(res["requests"] / res["seconds"])
