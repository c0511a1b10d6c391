"""The one-way house (docs/architecture.md): every module of ``storerec`` imports only from its own
layer or the layers below it, as the import-linter contract in pyproject.toml states. Imports
inside functions count too."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contract, on the ``storerec`` package found under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_runs_down_the_layers() -> None:
    r = _lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The check can fail: the same tree with one upward import (core -> serving, inside a
    function, as a lazy import would be) is refused and the offending line is named."""
    shutil.copytree(REPO / "storerec", tmp_path / "storerec", ignore=shutil.ignore_patterns("__pycache__"))
    errors = tmp_path / "storerec" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _upward() -> None:\n    from storerec.serving import service  # noqa: F401\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "storerec.core.errors -> storerec.serving.service" in r.stdout, r.stdout
