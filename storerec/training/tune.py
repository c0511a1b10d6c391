"""``storerec tune``: random (or grid) search over a model's main hyperparameters.

One parent MLflow run per search, one nested run per trial; the best trial by NDCG@k on the
validation window is reported (and registered with ``--register``).
"""

from __future__ import annotations

import itertools
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from storerec.core.errors import UserError
from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.models.ease import reuse_gram
from storerec.registry import tracking
from storerec.training.pipeline import Tables, make_split, train_and_evaluate
from storerec.training.train import TrainSummary, train_one

DECAY = [None, 5, 10, 20, 50]
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    "als": {
        "factors": [32, 64, 128],
        "regularization": [0.01, 0.1, 1.0, 3.0, 10.0],
        "alpha": [1.0, 2.0, 5.0, 10.0, 20.0],
        "iterations": [10, 15, 25],
        "interactions.recency_half_life": DECAY,
    },
    "bpr": {
        "factors": [32, 64, 128],
        "learning_rate": [0.005, 0.01, 0.05, 0.1],
        "regularization": [0.001, 0.01, 0.1],
        "iterations": [50, 100, 200],
    },
    "lightfm": {
        "no_components": [32, 64, 128],
        "learning_rate": [0.01, 0.03, 0.05, 0.1],
        "epochs": [10, 20, 30, 50],
        "item_alpha": [0.0, 1e-6, 1e-5],
        "use_weights": [False, True],
        "use_user_features": [True, False],  # uninformative user features dilute the identity embeddings (#13)
        "use_item_features": [True, False],
        "interactions.recency_half_life": DECAY,
    },
    "ease": {
        "regularization": [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0],
        "interactions.recency_half_life": [None, 2, 5, 10, 20],
    },
    "itemknn": {
        "similarity": ["cosine", "bm25", "tfidf"],
        "neighbours": [20, 50, 100, 200],
        "interactions.recency_half_life": DECAY,
    },
    "popularity": {"kind": ["global", "category", "trending"]},
}


def candidates(model: str, trials: int, seed: int, grid: bool) -> list[dict[str, Any]]:
    """``trials`` distinct parameter sets (all of them with ``grid``), deterministic for ``seed``."""
    if model not in SEARCH_SPACES:
        raise UserError(f"no search space for model {model!r}; tunable: {', '.join(SEARCH_SPACES)}")
    space = SEARCH_SPACES[model]
    keys = list(space)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]
    if grid:
        return combos
    random.Random(seed).shuffle(combos)
    return combos[:trials]


@dataclass
class TuneSummary:
    model: str
    parent_run_id: str
    trials: list[tuple[dict[str, Any], float]]
    best_params: dict[str, Any]
    best_score: float
    metric: str
    registered: TrainSummary | None

    def render(self) -> str:
        lines = [f"{self.model}: {len(self.trials)} trials, best {self.metric}={self.best_score:.4f} with {self.best_params}"]
        lines.append(f"  parent run {self.parent_run_id}")
        if self.registered:
            lines.append(f"  best registered as version {self.registered.version}")
        else:
            lines.append("  (not registered; re-run with --register, or `storerec train --model ... --param key=value`)")
        return "\n".join(lines)


def _model_reuse(model: str) -> AbstractContextManager[object]:
    """Work shared by the trials of one search: EASE computes its Gram matrix once per
    interaction matrix and only re-factorises it for each ``regularization``."""
    return reuse_gram() if model == "ease" else nullcontext()


def run_tuning(
    settings: Settings,
    data_dir: Path,
    model: str,
    *,
    trials: int,
    seed: int = 0,
    grid: bool = False,
    register: bool = False,
    progress: Progress,
) -> TuneSummary:
    tracking.configure(settings.mlflow)
    k = settings.training.k
    metric = f"ndcg@{k}"
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
    space = candidates(model, trials, seed, grid)
    results: list[tuple[dict[str, Any], float]] = []
    cached = None
    with mlflow.start_run(run_name=f"tune-{model}") as parent, _model_reuse(model):
        mlflow.set_tags({**tracking.standard_tags(tables.fingerprint, tables.source), "tune_model": model})
        for i, params in enumerate(space, 1):
            res = train_and_evaluate(settings, tables, split, model, params, cached)
            cached = res.prepared
            score = res.metrics[metric]
            results.append((params, score))
            with mlflow.start_run(run_name=f"trial-{i}", nested=True):
                mlflow.log_params(res.params)
                mlflow.log_metrics({tracking.metric_key(m): v for m, v in res.metrics.items()})
            best = max(s for _, s in results)
            progress.info(f"trial {i}/{len(space)}: {metric}={score:.4f} (best {best:.4f}) {params}")
        best_params, best_score = max(results, key=lambda r: r[1])
        mlflow.log_params({f"best.{key}": v for key, v in best_params.items()})
        mlflow.log_metric(tracking.metric_key(f"best_{metric}"), best_score)
        registered = None
        if register:
            registered = train_one(
                settings, tables, split, model, best_params, register=True, progress=progress, run_name=f"{model}-tuned", nested=True
            )
    return TuneSummary(model, parent.info.run_id, results, best_params, best_score, metric, registered)
