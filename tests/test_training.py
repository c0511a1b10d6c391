"""Training, MLflow tracking and the registry, end to end through the command line, on a small
simulated store with a private SQLite tracking store."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import mlflow
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from storerec.cli import main
from storerec.core.settings import load_settings
from storerec.models.base import ModelBase
from storerec.registry import tracking

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ml")
    cfg = root / "storerec.toml"
    cfg.write_text(
        f"""
[data]
dir = "{root / 'data'}"
[simulate]
n_users = 400
n_items = 300
n_events = 40000
[mlflow]
tracking_uri = "sqlite:///{root / 'mlflow.db'}"
artifact_root = "{root / 'artifacts'}"
[training]
run_models = ["popularity", "als"]
[training.models.lightfm]
epochs = 3
"""
    )
    assert main(["--config", str(cfg), "-q", "simulate"]) == 0
    assert main(["--config", str(cfg), "-q", "features"]) == 0
    return {"root": root, "cfg": cfg, "data": root / "data"}


def run(env: dict[str, Path], *args: str) -> int:
    return main(["--config", str(env["cfg"]), "-q", *args])


def client(env: dict[str, Path]) -> MlflowClient:
    return tracking.configure(load_settings(env["cfg"], environ={}).mlflow)


NAME = "storerec-data"  # the registered model of the data folder <root>/data


def test_train_logs_a_run_and_registers_a_self_contained_version(env, capsys, tmp_path: Path) -> None:
    assert run(env, "train", "--model", "als", "--param", "factors=16", "--param", "interactions.recency_half_life=30") == 0
    out = capsys.readouterr().out
    assert "als: ndcg@10=" in out and "registered as version" in out
    assert "no champion yet: serve this version with `make promote VERSION=1`" in out
    c = client(env)
    version = c.get_model_version(NAME, "1")
    r = c.get_run(version.run_id)
    assert r.data.params["model"] == "als" and r.data.params["factors"] == "16"
    assert float(r.data.params["interactions.recency_half_life"]) == 30
    # a 400-user store: the 14-day window is thin, so the auto split is per user, and says why
    assert r.data.params["split"] == "last_fraction", r.data.params
    assert r.data.params["split.reason"].startswith("auto: the last 14 days hold"), r.data.params
    assert {"data_fingerprint", "git_commit", "storerec_version"} <= set(r.data.tags)
    for m in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "mrr_at_10", "hitrate_at_10",
              "coverage_at_10", "diversity_at_10", "novelty_at_10", "avg_popularity_at_10"):
        assert m in r.data.metrics, m
    assert any(k.startswith("ndcg_at_10/segment_") for k in r.data.metrics)
    arts = {a.path for a in c.list_artifacts(r.info.run_id, "evaluation")}
    assert arts == {"evaluation/report.json", "evaluation/report.md"}
    # Everything serving needs comes from the registry alone.
    folder = tracking.download_version(c, version, tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"model", "item_features.parquet", "storerec.training.json"}
    model = ModelBase.load(folder / "model")
    assert model.name == "als"
    users = pl.read_parquet(env["data"] / "events.parquet")["user_id"].unique().sort().head(5).to_list()
    reco = model.recommend(users, k=5)
    assert reco.height == 25 and reco["user_id"].n_unique() == 5
    # ... and through the MLflow pyfunc flavour.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    import pandas as pd

    pred = pyfunc.predict(pd.DataFrame({"user_id": users, "k": 5}))
    assert len(pred) == 25
    # the run is in the train experiment; the version has a signature, an input example, a description and tags
    assert c.get_experiment(r.info.experiment_id).name == "storerec/train"
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == ["user_id", "k"] and info.signature.inputs.has_input_names()
    assert [c.name for c in info.signature.inputs.inputs if not c.required] == ["k"]
    assert info.signature.outputs.input_names() == ["user_id", "item_id", "score", "rank"]
    example = mlflow.models.Model.load(f"models:/{NAME}/1").load_input_example()
    assert list(example.columns) == ["user_id", "k"] and len(example) == 1 and example["k"].iloc[0] == 10
    assert example["user_id"].iloc[0] in set(model.users.external.tolist())  # an id the model holds already
    assert len(pyfunc.predict(example)) == 10
    tags = version.tags
    assert tags["model"] == "als" and tags["data_folder"] == "data" and tags["data_fingerprint"] == r.data.tags["data_fingerprint"]
    assert tags["split"] == "last_fraction" and tags["split.test_fraction"] == "0.2"
    assert tags["split.reason"] == r.data.params["split.reason"]
    for m in ("ndcg_at_10", "coverage_at_10", "diversity_at_10", "recall_at_10"):
        assert float(tags[m]) == pytest.approx(r.data.metrics[m], rel=1e-5), m
    lines = version.description.splitlines()
    assert lines[0] == f"als trained on data ({tags['data_fingerprint'][:8]}) at {env['data'].resolve()}", lines
    assert lines[1].startswith("validation split: split=last_fraction, split.test_fraction=0.2"), lines
    assert lines[2] == f"validation metrics: ndcg@10={r.data.metrics['ndcg_at_10']:.4f}, recall@10={r.data.metrics['recall_at_10']:.4f}, " \
                       f"coverage@10={r.data.metrics['coverage_at_10']:.4f}, diversity@10={r.data.metrics['diversity_at_10']:.4f}", lines


def test_promote_and_models(env, capsys) -> None:
    assert run(env, "train", "--model", "popularity") == 0
    capsys.readouterr()
    assert run(env, "promote", "--version", "2") == 0
    assert run(env, "promote", "--version", "1", "--alias", "challenger") == 0
    capsys.readouterr()
    assert run(env, "models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"registered model {NAME} (data folder {env['data'].resolve()})"
    assert lines[1].split()[:3] == ["version", "aliases", "model"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert rows["2"][1:3] == ["champion", "popularity"] and rows["1"][1:3] == ["challenger", "als"]
    assert run(env, "promote", "--version", "99") == 2
    assert "no version 99" in capsys.readouterr().err
    assert str(client(env).get_model_version_by_alias(NAME, "champion").version) == "2"


def test_recommend_batch(env, capsys, tmp_path) -> None:
    ids = tmp_path / "ids.txt"
    users = pl.read_parquet(env["data"] / "events.parquet")["user_id"].unique().sort().head(3).to_list()
    ids.write_text("\n".join(users + ["nobody"]) + "\n")
    out = tmp_path / "recs.parquet"
    assert run(env, "recommend-batch", "--model", f"{NAME}@challenger", "--users", str(ids), "--k", "4", "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "for 3/4 users" in text and "1 users got no list" in text
    recs = pl.read_parquet(out)
    assert recs.height == 12 and set(recs["model_version"]) == {"1"} and recs["rank"].max() == 4
    seg = tmp_path / "dormant.parquet"
    assert run(env, "recommend-batch", "--segment", "dormant", "--k", "3", "--out", str(seg)) == 0
    profiles = pl.read_parquet(env["data"] / "profiles" / "users.parquet")
    dormant = set(profiles.filter(pl.col("segment") == "dormant")["user_id"])
    got = pl.read_parquet(seg)
    assert set(got["user_id"]) == dormant  # popularity (champion) serves every user
    assert run(env, "recommend-batch", "--segment", "sleepy", "--out", str(seg)) == 2
    assert "unknown segment 'sleepy'" in capsys.readouterr().err
    assert run(env, "recommend-batch", "--model", "7", "--segment", "new", "--out", str(seg)) == 2
    assert "no model version '7'" in capsys.readouterr().err


def test_recommend_batch_for_everyone_as_csv(env, capsys, tmp_path) -> None:
    # Without --users/--segment it is every user of the data folder (`make recommend-batch`
    # without USERS failed); the format follows --out's suffix (recs.csv was written as Parquet).
    out = tmp_path / "recs.csv"
    assert run(env, "recommend-batch", "--k", "2", "--out", str(out)) == 0
    assert "users to" in capsys.readouterr().out
    recs = pl.read_csv(out, schema_overrides={"user_id": pl.String, "item_id": pl.String, "model_version": pl.String})
    assert recs.columns == ["user_id", "item_id", "score", "rank", "model", "model_version"]
    everyone = set(pl.read_parquet(env["data"] / "users.parquet")["user_id"]) | set(pl.read_parquet(env["data"] / "events.parquet")["user_id"])
    assert set(recs["user_id"]) == everyone and recs["rank"].max() == 2  # the champion (popularity) serves everyone
    for bad in ("recs.json", "recs"):
        assert run(env, "recommend-batch", "--out", str(tmp_path / bad)) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {tmp_path / bad}: unknown suffix") and ".parquet" in err and ".csv" in err
        assert not (tmp_path / bad).exists()
    assert "'.json'" in (run(env, "recommend-batch", "--out", str(tmp_path / "recs.json")), capsys.readouterr().err)[1]
    # the make target passes no --users without USERS
    make = subprocess.run(["make", "-n", "recommend-batch", "OUT=recs.csv"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=60)
    line = [cmd for cmd in make.stdout.splitlines() if "recommend-batch" in cmd][-1]
    assert "--users" not in line and "--out recs.csv" in line


def test_train_says_whether_the_new_version_beats_the_champion(env) -> None:
    """After a train: better or not than the champion on NDCG@k (only on the same data and split),
    and the command that promotes it."""
    from storerec.training.train import TrainSummary, against_champion

    settings = load_settings(env["cfg"], environ={})
    tracking.configure(settings.mlflow)
    c = client(env)
    champion = c.get_run(c.get_model_version_by_alias(NAME, "champion").run_id)  # popularity, version 2 (test_promote_and_models)
    als = c.get_run(c.get_model_version(NAME, "1").run_id)

    def summary(run, version: str) -> TrainSummary:
        return TrainSummary(run.data.params["model"], run.info.run_id, version, {"ndcg@10": run.data.metrics["ndcg_at_10"]}, {},
                            params=dict(run.data.params))

    fingerprint = als.data.tags["data_fingerprint"]
    line = against_champion(settings, summary(als, "1"), fingerprint)
    better = als.data.metrics["ndcg_at_10"] > champion.data.metrics["ndcg_at_10"]
    assert line.startswith("beats the champion" if better else "does not beat the champion"), line
    assert "same split" in line and "`make promote VERSION=1`" in line
    assert f"{als.data.metrics['ndcg_at_10']:.4f} against {champion.data.metrics['ndcg_at_10']:.4f}" in line
    other = against_champion(settings, summary(als, "1"), "0" * 16)
    assert "evaluated on other data" in other and "make replay A=champion B=1" in other
    assert against_champion(settings, summary(champion, "2"), fingerprint) == "this version is the champion"


def test_tune_selects_on_the_inner_window_and_reports_the_outer_once(env, capsys) -> None:
    """#15 item 5: trials are scored on an inner split of the train window (selection); the
    chosen setting is fitted on the whole train window and reported once on the outer validation
    window; the output and the MLflow run say which window each figure comes from."""
    from storerec.training.pipeline import Tables, make_split, train_and_evaluate
    from storerec.training.tune import inner_split

    assert run(env, "tune", "--model", "als", "--trials", "2") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("als: 2 trials scored on the inner validation window (last_fraction: each user's last 20% of the train "
                               "window; selection), best ndcg@10="), out
    assert lines[1].startswith("  estimate on the outer validation window (last_fraction: each user's last 20%; the chosen setting "
                               "fitted on the whole train window, evaluated once): ndcg@10="), out
    parent_id = out.split("parent run ")[1].split()[0]
    c = client(env)
    exp = c.get_experiment_by_name("storerec/tune")
    assert c.get_run(parent_id).info.experiment_id == exp.experiment_id
    children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 2 and all("ndcg_at_10" in r.data.metrics and r.data.tags["window"] == "inner (selection)" for r in children)
    parent = c.get_run(parent_id)
    best = max(r.data.metrics["ndcg_at_10"] for r in children)
    assert parent.data.metrics["inner_best_ndcg_at_10"] == pytest.approx(best)
    assert parent.data.tags["tune.selection_window"].startswith("inner: ") and parent.data.tags["tune.estimate_window"].startswith("outer: ")
    # the figures are what they say: the best trial's score is the inner window's, the estimate the outer's
    settings = load_settings(env["cfg"], environ={})
    tables = Tables.load(env["data"])
    outer = make_split(tables, settings.training)
    inner_tables, inner = inner_split(settings, tables, outer)
    chosen = lines[0].split(" with ", 1)[1]
    typed = {} if chosen == "defaults" else ast.literal_eval(chosen)
    assert {f"best.{key}" for key in typed} == {key for key in parent.data.params if key.startswith("best.")}
    assert train_and_evaluate(settings, inner_tables, inner, "als", typed).metrics["ndcg@10"] == pytest.approx(best)
    estimate = train_and_evaluate(settings, tables, outer, "als", typed).metrics["ndcg@10"]
    assert parent.data.metrics["outer_ndcg_at_10"] == pytest.approx(estimate)
    assert f"ndcg@10={estimate:.4f}" in lines[1]


def test_evaluate_writes_and_logs_a_report(env, capsys, tmp_path) -> None:
    out = tmp_path / "report"
    assert run(env, "evaluate", "--models", "popularity,itemknn", "--out", str(out)) == 0
    assert (out / "report.md").exists()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3
    text = (out / "report.md").read_text()
    assert "popularity" in text and "itemknn" in text and "segment" in text
    c = client(env)
    exp = c.get_experiment_by_name("storerec/evaluate")
    runs = c.search_runs([exp.experiment_id], "tags.kind = 'evaluation'")
    assert runs and any("popularity/ndcg_at_10" in r.data.metrics for r in runs)
    others = [e.experiment_id for e in c.search_experiments() if e.name not in ("storerec/evaluate", "storerec/train")]  # run: its own report
    assert not c.search_runs(others, "tags.kind = 'evaluation'"), "evaluation runs only in the evaluate experiment"


def test_evaluate_runs_compares_logged_runs(env, capsys, tmp_path) -> None:
    c = client(env)
    ids = [c.get_model_version(NAME, v).run_id for v in ("1", "2")]
    assert run(env, "evaluate", "--runs", ",".join(ids), "--out", str(tmp_path / "r")) == 0
    assert "als" in (tmp_path / "r" / "report.md").read_text()
    assert run(env, "evaluate", "--runs", "nope") == 2
    assert "no MLflow run 'nope'" in capsys.readouterr().err


def test_bad_input_is_a_clear_error_and_registers_nothing(env, capsys) -> None:
    before = len(client(env).search_model_versions(f"name='{NAME}'"))
    assert run(env, "train", "--model", "nosuch") == 2
    assert "nosuch" in capsys.readouterr().err
    # refused before any data is read: even a data folder that does not exist is not looked at
    assert run(env, "train", "--model", "nosuch", "--data-dir", str(tmp_path_missing := env["root"] / "no-such-folder")) == 2
    err = capsys.readouterr().err
    assert "'nosuch' is not one of" in err and str(tmp_path_missing) not in err
    assert run(env, "train", "--model", "als", "--param", "factors=-3") == 2
    assert "factors" in capsys.readouterr().err
    assert run(env, "train", "--model", "als", "--param", "factors") == 2
    assert "not key=value" in capsys.readouterr().err
    assert run(env, "tune", "--model", "als", "--trials", "0") == 2
    assert len(client(env).search_model_versions(f"name='{NAME}'")) == before


def test_run_chain_promotes_the_best(env, capsys) -> None:
    assert run(env, "run") == 0
    out = capsys.readouterr().out
    assert "champion:" in out and "challenger:" in out and "evaluation report:" in out
    # each model's parameters come from the automatic search on an inner split (#13 item 8)
    searched = [ln for ln in out.splitlines() if ln.startswith("  parameters: searched")]
    assert len(searched) == 2 and all("on an inner split" in ln and "with defaults ->" in ln for ln in searched), out
    c = client(env)
    champ = c.get_model_version_by_alias(NAME, "champion")
    chall = c.get_model_version_by_alias(NAME, "challenger")
    # `storerec run` trains: its runs (and its evaluation report) are in the train experiment
    train_exp = c.get_experiment_by_name("storerec/train").experiment_id
    assert c.get_run(champ.run_id).info.experiment_id == train_exp and c.get_run(chall.run_id).info.experiment_id == train_exp
    assert c.search_runs([train_exp], "tags.kind = 'evaluation'")
    assert champ.description and champ.tags["split"] and "ndcg_at_10" in champ.tags
    score = lambda v: c.get_run(v.run_id).data.metrics["ndcg_at_10"]
    model = lambda v: c.get_run(v.run_id).data.params["model"]
    line = next(ln for ln in out.splitlines() if ln.startswith("champion:"))
    if "older window" in line:  # tied on the validation window: decided on it and older windows pooled
        assert "the validation window cannot separate" in line and ("beyond chance" in line or "training.model_prior" in line), line
    elif "beyond chance" in line:  # the best by NDCG, separated from the rest
        assert score(champ) >= score(chall), line
    elif "previous champion's model" in line:  # tied with the model that was champion (earlier tests promoted one)
        assert "cannot separate" in line and f"previous champion's model ({model(champ)})" in line, line
    else:  # tied, no champion among them, no older window to compare on: the prior's first among the tied
        assert "cannot separate" in line and "training.model_prior" in line, line
        prior = ["als", "ease", "lightfm", "itemknn", "bpr", "popularity"]
        assert prior.index(model(champ)) < prior.index(model(chall)), line
    # #19 item 5: again on the same data, parameters and code: no new version (the search may choose other parameters, then one is new)
    before = {str(v.version) for v in c.search_model_versions(f"name='{NAME}'")}
    assert run(env, "run") == 0
    out = capsys.readouterr().out
    after = {str(v.version) for v in c.search_model_versions(f"name='{NAME}'")}
    again = c.search_runs([train_exp], "tags.reused_version != ''")
    assert len(after - before) + len(again) >= 2, "each model either reused a version or registered a new one"
    for r in again:
        assert r.data.tags["reused_version"] in before and r.data.params["model"] in ("popularity", "als")
    assert any(r.data.params["model"] == "popularity" for r in again), "popularity has no parameters to search: it is reused"


def test_a_tie_is_decided_on_older_windows_pooled(env) -> None:
    """#13 item 8: candidates the validation window cannot separate are fitted again on an older
    window (before the searches' inner window) and compared on both windows' users pooled; the
    decision equals pick_champion on those pooled scores, recomputed here independently."""
    import numpy as np

    from storerec.core.progress import Progress
    from storerec.evaluation.significance import pick_champion
    from storerec.training.chain import _older_windows
    from storerec.training.pipeline import Tables, make_split, train_and_evaluate
    from storerec.training.tune import inner_split

    settings = load_settings(env["cfg"], environ={})
    settings = settings.model_copy(update={"training": settings.training.model_copy(update={"tie_windows": 1})})
    tables = Tables.load(env["data"])
    split = make_split(tables, settings.training)
    val = {m: train_and_evaluate(settings, tables, split, m).per_user["ndcg"].to_numpy() for m in ("popularity", "als")}
    forced = pick_champion(val, ["als", "popularity"], z=1e6)  # an interval wide enough to tie anything
    assert set(forced.tied) == {"popularity", "als"}
    got = _older_windows(settings, tables, split, forced, val, {}, None, Progress("test", quiet=True))

    t1, s1 = inner_split(settings, tables, split)  # the searches' window: skipped
    t2, s2 = inner_split(settings, t1, s1)  # the older window the tie is decided on
    old = {m: train_and_evaluate(settings, t2, s2, m).per_user["ndcg"].to_numpy() for m in ("popularity", "als")}
    pooled = {m: np.concatenate([val[m], old[m]]) for m in val}
    want = pick_champion(pooled, settings.training.model_prior)
    assert got.champion == want.champion and got.tied == want.tied
    assert [d.mean for d in got.differences] == pytest.approx([d.mean for d in want.differences])
    assert got.differences[0].n_users == len(val["als"]) + len(old["als"]) > len(val["als"])
    assert "older window(s) cut before" in got.reason and f"{s2.as_of:%Y-%m-%d}" in got.reason
