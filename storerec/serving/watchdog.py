"""A worker that outlives its parent shuts itself down.

``bentoml serve`` is an arbiter (circus) that starts each worker in a session of its own
(``setsid``); the tree is ``storerec serve`` (exec'd into ``bentoml serve``, the arbiter) ->
``python -m _bentoml_impl.worker.service`` x ``serving.workers``. A normal stop (SIGTERM, Ctrl+C)
stops the workers through the arbiter, but a SIGKILL of the arbiter (or its crash, or the OOM
killer) used to leave every worker serving on the port, with the event log open, so the next
``storerec serve`` failed with "Address already in use".

Two lines of defence, started in each worker:

1. Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends the worker SIGTERM the moment
   its parent dies, which runs the normal graceful shutdown (uvicorn, then the service's
   ``on_shutdown`` hook that flushes the event log).
2. A daemon thread that compares ``os.getppid()`` with the parent recorded at start every
   0.5 s; once it changed (the worker was re-parented), it logs one line, runs ``cleanup``
   (bounded) and ends the process with ``os._exit`` at most ``grace_s`` later, whatever the
   graceful path is doing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("storerec.serving")

PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(cleanup: Callable[[], None], *, interval_s: float = 0.5, grace_s: float = 5.0,
                 signal_on_death: int | None = signal.SIGTERM) -> threading.Thread:
    """Start watching the current parent process; when it is gone, run ``cleanup`` (for at
    most ``grace_s - 1`` seconds) and exit the process. Returns the (daemon) thread."""
    parent = os.getppid()
    if signal_on_death is not None:
        _set_parent_death_signal(signal_on_death)
        # (the parent may have died before prctl: the thread below notices it at its first look)

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.warning("parent process %d is gone: worker %d shuts down (flushing the event log, at most %.0f s)",
                    parent, os.getpid(), grace_s)
        done = threading.Thread(target=_quietly, args=(cleanup,), name="storerec-orphan-cleanup", daemon=True)
        done.start()
        done.join(max(0.0, grace_s - 1.0))
        for handler in logging.getLogger().handlers + log.handlers:
            try:
                handler.flush()
            except Exception:
                pass
        os._exit(0)

    thread = threading.Thread(target=run, name="storerec-watchdog", daemon=True)
    thread.start()
    return thread


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("cleanup of an orphaned worker failed")
