"""Two replicas, one truth (issue #14 item 4): two real `storerec serve` processes on separate
ports, set up as two machines would be (each its own settings file, its own copy of the
experiments file, its own control store, no data folder), on one registry and one PostgreSQL
event log.

* the same shopper gets the same experiment variant (and the same list) from either replica;
* an alias move (`storerec promote`) reaches both by their own registry polling
  (`serving.alias_poll_s`), within a bound measured and asserted here;
* impressions and events from both land in the one log (events may reach the other replica, as
  behind a load balancer), and `storerec ab-report` counts both replicas' traffic together.

The control store (`serving.control_url`, storerec/serving/control.py) is per replica: it keeps
one replica's *workers* on one version. Replicas are kept together by the registry (each follows
the alias by itself), not by a shared control row (see docs/deploy.md, "The production picture").

The registry is a local SQLite MLflow store both processes read (one machine); the remote MLflow
server is covered by tests/test_remote_mlflow.py. Skips, with the reason, where no PostgreSQL
answers at 127.0.0.1:5432."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from storerec.cli import main
from storerec.events.eventlog import read_frames
from storerec.events.experiments import load_experiments
from tests._pg import pg_available, pg_skip_reason, temp_database
from tests._serve import small_store, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REGISTERED = "storerec-replicas"
EXPERIMENT = "replicas-ab"
EXPERIMENTS = f"""
[[experiment]]
name = "{EXPERIMENT}"
salt = "2026-11-replicas"
[[experiment.variant]]
name = "control"
model = "champion"
share = 0.5
[[experiment.variant]]
name = "treatment"
model = "baseline"
share = 0.5
"""
ALIAS_POLL_S = 2.0  # serving.alias_poll_s, the default
MOVE_BOUND_S = 15.0  # asserted: alias poll + one sync tick + loading the version, with room for a busy machine


def _registry(root: Path) -> str:
    return f"""
[mlflow]
tracking_uri = "sqlite:///{root / 'registry' / 'mlflow.db'}"
artifact_root = "{root / 'registry' / 'artifacts'}"
registered_model = "{REGISTERED}"
"""


def _replica_config(root: Path, name: str, eventlog_url: str) -> Path:
    """What one machine holds: its settings file, its copy of the experiments file, its control
    store; a data folder that does not exist (the serving snapshot of the version is enough)."""
    home = root / name
    home.mkdir()
    (home / "experiments.toml").write_text(EXPERIMENTS)
    cfg = home / "storerec.toml"
    cfg.write_text(f"""
