"""A small closed-loop HTTP/1.1 load generator (asyncio, keep-alive connections, no dependencies).

``concurrency`` connections each send the next request as soon as the previous answer is read,
so the figures are what ``concurrency`` busy storefront back ends would see. Latency is measured
per request from writing it to reading the whole body. Written for the serving benchmark: it
parses only what it needs (status line, ``Content-Length`` or chunked bodies), which keeps the
client's own CPU cost low on a machine it shares with the server.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def post_request(host: str, port: int, path: str, body: dict[str, Any]) -> bytes:
    """Bytes of one keep-alive ``POST`` with a JSON body."""
    data = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    return head + data


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    raise RuntimeError("response without Content-Length or chunked encoding")


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "rps": self.requests / self.seconds if self.seconds > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(statistics.fmean(lat.tolist())),
        }


async def _run(host: str, port: int, requests: Sequence[bytes], concurrency: int, warmup_s: float, duration_s: float) -> LoadResult:
    result = LoadResult(concurrency, duration_s)
    t_start = time.perf_counter()
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s

    async def worker(w: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = w
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                writer.write(requests[i % len(requests)])
                i += concurrency
                status, _ = await _read_response(reader)
                t1 = time.perf_counter()
                if t0 >= t_measure:
                    if status == 200:
                        result.latencies_ms.append((t1 - t0) * 1000.0)
                    else:
                        key = f"HTTP {status}"
                        result.errors[key] = result.errors.get(key, 0) + 1
        finally:
            writer.close()

    outcomes = await asyncio.gather(*(worker(w) for w in range(concurrency)), return_exceptions=True)
    for out in outcomes:
        if isinstance(out, BaseException):
            key = type(out).__name__
            result.errors[key] = result.errors.get(key, 0) + 1
    result.seconds = max(1e-9, min(time.perf_counter(), t_end) - t_measure)
    return result


def run_load(
    host: str, port: int, requests: Sequence[bytes], *, concurrency: int, warmup_s: float = 2.0, duration_s: float = 10.0
) -> LoadResult:
    """Drive the server with ``concurrency`` connections for ``warmup_s + duration_s`` seconds;
    only requests *sent* after the warm-up count (each connection cycles through ``requests``)."""
    if not requests:
        raise ValueError("no requests to send")
    return asyncio.run(_run(host, port, requests, concurrency, warmup_s, duration_s))


# ---- open loop -------------------------------------------------------------------------------------


@dataclass
class OpenLoopResult:
    rate: float  # requests per second asked for
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    max_lag_ms: float = 0.0  # how late a request left after it was due (queued behind busy connections, or the client itself late)
    connections: int = 0

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "rate": self.rate,
            "requests": len(self.latencies_ms),
            "achieved_rps": len(self.latencies_ms) / self.seconds if self.seconds > 0 else 0.0,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "p999_ms": float(np.percentile(lat, 99.9)),
            "max_ms": float(lat.max()),
            "client_max_lag_ms": self.max_lag_ms,
            "connections": self.connections,
        }


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the open-loop generator: sends a request, reads its answer
    (``Content-Length`` bodies only: what both servers send), reports it, and is idle again."""

    def __init__(self, on_answer: Callable[[_Conn, int], None], on_lost: Callable[[_Conn, str], None]) -> None:
        self.on_answer = on_answer
        self.on_lost = on_lost
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.transport: asyncio.Transport | None = None
        self.job: tuple[int, float] | None = None  # (request number, when it was due)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.on_lost(self, "no Content-Length")
                    return
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop > 0 else len(head)])
                self.status = int(head[9:12])
                self.need = end + 4 + length
            if len(buf) < self.need:
                return
            del buf[: self.need]
            self.need = -1
            self.on_answer(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self, type(exc).__name__ if exc else "connection closed")


