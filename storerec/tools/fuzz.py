"""API fuzzing (``storerec fuzz`` / ``make fuzz``): schemathesis against the live OpenAPI document.

Starts the real service on the built-in store (an ALS champion in a private MLflow store under
``out``, reused across runs) or fuzzes a service already running at ``--url``, then runs
``schemathesis run <url>/docs.json`` with every check that applies to a stateless API:

* ``not_a_server_error``: no 5xx, whatever the input;
* ``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
  ``response_schema_conformance``: every answer is documented (status, media type, body shape);
* ``negative_data_rejection``: input the schema forbids gets a 4xx (400, 413 for a body over
  ``serving.max_body_bytes``, 415, 422; never 5xx);
* ``positive_data_acceptance``: input the schema allows is never refused as malformed (400, 413,
  415). Two refusals are documented answers to well-formed input and count as accepted: 404 (an
  id or category the catalogue does not have, a version the registry does not have) and 422 (a
  rule the JSON schema cannot state, named in the error and in the field's description: a
  timestamp outside the accepted window, revenue on a click, ``min_price`` above ``max_price``,
  neither ``user_id`` nor ``session_id``);
* ``unsupported_method``: other methods get 405.

The admin token is passed so ``/admin/reload`` is fuzzed too (model references that do not
exist must give a 4xx). Reports (JSON summary, JUnit) go to ``out/report``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "403", "404", "405", "413", "415", "422"]
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "403", "404", "409", "422"]
"""

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "unsupported_method",
]


def run_schemathesis(url: str, out: Path, *, examples: int, token: str | None, seed: int = 0,
                     workers: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the schemathesis CLI against ``url``; returns the summary parsed from its JSON report
    plus ``exit_code`` and the tail of its output."""
    out = Path(out).resolve()
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("schemathesis"))
    config = out / "schemathesis.toml"
    config.write_text(CONFIG)
    cmd = [
        exe, "--config-file", str(config), "run", f"{url.rstrip('/')}/docs.json",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(examples),
        "--seed", str(seed),
        "--workers", str(workers),
        "--phases", "examples,coverage,fuzzing",
        "--generation-database", "none",
        "--report", "json,junit",
        "--report-dir", str(report),
        "--no-color",
        "--warnings", "off",
        "--suppress-health-check", "all",
        "--request-timeout", "30",
    ]
    if token:
        cmd += ["--header", f"x-admin-token:{token}"]
    log(f"schemathesis: {examples} examples per operation against {url}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    text = proc.stdout + proc.stderr
    (out / "schemathesis.log").write_text(text)
    summary = _summary(report, text)
    summary["exit_code"] = proc.returncode
    summary["tail"] = "\n".join(text.strip().splitlines()[-40:])
    return summary


def _summary(report: Path, text: str) -> dict[str, Any]:
    """Counts from schemathesis' JSON run report: test cases generated, operations tested,
    failures (by check) and errors."""
    out: dict[str, Any] = {"cases": None, "operations": None, "failures": {}, "errors": None, "per_operation": {}}
    files = sorted(report.glob("json-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return out
    try:
        data = json.loads(files[-1].read_text())
    except json.JSONDecodeError:
        return out
    out["cases"] = data.get("test_cases", {}).get("generated")
    out["operations"] = data.get("operations", {}).get("tested")
    out["errors"] = len(data.get("errors") or [])
    failures: dict[str, int] = {}
    for f in data.get("failures") or []:
        key = str(f.get("check") or f.get("code") or f.get("title") or "failure") if isinstance(f, dict) else str(f)
        failures[key] = failures.get(key, 0) + 1
    out["failures"] = failures
    for op, phases in (data.get("valid_rates") or {}).items():
        out["per_operation"][op] = sum(sum(v for v in counts.values()) for counts in phases.values())
    return out
