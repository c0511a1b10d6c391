"""The training half of ``storerec run``: train every configured model on one split, register
each, publish one comparison report, and promote a champion the validation data can support: the
best by NDCG@k when its per-user lead over every other candidate is beyond chance (95 %
confidence interval of the paired difference above 0); otherwise the previous champion's model if
it is among the tied, else the first tied model in ``training.model_prior``
(:mod:`storerec.evaluation.significance`). The best other candidate becomes challenger.

Each model's parameters come from an automatic coordinate search (``training.search_trials``,
``training.search_seconds``) scored on an inner split cut from the train window, so the validation
window that decides the champion played no part in choosing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from storerec.core.errors import NotFoundError
from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.evaluation.significance import pick_champion
from storerec.registry import tracking
from storerec.training.compare import _context, default_report_dir, publish
from storerec.training.pipeline import Tables, make_split
from storerec.training.train import TrainSummary, train_one
from storerec.training.tune import search_inner


def train_register_promote(settings: Settings, data_dir: Path, progress: Progress) -> str:
    client = tracking.configure(settings.mlflow)
    k = settings.training.k
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
        tables.release_events()  # read again for each refit on all data
    summaries: list[TrainSummary] = []
    searched: dict[str, str] = {}
    cfg = settings.training
    for name in cfg.run_models:
        with progress.step(f"{name}: automatic search (at most {cfg.search_trials} settings, {cfg.search_seconds:.0f} s)"):
            params, _, account = search_inner(
                settings, tables, split, name, max_trials=cfg.search_trials, budget_s=cfg.search_seconds, progress=progress
            )
        searched[name] = account
        progress.info(f"{name}: {account}")
        summaries.append(train_one(settings, tables, split, name, params, register=True, progress=progress))
        tables.release_events()
    report = publish({s.model: s.metrics for s in summaries}, k, default_report_dir(), _context(split))
    name = settings.registered_model_name()
    decision = pick_champion(_per_user_scores(summaries, k), settings.training.model_prior, _champion_model(client, name))
    by_model = {s.model: s for s in summaries}
    champion = by_model[decision.champion]
    tracking.set_alias(client, name, str(champion.version), "champion")
    lines = [f"{s.render(k)}\n  parameters: {searched[s.model]}" for s in summaries]
    lines.append(f"champion: {champion.model} (version {champion.version}, ndcg@{k}={champion.metrics[f'ndcg@{k}']:.4f}): {decision.reason}")
    others = sorted((s for s in summaries if s is not champion), key=lambda s: s.metrics[f"ndcg@{k}"], reverse=True)
    if others:
        tracking.set_alias(client, name, str(others[0].version), "challenger")
        lines.append(f"challenger: {others[0].model} (version {others[0].version})")
    lines.append(f"evaluation report: {report}")
    return "\n".join(lines)


def _per_user_scores(summaries: list[TrainSummary], k: int) -> dict[str, np.ndarray]:
    """Each candidate's per-user NDCG@k over the same validation users (the split's)."""
    out = {}
    users = None
    for s in summaries:
        assert s.per_user is not None, "train_one keeps the per-user scores of the split"
        if users is None:
            users = s.per_user["user_id"]
        elif not s.per_user["user_id"].equals(users):
            raise AssertionError("candidates were evaluated on different users")
        out[s.model] = s.per_user["ndcg"].to_numpy()
    return out


def _champion_model(client: MlflowClient, registered_model: str) -> str | None:
    """The model name of the current champion version, if there is one."""
    try:
        version = tracking.resolve_version(client, registered_model, "champion")
    except NotFoundError:
        return None
    run = client.get_run(version.run_id) if version.run_id else None
    return run.data.params.get("model") if run is not None else None
