"""Progress with an estimate of the time left (storerec.core.progress), and the models that
report their fit on it: reporting must not change a single bit of what they learn."""

from __future__ import annotations

import io
import re

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from storerec.core.progress import TASK_DELAY, Progress, Task
from storerec.models.dataset import Dataset, IdMap, item_features, user_features


class Clock:
    """A clock the test moves by hand (``clock.now += seconds``)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_task(stream: io.StringIO, total: int, seconds_per_unit: float, quiet: bool = False) -> str:
    clock = Clock()
    progress = Progress("train", quiet=quiet, stream=stream)
    with Task(progress, "lightfm", total, "epoch", clock=clock) as task:
        for _ in range(total):
            clock.now += seconds_per_unit
            task.advance()
    return stream.getvalue()


def test_plain_lines_one_per_tenth_with_an_estimate() -> None:
    out = run_task(io.StringIO(), total=30, seconds_per_unit=1.0)
    lines = out.splitlines()
    assert "\r" not in out
    # silent for the first TASK_DELAY seconds, then a line per tenth (every 3 epochs), then the total
    first = int(np.ceil(TASK_DELAY))
    assert lines[0] == f"[train] lightfm: epoch {first}/30, {first} s, ~{30 - first} s left"
    assert "[train] lightfm: epoch 12/30, 12 s, ~18 s left" in lines
    assert lines[-1] == "[train] lightfm: epoch 30/30 in 30 s"
    counts = [int(m.group(1)) for m in map(re.compile(r"epoch (\d+)/30").search, lines) if m]
    assert counts == sorted(counts) and len(counts) == len(set(counts))
    assert 9 <= len(lines) <= 11, lines  # about one line per 10 %, not one per epoch


def test_plain_lines_at_least_every_30_seconds_when_units_are_slow() -> None:
    out = run_task(io.StringIO(), total=200, seconds_per_unit=10.0)  # a tenth takes 200 s
    lines = out.splitlines()
    assert len(lines) > 20  # a line per ~30 s, not per 200 s
    assert re.fullmatch(r"\[train\] lightfm: epoch 4/200, 40 s, ~32 min 40 s left", lines[1]), lines[:3]


def test_terminal_bar_redrawn_in_place_and_ended_with_a_newline() -> None:
    out = run_task(Terminal(), total=30, seconds_per_unit=1.0)
    assert out.count("\n") == 1 and out.endswith("\n")
    frames = [f for f in out.split("\r") if f]
    assert len(frames) > 5
    assert "lightfm [############............] epoch 15/30, 15 s, ~15 s left" in out
    assert frames[-1].startswith("[train] lightfm [########################] epoch 30/30 in 30 s")


def test_quiet_and_quick_tasks_print_nothing() -> None:
    assert run_task(io.StringIO(), total=30, seconds_per_unit=1.0, quiet=True) == ""
    assert run_task(Terminal(), total=30, seconds_per_unit=1.0, quiet=True) == ""
    quick = TASK_DELAY / 40
    assert run_task(io.StringIO(), total=30, seconds_per_unit=quick) == ""
    assert run_task(Terminal(), total=30, seconds_per_unit=quick) == ""


def test_a_failed_task_leaves_the_terminal_on_a_new_line() -> None:
    stream = Terminal()
    clock = Clock()
    with pytest.raises(RuntimeError), Task(Progress("train", stream=stream), "lightfm", 10, "epoch", clock=clock) as task:
        clock.now += 2 * TASK_DELAY
        task.advance()
        raise RuntimeError("boom")
    assert stream.getvalue().endswith("\x1b[K\n") and "10/10" not in stream.getvalue()


# ---- models ------------------------------------------------------------------------------------


def tiny_dataset(n_users: int = 40, n_items: int = 30, seed: int = 3) -> Dataset:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.2).astype(np.float32) * rng.integers(1, 4, (n_users, n_items))
    users = IdMap.from_values([f"u{u}" for u in range(n_users)])
    items = IdMap.from_values([f"i{i}" for i in range(n_items)])
    table = pl.DataFrame({
        "item_id": items.external.tolist(),
        "category": [f"Top > C{i % 4}" for i in range(n_items)],
        "brand": [f"b{i % 3}" for i in range(n_items)],
        "tags": [[] for _ in range(n_items)],
    })
    profiles = pl.DataFrame({"user_id": users.external.tolist(), "tier": [["bronze", "gold"][u % 2] for u in range(n_users)]})
    return Dataset(users=users, items=items, interactions=sp.csr_matrix(dense),
                   user_features=user_features(users, profiles), item_features=item_features(items, table), item_table=table)


class Recorder:
    """A fit reporter that keeps every task it opened."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def __call__(self, total: int, unit: str) -> Task:
        self.tasks.append(Task(None, "model", total, unit))
        return self.tasks[-1]


