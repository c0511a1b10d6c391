"""Shared fixtures: the built-in storefront, simulated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from storerec.settings import Settings


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default built-in store (5,000 users, 2,000 items, 300,000 events) with its profiles."""
    from features.profiles import build_profiles
    from features.simulate import simulate_store

    settings = Settings()
    data_dir = tmp_path_factory.mktemp("store")
    simulate_store(settings.simulate, settings.events, data_dir)
    build_profiles(settings, data_dir)
    return data_dir