[data]
dir = "{home / 'no-data'}"
{_registry(root)}
[serving]
control_url = "sqlite:///{home / 'control.db'}"
access_log = false
alias_poll_s = {ALIAS_POLL_S}
[experiments]
file = "{home / 'experiments.toml'}"
[eventlog]
url = "{eventlog_url}"
flush_ms = 50
auto_upgrade = false
""")
    return cfg


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not pg_available():
        pytest.skip(pg_skip_reason())
    root = tmp_path_factory.mktemp("replicas")
    data = root / "data"
    trainer = root / "trainer.toml"  # the training job's settings
    (root / "experiments.toml").write_text(EXPERIMENTS)
    with temp_database() as eventlog_url:
        trainer.write_text(f"""
{small_store(data)}
{_registry(root)}
[experiments]
file = "{root / 'experiments.toml'}"
[eventlog]
url = "{eventlog_url}"
""")
        for args in (["simulate"], ["features"],
                     ["train", "--model", "als", "--param", "factors=8"],  # 1: champion
                     ["train", "--model", "popularity"],  # 2: baseline
                     ["train", "--model", "als", "--param", "factors=16"],  # 3: promoted while serving
                     ["promote", "--version", "1"], ["promote", "--version", "2", "--alias", "baseline"],
                     ["eventlog", "upgrade"]):  # once per deployment, before the replicas (they only check it)
            assert main(["--config", str(trainer), "-q", *args]) == 0, args
        cfgs = {name: _replica_config(root, name, eventlog_url) for name in ("a", "b")}
        served: dict[str, tuple[Any, httpx.Client]] = {}
        failures: list[AssertionError] = []
        try:
            with ThreadPoolExecutor(2) as pool:  # both at once, as two machines would start
                futures = {name: pool.submit(start, cfg, root / name / "serve.log") for name, cfg in cfgs.items()}
                for name, fut in futures.items():
                    try:
                        served[name] = fut.result()
                    except AssertionError as exc:
                        failures.append(exc)
            if failures:
                raise failures[0]
            assert served["a"][1].base_url != served["b"][1].base_url
            profiles = pl.read_parquet(data / "profiles" / "users.parquet")
            yield {"root": root, "trainer": trainer, "eventlog": eventlog_url, "data": data,
                   "http": {name: client for name, (_, client) in served.items()},
                   "users": sorted(profiles["user_id"].to_list())[:60], "requests": {"a": [], "b": []}}
        finally:
            for proc, client in served.values():
                client.close()
                stop(proc)
    for name in ("a", "b"):
        log = (root / name / "serve.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-3000:]
        assert not (root / name / "no-data").exists()  # nothing wanted a data folder
    shutil.rmtree(root, ignore_errors=True)


def recommend(replicas: dict[str, Any], name: str, **body: Any) -> dict[str, Any]:
    """POST /recommend on replica ``name``; remembers the request id (an impression in the log)."""
    r = replicas["http"][name].post("/recommend", json={"k": 5, **body}, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    replicas["requests"][name].append(out["request_id"])
    return out


def test_the_same_shopper_gets_the_same_variant_from_either_replica(replicas) -> None:
    """Assignment is sha256(salt:unit): no shared state, the same answer on every machine that
    has the same experiments file; and both serve the same versions, so the same list."""
    (exp,) = load_experiments(replicas["root"] / "experiments.toml")
    variants = set()
    for user in replicas["users"][:40]:
        a, b = (recommend(replicas, name, user_id=user) for name in ("a", "b"))
        want = exp.assign(user).name
        assert (a["experiment"], a["variant"]) == (b["experiment"], b["variant"]) == (EXPERIMENT, want), user
        assert a["model_version"] == b["model_version"] == ("1" if want == "control" else "2")
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]], user
        variants.add(want)
    for session in ("s-1", "s-2", "s-3", "s-4"):  # anonymous shoppers: the session id is the unit
        a, b = (recommend(replicas, name, session_id=session) for name in ("a", "b"))
        assert a["variant"] == b["variant"] == exp.assign(session).name
    assert variants == {"control", "treatment"}  # both arms were exercised


def test_an_alias_move_reaches_both_replicas_within_a_bound(replicas) -> None:
    """`storerec promote` moves champion 1 -> 3 in the registry; nothing is sent to the replicas.
    Each notices by polling the registry (serving.alias_poll_s) and reloads by itself."""
    (exp,) = load_experiments(replicas["root"] / "experiments.toml")
    user = next(u for u in replicas["users"] if exp.assign(u).name == "control")  # follows champion
    assert {name: recommend(replicas, name, user_id=user)["model_version"] for name in ("a", "b")} == {"a": "1", "b": "1"}
    assert main(["--config", str(replicas["trainer"]), "-q", "promote", "--version", "3"]) == 0
    moved = time.monotonic()
    reached: dict[str, float] = {}
    while len(reached) < 2 and time.monotonic() - moved < MOVE_BOUND_S + 5:
        for name in ("a", "b"):
            if name not in reached and replicas["http"][name].get("/readyz").json()["model_version"] == "3":
                reached[name] = time.monotonic() - moved
        time.sleep(0.1)
    print(f"alias move reached the replicas after {', '.join(f'{n}: {s:.2f} s' for n, s in sorted(reached.items()))}")
    assert set(reached) == {"a", "b"}, f"only {reached} serve version 3 after {MOVE_BOUND_S + 5:.0f} s"
    assert max(reached.values()) <= MOVE_BOUND_S, reached
    for name in ("a", "b"):  # the experiment's control arm (it follows champion) moved with it; the other did not
        assert recommend(replicas, name, user_id=user)["model_version"] == "3"
        other = next(u for u in replicas["users"] if exp.assign(u).name == "treatment")
        assert recommend(replicas, name, user_id=other)["model_version"] == "2"


def test_both_replicas_write_one_log_and_ab_report_reads_it(replicas, capsys: pytest.CaptureFixture[str]) -> None:
    """Lists from both replicas, feedback sent to the *other* replica (a load balancer does not
    stick), one PostgreSQL log; `storerec ab-report` counts every list and click of both."""
    clicks = 0
    for i, user in enumerate(replicas["users"][:30]):
        shown_by, told = ("a", "b") if i % 2 == 0 else ("b", "a")
        out = recommend(replicas, shown_by, user_id=user)
        events = [{"request_id": out["request_id"], "item_id": out["items"][0]["item_id"], "event_type": "click", "user_id": user}]
        if i % 5 == 0:
            events.append({"request_id": out["request_id"], "item_id": out["items"][0]["item_id"], "event_type": "purchase",
                           "revenue": 10.0, "user_id": user})
        r = replicas["http"][told].post("/events", json={"events": events}, timeout=30)
        assert r.status_code == 200 and r.json()["stored"] == len(events), r.text
        clicks += 1
    sent = {name: set(ids) for name, ids in replicas["requests"].items()}  # every list of this module, both replicas
    assert sent["a"] and sent["b"] and not sent["a"] & sent["b"]
    deadline = time.monotonic() + 10  # impressions are group-committed every eventlog.flush_ms (50 ms here)
    while True:
        logged = set(read_frames(replicas["eventlog"], experiment=EXPERIMENT)["impressions"]["request_id"].to_list())
        if logged >= sent["a"] | sent["b"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logged == sent["a"] | sent["b"], (len(logged), {n: len(s - logged) for n, s in sent.items()})

    out = replicas["root"] / "ab-report"
    capsys.readouterr()
    assert main(["--config", str(replicas["trainer"]), "-q", "ab-report", "--experiment", EXPERIMENT,
                 "--eventlog-url", replicas["eventlog"], "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    variants = report["variants"]
    printed = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nlists: replica a {len(sent['a'])}, replica b {len(sent['b'])}; ab-report: "
              + ", ".join(f"{n}: {v['users']} users, {v['impressions']} lists, {v['clicks']} clicks" for n, v in variants.items()))
    assert sum(v["impressions"] for v in variants.values()) == len(sent["a"]) + len(sent["b"])
    assert sum(v["clicks"] for v in variants.values()) == clicks
    assert report["orphans"] == 0
    assert set(variants) == {"control", "treatment"} and all(v["users"] > 0 for v in variants.values())
    assert "| control |" in printed  # the Markdown report on stdout
