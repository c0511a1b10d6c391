"""The command line: --help everywhere, clear errors, exit codes."""

import subprocess
import sys
from pathlib import Path

import pytest

from storerec.cli import cli, main

COMMANDS = sorted(cli.commands)


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for name in COMMANDS:
        assert name in top
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"Usage: storerec {name}" in out
        assert cli.commands[name].help, f"{name} has no description"


def test_user_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", "--data-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress lines may come first
    assert last.startswith("error: ") and "storerec simulate" in last and "Traceback" not in err


def test_bad_config_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[data]\nfolder = 'x'\n")
    assert main(["--config", str(cfg), "config"]) == 2
    assert "data.folder" in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import"]) == 2
    assert "give at least one of --events" in capsys.readouterr().err
    assert main(["features", "--as-of", "yesterday"]) == 2
    assert "ISO date" in capsys.readouterr().err


@pytest.mark.e2e
def test_installed_entry_point() -> None:
    exe = Path(sys.executable).with_name("storerec")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert "storerec, version" in proc.stdout


def _private_store(tmp_path: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n[mlflow]\ntracking_uri = "sqlite:///{tmp_path / "mlflow.db"}"\n'
                   f'artifact_root = "{tmp_path / "artifacts"}"\n')
    return cfg


@pytest.mark.slow  # creates an MLflow store (~10 s)
def test_serve_a_version_number(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # `serve --model 6` (and STOREREC__SERVING__MODEL=6) crashed with a pydantic traceback: the
    # number became an int. Now it looks version 6 up and, with none registered, says so.
    cfg = _private_store(tmp_path)
    monkeypatch.setenv("STOREREC__SERVING__MODEL", "6")  # what `serve --model 6` hands its workers
    assert main(["--config", str(cfg), "serve"]) == 2
    assert capsys.readouterr().err.startswith("error: no model version '6'")
    monkeypatch.delenv("STOREREC__SERVING__MODEL")
    assert main(["--config", str(cfg), "serve", "--model", "6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model version '6'") and "storerec-data" in err and "Traceback" not in err
    monkeypatch.setenv("STOREREC__SERVING__PORT", "http")
    assert main(["--config", str(cfg), "serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid settings") and "STOREREC__SERVING__PORT" in err and "Traceback" not in err


def test_a_broken_mlflow_store_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _private_store(tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 100)
    assert main(["--config", str(cfg), "models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow store sqlite:///") and "could not open the tracking store" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
