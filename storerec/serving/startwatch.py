"""How long ``storerec serve`` takes to become ready, said while it starts.

A start loads the version from the registry into every worker before any of them answers (about
10-30 s on the built-in store, longer on a large catalogue), and BentoML's lines do not say how
far it is. :class:`StartWatch` runs in the arbiter (serving/arbiter.py) beside BentoML: it polls
``GET /readyz`` and prints plain lines on stderr (BentoML's log lines share the stream, so no
redrawn bar), e.g.::

    [serve] starting version 5 with 1 worker: 8 s, ~19 s left (the last start of version 5 here was ready in 27 s)
    [serve] starting: 13 s, ~14 s left
    [serve] ready in 26.8 s: http://127.0.0.1:3000 (GET /readyz 200)

The estimate is the time an earlier start on the same data folder took, read from
``<data folder>/cache/serve-starts.json``: the last start of this version with as many workers,
else the last start of any version with as many workers; the first start on a data folder says it
has no estimate yet. Each start that gets to ready adds its time to the file (the last
:data:`KEEP` starts are kept; written atomically; a file that cannot be read or written costs a
warning line, never the start). The file holds no user data. A service without its data folder
(a replica that serves from the registry, docs/deploy.md) keeps no record and makes no folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from storerec.core.progress import short_duration

WATCH_VAR = "STOREREC_START_WATCH"  # JSON: url, record, version, workers, t0 (set by `storerec serve`)
RECORD_FILE = Path("cache") / "serve-starts.json"  # under the data folder
KEEP = 20  # starts kept in the record
DELAY = 3.0  # a start quicker than this prints only its ready line
LINE_EVERY = 5.0  # seconds between lines during the first minute, then every LINE_LATER
LINE_LATER = 30.0
GIVE_UP = 600.0  # stop watching (and say so) when not ready after this long
POLL = 0.25


def record_path(data_dir: Path) -> Path:
    """The start record of a data folder."""
    return Path(data_dir) / RECORD_FILE


def probe_url(host: str, port: int) -> str:
    """``GET /readyz`` of a service listening on ``host``: the wildcard addresses are polled on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def _workers(n: int) -> str:
    return f"{n} worker" if n == 1 else f"{n} workers"


