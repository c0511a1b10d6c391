"""MLflow hygiene (#15 item 6): one experiment per job kind, a signature and input example on
every registered version, a description and tags that say what it was trained on and how it
scored; stores with runs in the one experiment of before keep working."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from storerec.cli import main
from storerec.core.settings import MlflowSettings, load_settings
from storerec.registry import tracking

SMALL = ["--users", "300", "--items", "100", "--events", "5000"]
NAME = "storerec-data"


def test_experiment_names_derive_from_the_base() -> None:
    cfg = MlflowSettings(experiment="shop")
    assert [tracking.experiment_name(cfg, k) for k in ("train", "tune", "evaluate", "ab-report", "retrain")] == [
        "shop/train", "shop/tune", "shop/evaluate", "shop/ab-report", "shop/retrain"]
    with pytest.raises(ValueError, match="unknown experiment kind 'serve'"):
        tracking.experiment_name(cfg, "serve")


def test_version_tags_and_description_say_data_split_and_metrics() -> None:
    info = {"model": "als", "data_folder": "shop", "data_fingerprint": "0123456789abcdef", "data_dir": "/d/shop",
            "split": {"split": "temporal", "split.test_days": 14, "split.reason": "auto: the last 14 days hold 900 users"},
            "metrics": {"ndcg@10": 0.123456, "coverage@10": 0.5, "diversity@10": 0.75, "precision@10": 0.01}}
    tags = tracking.version_tags(info)
    assert tags == {"model": "als", "split": "temporal", "split.test_days": "14", "split.reason": "auto: the last 14 days hold 900 users",
                    "ndcg_at_10": "0.123456", "coverage_at_10": "0.5", "diversity_at_10": "0.75"}
    assert tracking.version_description(info).splitlines() == [
        "als trained on shop (01234567) at /d/shop",
        "validation split: split=temporal, split.test_days=14",
        "validation metrics: ndcg@10=0.1235, coverage@10=0.5000, diversity@10=0.7500",
    ]
    assert tracking.version_description({}).splitlines()[1:] == ["validation split: not recorded", "validation metrics: not recorded"]
    schema = tracking.pyfunc_signature()
    assert schema.inputs.input_names() == ["user_id", "k"] and schema.params is None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hygiene")
    from tests._serve import write_config

    cfg = write_config(root, root / "data")
    assert main(["--config", str(cfg), "-q", "simulate", *SMALL]) == 0
    return {"root": root, "cfg": cfg}


@pytest.mark.slow
def test_an_older_store_keeps_its_runs_and_new_jobs_use_their_experiments(store, capsys, tmp_path: Path) -> None:
    """A version registered in the single ``storerec`` experiment of before stays listed and
    servable; ``storerec train`` then logs to ``storerec/train``, with a signature, an input
    example, a description and tags on its version; reading commands make no experiment."""
    settings = load_settings(store["cfg"], environ={})
    client = tracking.configure(settings.mlflow)
    assert client.get_experiment_by_name("storerec") is None  # a reader makes none
    old = client.create_experiment("storerec", artifact_location=(store["root"] / "old-artifacts").as_uri())
    with mlflow.start_run(experiment_id=old, run_name="before"):
        pass
    assert main(["--config", str(store["cfg"]), "-q", "train", "--model", "popularity"]) == 0
    assert main(["--config", str(store["cfg"]), "-q", "promote", "--version", "1"]) == 0
    capsys.readouterr()
    assert main(["--config", str(store["cfg"]), "models"]) == 0
    assert "champion" in capsys.readouterr().out
    client = tracking.configure(settings.mlflow)
    version = client.get_model_version(NAME, "1")
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "storerec/train"
    assert [r.info.run_name for r in client.search_runs([old])] == ["before"]  # the old experiment is left as it was
    train = client.get_experiment_by_name("storerec/train")
    assert train.artifact_location == Path(settings.mlflow.artifact_root).resolve().as_uri()  # the local store's rule
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert info.signature.inputs.input_names() == ["user_id", "k"]
    assert info.signature.outputs.input_names() == ["user_id", "item_id", "score", "rank"]
    example = mlflow.models.Model.load(f"models:/{NAME}/1").load_input_example()
    assert example.shape == (1, 2) and example["k"].iloc[0] == settings.training.k
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert example["user_id"].iloc[0] in set(pyfunc.unwrap_python_model().model.users.external.tolist())
    assert len(pyfunc.predict(example)) == settings.training.k
    assert version.tags["model"] == "popularity" and version.tags["data_folder"] == "data" and version.tags["split"]
    assert float(version.tags["ndcg_at_10"]) == pytest.approx(run.data.metrics["ndcg_at_10"], rel=1e-5)
    assert version.description.startswith("popularity trained on data (") and "validation metrics: ndcg@10=" in version.description


def test_a_reader_inside_a_job_leaves_the_jobs_experiment_active(store) -> None:
    """``configure()`` without a kind (e.g. ``version_spec`` inside a retrain) must not move the
    active experiment: the job's nested runs stay in their parent's experiment."""
    settings = load_settings(store["cfg"], environ={})
    tracking.configure(settings.mlflow, kind="retrain")
    with mlflow.start_run(run_name="parent") as parent:
        client = tracking.configure(settings.mlflow)
        with mlflow.start_run(run_name="child", nested=True) as child:
            pass
    assert client.get_run(child.info.run_id).info.experiment_id == parent.info.experiment_id
    assert client.get_experiment(parent.info.experiment_id).name == "storerec/retrain"
