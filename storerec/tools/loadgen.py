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
from collections.abc import Sequence
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
