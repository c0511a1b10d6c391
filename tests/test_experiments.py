"""Experiments: config validation, deterministic sticky assignment, targeting; the frequency cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storerec.core.errors import UserError
from storerec.events.experiments import assign, bucket, load_experiments
from storerec.serving.freqcap import FrequencyCap

GOOD = """
[[experiment]]
name = "ab"
salt = "s1"
targeting = { segments = ["active"] }
[[experiment.variant]]
name = "control"
model = "champion"
share = 0.7
[[experiment.variant]]
name = "treatment"
model = "challenger"
share = 0.3
diversity_strength = 0.6
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "experiments.toml"
    p.write_text(text)
    return p


def test_file_loads(tmp_path: Path) -> None:
    (exp,) = load_experiments(write(tmp_path, GOOD))
    assert exp.control.name == "control" and exp.shares() == {"control": 0.7, "treatment": 0.3}
    assert exp.variants[1].diversity_strength == 0.6


@pytest.mark.parametrize(
    "change, message",
    [
        (("share = 0.3", "share = 0.4"), "add up to 1"),
        (('name = "treatment"', 'name = "control"'), "unique"),
        (("model = \"challenger\"", "model = \"challenger\"\ncolour = 1"), "colour"),
        (('salt = "s1"', ""), "salt"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(UserError, match=message) as err:
        load_experiments(path)
    assert str(path) in str(err.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"does not exist \(set by experiments\.file\)"):  # the settings key that names it
        load_experiments(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="not valid TOML"):
        load_experiments(write(tmp_path, "[[experiment]\nname="))
    assert load_experiments(None) == []


def test_assignment_is_deterministic_sticky_and_follows_shares(tmp_path: Path) -> None:
    (exp,) = load_experiments(write(tmp_path, GOOD))
    units = [f"u{i}" for i in range(20_000)]
    first = [exp.assign(u).name for u in units]
    assert first == [exp.assign(u).name for u in units]  # sticky
    share = first.count("control") / len(units)
    assert abs(share - 0.7) < 0.015, share
    other = exp.model_copy(update={"salt": "s2"})
    moved = sum(a != other.assign(u).name for a, u in zip(first, units)) / len(units)
    assert 0.3 < moved < 0.5  # a new salt reshuffles (expected 2 * 0.7 * 0.3 = 0.42)
    assert 0 <= bucket("s", "u") < 1 and bucket("s", "u") == bucket("s", "u")


def test_targeting_windows_and_anonymous_shoppers(tmp_path: Path) -> None:
    exps = load_experiments(write(tmp_path, GOOD))
    now = datetime(2026, 11, 20, tzinfo=UTC)
    a = assign(exps, set(), user_id="u1", session_id=None, profile={"segment": "active"}, now=now)
    assert a.experiment == "ab" and a.variant in ("control", "treatment")
    assert assign(exps, set(), user_id="u1", session_id=None, profile={"segment": "churned"}, now=now).experiment is None
    assert assign(exps, {"ab"}, user_id="u1", session_id=None, profile={"segment": "active"}, now=now).experiment is None
    # anonymous shoppers (no profile) are outside a targeted experiment ...
    assert assign(exps, set(), user_id=None, session_id="s9", profile=None, now=now).experiment is None
    # ... and bucketed by session id in an untargeted one
    open_exp = exps[0].model_copy(update={"targeting": exps[0].targeting.model_copy(update={"segments": []})})
    got = {assign([open_exp], set(), user_id=None, session_id=f"s{i}", profile=None, now=now).variant for i in range(50)}
    assert got == {"control", "treatment"}
    timed = open_exp.model_copy(update={"start": now + timedelta(days=1)})
    assert assign([timed], set(), user_id="u1", session_id=None, profile=None, now=now).experiment is None


def test_frequency_cap_holds_back_and_forgets() -> None:
    cap = FrequencyCap(max_impressions=3, window_hours=24, hold_hours=48)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    for h in range(3):
        cap.record_impression("u", ["a", "b"], t0 + timedelta(hours=h))
    assert sorted(cap.held_back("u", t0 + timedelta(hours=3))) == ["a", "b"]
    cap.record_interaction("u", "b", t0 + timedelta(hours=3))  # a click resets b
    assert cap.held_back("u", t0 + timedelta(hours=4)) == ["a"]
    assert cap.held_back("u", t0 + timedelta(hours=2 + 49)) == []  # hold over
    assert cap.held_back("other", t0) == []
    spread = FrequencyCap(max_impressions=2, window_hours=1, hold_hours=10)
    spread.record_impression("u", ["x"], t0)
    spread.record_impression("u", ["x"], t0 + timedelta(hours=5))  # not within one window
    assert spread.held_back("u", t0 + timedelta(hours=6)) == []
