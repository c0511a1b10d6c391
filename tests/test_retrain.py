"""`storerec retrain` (#15 item 4): the quality gate on planted per-user scores, the paired
bootstrap interval, the data folder's lock, the reload call, and the whole retrain end to end on
the small built-in store (first run promotes, the same data keeps the champion, a worse candidate
is refused, new data promotes, a moved alias or a SIGKILL promotes nothing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from storerec.cli import main
from storerec.core.settings import RetrainSettings, Settings, load_settings
from storerec.evaluation.significance import paired_bootstrap, paired_difference
from storerec.training.retrain import Contender, gate, reload_services, retrain_lock
from tests._http_stub import json_stub
from tests._serve import free_port, small_store

CFG = RetrainSettings(bootstrap_samples=2000, seed=0, coverage_tolerance=0.10, diversity_tolerance=0.05)


def _ndcg_like(rng: np.random.Generator, n: int, hit: float = 0.3) -> np.ndarray:
    """Per-user NDCG-shaped scores: most users 0, the others spread over (0, 1]."""
    return np.where(rng.random(n) < hit, rng.uniform(0.1, 1.0, n), 0.0)


# ---- the gate ---------------------------------------------------------------------------------


def test_gate_promotes_a_better_candidate() -> None:
    rng = np.random.default_rng(1)
    champ = _ndcg_like(rng, 1500)
    cand = np.clip(champ + rng.normal(0.04, 0.05, 1500), 0, 1)
    result = gate(Contender("als", cand, 0.40, 0.80), Contender("champion", champ, 0.41, 0.81), CFG)
    assert result.promote, result.reason
    assert result.ndcg is not None and result.ndcg.low > 0
    assert [c.name for c in result.checks] == ["ndcg", "coverage", "diversity"] and all(c.passed for c in result.checks)


def test_gate_keeps_the_champion_when_the_candidate_is_worse_beyond_the_ci() -> None:
    rng = np.random.default_rng(2)
    champ = _ndcg_like(rng, 1500)
    cand = np.clip(champ - rng.uniform(0.02, 0.08, 1500), 0, 1)
    result = gate(Contender("ease", cand, 0.5, 0.9), Contender("champion", champ, 0.4, 0.8), CFG)
    assert not result.promote
    assert result.ndcg is not None and result.ndcg.high < 0
    assert "worse beyond the CI (upper end below 0)" in result.reason and "coverage" not in result.reason


def test_a_slightly_worse_candidate_within_the_ci_passes_the_ndcg_check() -> None:
    """Non-inferiority, not superiority: a mean a hair below the champion's, with an interval
    that reaches 0, is not refused on NDCG (on new data it is promoted)."""
    rng = np.random.default_rng(3)
    champ = _ndcg_like(rng, 300)
    cand = champ.copy()
    cand[:3] = 0.0  # a few users lose their hit: mean slightly lower, far inside the noise
    result = gate(Contender("als", cand, 0.4, 0.8), Contender("champion", champ, 0.4, 0.8), CFG)
    assert result.ndcg is not None and result.ndcg.mean <= 0 <= result.ndcg.high
    assert result.promote, result.reason


def test_gate_keeps_the_champion_when_coverage_or_diversity_drop_beyond_tolerance() -> None:
    rng = np.random.default_rng(4)
    champ = _ndcg_like(rng, 1000)
    cand = np.clip(champ + 0.05, 0, 1)  # better on NDCG beyond doubt ...
    # ... but it recommends a third less of the catalogue (tolerance 10 %)
    result = gate(Contender("popularity", cand, 0.20, 0.80), Contender("champion", champ, 0.30, 0.80), CFG)
    assert not result.promote
    assert "coverage@10 0.2000 vs champion 0.3000 (-33.3%; tolerance -10%, floor 0.2700): drops beyond tolerance" in result.reason
    assert "diversity" not in result.reason and "ndcg" not in result.reason
    # 9 % less coverage is within the 10 % tolerance; 6 % less diversity is not within 5 %
    result = gate(Contender("popularity", cand, 0.273, 0.752), Contender("champion", champ, 0.30, 0.80), CFG)
    assert not result.promote and "diversity@10 0.7520" in result.reason and "coverage" not in result.reason
    assert gate(Contender("p", cand, 0.273, 0.761), Contender("c", champ, 0.30, 0.80), CFG).promote


def test_first_run_promotes_and_same_data_needs_a_gain() -> None:
    rng = np.random.default_rng(5)
    champ = _ndcg_like(rng, 800)
    first = gate(Contender("als", champ, 0.3, 0.8), None, CFG)
    assert first.promote and first.reason == "no champion yet: the best candidate (als) is promoted" and first.ndcg is None
    # the champion's own configuration again: identical scores
    on_new_data = gate(Contender("als", champ.copy(), 0.3, 0.8), Contender("champion", champ, 0.3, 0.8), CFG, same_data=False)
    assert on_new_data.promote  # a tie on new data: the new fit (which learnt the new events) goes out
    same = gate(Contender("als", champ.copy(), 0.3, 0.8), Contender("champion", champ, 0.3, 0.8), CFG, same_data=True)
    assert not same.promote and "same data as the champion: the candidate is not better beyond the CI" in same.reason
    better = gate(Contender("als", np.clip(champ + 0.05, 0, 1), 0.3, 0.8), Contender("champion", champ, 0.3, 0.8), CFG, same_data=True)
    assert better.promote


# ---- the paired bootstrap ---------------------------------------------------------------------


def test_paired_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time() -> None:
    """Coverage on synthetic NDCG-shaped data with a known mean difference: 300 data sets of 400
    users; the 95 % interval must hold the true mean in 90-99 % of them (a broken interval, e.g.
    unpaired or with the wrong spread, lands far outside)."""
    rng = np.random.default_rng(7)
    n, sets, hit_a, hit_b = 400, 300, 0.35, 0.30
    true_diff = (hit_a - hit_b) * 0.55  # mean of U(0.1, 1) is 0.55
    covered = 0
    for i in range(sets):
        base = rng.random(n)
        a = np.where(base < hit_a, rng.uniform(0.1, 1.0, n), 0.0)  # correlated pairs: the same users hit
        b = np.where(base < hit_b, rng.uniform(0.1, 1.0, n), 0.0)
        d = paired_bootstrap(a, b, "b", samples=1000, seed=i)
        covered += d.low <= true_diff <= d.high
    assert 0.90 <= covered / sets <= 0.99, covered / sets


def test_paired_bootstrap_agrees_with_the_normal_interval_on_many_users_and_is_seeded() -> None:
    rng = np.random.default_rng(8)
    a, b = _ndcg_like(rng, 5000), _ndcg_like(rng, 5000)
    boot, normal = paired_bootstrap(a, b, "b", seed=3), paired_difference(a, b, "b")
    assert boot.mean == pytest.approx(normal.mean)
    assert boot.low == pytest.approx(normal.low, abs=0.004) and boot.high == pytest.approx(normal.high, abs=0.004)
    assert paired_bootstrap(a, b, "b", seed=3) == boot and paired_bootstrap(a, b, "b", seed=4) != boot
    same = paired_bootstrap(a, a.copy(), "a")
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(a[:1], b[:1], "b").low == -np.inf
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap(a, b[:10], "b")


# ---- the lock and the reload ------------------------------------------------------------------


def test_a_second_retrain_on_a_locked_folder_does_nothing_and_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "storerec.toml"
    cfg.write_text(f'[data]\ndir = "{data}"\n[mlflow]\ntracking_uri = "sqlite:///{tmp_path / "mlflow.db"}"\n')
    with retrain_lock(data), pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg), "-q", "retrain"])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "another retrain holds" in err and f"pid {os.getpid()}" in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before any work
    with retrain_lock(data):  # released by the holder
        pass


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    # the child takes the same flock as retrain_lock (without importing storerec: a fast start)
    code = (f"import fcntl, os, time\nfd = os.open({str(tmp_path / '.retrain.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
            f"fcntl.flock(fd, fcntl.LOCK_EX)\nos.pwrite(fd, b'pid child', 0)\nprint('held', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        from storerec.training.retrain import RetrainConflict

        with pytest.raises(RetrainConflict, match=r"another retrain holds .* \(pid child\)"), retrain_lock(tmp_path):
            pass
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    with retrain_lock(tmp_path):
        pass


class _Stub:
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    calls: list[tuple[str, str | None, bytes]] = []

    @staticmethod
    def answer(method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        _Stub.calls.append((path, headers.get("x-admin-token"), body))
        return _Stub.answers.get(path, (404, {}))


@pytest.fixture
def stub() -> Any:
    _Stub.calls, _Stub.answers = [], {}
    with json_stub(_Stub.answer) as url:
        yield url


def test_reload_calls_each_service_with_the_admin_token_and_reports_failures(stub: str) -> None:
    _Stub.answers["/admin/reload"] = (200, {"model_version": "7", "follows": "champion", "complete": True})
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings.model_validate({"serving": {"admin_token": "t0k"}, "retrain": {"reload_urls": [stub + "/", dead], "reload_timeout_s": 5}})
    lines, ok = reload_services(settings, "7")
    assert _Stub.calls == [("/admin/reload", "t0k", b"{}")]
    assert lines[0] == f"reload {stub}/admin/reload: serving version 7" and not ok
    assert lines[1].startswith(f"reload {dead}/admin/reload: failed: ConnectError")
    # a service pinned to another version did not take the new champion: a failure
    settings.retrain.reload_urls = [stub]
    lines, ok = reload_services(settings, "8")
    assert not ok and "serves version 7 (follows champion), not the new champion 8" in lines[0]
    settings.serving.admin_token = None
    lines, ok = reload_services(settings, "7")
    assert not ok and "serving.admin_token is not set" in lines[0] and len(_Stub.calls) == 2


# ---- end to end -------------------------------------------------------------------------------


NAME = "storerec-data"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from storerec.events.eventlog import upgrade

    root = tmp_path_factory.mktemp("retrain")
    cfg = root / "storerec.toml"
    cfg.write_text(
        small_store(root / "data")
        + f"""[mlflow]
tracking_uri = "sqlite:///{root / 'mlflow.db'}"
artifact_root = "{root / 'artifacts'}"
[eventlog]
url = "sqlite:///{root / 'events.db'}"
[serving]
admin_token = "retrain-test"
[training]
run_models = ["als"]
search_trials = 0
search_seconds = 600
relevant_event_types = ["view", "favorite", "cart", "purchase"]  # a validation window of 150 users, not 94
"""
    )
    assert main(["--config", str(cfg), "-q", "simulate"]) == 0
    return {"root": root, "cfg": cfg, "data": root / "data", "url": f"sqlite:///{root / 'events.db'}", "upgrade": upgrade}


def _retrain(env: dict[str, Any], capsys: pytest.CaptureFixture[str], **settings: str) -> tuple[int, str]:
    """``storerec retrain`` in this process with ``STOREREC__...`` overrides; (exit status, output)."""
    mp = pytest.MonkeyPatch()
    for key, value in settings.items():
        mp.setenv(f"STOREREC__{key.upper()}", value)
    try:
        code = main(["--config", str(env["cfg"]), "-q", "retrain"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        mp.undo()
    out = capsys.readouterr()
    return code, out.out + out.err


def _client(env: dict[str, Any]) -> Any:
    from storerec.registry import tracking

    return tracking.configure(load_settings(env["cfg"], environ={}).mlflow)


def mlflow_signature(uri: str) -> Any:
    import mlflow

    return mlflow.models.get_model_info(uri).signature


def _alias(env: dict[str, Any], alias: str) -> str:
    return str(_client(env).get_model_version_by_alias(NAME, alias).version)


CRIPPLED = {"training__run_models": '["bpr"]', "training__models": '{"bpr": {"iterations": 1, "learning_rate": 0.0001, "factors": 4}}'}
SEARCHED = {"training__search_trials": "3"}


@pytest.mark.slow
def test_retrain_promotes_keeps_refuses_and_reloads(env: dict[str, Any], capsys: pytest.CaptureFixture[str], stub: str) -> None:
    t0 = time.perf_counter()
    # 1. no champion yet: the best candidate is promoted, however weak; no event log yet: sync skipped
    code, out = _retrain(env, capsys, **CRIPPLED)
    assert code == 0, out
    assert "sync: skipped (no event log at" in out and "profiles as of" in out
    assert "PROMOTED: bpr version 1 is champion (was no champion): no champion yet" in out
    assert _alias(env, "champion") == "1"
    # 2. a better candidate (ALS, searched on an inner split) on the same data: better beyond the CI, promoted
    code, out = _retrain(env, capsys, **SEARCHED)
    assert code == 0, out
    assert "champion v1 (bpr), refit on the same train window" in out and "searched 3 settings on an inner split" in out
    assert "[ok] same data as the champion: the candidate is better beyond the CI" in out, out
    assert "PROMOTED: als version 2 is champion (was version 1)" in out
    # 3. the same data again: the champion stays, and the output says why
    code, out = _retrain(env, capsys, **SEARCHED)
    assert code == 0, out
    assert "difference +0.0000 [+0.0000, +0.0000]" in out  # the champion's own configuration, refit: the same lists
    assert "[refused] same data as the champion: the candidate is not better beyond the CI" in out
    assert "KEPT: version 2 stays champion; als version 3 is challenger, refused: same data as the champion" in out
    assert (_alias(env, "champion"), _alias(env, "challenger")) == ("2", "3")
    # 4. a crippled candidate is worse beyond the CI
    code, out = _retrain(env, capsys, **CRIPPLED)
    assert code == 0, out
    assert "[refused] ndcg@10" in out and "worse beyond the CI (upper end below 0)" in out, out
    assert "KEPT: version 2 stays champion; bpr version 4 is challenger" in out
    assert (_alias(env, "champion"), _alias(env, "challenger")) == ("2", "4")
    # 5. new events in the event log: synced, new data, the tied candidate is promoted and the service reloaded
    env["upgrade"](env["url"])
    events = pl.read_parquet(env["data"] / "events.parquet")
    last = events["timestamp"].max()
    pairs = events.select("user_id", "item_id").unique().sort("user_id", "item_id").head(30).iter_rows()
    _log_events(env["url"], [(u, i, "purchase", last - timedelta(hours=h + 1)) for h, (u, i) in enumerate(pairs)])
    _Stub.answers["/admin/reload"] = (200, {"model_version": "5", "follows": "champion", "complete": True})
    code, out = _retrain(env, capsys, retrain__reload_urls=json.dumps([stub]), **SEARCHED)
    assert code == 0, out
    assert "sync-events: read 30 new event(s)" in out and "appended 30" in out
    assert "same data" not in out and "PROMOTED: als version 5 is champion (was version 2)" in out, out
    assert f"reload {stub}/admin/reload: serving version 5" in out and _Stub.calls[-1][1] == "retrain-test"
    assert _alias(env, "champion") == "5"
    # the decision and its evidence are in MLflow
    c = _client(env)
    exp = c.get_experiment_by_name("storerec/retrain").experiment_id
    runs = c.search_runs([exp], "tags.kind = 'retrain'", order_by=["start_time ASC"])
    assert [r.data.tags["retrain.decision"] for r in runs] == ["promoted", "promoted", "kept", "kept", "promoted"]
    # the nested runs (candidates, the champion's refit) and the registered versions' runs stay in the parent's experiment
    nested = c.search_runs([exp], f"tags.mlflow.parentRunId = '{runs[-1].info.run_id}'")
    assert {r.info.run_name for r in nested} >= {"als-candidate", "champion-v2-refit"}, [r.info.run_name for r in nested]
    assert c.get_experiment_by_name("storerec/train") is None and c.get_experiment_by_name("storerec") is None
    # each version: the gate's verdict on it, in its tags and the last line of its description
    verdicts = {v: c.get_model_version(NAME, v) for v in ("1", "2", "3", "4", "5")}
    assert {v: m.tags["gate.decision"] for v, m in verdicts.items()} == {"1": "promoted", "2": "promoted", "3": "refused", "4": "refused",
                                                                         "5": "promoted"}
    assert verdicts["3"].tags["gate.reason"].startswith("refused: same data as the champion"), verdicts["3"].tags
    assert verdicts["4"].description.splitlines()[-1].startswith("retrain gate: refused: "), verdicts["4"].description
    assert verdicts["4"].description.startswith("bpr trained on data (") and verdicts["4"].tags["model"] == "bpr"
    assert all(c.get_run(m.run_id).info.experiment_id == exp for m in verdicts.values())
    assert mlflow_signature(f"models:/{NAME}/5") is not None
    assert all(r.info.run_name.startswith("retrain-") for r in runs)
    last_run = runs[-1]
    assert last_run.data.metrics["gate_promote"] == 1.0 and "gate_ndcg_at_10_diff_low" in last_run.data.metrics
    import mlflow

    gate_json = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=last_run.info.run_id, artifact_path="retrain/gate.json",
                                                                    dst_path=str(env["root"] / "dl"))).read_text())
    assert gate_json["decision"] == "promoted" and gate_json["champion_before"] == "2" and gate_json["candidate_version"] == "5"
    assert {c["name"] for c in gate_json["checks"]} == {"ndcg", "coverage", "diversity"}
    assert c.get_model_version(NAME, "4").tags["retrain.decision"] == "kept"
    # 6. promoted, but a service does not answer: exit 1, the promotion stands
    _log_events(env["url"], [("u00001", "i00001", "cart", last - timedelta(minutes=5))])
    code, out = _retrain(env, capsys, retrain__reload_urls=json.dumps([f"http://127.0.0.1:{free_port()}"]))
    assert code == 1, out
    assert "PROMOTED: als version 6" in out and "a reload failed: the promotion stands" in out
    assert _alias(env, "champion") == "6"
    print(f"six retrains in {time.perf_counter() - t0:.1f} s")


def _log_events(url: str, events: list[tuple[str, str, str, Any]]) -> None:
    from storerec.events.eventlog import EventLog

    log = EventLog(url, flush_ms=5)
    try:
        rows = [{"event_id": None, "ts": ts, "request_id": "r", "user_id": u, "session_id": "s", "item_id": i, "event_type": t,
                 "revenue": 2.5 if t == "purchase" else 0.0} for u, i, t, ts in events]
        assert log.store_feedback_sync(rows, 30) == len(rows)
    finally:
        log.close()


@pytest.mark.slow
def test_a_champion_moved_meanwhile_is_not_overwritten(env: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare-and-set: someone promotes another version while the retrain runs; the retrain
    registers its candidate as challenger and exits 3 instead of overwriting that promotion."""
    from storerec.training import retrain as module

    if _champion_or_none(env) is None:
        assert _retrain(env, capsys)[0] == 0
    before = _alias(env, "champion")
    real = module._champion
    calls = []

    def moving(client: Any, registered: str) -> Any:
        calls.append(1)
        if len(calls) == 2:  # just before the promotion: `storerec promote --version 1` elsewhere
            client.set_registered_model_alias(registered, "champion", "1" if before != "1" else "2")
        return real(client, registered)

    monkeypatch.setattr(module, "_champion", moving)
    _log_events(env["url"], [("u00002", "i00002", "cart", pl.read_parquet(env["data"] / "events.parquet")["timestamp"].max())])
    code, out = _retrain(env, capsys)
    assert code == 3, out
    assert "the champion alias moved during this retrain" in out and "registered as challenger, not promoted" in out
    moved = "1" if before != "1" else "2"
    assert _alias(env, "champion") == moved and _alias(env, "challenger") not in (before, moved)
    version = _client(env).get_model_version_by_alias(NAME, "challenger")
    assert version.tags["gate.decision"] == "conflict" and version.tags["gate.reason"].startswith("the champion alias moved")