async def _open_loop(host: str, port: int, requests: Sequence[bytes], rate: float, warmup_s: float, duration_s: float,
                     connections: int) -> OpenLoopResult:
    loop = asyncio.get_running_loop()
    result = OpenLoopResult(rate, duration_s)
    idle: deque[_Conn] = deque()  # first in, first out: every connection stays in use (servers close idle ones)
    conns: list[_Conn] = []
    queued: deque[tuple[int, float]] = deque()  # due, but every connection was busy
    interval = 1.0 / rate
    n_warm = int(warmup_s * rate)
    n_total = n_warm + int(duration_s * rate)
    outstanding = [0]
    dispatching = [True]
    finished = loop.create_future()
    perf = time.perf_counter

    def send(conn: _Conn, i: int, t_sched: float) -> None:
        lag = (perf() - t_sched) * 1000.0
        if i >= n_warm and lag > result.max_lag_ms:
            result.max_lag_ms = lag
        conn.job = (i, t_sched)
        assert conn.transport is not None
        conn.transport.write(requests[i % len(requests)])

    def next_job(conn: _Conn) -> None:
        conn.job = None
        outstanding[0] -= 1
        if queued:
            send(conn, *queued.popleft())
        else:
            idle.append(conn)
        if outstanding[0] == 0 and not dispatching[0] and not finished.done():
            finished.set_result(None)

    def on_answer(conn: _Conn, status: int) -> None:
        t1 = perf()
        i, t_sched = conn.job  # type: ignore[misc]
        if i >= n_warm:
            if status == 200:
                result.latencies_ms.append((t1 - t_sched) * 1000.0)  # from when it was due: no coordinated omission
            else:
                result.errors[f"HTTP {status}"] = result.errors.get(f"HTTP {status}", 0) + 1
        next_job(conn)

    def on_lost(conn: _Conn, kind: str) -> None:
        """A connection closed (by the server, or on an error): its request, if any, failed; a
        new connection takes its place in the pool."""
        if conn in conns:
            conns.remove(conn)
        if conn in idle:
            idle.remove(conn)
        if conn.job is not None:
            if conn.job[0] >= n_warm:
                result.errors[kind] = result.errors.get(kind, 0) + 1
            conn.job = None
            outstanding[0] -= 1
            if outstanding[0] == 0 and not dispatching[0] and not finished.done():
                finished.set_result(None)
        if conn.transport is not None:
            conn.transport.close()
        if dispatching[0] or outstanding[0]:
            replacements.add(loop.create_task(replace()))

    async def replace() -> None:
        try:
            _, proto = await loop.create_connection(lambda: _Conn(on_answer, on_lost), host, port)
        except OSError as exc:
            result.errors[f"reconnect: {type(exc).__name__}"] = result.errors.get(f"reconnect: {type(exc).__name__}", 0) + 1
            return
        conns.append(proto)
        if queued:
            send(proto, *queued.popleft())
        else:
            idle.append(proto)

    replacements: set[asyncio.Task[None]] = set()

    for _ in range(connections):  # the pool, opened before the clock starts
        _, proto = await loop.create_connection(lambda: _Conn(on_answer, on_lost), host, port)
        conns.append(proto)
        idle.append(proto)
    t0 = perf() + 0.05
    i = 0
    while i < n_total:
        now = perf()
        due = t0 + i * interval
        if due > now:  # (uvloop's timers count whole milliseconds: a shorter sleep would spin)
            await asyncio.sleep(max(due - now, 0.001))
            continue
        while i < n_total and t0 + i * interval <= now:  # everything due by now
            outstanding[0] += 1
            while idle and idle[0].transport is not None and idle[0].transport.is_closing():
                idle.popleft()  # closed by the server; its replacement is on the way (on_lost)
            if idle:
                send(idle.popleft(), i, t0 + i * interval)
            else:  # every connection busy: the request waits its turn, and the wait counts in its latency
                queued.append((i, t0 + i * interval))
            i += 1
    dispatching[0] = False
    if outstanding[0] and not finished.done():
        try:
            await asyncio.wait_for(asyncio.shield(finished), timeout=30.0)
        except TimeoutError:
            result.errors["no answer within 30 s"] = outstanding[0]
    for conn in list(conns):
        if conn.transport is not None:
            conn.transport.close()
    result.connections = connections
    return result


def run_open_loop(
    host: str, port: int, requests: Sequence[bytes], *, rate: float, warmup_s: float = 2.0, duration_s: float = 15.0,
    connections: int = 64,
) -> OpenLoopResult:
    """Open loop at a constant ``rate``: request ``i`` is due at ``start + i / rate`` whatever
    the server does, sent on an idle keep-alive connection of a pool of ``connections`` opened
    before the clock starts (as a storefront back end's HTTP client pool; when all are busy, it
    waits for the first one free, in order), and its latency runs from when it was due to the end of its answer, so
    a stall counts for every request that fell due during it (what a closed loop hides: its
    clients stop sending while they wait). Only requests due after ``warmup_s`` count.
    ``client_max_lag_ms`` says how late the generator itself was at worst."""
    if not requests:
        raise ValueError("no requests to send")
    if rate <= 0:
        raise ValueError("rate must be positive")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_open_loop(host, port, requests, rate, warmup_s, duration_s, connections))
