"""The Makefile and the CLI agree: what `make` would run (``make -n``, nothing is run) passes the
user's settings where they belong and leaves defaults to the CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from storerec.cli import cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def dry_run(*args: str) -> str:
    """The commands ``make`` would run (``STAMP`` made fresh: no install step)."""
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "-o", "install", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_run_port_reaches_the_service_and_args_reach_run() -> None:
    out = dry_run("run", "PORT=3005", "ARGS=--force")
    run_line = next(line for line in out.splitlines() if "storerec run" in line)
    assert "--force" in run_line and "serve --port 3005" in run_line
    assert "--port" not in run_line.split("&&")[0]
    assert "serve --port 3005" in dry_run("serve", "PORT=3005")


def test_tune_uses_the_clis_default_number_of_trials_unless_asked() -> None:
    assert "--trials" not in dry_run("tune", "MODEL=als")
    assert "--trials 7" in dry_run("tune", "MODEL=als", "TRIALS=7")
    help_text = CliRunner().invoke(cli, ["tune", "--help"]).output
    assert "--trials" in help_text and "default: 30" in help_text.replace("\n", " ").replace("  ", " ")


def test_clean_data_removes_every_generated_folder_and_export() -> None:
    out = dry_run("clean-data")
    for target in ("data ", "data-*/", "mlruns", "reports", "eventlog", "logged-events.parquet"):
        assert target in out, target


def test_install_fails_when_pip_fails() -> None:
    """The install line filters pip's listing but keeps its exit status (pipefail)."""
    out = subprocess.run(["make", "-n", "-W", "pyproject.toml", ".venv/.installed"], cwd=REPO, capture_output=True, text=True,
                         timeout=60).stdout
    line = next(line for line in out.splitlines() if "-r requirements.lock" in line)
    assert line.startswith("set -o pipefail;")


def test_install_numbers_each_package_against_the_lock_and_says_when_pip_unpacks() -> None:
    """#19 item 2: the install shows how far it is (k of the lock's n packages) on pip's real lines."""
    pip = "\n".join([
        "Looking in indexes: https://pypi.org/simple",
        "Collecting a2wsgi==1.10.10 (from -r requirements.lock (line 2))",
        "  Downloading a2wsgi-1.10.10-py3-none-any.whl (17 kB)",
        "Processing /opt/pypi/files/attrs-26.1.0-py3-none-any.whl (from -r requirements.lock (line 14))",
        "Requirement already satisfied: pip in ./.venv/lib/python3.11/site-packages (24.0)",
        "Installing collected packages: a2wsgi, attrs",
        "Successfully installed a2wsgi-1.10.10 attrs-26.1.0",
    ]) + "\n"
    out = subprocess.run(["awk", "-v", "n=159", "-f", "scripts/pip-progress.awk"], cwd=REPO, input=pip, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert out.splitlines() == [
        "Looking in indexes: https://pypi.org/simple",
        "[1/159] Collecting a2wsgi==1.10.10",
        "[2/159] Processing /opt/pypi/files/attrs-26.1.0-py3-none-any.whl",
        "unpacking 2 packages into .venv (pip prints nothing more until it is done) ...",
        "Successfully installed a2wsgi-1.10.10 attrs-26.1.0",
    ]
    recipe = subprocess.run(["make", "-n", "-W", "pyproject.toml", ".venv/.installed"], cwd=REPO, capture_output=True, text=True,
                            timeout=60).stdout
    assert "-f scripts/pip-progress.awk" in recipe


def test_the_readme_lists_every_command() -> None:
    """#19 item 7: the README's command list names every command of the CLI, and no other."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("storerec [--config FILE] [-q] COMMAND [OPTIONS]"):]
    block = block[: block.index("```")]
    listed = {part.strip() for line in block.splitlines()[1:] for part in line[:19].split("/") if part.strip()}
    assert listed == set(cli.commands), f"missing: {sorted(set(cli.commands) - listed)}, not commands: {sorted(listed - set(cli.commands))}"


def test_the_readme_lists_every_make_target() -> None:
    """Every target `make help` lists appears in the README."""
    text = (REPO / "README.md").read_text()
    targets = [line.split()[1] for line in dry_run_help().splitlines() if line.startswith("  make ")]
    assert len(targets) > 30
    missing = [t for t in targets if f"make {t}" not in text]
    assert not missing, f"make targets the README does not mention: {missing}"


def dry_run_help() -> str:
    out = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout
