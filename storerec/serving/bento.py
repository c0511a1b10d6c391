"""``storerec build``: a Bento of the service (docs/deploy.md).

The build context is staged in a temporary folder, never in the repository: the ``storerec``
package (without caches), ``bentofile.yaml``, ``requirements.lock`` and a baked
``configs/storerec.toml`` that the service reads at start (BentoML starts the service in the
Bento's ``src/`` folder, and settings read ``./configs/storerec.toml``). The baked config names
the registered model and the version reference (``serving.model``) of this build, and turns the
event log off (a replica logs to a shared database: set ``STOREREC__EVENTLOG__ENABLED=true`` and
``STOREREC__EVENTLOG__URL``, after ``storerec eventlog upgrade`` on it).

* ``--include-model``: the resolved version's artifacts (model, item features, serving snapshot)
  go into the Bento as ``bento-model/`` with ``bento-version.json``, and the baked config sets
  ``serving.model_dir = "bento-model"``: the Bento serves that version without MLflow or data.
  A version registered before serving snapshots gets one made from the data folder now.
* without it, the Bento loads ``serving.model`` from the registry at start:
  ``MLFLOW_TRACKING_URI`` (or ``STOREREC__MLFLOW__TRACKING_URI``) must reach the registry and its
  artifacts from where the Bento runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from storerec.core.errors import UserError
from storerec.core.settings import Settings
from storerec.registry import tracking
from storerec.registry.snapshot import has_snapshot, write_snapshot
from storerec.serving.state import BAKED_INFO

BENTOFILE = "bentofile.yaml"
LOCKFILE = "requirements.lock"
MODEL_DIR = "bento-model"
TAG_PREFIX = "__tag__:"


@dataclass(frozen=True)
class Built:
    tag: str
    registered_model: str
    ref: str
    version: str | None  # the baked version's number (None: loaded from the registry at start)


def project_root() -> Path:
    """The folder holding ``bentofile.yaml`` beside the ``storerec`` package (the repository)."""
    import storerec

    root = Path(storerec.__file__).resolve().parent.parent
    if not (root / BENTOFILE).is_file() or not (root / LOCKFILE).is_file():
        raise UserError(f"no {BENTOFILE} and {LOCKFILE} beside the storerec package in {root}: run `storerec build` from a "
                        "checkout of the repository (pip install -e .)")
    return root


def baked_config(settings: Settings, name: str, ref: str, include_model: bool) -> str:
    lines = [
        "# Baked into the Bento by `storerec build`; STOREREC__* variables override any key (docs/deploy.md).",
        "[mlflow]",
        f"registered_model = {json.dumps(name)}",
        f"experiment = {json.dumps(settings.mlflow.experiment)}",
        "[serving]",
        f"model = {json.dumps(ref)}",
        f"context_weight = {settings.serving.context_weight}",
        f"diversity_strength = {settings.serving.diversity_strength}",
    ]
    if include_model:
        lines.append(f'model_dir = "{MODEL_DIR}"')
    lines += ["[eventlog]", "enabled = false  # STOREREC__EVENTLOG__ENABLED=true and STOREREC__EVENTLOG__URL on a replica"]
    return "\n".join(lines) + "\n"


def _stage_model(settings: Settings, ref: str, dst: Path) -> str:
    """Download the version ``ref`` resolves to into ``dst`` (its artifacts, with a serving
    snapshot) and write :data:`BAKED_INFO`; returns its number."""
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, settings.registered_model_name(), ref)
    tmp = Path(tempfile.mkdtemp(prefix="storerec-build-dl-"))
    try:
        folder = tracking.download_version(client, version, tmp)
        shutil.copytree(folder, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = tracking.version_data(client, version)
    if not has_snapshot(dst):  # registered before snapshots: made from the data folder now
        _snapshot_from_folder(Path(settings.data.dir), dst, data.get(tracking.TAG_FINGERPRINT), version.version)
    info = {"registered_model": version.name, "version": str(version.version), "ref": ref, "data": data,
            "run_id": version.run_id, "source": version.source}
    (dst / BAKED_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return str(version.version)


def _snapshot_from_folder(data_dir: Path, dst: Path, fingerprint: str | None, number: str) -> None:
    import polars as pl

    from storerec.features import io
    from storerec.features.profiles import default_as_of

    if not io.has_table(data_dir, "events"):
        raise UserError(f"version {number} has no serving snapshot (registered before snapshots) and there is no events table in "
                        f"{data_dir.resolve()} to make one from: retrain it (`storerec train`) or build without --include-model")
    events = pl.read_parquet(io.table_path(data_dir, "events"))
    profiles_path = data_dir / "profiles" / "users.parquet"
    profiles = pl.read_parquet(profiles_path) if profiles_path.exists() else None
    write_snapshot(dst, profiles=profiles, events=events, as_of=default_as_of(events), fingerprint=fingerprint,
                   source=f"storerec build (data folder {data_dir.resolve()})")


def build(settings: Settings, *, ref: str | None = None, include_model: bool = False, labels: dict[str, str] | None = None) -> Built:
    """Stage the build context, run ``bentoml build`` on it, return the Bento's tag."""
    root = project_root()
    ref = ref or settings.serving.model
    name = settings.registered_model_name()
    stage = Path(tempfile.mkdtemp(prefix="storerec-build-"))
    try:
        shutil.copytree(root / "storerec", stage / "storerec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
        for f in (BENTOFILE, LOCKFILE):
            shutil.copy2(root / f, stage / f)
        number = _stage_model(settings, ref, stage / MODEL_DIR) if include_model else None
        (stage / "configs").mkdir()
        (stage / "configs" / "storerec.toml").write_text(baked_config(settings, name, ref, include_model))
        all_labels = {"storerec_registered_model": name, "storerec_model": ref, "storerec_baked_version": number or "none",
                      **(labels or {})}
        exe = str(Path(sys.executable).with_name("bentoml"))
        cmd = [exe, "build", "-f", BENTOFILE, "-o", "tag", *[a for k, v in all_labels.items() for a in ("--label", f"{k}={v}")], "."]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOREREC")}  # the build imports the service: no settings needed
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        out = subprocess.run(cmd, cwd=stage, env=env, capture_output=True, text=True, timeout=600)
        tags = [line.strip()[len(TAG_PREFIX):] for line in out.stdout.splitlines() if line.strip().startswith(TAG_PREFIX)]
        if out.returncode != 0 or not tags:
            tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
            raise UserError(f"bentoml build failed (exit {out.returncode}):\n{tail}")
        return Built(tags[-1], name, ref, number)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