@pytest.mark.parametrize("use_weights", [False, True])
def test_lightfm_reports_each_epoch_and_learns_the_same_factors(use_weights: bool) -> None:
    from lightfm import LightFM

    from storerec.models.lightfm import LightFMModel

    ds = tiny_dataset()
    config = {"no_components": 8, "epochs": 7, "num_threads": 1, "use_weights": use_weights}  # one thread: LightFM is deterministic
    plain = LightFMModel(**config).fit(ds)
    reported = LightFMModel(**config)
    recorder = Recorder()
    reported.fit_progress = recorder
    reported.fit(ds)
    assert [(t.total, t.unit, t.done) for t in recorder.tasks] == [(7, "epoch", 7)]
    for key in ("user_emb", "user_bias", "item_emb", "item_bias"):
        np.testing.assert_array_equal(getattr(plain, key), getattr(reported, key), err_msg=key)
    # ... and epoch by epoch is what one fit(epochs=7) call learns (the code before progress reporting)
    inter = ds.interactions.tocoo()
    binary = sp.coo_matrix((np.ones_like(inter.data), (inter.row, inter.col)), shape=inter.shape, dtype=np.float32)
    assert plain.user_features is not None and plain.item_features is not None
    once = LightFM(no_components=8, loss="warp", random_state=42).fit(
        binary, user_features=plain.user_features.matrix, item_features=plain.item_features.matrix,
        sample_weight=inter.astype(np.float32) if use_weights else None, epochs=7, num_threads=1)
    np.testing.assert_array_equal(once.get_item_representations(plain.item_features.matrix)[1].astype(np.float32), plain.item_emb)
    np.testing.assert_array_equal(once.get_user_representations(plain.user_features.matrix)[1].astype(np.float32), plain.user_emb)


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_implicit_models_report_each_iteration_and_learn_the_same_factors(name: str) -> None:
    from storerec.models.registry import get_model_class

    ds = tiny_dataset()
    config = {"factors": 8, "iterations": 6, "num_threads": 1}
    klass = get_model_class(name)
    plain = klass(**config).fit(ds)
    reported = klass(**config)
    recorder = Recorder()
    reported.fit_progress = recorder  # type: ignore[attr-defined]
    reported.fit(ds)
    assert [(t.total, t.unit, t.done) for t in recorder.tasks] == [(6, "iteration", 6)]
    for key in ("user_factors", "item_factors"):
        np.testing.assert_array_equal(getattr(plain, key), getattr(reported, key), err_msg=key)


def test_fit_model_reports_under_the_model_name_and_leaves_no_reporter_behind() -> None:
    from storerec.models.lightfm import LightFMModel
    from storerec.models.popularity import PopularityModel
    from storerec.training.pipeline import fit_model

    stream = io.StringIO()
    model = LightFMModel(no_components=4, epochs=2, num_threads=1)
    seen: list[str] = []
    progress = Progress("train", stream=stream)
    original = progress.fit_reporter

    def spy(name: str):  # type: ignore[no-untyped-def]
        seen.append(name)
        return original(name)

    progress.fit_reporter = spy  # type: ignore[method-assign]
    fit_model(model, tiny_dataset(), progress)
    assert seen == ["lightfm"] and model.is_fitted and model.fit_progress is None
    assert fit_model(PopularityModel(), tiny_dataset(), progress).is_fitted  # a model that does not report: fitted as before
    assert seen == ["lightfm"]
    assert stream.getvalue() == ""  # quick fits stay silent


def test_the_search_says_the_most_time_it_can_still_take() -> None:
    """#19 item 2: a line per setting of `storerec run`'s automatic search, the time left capped by its budget."""
    from storerec.training.tune import search_line

    assert search_line("als", 2, 30, 0.05123, 10, 10.0, 60.0) == (
        "als: setting 2 (at most 30) scored ndcg@10 0.0512; 10 s, at most ~50 s left")  # 140 s of trials, 50 s of budget
    assert search_line("als", 2, 30, 0.05, 10, 10.0, None).endswith("at most ~140 s left")
    assert search_line("als", 30, 30, 0.05, 10, 70.0, 60.0).endswith("at most ~0 s left")
