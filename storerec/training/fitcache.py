"""Fitted models of an evaluation split, kept on disk so that ``storerec evaluate`` run again on
the same data with the same parameters reuses them instead of fitting again (LightFM takes
minutes on the built-in store).

Where: ``<data folder>/cache/fits/<model>-<key>/`` (``make clean-data`` removes it with the data;
deleting the folder at any time is safe). Each entry is the model as :meth:`ModelBase.save`
writes it (numpy/scipy files, no pickle) and ``fit.json`` (when it was fitted, how long it took,
the split and the parameters).

The key hashes everything the fit depends on:

* the **dataset the model is fitted on**: user and item ids, the interaction matrix, the user and
  item feature matrices and names, the item table and the as-of time. So the tables' contents
  (a rows' change, users erased by ``storerec forget-user``), the split, the interaction
  settings and the profile settings all change the key, whatever path they take;
* the tables' fingerprint and the split's parameters (also shown in ``fit.json``);
* the model's name and full config (seeds included);
* the storerec version, a digest of the model's source files, and the versions of the
  libraries that fit (numpy, scipy, lightfm, implicit).

Writes are atomic (a temporary folder renamed into place, ``fit.json`` written last); an entry
that cannot be read is reported, removed and fitted again. Entries made on other data (another
tables fingerprint) are removed when the cache is opened, and each model keeps its
:data:`KEEP_PER_MODEL` most recently used entries.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from storerec import __version__
from storerec.core.progress import Progress
from storerec.models.base import ModelBase
from storerec.models.dataset import Dataset, Features

CACHE_DIR = Path("cache") / "fits"  # under the data folder
KEEP_PER_MODEL = 3
LIBRARIES = ("numpy", "scipy", "lightfm", "implicit", "polars")
INFO = "fit.json"


def cache_dir(data_dir: Path) -> Path:
    """The fit cache of a data folder."""
    return Path(data_dir) / CACHE_DIR


def _update_array(h: Any, label: str, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{label}:{a.dtype.str}:{a.shape}\n".encode())
    h.update(a.tobytes())


def _update_ids(h: Any, label: str, ids: np.ndarray) -> None:
    h.update(f"{label}:{len(ids)}\n".encode())
    h.update("\x00".join(map(str, ids)).encode())


def _update_sparse(h: Any, label: str, m: sp.spmatrix) -> None:
    csr = sp.csr_matrix(m)
    csr.sort_indices()
    h.update(f"{label}:{csr.shape}\n".encode())
    for part, a in (("indptr", csr.indptr), ("indices", csr.indices), ("data", csr.data)):
        _update_array(h, f"{label}.{part}", a)


def _update_features(h: Any, label: str, feats: Features | None) -> None:
    if feats is None:
        h.update(f"{label}:none\n".encode())
        return
    _update_ids(h, f"{label}.names", np.asarray(feats.names, dtype=object))
    _update_sparse(h, f"{label}.matrix", feats.matrix)


def dataset_digest(dataset: Dataset) -> str:
    """A digest of everything in ``dataset`` a model can learn from (ids, interactions, features,
    item table, as-of time)."""
    h = hashlib.sha256()
    _update_ids(h, "users", dataset.users.external)
    _update_ids(h, "items", dataset.items.external)
    _update_sparse(h, "interactions", dataset.interactions)
    _update_features(h, "user_features", dataset.user_features)
    _update_features(h, "item_features", dataset.item_features)
    if dataset.item_table is not None:
        buf = io.BytesIO()
        dataset.item_table.write_ipc(buf, compression="uncompressed")
        h.update(b"item_table\n")
        h.update(buf.getvalue())
    h.update(f"as_of:{dataset.as_of.isoformat() if dataset.as_of else None}".encode())
    return h.hexdigest()


def code_digest(klass: type[ModelBase]) -> str:
    """A digest of the source files of ``klass`` and its storerec base classes: a changed model
    (even with the same storerec version) is fitted again."""
    h = hashlib.sha256()
    for cls in klass.__mro__:
        if not cls.__module__.startswith("storerec."):
            continue
        try:
            source = inspect.getsourcefile(cls)
        except TypeError:
            continue
        if source:
            h.update(Path(source).read_bytes())
    return h.hexdigest()[:16]


def _library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


@dataclass
class Entry:
    """What one cache entry records, besides the model."""

    key: str
    model: str
    fitted_at: str  # ISO time (UTC)
    fit_seconds: float
    data_fingerprint: str
    split: dict[str, Any]
    params: dict[str, Any]
    storerec_version: str


class FitCache:
    """Fitted models of one data folder's evaluation split, keyed as the module doc says.

    ``enabled=False`` (``storerec evaluate --no-cache``) fits every model again and stores the
    new fits, so a later run can reuse them."""

    def __init__(self, folder: Path, data_fingerprint: str, *, enabled: bool = True, progress: Progress | None = None) -> None:
        self.folder = Path(folder)
        self.data_fingerprint = data_fingerprint
        self.enabled = enabled
        self.progress = progress or Progress("evaluate", quiet=True)
        self.fits = 0  # models fitted through this cache (reused ones not counted)
        self.reused = 0
        self._prune_other_data()

    def key(self, model: ModelBase, dataset: Dataset, split: dict[str, Any]) -> str:
        material = {
            "dataset": dataset_digest(dataset),
            "data_fingerprint": self.data_fingerprint,
            "split": split,
            "model": model.name,
            "config": model.config.model_dump(mode="json"),
            "code": code_digest(type(model)),
            "storerec": __version__,
            "libraries": _library_versions(),
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()

    def entry_dir(self, name: str, key: str) -> Path:
        return self.folder / f"{name}-{key[:20]}"

    def fit(self, model: ModelBase, dataset: Dataset, split: dict[str, Any], fit: Callable[[ModelBase, Dataset], ModelBase]) -> ModelBase:
        """``model`` fitted on ``dataset``: loaded from the cache when an entry has the same key,
        else ``fit(model, dataset)`` and stored."""
        key = self.key(model, dataset, split)
        where = self.entry_dir(model.name, key)
        if self.enabled and where.exists():
            loaded = self._load(where, key, model, dataset)
            if loaded is not None:
                self.reused += 1
                return loaded
        t0 = time.perf_counter()
        fitted = fit(model, dataset)
        seconds = time.perf_counter() - t0
        self.fits += 1
        entry = Entry(key, model.name, datetime.now(UTC).isoformat(timespec="seconds"), round(seconds, 3), self.data_fingerprint,
                      split, model.get_params(), __version__)
        try:
            self._store(where, fitted, entry)
        except OSError as exc:  # a full or read-only disk costs the reuse, never the evaluation
            self._warn(f"{model.name}: could not keep the fit in {self.folder} ({exc}); the next evaluate fits it again")
        return fitted

    def _load(self, where: Path, key: str, model: ModelBase, dataset: Dataset) -> ModelBase | None:
        try:
            info = Entry(**json.loads((where / INFO).read_text()))
            if info.key != key:
                raise ValueError("its key does not match its folder")
            loaded = ModelBase.load(where / "model")
            if loaded.name != model.name or loaded.config != model.config:
                raise ValueError(f"it holds a {loaded.name} model with other parameters")
            assert loaded.users is not None and loaded.items is not None
            if not (np.array_equal(loaded.users.external, dataset.users.external)
                    and np.array_equal(loaded.items.external, dataset.items.external)):
                raise ValueError("its users or items differ from the data's")
        except Exception as exc:  # any unreadable entry is fitted again, never fatal
            self._warn(f"{model.name}: the cached fit in {where} is unreadable ({type(exc).__name__}: {exc}); fitting again")
            shutil.rmtree(where, ignore_errors=True)
            return None
        os.utime(where / INFO)  # last use, for KEEP_PER_MODEL
        when = datetime.fromisoformat(info.fitted_at).astimezone(UTC)
        self.progress.info(f"{model.name}: reusing the fit of {when:%Y-%m-%d %H:%M} UTC (same data and parameters; "
                           f"it took {info.fit_seconds:.0f} s; --no-cache fits again)")
        return loaded

    def _store(self, where: Path, model: ModelBase, entry: Entry) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.", suffix=".tmp", dir=self.folder))
        try:
            model.save(tmp / "model")
            (tmp / INFO).write_text(json.dumps(entry.__dict__, indent=2, default=str))  # last: marks a complete entry
            if where.exists():
                shutil.rmtree(where)  # --no-cache, or an unreadable entry: the new fit replaces it
            os.replace(tmp, where)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._keep_recent(entry.model)

    def _entries(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def _prune_other_data(self) -> None:
        """Remove entries fitted on other data (another tables fingerprint), and leftover
        temporary folders of interrupted writes: the data they came from is gone or changed
        (e.g. users erased), so they are never reused and should not linger."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if p.is_dir() and p.name.startswith(".") and time.time() - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
        for p in self._entries():
            try:
                fingerprint = json.loads((p / INFO).read_text())["data_fingerprint"]
            except (OSError, ValueError, TypeError, KeyError) as exc:
                self._warn(f"{p.name.rsplit('-', 1)[0]}: the cached fit in {p} is unreadable ({type(exc).__name__}: {exc}); "
                           "removed, it is fitted again when needed")
                shutil.rmtree(p, ignore_errors=True)
                continue
            if fingerprint != self.data_fingerprint:
                shutil.rmtree(p, ignore_errors=True)

    def _keep_recent(self, name: str) -> None:
        mine = [p for p in self._entries() if p.name.startswith(f"{name}-") and (p / INFO).exists()]
        mine.sort(key=lambda p: (p / INFO).stat().st_mtime, reverse=True)
        for p in mine[KEEP_PER_MODEL:]:
            shutil.rmtree(p, ignore_errors=True)

    def _warn(self, message: str) -> None:
        print(f"[{self.progress.job}] warning: {message}", file=self.progress.stream, flush=True)  # shown even with --quiet
