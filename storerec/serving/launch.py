"""What ``storerec serve`` hands to ``bentoml serve``: the process-level options.

The service class (:mod:`storerec.serving.service`) reads the settings in each worker's
``__init__``; what BentoML needs before any worker exists (how many workers, the access log, the
metrics route) cannot come from there. ``storerec serve`` puts them into BentoML's own
configuration through the ``BENTOML_CONFIG_OVERRIDES`` variable (a JSON document BentoML 1.4
merges over the ``@bentoml.service`` arguments and any ``BENTOML_CONFIG`` file, in the arbiter and
in every worker), next to a few plain environment variables. Kept apart from the service
module so that the CLI does not import BentoML, the models and numba to compute them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from storerec.core.settings import ServingSettings

SERVICE_NAME = "storerec"  # the @bentoml.service name: the key of its section in BentoML's configuration
SERVICE_IMPORT = "storerec.serving.service:StoreRec"  # what `bentoml serve` loads
OVERRIDES_VAR = "BENTOML_CONFIG_OVERRIDES"
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# `storerec serve` prints this line when the config sets no admin token (tools/serve_proc.py reads it back).
ADMIN_TOKEN_LINE = "admin token for this start (header x-admin-token on POST /admin/reload; set serving.admin_token to fix one): {token}"
_ADMIN_TOKEN_RE = re.compile(re.escape(ADMIN_TOKEN_LINE).replace(re.escape("{token}"), r"(\S+)"))


def bentoml_overrides(serving: ServingSettings) -> dict[str, Any]:
    """BentoML's configuration for the service's section: ``serving.workers`` worker processes,
    BentoML's access log (``serving.access_log``) and ``GET /metrics`` (``serving.metrics``)."""
    return {
        "services": {
            SERVICE_NAME: {
                "workers": serving.workers,
                "logging": {"access": {"enabled": serving.access_log}},
                "metrics": {"enabled": serving.metrics},
            }
        }
    }


def process_env(serving: ServingSettings) -> dict[str, str]:
    """The variables to add to ``bentoml serve``'s environment: :func:`bentoml_overrides` as
    ``BENTOML_CONFIG_OVERRIDES`` (other BentoML options go in a ``BENTOML_CONFIG`` file, which
    BentoML merges first), OpenTelemetry off unless ``serving.tracing`` (BentoML otherwise builds
    a span per request), and ``serving.blas_threads`` BLAS threads per worker."""
    env = {OVERRIDES_VAR: json.dumps(bentoml_overrides(serving))}
    if not serving.tracing:
        env["OTEL_SDK_DISABLED"] = "true"
    for var in BLAS_THREAD_VARS:
        env[var] = str(serving.blas_threads)
    return env


def admin_token_from_log(text: str) -> str | None:
    """The admin token in the last :data:`ADMIN_TOKEN_LINE` of ``text``, if any."""
    found = _ADMIN_TOKEN_RE.findall(text)
    return found[-1] if found else None
