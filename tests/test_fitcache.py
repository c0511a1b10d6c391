"""The fit cache of `storerec evaluate` (storerec.training.fitcache): a second evaluate on the
same data and parameters reuses the fits (the same metrics, no fit), anything else fits again,
an unreadable entry is fitted again with a warning."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from storerec.core.progress import Progress
from storerec.core.settings import Settings, load_settings
from storerec.features import io as data_io
from storerec.models.base import ModelBase
from storerec.training import compare
from storerec.training.fitcache import cache_dir

pytestmark = pytest.mark.slow  # a simulated store and real fits (about 40 s in all)

MODELS = ["popularity", "als", "lightfm"]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small simulated store and its config (LightFM with few epochs: the test is about reuse)."""
    from storerec.features.simulate import simulate_store

    root = tmp_path_factory.mktemp("fitcache")
    cfg = root / "storerec.toml"
    cfg.write_text(
        """
[simulate]
n_users = 300
n_items = 200
n_events = 15000
[training.models.als]
factors = 8
iterations = 5
[training.models.lightfm]
epochs = 2
no_components = 8
num_threads = 1
"""
    )
    settings = load_settings(cfg, environ={})
    simulate_store(settings.simulate, settings.events, root / "data")
    return root / "data", cfg


@pytest.fixture
def store(tiny_store: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Settings]:
    """A private copy of the store (each test makes its own cache) and fresh settings."""
    data = tmp_path / "data"
    shutil.copytree(tiny_store[0], data)
    return data, load_settings(tiny_store[1], environ={})


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the models actually fitted, by name (every model fits through ModelBase.fit)."""
    counts: Counter[str] = Counter()
    real_fit = ModelBase.fit

    def counting_fit(self: ModelBase, dataset: Any) -> Any:
        counts[self.name] += 1
        return real_fit(self, dataset)

    monkeypatch.setattr(ModelBase, "fit", counting_fit)
    return counts


def evaluate(monkeypatch: pytest.MonkeyPatch, settings: Settings, data: Path, *, use_cache: bool = True,
             models: list[str] = MODELS) -> tuple[dict[str, dict[str, float]], str]:
    """`storerec evaluate` as the command runs it (compare_models), without MLflow: the metrics
    per model and what it printed."""
    published: dict[str, dict[str, float]] = {}

    def capture(results: dict[str, dict[str, float]], k: int, out: Path, context: dict[str, Any]) -> Path:
        published.update(results)
        return out

    monkeypatch.setattr(compare.tracking, "configure", lambda *a, **kw: None)
    monkeypatch.setattr(compare, "publish", capture)
    stream = io.StringIO()
    compare.compare_models(settings, data, models, Path("unused"), Progress("evaluate", stream=stream), use_cache=use_cache)
    return published, stream.getvalue()


def test_a_second_evaluate_reuses_every_fit_and_gives_the_same_metrics(store, fits, monkeypatch) -> None:
    data, settings = store
    first, out1 = evaluate(monkeypatch, settings, data)
    assert fits == Counter(MODELS) and "reusing" not in out1
    second, out2 = evaluate(monkeypatch, settings, data)
    assert fits == Counter(MODELS), "nothing fitted the second time"
    assert second == first
    for name in MODELS:
        assert f"[evaluate] {name}: reusing the fit of " in out2
    assert "(same data and parameters" in out2
    assert sorted(p.name.split("-")[0] for p in cache_dir(data).iterdir()) == sorted(MODELS)


def test_a_changed_parameter_interaction_setting_or_data_fits_again(store, fits, monkeypatch) -> None:
    data, settings = store
    evaluate(monkeypatch, settings, data)
    settings.training.models["als"] = {**settings.training.models["als"], "factors": 4}
    evaluate(monkeypatch, settings, data)
    assert fits == Counter({"popularity": 1, "als": 2, "lightfm": 1}), "only the changed model fits again"
    settings.training.models["lightfm"] = {**settings.training.models["lightfm"], "interactions": {"half_life_days": 30}}
    evaluate(monkeypatch, settings, data)
    assert fits == Counter({"popularity": 1, "als": 2, "lightfm": 2})
    # the data: the last 500 events left out
    events = pl.read_parquet(data_io.table_path(data, "events"))
    data_io.write_tables(data, {"events": events.sort("timestamp").head(events.height - 500)})
    _, out = evaluate(monkeypatch, settings, data)
    assert fits == Counter({"popularity": 2, "als": 3, "lightfm": 3}) and "reusing" not in out
    # fits on the old data were removed, those on the new data kept
    assert len(list(cache_dir(data).iterdir())) == len(MODELS)


@pytest.mark.parametrize("damage", ["arrays", "meta", "info", "missing"])
def test_an_unreadable_entry_is_fitted_again_with_a_warning(store, fits, monkeypatch, damage: str) -> None:
    data, settings = store
    first, _ = evaluate(monkeypatch, settings, data, models=["als"])
    (entry,) = cache_dir(data).iterdir()
    if damage == "arrays":
        (entry / "model" / "arrays.npz").write_bytes(b"not a numpy file")
    elif damage == "meta":
        (entry / "model" / "meta.json").write_text('{"format_version": 1, "model": "als", "conf')
    elif damage == "info":
        (entry / "fit.json").write_text("")
    else:
        shutil.rmtree(entry / "model")
    again, out = evaluate(monkeypatch, settings, data, models=["als"])
    assert fits["als"] == 2 and again == first
    assert "warning: als: the cached fit in" in out and "is unreadable" in out
    _, out3 = evaluate(monkeypatch, settings, data, models=["als"])
    assert fits["als"] == 2 and "als: reusing the fit of" in out3, "the new fit replaced the damaged entry"


def test_no_cache_fits_again_and_keeps_the_new_fit(store, fits, monkeypatch) -> None:
    data, settings = store
    evaluate(monkeypatch, settings, data, models=["als"])
    _, out = evaluate(monkeypatch, settings, data, models=["als"], use_cache=False)
    assert fits["als"] == 2 and "reusing" not in out
    evaluate(monkeypatch, settings, data, models=["als"])
    assert fits["als"] == 2


def test_the_evaluate_command_passes_no_cache(monkeypatch, tmp_path: Path, capsys) -> None:
    from storerec.cli import main

    calls: list[bool] = []

    def fake(settings: Any, data_dir: Path, names: list[str], out: Any, progress: Any, *, pipeline: bool, use_cache: bool) -> Path:
        calls.append(use_cache)
        return tmp_path / "report.md"

    monkeypatch.setattr(compare, "compare_models", fake)
    cfg = tmp_path / "storerec.toml"
    cfg.write_text(f'[data]\ndir = "{tmp_path / "data"}"\n')
    assert main(["--config", str(cfg), "-q", "evaluate", "--models", "als"]) == 0
    assert main(["--config", str(cfg), "-q", "evaluate", "--models", "als", "--no-cache"]) == 0
    assert calls == [True, False]
    assert "report:" in capsys.readouterr().out
