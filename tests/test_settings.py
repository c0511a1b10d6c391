"""Settings: defaults, TOML file, STOREREC__* variables, and errors that name the field."""

from pathlib import Path

import pytest

from storerec.core.settings import Settings, SettingsError, load_settings


def test_defaults_follow_the_domain_brief(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./storerec.toml here
    s = load_settings(environ={})
    assert s.profiles.repurchase_cycle_days == 60
    assert s.profiles.tiers["silver"] == 300 and s.profiles.tiers["gold"] == 3000
    assert s.profiles.points_expiry_days == 365
    assert s.data.dir == Path("data")
    assert s.events.types[:4] == ["view", "favorite", "cart", "purchase"]


def test_file_then_environment_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\ndir = "from-file"\n[profiles]\nrepurchase_cycle_days = 45\n')
    s = load_settings(cfg, environ={"STOREREC__DATA__DIR": "from-env"})
    assert s.data.dir == Path("from-env")
    assert s.profiles.repurchase_cycle_days == 45
    s = load_settings(cfg, environ={"STOREREC__PROFILES__TIERS": '{"basic": 0, "vip": 100}'})
    assert s.profiles.tiers == {"basic": 0, "vip": 100}


def test_config_env_variable_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("[simulate]\nseed = 7\n")
    assert load_settings(environ={"STOREREC_CONFIG": str(cfg)}).simulate.seed == 7


def test_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[profiles]\nrepurchase_cylce_days = 45\n")
    with pytest.raises(SettingsError, match=r"profiles\.repurchase_cylce_days") as exc:
        load_settings(cfg, environ={})
    assert str(cfg) in str(exc.value)


def test_bad_value_and_inconsistent_thresholds(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"simulate\.n_users"):
        load_settings(environ={"STOREREC__SIMULATE__N_USERS": "-5"})
    with pytest.raises(SettingsError, match="churn_days must be greater"):
        load_settings(environ={"STOREREC__PROFILES__CHURN_DAYS": "30"})
    with pytest.raises(SettingsError, match="tiers must start at 0"):
        load_settings(environ={"STOREREC__PROFILES__TIERS": '{"a": 0, "b": 500, "c": 400}'})
    with pytest.raises(SettingsError, match="weights names event types"):
        load_settings(environ={"STOREREC__EVENTS__WEIGHTS": '{"share": 2}'})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_import_does_no_work(tmp_path: Path) -> None:
    # Importing the packages must not create folders, read settings or configure logging.
    import subprocess
    import sys

    code = "import storerec.cli, storerec.core.settings, storerec.core.schema, storerec.features.io, storerec.features.profiles, storerec.features.simulate"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_shipped_config_file_states_the_defaults() -> None:
    # configs/storerec.toml documents the defaults; it must not drift from the code.
    shipped = load_settings(Path(__file__).resolve().parents[1] / "configs" / "storerec.toml", environ={})
    defaults = Settings()
    assert shipped.profiles.price_band_cuts == pytest.approx(defaults.profiles.price_band_cuts, abs=1e-5)
    shipped.profiles.price_band_cuts = defaults.profiles.price_band_cuts
    assert shipped == defaults


def test_text_settings_stay_text_from_the_environment() -> None:
    # `storerec serve --model 6` passes STOREREC__SERVING__MODEL=6 to the workers: a version
    # number, not the integer 6 (which failed validation with a traceback).
    s = load_settings(environ={"STOREREC__SERVING__MODEL": "6", "STOREREC__SERVING__ADMIN_TOKEN": "12345",
                               "STOREREC__MLFLOW__REGISTERED_MODEL": "2024", "STOREREC__DATA__DIR": "7",
                               "STOREREC__SERVING__LOG_LEVEL": "DEBUG"})
    assert s.serving.model == "6" and s.serving.admin_token == "12345" and s.mlflow.registered_model == "2024"
    assert s.data.dir == Path("7") and s.serving.log_level == "DEBUG"
    # other settings still take JSON: numbers, booleans, lists, tables, null
    s = load_settings(environ={"STOREREC__SERVING__PORT": "3001", "STOREREC__SERVING__ACCESS_LOG": "false",
                               "STOREREC__SERVING__CORS_ORIGINS": '["https://shop.example.com"]',
                               "STOREREC__EVENTLOG__RETENTION_DAYS": "null"})
    assert s.serving.port == 3001 and s.serving.access_log is False
    assert s.serving.cors_origins == ["https://shop.example.com"] and s.eventlog.retention_days is None


def test_invalid_variables_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"serving\.port: .*from STOREREC__SERVING__PORT"):
        load_settings(environ={"STOREREC__SERVING__PORT": "abc"})
    with pytest.raises(SettingsError, match=r"serving\.modle: .*from STOREREC__SERVING__MODLE"):
        load_settings(environ={"STOREREC__SERVING__MODLE": "6"})
    with pytest.raises(SettingsError, match=r"churn_days must be greater.*from STOREREC__PROFILES__CHURN_DAYS"):
        load_settings(environ={"STOREREC__PROFILES__CHURN_DAYS": "30"})
    with pytest.raises(SettingsError, match="STOREREC__TRAINING__MODELS__ALS sets a key inside training.models"):
        load_settings(environ={"STOREREC__TRAINING__MODELS": "3", "STOREREC__TRAINING__MODELS__ALS": "{}"})


def test_registered_model_name_follows_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storerec.core.settings import derived_model_name

    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).registered_model_name() == "storerec-data"
    assert load_settings(environ={"STOREREC__DATA__DIR": "../data-ml100k"}).registered_model_name() == "storerec-data-ml100k"
    assert derived_model_name(tmp_path / "My Shop @ 2026/") == "storerec-My-Shop-2026"  # no '@' or '/' (version refs use them)
    assert derived_model_name(".") == f"storerec-{tmp_path.name}"
    # an explicit name wins, for every folder
    s = load_settings(environ={"STOREREC__MLFLOW__REGISTERED_MODEL": "storerec", "STOREREC__DATA__DIR": "elsewhere"})
    assert s.registered_model_name() == "storerec"


def test_event_strength_settings_merge_over_defaults_and_name_the_key(tmp_path: Path) -> None:
    s = load_settings(None, environ={})
    assert s.events.strength["rating"].transform == "linear" and s.events.strength["rating"].source == "value"
    assert "purchase" not in s.events.strength  # weight only: the built-in store's purchases count as before
    cfg = tmp_path / "c.toml"
    cfg.write_text('[events.strength]\npurchase = { source = "quantity", transform = "log1p" }\n')
    s = load_settings(cfg, environ={})
    assert s.events.strength["purchase"].transform == "log1p" and s.events.strength["rating"].transform == "linear"
    cfg.write_text('[events.strength]\nrating = { source = "value", transform = "rating" }\n')
    with pytest.raises(SettingsError, match=r"events\.strength\.rating: transform 'rating' needs a threshold"):
        load_settings(cfg, environ={})
    cfg.write_text('[events.strength]\npurchase = { transform = "sqrt" }\n')
    with pytest.raises(SettingsError, match=r"events\.strength\.purchase\.transform"):
        load_settings(cfg, environ={})
    cfg.write_text('[events.strength]\nshare = { transform = "linear" }\n')
    with pytest.raises(SettingsError, match=r"events\.strength names event types not in events\.types: \['share'\]"):
        load_settings(cfg, environ={})
    # a store without ratings keeps no rating default (and no error)
    cfg.write_text('[events]\ntypes = ["view", "purchase"]\nweights = { view = 1.0, purchase = 5.0 }\n')
    assert load_settings(cfg, environ={}).events.strength == {}