@dataclass
class StartWatch:
    """Polls ``url`` until it answers 200 and reports the start (module doc). ``t0`` is the wall
    clock time ``storerec serve`` began (its checks and BentoML's start count too)."""

    url: str
    record: Path
    version: str
    workers: int
    t0: float = field(default_factory=time.time)
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    delay: float = DELAY
    line_every: float = LINE_EVERY
    line_later: float = LINE_LATER
    give_up: float = GIVE_UP
    poll: float = POLL

    @classmethod
    def from_env(cls, value: str) -> StartWatch:
        spec = json.loads(value)
        return cls(url=spec["url"], record=Path(spec["record"]), version=str(spec["version"]),
                   workers=int(spec["workers"]), t0=float(spec["t0"]))

    def to_env(self) -> str:
        return json.dumps({"url": self.url, "record": str(self.record), "version": self.version,
                           "workers": self.workers, "t0": self.t0})

    # ---- the record -------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        print(f"[serve] {text}", file=self.stream, flush=True)

    def earlier_starts(self) -> list[dict[str, Any]]:
        """The starts recorded on this data folder, oldest first ([] when none or unreadable)."""
        try:
            starts = json.loads(self.record.read_text())["starts"]
            return [s for s in starts if isinstance(s.get("ready_s"), (int, float)) and s["ready_s"] > 0]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._say(f"warning: the start record {self.record} is unreadable ({type(exc).__name__}); "
                      "this start has no estimate and begins a new record")
            return []

    def estimate(self, starts: list[dict[str, Any]]) -> tuple[float, str] | None:
        """(seconds, where they come from) of the earlier start this one should take as long as."""
        same = [s for s in starts if s.get("workers") == self.workers]
        mine = [s for s in same if str(s.get("version")) == self.version]
        if mine:
            return float(mine[-1]["ready_s"]), f"the last start of version {self.version} here was ready in {mine[-1]['ready_s']:.0f} s"
        if same:
            s = same[-1]
            return float(s["ready_s"]), f"the last start here (version {s.get('version')}) was ready in {s['ready_s']:.0f} s"
        return None

    @property
    def data_dir(self) -> Path:
        """The data folder the record belongs to (``<data>/cache/serve-starts.json``)."""
        return self.record.parent.parent

    def no_estimate(self, starts: list[dict[str, Any]]) -> str:
        """Why a start has no estimate."""
        if not self.data_dir.is_dir():
            return f"no data folder at {self.data_dir} to keep start times in: no estimate"
        if starts:
            return f"no earlier start with {_workers(self.workers)} on this data folder: no estimate yet"
        return "the first start on this data folder: no estimate yet"

    def save(self, starts: list[dict[str, Any]], ready_s: float) -> None:
        """Add this start to the record (atomically; the last :data:`KEEP` are kept)."""
        if not self.data_dir.is_dir():
            return  # a replica serving from the registry alone: it must not make a data folder
        entry = {"version": self.version, "workers": self.workers, "ready_s": round(ready_s, 2),
                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        body = json.dumps({"starts": [*starts, entry][-KEEP:]}, indent=1)
        tmp = None
        try:
            self.record.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.record.parent, prefix=".serve-starts.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.replace(tmp, self.record)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            self._say(f"warning: could not record this start's time in {self.record} ({exc}); "
                      "the next start has no estimate from it")

    # ---- the watch --------------------------------------------------------------------------

    def probe(self) -> tuple[int | None, list[str]]:
        """(status, reasons) of ``GET /readyz``; (None, []) while nothing answers."""
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:
                return r.status, []
        except urllib.error.HTTPError as exc:
            try:
                reasons = [str(x) for x in json.loads(exc.read()).get("reasons", [])]
            except (ValueError, AttributeError, OSError):
                reasons = []
            return exc.code, reasons
        except (OSError, ValueError):  # refused, reset, timed out: not listening yet
            return None, []

    def line(self, elapsed: float, estimate: tuple[float, str] | None, first: bool, why_none: str = "") -> str:
        head = f"starting version {self.version} with {_workers(self.workers)}" if first else "starting"
        if estimate is None:
            tail = f" ({why_none})" if first and why_none else ""
            return f"{head}: {short_duration(elapsed)}{tail}"
        seconds, basis = estimate
        left = seconds - elapsed
        when = f"~{short_duration(left)} left" if left >= 1 else f"taking longer than the {short_duration(seconds)} of the last start"
        return f"{head}: {short_duration(elapsed)}, {when}" + (f" ({basis})" if first else "")

    def run(self, stop: threading.Event | None = None) -> float | None:
        """Watch until ready (returns the seconds it took, recorded), ``stop`` is set or
        :attr:`give_up` seconds pass (None)."""
        stop = stop or threading.Event()
        starts = self.earlier_starts()
        estimate = self.estimate(starts)
        why_none = self.no_estimate(starts) if estimate is None else ""
        next_line, first, reasons_shown = self.delay, True, None
        base = self.url.rsplit("/readyz", 1)[0]
        while not stop.is_set():
            status, reasons = self.probe()
            elapsed = time.time() - self.t0
            if status == 200:
                self._say(f"ready in {elapsed:.1f} s: {base} (GET /readyz 200)")
                self.save(starts, elapsed)
                return elapsed
            if status is not None and reasons != reasons_shown:
                reasons_shown = reasons
                self._say(f"answering but not ready ({status}): {'; '.join(reasons) or 'no reason given'}")
            if elapsed >= self.give_up:
                self._say(f"not ready after {short_duration(elapsed)}; no longer watching (GET {self.url} says why)")
                return None
            if elapsed >= next_line:
                self._say(self.line(elapsed, estimate, first, why_none))
                first = False
                next_line = elapsed + (self.line_every if elapsed < 60 else self.line_later)
            stop.wait(self.poll)
        return None

    def start(self) -> tuple[threading.Thread, threading.Event]:
        """Run the watch in a daemon thread (it never holds the process up)."""
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="storerec-start-watch", daemon=True)
        thread.start()
        return thread, stop
