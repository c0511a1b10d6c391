"""``bentoml serve`` as ``storerec serve`` runs it: with a Prometheus folder of this service's own.

BentoML keeps the multiprocess metrics of every ``bentoml serve`` on the machine in one folder,
``$BENTOML_HOME/prometheus_multiproc_dir``, and empties it whenever a server starts: a test run
or a second service beside ``make serve`` wiped the first one's counters. ``storerec serve``
execs this module instead of BentoML's command (same arguments); it points BentoML at
``$STOREREC_PROMETHEUS_DIR`` (one folder per host and port, :func:`prometheus_dir`) before
BentoML's command line runs, and removes the folder when the server stops. A server killed
outright leaves it; the next start on that port empties it, as BentoML does its own.

Beside BentoML it runs the start watch (serving/startwatch.py, ``$STOREREC_START_WATCH``): lines
on stderr with the time a start has taken and, from earlier starts on the data folder, the time
left, until ``GET /readyz`` answers 200.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

from storerec.serving.startwatch import WATCH_VAR, StartWatch

PROMETHEUS_DIR_VAR = "STOREREC_PROMETHEUS_DIR"


def prometheus_dir(host: str, port: int) -> Path:
    """This service's folder, beside BentoML's shared one (never inside it: BentoML empties that)."""
    home = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    return home / f"prometheus_multiproc_dir.storerec-{re.sub(r'[^A-Za-z0-9.]', '_', host)}-{port}"


def main() -> int:
    directory = os.environ.get(PROMETHEUS_DIR_VAR)
    if directory:
        from bentoml._internal.configuration.containers import BentoMLContainer

        BentoMLContainer.prometheus_multiproc_dir.set(directory)
    watch = os.environ.pop(WATCH_VAR, None)  # the workers need not see it
    if watch:
        StartWatch.from_env(watch).start()
    from bentoml_cli.cli import cli

    try:
        cli.main(args=sys.argv[1:], prog_name="bentoml", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
