"""The start watch of `storerec serve` (serving/startwatch.py) against a small HTTP server whose
/readyz is refused, then 503 with reasons, then 200, with a record file in a temp folder."""

from __future__ import annotations

import io
import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from storerec.serving.startwatch import KEEP, StartWatch, probe_url, record_path
from tests._http_stub import json_stub


class _Readyz:
    """A /readyz that answers 503 with ``reasons`` until ``ready_after`` seconds have passed."""

    def __init__(self, ready_after: float, reasons: list[str]) -> None:
        self.t0 = time.time()
        self.ready_after = ready_after
        self.reasons = reasons
        self.base = ""  # set once served (the fixture)

    def answer(self, method: str, path: str, headers: object, body: bytes) -> tuple[int, dict]:
        ready = time.time() - self.t0 >= self.ready_after
        return (200 if ready else 503), {"ready": ready, "reasons": [] if ready else self.reasons}

    @property
    def url(self) -> str:
        return f"{self.base}/readyz"

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


@pytest.fixture
def readyz():
    with ExitStack() as stack:

        def make(ready_after: float = 0.6, reasons: list[str] | None = None) -> _Readyz:
            r = _Readyz(ready_after, reasons or [])
            r.base = stack.enter_context(json_stub(r.answer))
            return r

        yield make


def _watch(url: str, record: Path, version: str = "5", workers: int = 1, t0: float | None = None) -> tuple[StartWatch, io.StringIO]:
    out = io.StringIO()
    w = StartWatch(url=url, record=record, version=version, workers=workers, t0=t0 or time.time(), stream=out,
                   delay=0.2, line_every=0.2, poll=0.05, give_up=300)
    return w, out


def test_first_start_says_it_has_no_estimate_and_records_its_time(tmp_path: Path, readyz) -> None:
    t0 = time.time()  # before the server's clock starts: the watch cannot see it ready before 0.7 s
    server = readyz(ready_after=0.7)
    w, out = _watch(server.url, record_path(tmp_path), t0=t0)
    took = w.run()
    text = out.getvalue()
    assert took is not None and 0.6 < took < 5
    assert "[serve] starting version 5 with 1 worker: 0 s (the first start on this data folder: no estimate yet)" in text
    assert f"[serve] ready in {took:.1f} s: http://127.0.0.1:{server.port} (GET /readyz 200)" in text
    starts = json.loads(record_path(tmp_path).read_text())["starts"]
    assert [(s["version"], s["workers"]) for s in starts] == [("5", 1)]
    assert starts[0]["ready_s"] == pytest.approx(took, abs=0.01)


def test_a_later_start_estimates_from_the_last_one_of_its_version(tmp_path: Path, readyz) -> None:
    record = record_path(tmp_path)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"starts": [
        {"version": "5", "workers": 1, "ready_s": 40.0},
        {"version": "5", "workers": 2, "ready_s": 90.0},  # other worker count: not this start's reference
        {"version": "4", "workers": 1, "ready_s": 60.0},  # later, but another version
    ]}))
    # the start began 30 s ago (t0 is the `storerec serve` command's time), 10 s left of 40
    server = readyz(ready_after=1.0)
    w, out = _watch(server.url, record, t0=time.time() - 30)
    w.run()
    first = next(x for x in out.getvalue().splitlines() if "starting" in x)
    assert first.startswith("[serve] starting version 5 with 1 worker: 30 s, ~10 s left")
    assert first.endswith("(the last start of version 5 here was ready in 40 s)")
    assert len(json.loads(record.read_text())["starts"]) == 4


def test_another_version_is_the_estimate_when_this_one_never_started_here(tmp_path: Path) -> None:
    record = record_path(tmp_path)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"starts": [{"version": "4", "workers": 2, "ready_s": 33.0}]}))
    w, _ = _watch("http://127.0.0.1:1/readyz", record, version="6", workers=2)
    assert w.estimate(w.earlier_starts()) == (33.0, "the last start here (version 4) was ready in 33 s")
    w1, _ = _watch("http://127.0.0.1:1/readyz", record, version="6", workers=1)
    assert w1.estimate(w1.earlier_starts()) is None
    assert w1.no_estimate(w1.earlier_starts()) == "no earlier start with 1 worker on this data folder: no estimate yet"