def _champion_or_none(env: dict[str, Any]) -> str | None:
    try:
        return _alias(env, "champion")
    except Exception:
        return None


@pytest.mark.slow
def test_sigkill_mid_retrain_leaves_the_champion_alias_and_no_lock(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    if _champion_or_none(env) is None:
        assert _retrain(env, capsys)[0] == 0
    before = _alias(env, "champion")
    versions_before = len(_client(env).search_model_versions(f"name='{NAME}'"))
    _log_events(env["url"], [("u00003", "i00003", "cart", pl.read_parquet(env["data"] / "events.parquet")["timestamp"].max())])
    proc = subprocess.Popen([sys.executable, "-m", "storerec.cli", "--config", str(env["cfg"]), "retrain"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "STOREREC__TRAINING__RUN_MODELS": '["popularity", "als"]'})
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        for line in proc.stderr:  # killed while the candidates train (after the sync and features)
            if "als: fit on the split and evaluate ..." in line or time.monotonic() > deadline:
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(15)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert _alias(env, "champion") == before
    assert len(_client(env).search_model_versions(f"name='{NAME}'")) == versions_before  # nothing registered
    with retrain_lock(env["data"]):  # the kernel released the dead process's lock
        pass
    code, out = _retrain(env, capsys)  # and the next retrain runs
    assert code == 0, out


def test_make_retrain_is_one_call_to_storerec_retrain() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # as from a shell, also under `make test`
    make = subprocess.run(["make", "--no-print-directory", "-n", "retrain", "ARGS=--data-dir d"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60, env=env)
    assert make.returncode == 0, make.stderr
    assert make.stdout.splitlines()[-1].endswith("storerec retrain --data-dir d"), make.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_the_running_service_serves_the_new_champion_after_retrain_without_a_restart(tmp_path: Path,
                                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's "done when": the real `storerec serve` follows the champion; new events arrive,
    `storerec retrain` promotes and calls POST /admin/reload, and the same process serves the new
    version at once."""
    from tests._serve import start, stop, write_config

    store = tmp_path / "data"
    simulate = small_store(store).split("[simulate]", 1)[1]
    cfg = write_config(tmp_path, store, extra=f'[simulate]{simulate}[serving]\nadmin_token = "retrain-e2e"\n'
                       '[training]\nrun_models = ["als"]\nsearch_trials = 0\n')
    run = {"cfg": cfg}
    assert main(["--config", str(cfg), "-q", "simulate"]) == 0
    code, out = _retrain(run, capsys)
    assert code == 0 and "PROMOTED: als version 1" in out, out
    proc, client = start(cfg, tmp_path / "serve.log")
    try:
        assert client.post("/recommend", json={"user_id": "u00001", "k": 3}).json()["model_version"] == "1"
        last = pl.read_parquet(store / "events.parquet")["timestamp"].max()
        _log_events(f"sqlite:///{tmp_path / 'events.db'}", [("u00001", "i00002", "cart", last - timedelta(minutes=1))])
        url = str(client.base_url).rstrip("/")
        code, out = _retrain(run, capsys, retrain__reload_urls=json.dumps([url]))
        assert code == 0, out
        assert "PROMOTED: als version 2 is champion (was version 1)" in out and f"reload {url}/admin/reload: serving version 2" in out, out
        assert client.post("/recommend", json={"user_id": "u00001", "k": 3}).json()["model_version"] == "2"
        assert proc.poll() is None  # the same service process
    finally:
        client.close()
        stop(proc)
