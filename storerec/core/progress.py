"""Progress output for long jobs: timed steps on stderr, silent when quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Prints ``[job] step ... done in 1.2s`` lines so long jobs show where they are.

    Example
    -------
    >>> p = Progress("features", quiet=True)
    >>> with p.step("user profiles"):
    ...     pass
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
