"""The scale table's pure parts (storerec.tools.bench_scale): no store is built, no service run."""

from __future__ import annotations

import json
import os

from storerec.tools import bench_scale as bs
from storerec.tools.loadgen import post_request


def _row(size: str, endpoint: str, rps: float) -> dict:
    return {"size": size, "users": 200_000, "items": 500_000, "events": 5_000_002, "endpoint": endpoint, "ready_s": 26.04,
            "workers": 1, "rss_ready_mb": 2010.0, "rss_mb": 2049.4, "peak_mb": 2980.2, "loadavg": "1.20 1.10 0.90",
            "rps": rps, "p50_ms": 3.24, "p99_ms": 12.51, "p999_ms": 30.0, "max_ms": 41.0, "errors": 0, "requests": 1000}


def test_to_markdown_has_one_line_per_size_and_endpoint_and_the_skipped_reasons() -> None:
    rows = [_row("500k", "/recommend", 812.4), _row("500k", "/similar_items", 2345.6),
            {"size": "1M", "skipped": "needs about 10 GiB free, 3.0 GiB available"}]
    md = bs.to_markdown(rows, {"cpu": "Some CPU", "cores": 2, "date": "2026-11-29"}, duration=10.0)
    lines = md.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert len(table) == 2 + 2  # header, alignment, two rows
    assert table[0].startswith("| items | users | events | endpoint | start-up s | worker RSS MB | worker peak MB | req/s")
    assert "| 500,000 | 200,000 | 5,000,002 | /recommend | 26.0 | 2,049 | 2,980 | 812 | 3.2 | 12.5 | 30.0 | 0 |" in table[2]
    assert "| /similar_items |" in table[3] and "| 2,346 |" in table[3]
    assert "Some CPU, 2 cores, 2026-11-29" in lines[0] and "10 s per endpoint" in lines[0]
    assert lines[-1] == "1M: skipped, needs about 10 GiB free, 3.0 GiB available."
    json.dumps(rows)  # rows are what bench-scale.json holds


def test_split_body_takes_the_json_body_of_a_request() -> None:
    raw = post_request("127.0.0.1", 1234, "/recommend", {"user_id": "u1", "k": 10})
    assert json.loads(bs.split_body(raw)) == {"user_id": "u1", "k": 10}


def test_sizes_and_memory_helpers() -> None:
    assert [s.name for s in bs.SIZES] == ["2k", "50k", "500k", "1M"]
    assert bs.SIZES[0].builtin and not bs.SIZES[1].builtin
    assert bs.available_gib() > 0
    mem = bs.proc_memory_mb(os.getpid())
    assert mem["VmHWM"] >= mem["VmRSS"] > 0
    assert bs.proc_memory_mb(-1) == {} and bs.worker_pids(os.getpid()) == []


def test_run_config_gives_the_service_its_own_event_log(tmp_path) -> None:
    from storerec.tools.bench_serve import write_config

    store = write_config(tmp_path / "store", tmp_path / "store" / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.db").write_text("old")
    cfg = bs.run_config(store, tmp_path / "run")
    text = cfg.read_text()
    assert f'url = "sqlite:///{(tmp_path / "run" / "events.db").resolve()}"' in text
    assert text.replace(str((tmp_path / "run").resolve()), str((tmp_path / "store").resolve())) == store.read_text()
    assert not (tmp_path / "run" / "events.db").exists()  # a new event log per run


def test_every_tool_settings_file_is_valid_toml_with_its_control_store_in_its_own_folder(tmp_path) -> None:
    """The benchmarks' settings files (bench-serve, bench-scale, bench-live) parse, and the workers'
    control store is in the run's folder, not ./eventlog (once, also when the extra names one)."""
    import tomllib

    from storerec.core.settings import Settings
    from storerec.tools.bench_serve import with_control_store, write_config
    from storerec.tools.live_replay import _config

    files = {
        "serve": write_config(tmp_path / "serve", tmp_path / "data"),
        "live": _config(tmp_path / "live", tmp_path / "data"),
        "extra-serving": write_config(tmp_path / "x", tmp_path / "data", "[serving]\nworkers = 2\n"),
    }
    for name, cfg in files.items():
        parsed = tomllib.loads(cfg.read_text())
        Settings.model_validate(parsed)
        assert parsed["serving"]["control_url"] == f"sqlite:///{(cfg.parent / 'control.db').resolve()}", name
    assert tomllib.loads(files["live"].read_text())["serving"]["access_log"] is False
    own = '[serving]\ncontrol_url = "sqlite:////elsewhere/control.db"\n'
    assert with_control_store(own, tmp_path) == own
