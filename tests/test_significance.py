"""Crowning a champion only when the validation data separates it (#13 item 7)."""

from __future__ import annotations

import numpy as np
import pytest

from storerec.evaluation.significance import paired_difference, pick_champion

PRIOR = ["ease", "als", "lightfm", "popularity"]


def test_paired_difference_matches_the_textbook_interval() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(500), rng.random(500)
    d = a - b
    got = paired_difference(a, b, "b")
    se = d.std(ddof=1) / np.sqrt(500)
    assert got.mean == pytest.approx(d.mean()) and got.low == pytest.approx(d.mean() - 1.959964 * se, rel=1e-6)
    assert got.n_users == 500


def test_a_clear_winner_is_crowned() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(2000) * 0.2
    d = pick_champion({"popularity": base, "ease": base + 0.05 + rng.normal(0, 0.01, 2000)}, PRIOR)
    assert d.champion == d.best == "ease" and d.tied == ("ease",)
    assert "beyond chance" in d.reason


def test_a_handful_of_users_cannot_crown_popularity() -> None:
    """The issue's case: on a thin window popularity leads by chance; with no previous champion
    the tied personalised model is crowned (by either tie-break), and the report says so."""
    rng = np.random.default_rng(2)
    pop = rng.random(12) * 0.6
    als = pop - 0.05 + rng.normal(0, 0.3, 12)
    d = pick_champion({"popularity": pop, "als": als}, PRIOR)
    assert d.best == "popularity" and set(d.tied) == {"popularity", "als"}
    assert d.champion == "als"
    assert "cannot separate popularity from als" in d.reason and "training.model_prior" in d.reason
    d = pick_champion({"popularity": pop, "als": als}, PRIOR, tie_break="mean")
    assert d.champion == "als" and "not a baseline" in d.reason


def test_a_tie_goes_to_the_best_mean_or_to_the_prior() -> None:
    """Two personalised models the data cannot separate: ``mean`` crowns the better point
    estimate, ``prior`` the model listed first, whichever leads."""
    rng = np.random.default_rng(5)
    base = rng.random(300) * 0.3
    als = base + rng.normal(0, 0.1, 300)
    ease = base + 0.003 + rng.normal(0, 0.1, 300)  # ahead by a hair, far inside the noise
    d = pick_champion({"als": als, "ease": ease}, ["als", "ease"], tie_break="mean")
    assert set(d.tied) == {"als", "ease"} and d.champion == d.best
    assert "best validation mean" in d.reason and "tie_break = mean" in d.reason
    d = pick_champion({"als": als, "ease": ease}, ["als", "ease"])  # the default
    assert d.champion == "als" and "training.model_prior" in d.reason
    d = pick_champion({"als": als, "ease": ease}, ["ease", "als"], tie_break="prior")
    assert d.champion == "ease"
    with pytest.raises(ValueError, match="tie_break"):
        pick_champion({"als": als}, [], tie_break="coin")


def test_a_baseline_alone_in_the_lead_is_crowned_when_separated() -> None:
    rng = np.random.default_rng(6)
    base = rng.random(2000) * 0.2
    d = pick_champion({"popularity": base + 0.05, "als": base + rng.normal(0, 0.01, 2000)}, PRIOR)
    assert d.champion == "popularity" and d.tied == ("popularity",)


def test_a_tied_previous_champion_stays() -> None:
    rng = np.random.default_rng(3)
    x = rng.random(50)
    d = pick_champion({"ease": x + 0.001, "als": x + rng.normal(0, 0.05, 50), "popularity": x - 0.5}, PRIOR, previous="als")
    assert d.champion == "als" and "popularity" not in d.tied
    assert "previous champion's model (als)" in d.reason


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_difference(np.zeros(3), np.zeros(4), "x")
