"""Shared helpers for models built on the `implicit` library."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from threadpoolctl import threadpool_limits


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    # implicit parallelises itself; a multi-threaded BLAS underneath oversubscribes the cores
    # (implicit warns about exactly this), so BLAS is pinned to one thread while fitting.
    with threadpool_limits(limits=1, user_api="blas"):
        yield