def test_past_the_estimate_it_says_so_instead_of_a_negative_time(tmp_path: Path) -> None:
    w, _ = _watch("http://127.0.0.1:1/readyz", record_path(tmp_path))
    line = w.line(52, (40.0, "the last start of version 5 here was ready in 40 s"), first=False)
    assert line == "starting: 52 s, taking longer than the 40 s of the last start"


def test_503_reasons_are_shown_once_until_they_change(tmp_path: Path, readyz) -> None:
    server = readyz(ready_after=0.8, reasons=["event log cannot write: database is locked"])
    w, out = _watch(server.url, record_path(tmp_path))
    assert w.run() is not None
    lines = [x for x in out.getvalue().splitlines() if "not ready" in x]
    assert lines == ["[serve] answering but not ready (503): event log cannot write: database is locked"]


def test_an_unreadable_record_is_said_and_replaced(tmp_path: Path, readyz) -> None:
    record = record_path(tmp_path)
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    server = readyz(ready_after=0.1)
    w, out = _watch(server.url, record)
    assert w.run() is not None
    assert f"warning: the start record {record} is unreadable (JSONDecodeError)" in out.getvalue()
    assert len(json.loads(record.read_text())["starts"]) == 1
    assert [p.name for p in record.parent.iterdir()] == [record.name]  # no temp file left


def test_a_record_that_cannot_be_written_costs_a_warning_not_the_start(tmp_path: Path, readyz) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    server = readyz(ready_after=0.1)
    w, out = _watch(server.url, record_path(tmp_path))
    assert w.run() is not None
    assert "warning: could not record this start's time" in out.getvalue()


def test_without_its_data_folder_it_keeps_no_record_and_makes_no_folder(tmp_path: Path, readyz) -> None:
    """A replica serving from the registry alone (docs/deploy.md) must not grow a data folder."""
    missing = tmp_path / "no-data"
    server = readyz(ready_after=0.6)
    w, out = _watch(server.url, record_path(missing), t0=time.time() - 5)
    assert w.run() is not None
    assert not missing.exists()
    assert f"(no data folder at {missing} to keep start times in: no estimate)" in out.getvalue()


def test_the_record_keeps_the_last_starts_only(tmp_path: Path, readyz) -> None:
    record = record_path(tmp_path)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"starts": [{"version": str(i), "workers": 1, "ready_s": 10.0 + i} for i in range(KEEP)]}))
    server = readyz(ready_after=0.0)
    w, _ = _watch(server.url, record, version="99")
    w.run()
    starts = json.loads(record.read_text())["starts"]
    assert len(starts) == KEEP and starts[0]["version"] == "1" and starts[-1]["version"] == "99"


def test_nothing_answering_gives_up_with_a_line(tmp_path: Path) -> None:
    out = io.StringIO()
    w = StartWatch(url="http://127.0.0.1:1/readyz", record=record_path(tmp_path), version="5", workers=1,
                   stream=out, delay=0.1, line_every=0.1, poll=0.05, give_up=0.5)
    assert w.run() is None
    assert "no longer watching" in out.getvalue()
    assert not record_path(tmp_path).exists()


def test_a_stopped_watch_ends_quietly(tmp_path: Path) -> None:
    w, out = _watch("http://127.0.0.1:1/readyz", record_path(tmp_path))
    thread, stop = w.start()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_wildcard_hosts_are_polled_on_loopback() -> None:
    assert probe_url("0.0.0.0", 3000) == "http://127.0.0.1:3000/readyz"
    assert probe_url("::", 3000) == "http://[::1]:3000/readyz"
    assert probe_url("127.0.0.1", 3001) == "http://127.0.0.1:3001/readyz"


def test_the_watch_goes_through_the_environment_unchanged(tmp_path: Path) -> None:
    w = StartWatch(url="http://127.0.0.1:3000/readyz", record=record_path(tmp_path), version="7", workers=2, t0=123.5)
    back = StartWatch.from_env(w.to_env())
    assert (back.url, back.record, back.version, back.workers, back.t0) == (w.url, w.record, "7", 2, 123.5)
