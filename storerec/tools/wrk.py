"""``wrk`` (the Debian package) driven from Python: closed-loop load as a storefront engineer
would measure it, with the request bodies cycling through a list.

:func:`run_wrk` writes the bodies (one JSON document per line) and a Lua script to a temporary
folder, runs ``wrk --latency`` with one thread and ``connections`` keep-alive connections, and
returns what the script's ``done`` hook prints: requests per second, the latency percentiles
(p50, p90, p99, p99.9, max, from wrk's own histogram) and the error counts (non-2xx answers,
connect/read/write errors, timeouts). :func:`wrk_available` says whether the binary is there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("STOREREC_WRK_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("STOREREC_WRK_PATH")
local headers = {["Content-Type"] = "application/json"}
local i = tonumber(os.getenv("STOREREC_WRK_OFFSET") or "0")
request = function()
  i = i + 1
  return wrk.format("POST", path, headers, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("STOREREC_WRK ", string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, ' ..
    '"mean_us": %.1f, "non_2xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, e.status, e.connect, e.read, e.write, e.timeout), "\n")
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(port: int, path: str, bodies: list[bytes], *, connections: int = 8, duration_s: float = 10.0,
            host: str = "127.0.0.1", timeout_s: float = 10.0) -> dict[str, Any]:
    """``wrk -t1 -c CONNECTIONS -d DURATION`` against ``http://HOST:PORT/PATH``; the figures in
    milliseconds and requests per second. Raises ``RuntimeError`` when wrk fails or is missing."""
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (Debian/Ubuntu)")
    if not bodies:
        raise ValueError("no request bodies")
    with tempfile.TemporaryDirectory(prefix="storerec-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_SCRIPT)
        lines = Path(tmp) / "bodies.jsonl"
        lines.write_bytes(b"\n".join(b.replace(b"\n", b" ") for b in bodies) + b"\n")
        env = {"PATH": "/usr/bin:/bin", "STOREREC_WRK_BODIES": str(lines), "STOREREC_WRK_PATH": path}
        cmd = [exe, "-t1", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={timeout_s:g}s", "-s", str(script),
               f"http://{host}:{port}{path}"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s + 60)
    marker = [ln for ln in r.stdout.splitlines() if ln.startswith("STOREREC_WRK ")]
    if r.returncode != 0 or not marker:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    raw = json.loads(marker[-1].split(" ", 1)[1])
    seconds = raw["duration_us"] / 1e6
    errors = raw["non_2xx"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "tool": "wrk",
        "connections": connections,
        "requests": raw["requests"],
        "seconds": seconds,
        "rps": raw["requests"] / seconds if seconds > 0 else 0.0,
        "p50_ms": raw["p50_us"] / 1000.0,
        "p90_ms": raw["p90_us"] / 1000.0,
        "p99_ms": raw["p99_us"] / 1000.0,
        "p999_ms": raw["p999_us"] / 1000.0,
        "max_ms": raw["max_us"] / 1000.0,
        "mean_ms": raw["mean_us"] / 1000.0,
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("non_2xx", "connect", "read", "write", "timeout") if raw[k]},
    }
