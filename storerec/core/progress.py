"""Progress output for long jobs: timed steps on stderr, silent when quiet.

Two kinds of output:

* :meth:`Progress.step` - ``[job] step ...`` then ``[job] step done in 1.2s``;
* :meth:`Progress.task` - fractional progress with an estimate of the time left, for work that
  counts (epochs of a fit). Silent for its first :data:`TASK_DELAY` seconds, so quick work adds no
  noise. On a terminal (the stream ``isatty()``) it is one bar redrawn in place; elsewhere (CI,
  a log file) plain lines, one per tenth of the work or per :data:`LINE_SECONDS`, whichever
  comes first, e.g. ``[train] lightfm: epoch 12/30, 41 s, ~62 s left``.

Models report through a :data:`FitReporter` set on them (``fit_progress``): a callable that
opens a task for a number of epochs. Reporting never changes what a model computes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol, Self, TextIO, runtime_checkable

TASK_DELAY = 3.0  # seconds a task runs before it shows anything
LINE_SECONDS = 30.0  # plain-line mode: at most this long between lines
BAR_SECONDS = 0.2  # terminal mode: redraw at most this often
BAR_WIDTH = 24


def short_duration(s: float) -> str:
    """``41 s``, ``3 min 05 s``, ``1 h 02 min``: short, for a progress line."""
    s = max(0, round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Task:
    """Counts ``done`` of ``total`` units and reports it with an estimate (see the module doc).

    Use it as a context manager: leaving it ends the terminal bar's line (or, in plain-line
    mode, prints the final count if anything was printed before). ``clock`` is for tests."""

    def __init__(self, progress: Progress | None, name: str, total: int, unit: str = "step",
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.progress = progress
        self.name = name
        self.total = max(0, int(total))
        self.unit = unit
        self.done = 0
        self._clock = clock
        self._t0 = clock()
        self._shown = False  # anything written yet
        self._last_time = self._t0  # when the last line / redraw was written
        self._last_tenth = 0  # plain lines: the tenth of the work the last line reported

    @property
    def _active(self) -> bool:
        return self.progress is not None and not self.progress.quiet

    @property
    def _tty(self) -> bool:
        assert self.progress is not None
        return _isatty(self.progress.stream)

    def advance(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """``done`` units are done in all (capped at the total)."""
        self.done = min(int(done), self.total) if self.total else int(done)
        if not self._active:
            return
        now = self._clock()
        elapsed = now - self._t0
        if elapsed < TASK_DELAY or self.done >= self.total:
            return  # a quick task stays silent; a shown task's end is written by finish()
        if self._tty:
            if now - self._last_time >= BAR_SECONDS or not self._shown:
                self._write(self.bar(elapsed), now)
        else:
            tenth = 10 * self.done // self.total if self.total else 0
            if tenth > self._last_tenth or now - self._last_time >= LINE_SECONDS or not self._shown:
                self._last_tenth = tenth
                self._write(self.line(elapsed), now)

    def finish(self) -> None:
        """End the report: the bar's line is completed with the total time; a plain-line report
        gets a last line. Nothing when nothing was shown (the task was quick)."""
        if not self._active or not self._shown:
            return
        elapsed = self._clock() - self._t0
        assert self.progress is not None
        if self._tty:
            self._write(self.bar(elapsed, final=True), self._clock())
            print(file=self.progress.stream, flush=True)
        else:
            self._write(self.line(elapsed, final=True), self._clock())

    def _left(self, elapsed: float) -> str:
        if not self.done or not self.total:
            return ""
        return f", ~{short_duration(elapsed / self.done * (self.total - self.done))} left"

    def line(self, elapsed: float, final: bool = False) -> str:
        """``lightfm: epoch 12/30, 41 s, ~62 s left`` (``..., 30/30 in 1 min 43 s`` at the end)."""
        if final:
            return f"{self.name}: {self.unit} {self.done}/{self.total} in {short_duration(elapsed)}"
        return f"{self.name}: {self.unit} {self.done}/{self.total}, {short_duration(elapsed)}{self._left(elapsed)}"

    def bar(self, elapsed: float, final: bool = False) -> str:
        """``lightfm [#########...............] epoch 12/30, 41 s, ~62 s left``."""
        filled = BAR_WIDTH * self.done // self.total if self.total else BAR_WIDTH
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        tail = f" in {short_duration(elapsed)}" if final else f", {short_duration(elapsed)}{self._left(elapsed)}"
        return f"{self.name} [{bar}] {self.unit} {self.done}/{self.total}{tail}"

    def _write(self, text: str, now: float) -> None:
        assert self.progress is not None
        self._last_time = now
        self._shown = True
        if self._tty:
            # redraw in place: carriage return, the text, clear the rest of the line
            print(f"\r[{self.progress.job}] {text}\x1b[K", end="", file=self.progress.stream, flush=True)
        else:
            self.progress.info(text)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        elif self._active and self._shown and self._tty:
            assert self.progress is not None
            print(file=self.progress.stream, flush=True)  # the error message starts on its own line


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


FitReporter = Callable[[int, str], Task]
"""``reporter(total, unit)`` -> the :class:`Task` a model advances while it fits."""


def fit_task(reporter: FitReporter | None, total: int, unit: str = "epoch") -> Task:
    """The task a model reports its fit on: the reporter's, or a silent one without a reporter."""
    return reporter(total, unit) if reporter is not None else Task(None, "", total, unit)


@runtime_checkable
class ReportsFitProgress(Protocol):
    """A model that reports its fit's progress: set ``fit_progress`` before ``fit``."""

    fit_progress: FitReporter | None


class Progress:
    """Prints ``[job] step ... done in 1.2s`` lines so long jobs show where they are.

    Example
    -------
    >>> p = Progress("features", quiet=True)
    >>> with p.step("user profiles"):
    ...     pass
    >>> with p.task("lightfm", total=30, unit="epoch") as task:
    ...     task.advance()
    """

    def __init__(self, job: str, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.job = job
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"[{self.job}] {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.info(f"{name} ...")
        t0 = time.perf_counter()
        yield
        self.info(f"{name} done in {time.perf_counter() - t0:.1f}s")

    def task(self, name: str, total: int, unit: str = "step") -> Task:
        """Fractional progress of ``total`` units with an estimate of the time left (module doc)."""
        return Task(self, name, total, unit)

    def fit_reporter(self, name: str) -> FitReporter:
        """What to set as a model's ``fit_progress``: its fit reports as ``name`` on this job."""
        return lambda total, unit: self.task(name, total, unit)
