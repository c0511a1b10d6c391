"""Forgetting a user (storerec forget-user): every table of the data folder, quarantine files,
the event log on SQLite and PostgreSQL, the erasure record that later imports honour, the
service serving the id as unknown after a reload, versions that still hold the user listed,
and no id in clear in the logs of an end-to-end run."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from storerec.cli import main
from storerec.features.forget import forgotten_hashes, redact, user_hash


def _copy_store(store: Path, dst: Path) -> Path:
    shutil.copytree(store, dst)
    return dst


def _two_users(data: Path) -> tuple[str, str]:
    ev = pl.read_parquet(data / "events.parquet")
    counts = ev.filter(pl.col("event_type") == "purchase").group_by("user_id").len().sort(["len", "user_id"], descending=True)
    a, b = counts["user_id"][0], counts["user_id"][1]
    return a, b


def test_forget_removes_the_user_everywhere_in_the_data_folder(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_store(store, tmp_path / "data")
    gone, kept = _two_users(data)
    (data / "quarantine").mkdir()
    (data / "quarantine" / "events-20261101.csv").write_text(
        f"uid,item,event_type,timestamp,row,field,reason\n{gone},i1,view,not-a-time,2,timestamp,unparsable\n{kept},i1,view,x,3,timestamp,unparsable\n"
    )
    before = {name: pl.read_parquet(data / name) for name in ("events.parquet", "users.parquet", "profiles/users.parquet", "truth/user_tastes.parquet")}
    assert all(gone in df["user_id"].to_list() for df in before.values())
    from storerec.training.fitcache import cache_dir

    cached_fit = cache_dir(data) / "als-0123" / "model.npz"  # evaluate's cached fits hold every user's id
    cached_fit.parent.mkdir(parents=True)
    cached_fit.write_bytes(gone.encode())

    assert main(["-q", "forget-user", gone, "--data-dir", str(data), "--no-eventlog"]) == 0
    out = capsys.readouterr().out
    assert gone not in out and "forgot 1 user" in out

    for name, df in before.items():
        after = pl.read_parquet(data / name)
        assert gone not in after["user_id"].to_list(), name
        assert after.height == df.height - df.filter(pl.col("user_id") == gone).height, name
        assert kept in after["user_id"].to_list()
    q = (data / "quarantine" / "events-20261101.csv").read_text()
    assert gone not in q and kept in q
    assert forgotten_hashes(data) == {user_hash(gone)}
    assert gone not in (data / "forgotten.parquet").read_bytes().decode("latin-1")  # hashed, never in clear
    assert not cache_dir(data).exists() and "cached fits" in out

    # Again: nothing left to remove, nothing new recorded.
    assert main(["-q", "forget-user", gone, "--data-dir", str(data), "--no-eventlog"]) == 0
    assert "0 newly recorded" in capsys.readouterr().out


def test_ids_from_a_file_and_no_ids_at_all(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _copy_store(store, tmp_path / "data")
    a, b = _two_users(data)
    f = tmp_path / "ids.csv"
    f.write_text(f"user_id\n{a}\n{b}\n")
    assert main(["-q", "forget-user", "--from-file", str(f), "--data-dir", str(data), "--no-eventlog"]) == 0
    assert forgotten_hashes(data) == {user_hash(a), user_hash(b)}
    capsys.readouterr()
    assert main(["-q", "forget-user", "--data-dir", str(data)]) == 2
    assert "error:" in capsys.readouterr().err


def test_forget_cleans_the_event_log(eventlog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from storerec.events.eventlog import EventLog, read_frames, upgrade

    upgrade(eventlog_url)
    log = EventLog(eventlog_url, flush_ms=10)
    now = datetime.now(UTC)
    for user, rid in (("gone-1", "r-gone"), ("kept-1", "r-kept")):
        log.log_impression({"request_id": rid, "ts": now, "user_id": user, "session_id": None, "experiment": None, "variant": None,
                            "model": "als", "model_version": "1", "page": "home"}, ["i1", "i2"])
    log.store_feedback_sync([
        {"event_id": "e1", "ts": now, "request_id": "r-gone", "user_id": "gone-1", "session_id": None, "item_id": "i1", "event_type": "click", "revenue": 0.0},
        {"event_id": "e2", "ts": now, "request_id": "r-gone", "user_id": None, "session_id": "s", "item_id": "i2", "event_type": "purchase", "revenue": 9.0},
        {"event_id": "e3", "ts": now, "request_id": "r-kept", "user_id": "kept-1", "session_id": None, "item_id": "i1", "event_type": "click", "revenue": 0.0},
    ], 30)
    log.store_behaviour_sync([  # tracked storefront events (POST /track)
        {"event_id": "b1", "ts": now, "user_id": "gone-1", "session_id": None, "item_id": "i1", "event_type": "view"},
        {"event_id": "b2", "ts": now, "user_id": "kept-1", "session_id": None, "item_id": "i2", "event_type": "cart"},
    ], 30)
    log.close()
    from storerec.events.campaigns import campaign_members, record_campaign
    from storerec.events.eventlog import make_engine

    engine = make_engine(eventlog_url)
    record_campaign(engine, "c1", "winback", now, [("gone-1", False, 5), ("kept-1", False, 5)])  # the campaign ledger
    record_campaign(engine, "c2", "replenish", now, [("gone-1", True, 0)])  # the holdout is personal data too
    engine.dispose()
    data = tmp_path / "data"
    data.mkdir()
    assert main(["forget-user", "gone-1", "--data-dir", str(data), "--eventlog-url", eventlog_url]) == 0
    out = capsys.readouterr().out
    assert "event log campaign sends: 2 row(s) removed" in out and "event log behaviour: 1 row(s) removed" in out and "gone-1" not in out
    import sqlalchemy as sa

    from storerec.events.eventlog import behaviour, read_engine

    engine = read_engine(eventlog_url)
    with engine.connect() as conn:
        assert [r.user_id for r in conn.execute(sa.select(behaviour.c.user_id))] == ["kept-1"]
    assert campaign_members(engine, "c1")["user_id"].to_list() == ["kept-1"] and campaign_members(engine, "c2").height == 0
    engine.dispose()
    frames = read_frames(eventlog_url)
    assert frames["impressions"]["user_id"].to_list() == ["kept-1"]
    assert sorted(frames["feedback"]["event_id"].to_list()) == ["e3"]  # e2 was sent against the forgotten user's list
    assert forgotten_hashes(data) == {user_hash("gone-1")}


def test_redacted_ids_are_stable_and_not_the_id() -> None:
    assert redact("u00042") == redact("u00042") != redact("u00043")
    assert "u00042" not in redact("u00042") and redact("u00042").startswith("user#")


@pytest.mark.e2e
@pytest.mark.slow
def test_service_forgets_after_reload_and_logs_no_ids(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """End to end: a hot user is served from the model; after forget-user and a reload the id is
    served as unknown (cold), /score no longer knows it, the registry lists the version that
    still holds it, a retrained version does not; no id appears in clear in the service log."""
    from tests._serve import start, stop, write_config

    data = _copy_store(store, tmp_path / "data")
    gone, kept = _two_users(data)
    canary = "privacy-canary-7x"  # an id only this test sends
    cfg = write_config(tmp_path, data, extra="[serving]\naccess_log = false")
    assert main(["--config", str(cfg), "-q", "train", "--model", "als"]) == 0
    assert main(["--config", str(cfg), "-q", "promote", "--version", "1"]) == 0
    log_path = tmp_path / "serve.log"
    proc, c = start(cfg, log_path)
    try:
        r = c.post("/recommend", json={"user_id": gone, "k": 5})
        assert r.status_code == 200 and r.json()["user_kind"] == "hot"
        rid = r.json()["request_id"]
        assert c.post("/events", json={"events": [{"request_id": rid, "item_id": r.json()["items"][0]["item_id"], "event_type": "click"}]}).status_code == 200
        viewed = r.json()["items"][1]["item_id"]  # a tracked view: in the overlay and the behaviour table
        assert c.post("/track", json={"events": [{"user_id": gone, "item_id": viewed, "event_type": "view"}]}).status_code == 200
        r2 = c.post("/recommend", json={"user_id": gone, "k": 5})
        assert r2.json()["live_context"] == 1
        before = {rid, r2.json()["request_id"]}  # the user's lists before the erasure (they may come back after it)
        # requests carrying ids, good and bad, to find in the log afterwards
        c.post("/recommend", json={"user_id": canary, "k": 3})
        c.post("/recommend", json={"user_id": canary, "k": "3"})
        c.post("/score", json={"user_id": canary})
        c.post("/events", json={"events": [{"request_id": "r", "item_id": "i1", "event_type": "click", "user_id": canary, "revenue": 2}]})

        capsys.readouterr()
        assert main(["--config", str(cfg), "-q", "forget-user", gone]) == 0
        assert gone not in capsys.readouterr().out
        assert c.post("/admin/reload", json={}).status_code == 200
        r = c.post("/recommend", json={"user_id": gone, "k": 5})
        assert r.status_code == 200 and r.json()["user_kind"] == "cold", r.json()
        assert r.json()["live_context"] == 0 and r.json()["source"] not in ("context", "model+context"), r.json()  # the overlay forgot them
        assert c.post("/score", json={"user_id": gone}).status_code == 404
        assert c.post("/recommend", json={"user_id": kept, "k": 5}).json()["user_kind"] == "hot"

        from storerec.core.settings import load_settings
        from storerec.events.eventlog import read_frames

        settings = load_settings(cfg, environ={})
        frames = read_frames(settings.eventlog.url)
        assert not before & set(frames["impressions"]["request_id"].to_list()), "the erased user's impressions are gone"
        assert gone not in frames["feedback"]["user_id"].to_list()
        import sqlalchemy as sa

        from storerec.events.eventlog import behaviour, read_engine

        engine = read_engine(settings.eventlog.url)
        with engine.connect() as conn:
            tracked_users = [u for (u,) in conn.execute(sa.select(behaviour.c.user_id))]
        engine.dispose()
        assert gone not in tracked_users
        assert rid not in frames["feedback"]["request_id"].to_list()

        # the registry: v1 still holds the user; a version trained now does not
        from storerec.registry import tracking
        from storerec.training.forget import versions_containing_forgotten

        client = tracking.configure(settings.mlflow)
        listed = versions_containing_forgotten(client, settings.registered_model_name(), data)
        assert [(v["version"], v["forgotten_users"]) for v in listed] == [("1", 1)]
        assert main(["--config", str(cfg), "-q", "train", "--model", "als"]) == 0
        listed = versions_containing_forgotten(client, settings.registered_model_name(), data)
        assert [v["version"] for v in listed] == ["1"]
        capsys.readouterr()
        assert main(["--config", str(cfg), "-q", "models", "--containing-forgotten"]) == 0
        out = capsys.readouterr().out
        assert "version 1 [champion]: 1 forgotten user(s)" in out and "version 2" not in out and gone not in out
    finally:
        stop(proc)
    text = log_path.read_text()
    assert canary not in text and gone not in text, [line for line in text.splitlines() if canary in line or gone in line][:5]


def test_a_restored_old_table_still_hides_forgotten_users(store: Path, tmp_path: Path) -> None:
    """Safety net: a table copied back from a backup after the erasure still reads without them
    (profiles, training and serving all read through storerec.features.io.read_table)."""
    from storerec.features import io
    from storerec.features.forget import record_forgotten

    data = _copy_store(store, tmp_path / "data")
    gone, kept = _two_users(data)
    record_forgotten(data, [gone])  # as if forget-user ran, then events.parquet was restored
    ev = io.read_table(data, "events")
    assert gone not in ev["user_id"].to_list() and kept in ev["user_id"].to_list()
    lazy = io.read_table(data, "events", lazy=True).collect()
    assert lazy.height == ev.height
    raw = pl.read_parquet(data / "events.parquet")
    assert ev.height == raw.height - raw.filter(pl.col("user_id") == gone).height
