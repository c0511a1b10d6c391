"""The training half of ``storerec run``: train every configured model on one split, register
each, publish one comparison report, and promote the best by NDCG@k to champion (the runner-up
to challenger)."""

from __future__ import annotations

from pathlib import Path

from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.registry import tracking
from storerec.training.compare import _context, default_report_dir, publish
from storerec.training.pipeline import Tables, make_split
from storerec.training.train import TrainSummary, train_one


def train_register_promote(settings: Settings, data_dir: Path, progress: Progress) -> str:
    client = tracking.configure(settings.mlflow)
    k = settings.training.k
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
    summaries: list[TrainSummary] = []
    for name in settings.training.run_models:
        summaries.append(train_one(settings, tables, split, name, register=True, progress=progress))
    report = publish({s.model: s.metrics for s in summaries}, k, default_report_dir(), _context(split))
    ranked = sorted(summaries, key=lambda s: s.metrics[f"ndcg@{k}"], reverse=True)
    name = settings.registered_model_name()
    tracking.set_alias(client, name, str(ranked[0].version), "champion")
    lines = [s.render(k) for s in summaries]
    lines.append(f"champion: {ranked[0].model} (version {ranked[0].version}, ndcg@{k}={ranked[0].metrics[f'ndcg@{k}']:.4f})")
    if len(ranked) > 1:
        tracking.set_alias(client, name, str(ranked[1].version), "challenger")
        lines.append(f"challenger: {ranked[1].model} (version {ranked[1].version})")
    lines.append(f"evaluation report: {report}")
    return "\n".join(lines)
