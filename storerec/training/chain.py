"""The training half of ``storerec run``: train every configured model on one split, register
each, publish one comparison report, and promote a champion the validation data can support: the
best by NDCG@k when its per-user lead over every other candidate is beyond chance (95 %
confidence interval of the paired difference above 0); otherwise the previous champion's model if
it is among the tied; else the tied candidates are scored again on older windows
(``training.tie_windows``, :func:`_older_windows`) and compared on all windows pooled; still tied,
the first of them in ``training.model_prior`` (``training.tie_break``,
:mod:`storerec.evaluation.significance`). The best other candidate becomes challenger.

Each model's parameters come from an automatic coordinate search (``training.search_trials``,
``training.search_seconds``) scored on an inner split cut from the train window, so the validation
window that decides the champion played no part in choosing them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from storerec.core.errors import NotFoundError, UserError
from storerec.core.progress import Progress
from storerec.core.settings import Settings
from storerec.evaluation.significance import Decision, pick_champion
from storerec.registry import tracking
from storerec.training.compare import _context, default_report_dir, publish
from storerec.training.pipeline import Split, Tables, make_split, train_and_evaluate
from storerec.training.train import TrainSummary, train_one
from storerec.training.tune import inner_split, search_inner


def train_register_promote(settings: Settings, data_dir: Path, progress: Progress) -> str:
    client = tracking.configure(settings.mlflow, kind="train")  # its runs and evaluation report: the train experiment
    k = settings.training.k
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, settings.training)
        tables.release_events()  # read again for each refit on all data
    summaries: list[TrainSummary] = []
    searched: dict[str, str] = {}
    chosen: dict[str, dict] = {}
    cfg = settings.training
    for name in cfg.run_models:
        with progress.step(f"{name}: automatic search (at most {cfg.search_trials} settings, {cfg.search_seconds:.0f} s)"):
            params, _, account = search_inner(
                settings, tables, split, name, max_trials=cfg.search_trials, budget_s=cfg.search_seconds, progress=progress
            )
        searched[name] = account
        chosen[name] = params
        progress.info(f"{name}: {account}")
        summaries.append(train_one(settings, tables, split, name, params, register=True, progress=progress, reuse=True))
        tables.release_events()
    report = publish({s.model: s.metrics for s in summaries}, k, default_report_dir(settings), _context(split))
    name = settings.registered_model_name()
    per_user = _per_user_scores(summaries, k)
    previous = _champion_model(client, name)
    decision = pick_champion(per_user, cfg.model_prior, previous, tie_break=cfg.tie_break)
    if len(decision.tied) > 1 and previous not in decision.tied and cfg.tie_windows > 0:
        decision = _older_windows(settings, tables, split, decision, per_user, chosen, previous, progress)
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


def _older_windows(
    settings: Settings, tables: Tables, split: Split, decision: Decision, per_user: dict[str, np.ndarray],
    chosen: dict[str, dict], previous: str | None, progress: Progress,
) -> Decision:
    """More evidence for candidates the validation window cannot separate: each tied candidate,
    with its searched parameters, is fitted and scored again on up to ``training.tie_windows``
    older windows cut the same way, one at a time, until the pooled scores separate them. The
    first older window is the searches' inner split (it chose the parameters, so it is skipped);
    the ones before it played no part in any choice. The per-user scores of every window are
    pooled (users of different windows are independent samples) and the candidates compared
    again; still tied, the tie-break decides as before."""
    cfg = settings.training
    k = cfg.k
    pooled = {m: [per_user[m]] for m in decision.tied}
    used = []
    cur_tables, cur = tables, split
    for depth in range(cfg.tie_windows + 1):
        try:
            cur_tables, cur = inner_split(settings, cur_tables, cur)
        except UserError as exc:
            progress.info(f"tie: no older window to compare on ({exc})")
            break
        if depth == 0:
            continue  # the inner split: where the searches chose the parameters
        with progress.step(f"tie between {', '.join(decision.tied)}: scoring them on an older window ({cur.params.get('split')}, "
                           f"{cur.as_of:%Y-%m-%d})"):
            scores = {}
            for m in decision.tied:
                res = train_and_evaluate(settings, cur_tables, cur, m, chosen.get(m) or None, progress=progress)
                assert res.per_user is not None
                scores[m] = res.per_user
            users = scores[decision.tied[0]]["user_id"]
            for m in decision.tied:
                if not scores[m]["user_id"].equals(users):
                    raise AssertionError("tied candidates were evaluated on different users")
                pooled[m].append(scores[m]["ndcg"].to_numpy())
        used.append(f"{cur.as_of:%Y-%m-%d}")
        if len(pick_champion({m: np.concatenate(v) for m, v in pooled.items()}, cfg.model_prior).tied) == 1:
            break  # separated: no more windows needed
    if not used:
        return decision
    joined = {m: np.concatenate(v) for m, v in pooled.items()}
    again = pick_champion(joined, cfg.model_prior, previous, tie_break=cfg.tie_break)
    means = ", ".join(f"{m} {float(np.mean(v)):.4f}" for m, v in joined.items())
    listing = ", ".join(f"{d.other} {d.text()}" for d in decision.differences if d.other in decision.tied)
    evidence = (f"the validation window cannot separate {decision.best} from {listing}; "
                f"with {len(used)} older window(s) cut before {', '.join(used)} ({len(next(iter(joined.values()))):,} user scores each; "
                f"mean ndcg@{k}: {means}): ")
    return Decision(again.champion, again.best, again.tied, again.differences, evidence + again.reason)


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
