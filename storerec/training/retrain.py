"""``storerec retrain`` (``make retrain``): sync -> features -> train -> quality gate -> promote -> reload.

One unattended step that a cron job or a systemd timer can run (docs/retrain.md):

1. **sync**: the event log's new events are appended to the data folder's events table
   (:func:`storerec.events.sync.sync_events`); skipped, with a note, when ``retrain.sync`` or
   ``eventlog.enabled`` is off or a SQLite log does not exist yet.
2. **features**: profiles and item features as of the end of the data (``storerec features``).
3. **candidates**: each of ``training.run_models`` with the automatic search on an inner split of
   the train window (:func:`storerec.training.tune.search_inner`), fitted on the train window of
   the newest split (:func:`storerec.training.pipeline.make_split`) and evaluated on its validation
   window; :func:`storerec.evaluation.significance.pick_champion` picks the best of them, as
   ``storerec run`` does.
4. **champion**: the current champion's model, *refit with its own registered parameters on the
   same train window*, is evaluated on the same validation window. Both sides learn from the same
   events and are scored on the same users, so the comparison is between configurations, not
   between an old fit and a new one (an old fit would be scored on events it may have been
   trained on).
5. **gate** (:func:`gate`): the best candidate is promoted only if every check passes, else it is
   registered as challenger and the report says which check refused it.
6. **promote** under the data folder's retrain lock, after checking that the champion alias
   still points at the version that was evaluated; then ``POST /admin/reload`` on every
   ``retrain.reload_urls`` (services also follow the alias within ``serving.alias_poll_s``).

The decision and its evidence (each contender's metrics, the bootstrap interval, the checks) go
to one MLflow parent run ``retrain-<UTC time>`` (tags, params, metrics, ``retrain/gate.json``)
with a nested run per candidate, and are printed.

Exit status (the CLI's): 0 when the gate promoted or kept the champion; 1 when a promotion
stands but a service reload failed; 2 on errors (nothing promoted); 3 when another retrain holds
the data folder's lock or the champion alias moved during the run (nothing promoted).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import sqlalchemy as sa

from storerec.core.errors import NotFoundError, UserError
from storerec.core.progress import Progress
from storerec.core.settings import RetrainSettings, Settings
from storerec.evaluation.significance import Difference, paired_bootstrap, pick_champion
from storerec.registry import tracking
from storerec.training.compare import version_spec
from storerec.training.pipeline import Tables, make_split, train_and_evaluate
from storerec.training.train import TrainSummary, register_version, train_one
from storerec.training.tune import search_inner

LOCK_FILE = ".retrain.lock"
EXIT_OK, EXIT_RELOAD_FAILED, EXIT_CONFLICT = 0, 1, 3


class RetrainConflict(UserError):
    """Another retrain holds the data folder's lock, or the champion alias moved meanwhile."""


# ---- the quality gate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One side of the gate, evaluated on the validation window: per-user NDCG@k over the
    validation users (the same users, in the same order, for every contender), catalogue
    coverage@k and intra-list diversity@k."""

    name: str
    per_user: np.ndarray
    coverage: float
    diversity: float

    @property
    def ndcg(self) -> float:
        return float(np.mean(self.per_user)) if len(self.per_user) else 0.0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    text: str


@dataclass(frozen=True)
class GateResult:
    promote: bool
    reason: str
    checks: tuple[Check, ...]
    ndcg: Difference | None  # candidate - champion, paired bootstrap (None on a first run)


def gate(candidate: Contender, champion: Contender | None, cfg: RetrainSettings, *, k: int = 10, same_data: bool = False) -> GateResult:
    """Whether ``candidate`` may replace ``champion``; both evaluated on the same validation users.

    With no champion (the first retrain) the candidate is promoted. Otherwise every check must pass:

    1. **NDCG@k not worse beyond the CI**: the per-user difference ``candidate - champion`` is
       resampled by user (``retrain.bootstrap_samples`` resamples, ``retrain.seed``); the candidate
       is refused when the upper end of the two-sided ``retrain.confidence`` percentile interval
       of the mean difference is below 0.
    2. **coverage**: refused when ``coverage@k`` is below ``(1 - retrain.coverage_tolerance)``
       times the champion's (a relative drop).
    3. **diversity**: refused when ``diversity@k`` (intra-list diversity) is below
       ``(1 - retrain.diversity_tolerance)`` times the champion's.
    4. **something to gain**: when the champion was trained on the same data (``same_data``:
       the same data fingerprint), a candidate that is not *better* beyond the CI (lower end of
       the interval above 0) is refused: it would only replace a version by an equivalent one.
       On new data a tie is promoted, so that the served model learns the new events.
    """
    if champion is None:
        return GateResult(True, f"no champion yet: the best candidate ({candidate.name}) is promoted", (), None)
    diff = paired_bootstrap(candidate.per_user, champion.per_user, champion.name, samples=cfg.bootstrap_samples,
                            confidence=cfg.confidence, seed=cfg.seed)
    level = f"{cfg.confidence:.0%} bootstrap CI"
    ci = f"difference {diff.text()} ({level}, {cfg.bootstrap_samples} resamples of {diff.n_users:,} users)"
    checks = [Check(
        "ndcg", not diff.high < 0,
        f"ndcg@{k} {candidate.ndcg:.4f} vs champion {champion.ndcg:.4f}: {ci}: "
        + ("worse beyond the CI (upper end below 0)" if diff.high < 0 else "not worse beyond the CI"),
    )]
    for name, tol, cand, champ in (("coverage", cfg.coverage_tolerance, candidate.coverage, champion.coverage),
                                   ("diversity", cfg.diversity_tolerance, candidate.diversity, champion.diversity)):
        floor = champ * (1 - tol)
        change = (cand / champ - 1) if champ > 0 else 0.0
        ok = cand >= floor - 1e-12
        checks.append(Check(name, ok, f"{name}@{k} {cand:.4f} vs champion {champ:.4f} ({change:+.1%}; "
                                      f"tolerance -{tol:.0%}, floor {floor:.4f}): " + ("within tolerance" if ok else "drops beyond tolerance")))
    if same_data:
        better = diff.low > 0
        checks.append(Check("gain", better, "same data as the champion: " + (
            "the candidate is better beyond the CI (lower end above 0)" if better
            else "the candidate is not better beyond the CI (lower end not above 0), so promoting it would only replace the "
            "champion by an equivalent version")))
    failed = [c for c in checks if not c.passed]
    if failed:
        return GateResult(False, "refused: " + "; ".join(c.text for c in failed), tuple(checks), diff)
    return GateResult(True, f"{candidate.name} passes every check against the champion ({ci})", tuple(checks), diff)


# ---- the lock -----------------------------------------------------------------------------------


@contextmanager
def retrain_lock(data_dir: Path) -> Iterator[Path]:
    """Hold ``<data_dir>/.retrain.lock`` (an exclusive ``flock``) for the whole retrain; a second
    retrain on the same folder fails at once with :class:`RetrainConflict` naming the holder. The
    kernel releases the lock when the holder exits, however it exits (SIGKILL included), so a
    crashed retrain never leaves a stale lock."""
    path = Path(data_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RetrainConflict(f"another retrain holds {path} ({holder}): nothing done; run again once it has finished") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


# ---- the retrain --------------------------------------------------------------------------------


@dataclass
class RetrainOutcome:
    lines: list[str] = field(default_factory=list)
    promoted: bool = False
    version: str | None = None  # the candidate version this retrain registered
    exit_code: int = EXIT_OK

    def render(self) -> str:
        return "\n".join(self.lines)


def sync_step(settings: Settings, data_dir: Path) -> list[str]:
    """Step 1; the lines to print."""
    if not settings.retrain.sync:
        return ["sync: skipped (retrain.sync is off)"]
    if not settings.eventlog.enabled:
        return ["sync: skipped (eventlog.enabled is off: no event log is kept)"]
    url = settings.eventlog.url
    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        raise UserError(f"eventlog.url {url!r} is not a database URL (or set retrain.sync = false)") from None
    db = parsed.database
    if parsed.get_backend_name() == "sqlite" and db and db != ":memory:" and not db.startswith("file:") and not Path(db).exists():
        return [f"sync: skipped (no event log at {db} yet: nothing was logged there)"]
    from storerec.events.sync import sync_events

    summary = sync_events(data_dir, url)
    lines = [f"note: {n}" for n in summary.notes]
    lines.append(summary.line() if summary.read else f"sync: the event log at {summary.url} has no new events")
    return lines


def retrain(settings: Settings, data_dir: Path, progress: Progress) -> RetrainOutcome:
    """The whole ``storerec retrain`` (module docstring), under the data folder's lock."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist: create it with `storerec simulate` or `storerec import`, or pass --data-dir")
    if not settings.training.run_models:
        raise UserError("training.run_models is empty: retrain has no candidate to train")
    with retrain_lock(data_dir):
        out = RetrainOutcome()
        with progress.step("sync events"):
            out.lines += sync_step(settings, data_dir)
        from storerec.features.profiles import build_profiles

        out.lines.append(build_profiles(settings, data_dir, progress=progress).render().splitlines()[0])
        _train_and_gate(settings, data_dir, progress, out)
    if out.promoted and settings.retrain.reload_urls:
        with progress.step("reload the services"):
            assert out.version is not None
            lines, ok = reload_services(settings, out.version)
        out.lines += lines
        if not ok:
            out.exit_code = EXIT_RELOAD_FAILED
            out.lines.append("a reload failed: the promotion stands; the services pick the champion up within serving.alias_poll_s, "
                             "or call POST /admin/reload on them")
    return out


def _train_and_gate(settings: Settings, data_dir: Path, progress: Progress, out: RetrainOutcome) -> None:
    client = tracking.configure(settings.mlflow, kind="retrain")  # the parent run and its nested runs: <mlflow.experiment>/retrain
    cfg, k = settings.training, settings.training.k
    registered = settings.registered_model_name()
    with progress.step("load data and split"):
        tables = Tables.load(data_dir)
        split = make_split(tables, cfg)
        tables.release_events()
    champ_version = _champion(client, registered)
    started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tracking.store_access(mlflow.get_tracking_uri(), "log the retrain run"), mlflow.start_run(run_name=f"retrain-{started}") as parent:
        mlflow.set_tags({**tracking.standard_tags(tables.fingerprint, tables.source), "kind": "retrain"})
        mlflow.log_params({**{f"retrain.{key}": str(v)[:500] for key, v in settings.retrain.model_dump().items()},
                           **{key: str(v)[:500] for key, v in split.params.items()}, "run_models": ",".join(cfg.run_models)})
        summaries: list[TrainSummary] = []
        searched: dict[str, dict[str, Any]] = {}
        accounts: dict[str, str] = {}
        for name in cfg.run_models:
            with progress.step(f"{name}: automatic search (at most {cfg.search_trials} settings, {cfg.search_seconds:.0f} s)"):
                params, _, account = search_inner(settings, tables, split, name, max_trials=cfg.search_trials,
                                                  budget_s=cfg.search_seconds, progress=progress)
            searched[name], accounts[name] = params, account
            summaries.append(train_one(settings, tables, split, name, params, register=False, progress=progress,
                                       run_name=f"{name}-candidate", nested=True))
            tables.release_events()
        champion = None
        champ_model = None
        champ_per_user = None
        same_data = False
        if champ_version is not None:
            number, champ_model, overrides = _champion_spec(settings, champ_version)
            with progress.step(f"champion (version {number}, {champ_model}): refit with its registered parameters on the train window"):
                res = train_and_evaluate(settings, tables, split, champ_model, overrides)
            champ_metrics, champ_per_user = res.metrics, res.per_user
            del res
            with mlflow.start_run(run_name=f"champion-v{number}-refit", nested=True):
                mlflow.set_tags({"kind": "retrain-champion-refit", "champion_version": number})
                mlflow.log_metrics({tracking.metric_key(m): v for m, v in champ_metrics.items()})
            assert champ_per_user is not None
            champion = _contender(f"champion v{number} ({champ_model})", champ_per_user, champ_metrics, k)
            data = tracking.version_data(client, champ_version)
            same_data = data.get(tracking.TAG_FINGERPRINT) == tables.fingerprint
        contenders = {s.model: _contender(s.model, s.per_user, s.metrics, k) for s in summaries}
        users = [_users(s.per_user) for s in summaries] + ([_users(champ_per_user)] if champion is not None else [])
        if any(not np.array_equal(u, users[0]) for u in users):
            raise AssertionError("the contenders were evaluated on different users")
        pick = pick_champion({n: c.per_user for n, c in contenders.items()}, cfg.model_prior, champ_model, tie_break=cfg.tie_break)
        best = next(s for s in summaries if s.model == pick.champion)
        result = gate(contenders[best.model], champion, settings.retrain, k=k, same_data=same_data)
        evidence = _evidence(contenders, champion, settings.retrain, k)

        with mlflow.start_run(run_id=best.run_id, nested=True):
            seconds: dict[str, float] = {}
            version = register_version(settings, tables, best.model, searched[best.model], best.params or {}, best.metrics,
                                       progress=progress, seconds=seconds)
            mlflow.log_metrics({f"seconds_{key}": v for key, v in seconds.items()})
        decision = "promoted" if result.promote else "kept"
        if result.promote:
            now = _champion(client, registered)
            before = champ_version.version if champ_version is not None else None
            if (now.version if now is not None else None) != before:
                tracking.set_alias(client, registered, version, "challenger")
                _tag_gate(client, registered, version, "conflict", f"the champion alias moved during the retrain; {result.reason}")
                _log_gate(parent.info.run_id, "conflict", result, evidence, version, champ_version, best, pick.reason, k)
                raise RetrainConflict(
                    f"the champion alias moved during this retrain (version {before or 'none'} -> {now.version if now else 'none'}): "
                    f"{best.model} version {version} was registered as challenger, not promoted; run retrain again")
            tracking.set_alias(client, registered, version, "champion")
        else:
            tracking.set_alias(client, registered, version, "challenger")
        for key, value in (("retrain.decision", decision), ("retrain.reason", result.reason[:5000]), ("retrain.run_id", parent.info.run_id)):
            client.set_model_version_tag(registered, version, key, value)
        _tag_gate(client, registered, version, "promoted" if result.promote else "refused", result.reason)
        _log_gate(parent.info.run_id, decision, result, evidence, version, champ_version, best, pick.reason, k)

    out.promoted = result.promote
    out.version = version
    out.lines += [f"{s.render(k)}\n  parameters: {accounts[s.model]}" for s in summaries]
    if champion is not None:
        out.lines.append(f"{champion.name}, refit on the same train window: ndcg@{k}={champion.ndcg:.4f} "
                         f"coverage@{k}={champion.coverage:.4f} diversity@{k}={champion.diversity:.4f}")
    out.lines.append(f"best candidate: {best.model} ({pick.reason if len(summaries) > 1 else 'the only one'})")
    n_users = len(contenders[best.model].per_user)
    out.lines.append(f"gate (validation window {split.params['split']}, {n_users:,} users):")
    out.lines += [f"  [{'ok' if c.passed else 'refused'}] {c.text}" for c in result.checks] or ["  (no champion to compare with)"]
    out.lines += ["  every candidate against the champion:", *(f"    {line}" for line in evidence["lines"])] if champion is not None else []
    if result.promote:
        out.lines.append(f"PROMOTED: {best.model} version {version} is champion (was {_describe(champ_version)}): {result.reason}")
    else:
        out.lines.append(f"KEPT: {_describe(champ_version)} stays champion; {best.model} version {version} is challenger, {result.reason}")
    out.lines.append(f"evidence: MLflow run retrain-{started} ({parent.info.run_id}), artifact retrain/gate.json")


def _tag_gate(client: Any, registered: str, version: str, verdict: str, reason: str) -> None:
    """The gate's verdict on this version (``gate.decision``: promoted, refused — it stays
    challenger —, or conflict) and why (``gate.reason``), also as the description's last line.
    ``retrain.decision`` says what happened to the champion (promoted/kept)."""
    tracking.annotate_version(client, registered, version, {"gate.decision": verdict, "gate.reason": reason[:5000]},
                              note=f"retrain gate: {verdict}: {reason}")


def _users(per_user: Any) -> np.ndarray:
    assert per_user is not None, "train_and_evaluate keeps the per-user scores of the split"
    return per_user["user_id"].to_numpy()


def _contender(name: str, per_user: Any, metrics: dict[str, float], k: int) -> Contender:
    return Contender(name, per_user["ndcg"].to_numpy(), metrics.get(f"coverage@{k}", 0.0), metrics.get(f"diversity@{k}", 0.0))


def _champion(client: Any, registered: str) -> Any:
    try:
        return tracking.resolve_version(client, registered, "champion")
    except NotFoundError:
        return None


def _champion_spec(settings: Settings, version: Any) -> tuple[str, str, dict[str, Any]]:
    """The champion's model and registered parameters (its ``storerec.training.json``)."""
    try:
        return version_spec(settings, str(version.version))
    except (KeyError, OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the champion's (version {version.version}) registered parameters ({exc!r}): the gate needs "
                        "them to refit it; point the champion at a version `storerec train`/`run`/`retrain` registered") from None


def _describe(version: Any) -> str:
    return f"version {version.version}" if version is not None else "no champion"


def _evidence(contenders: dict[str, Contender], champion: Contender | None, cfg: RetrainSettings, k: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    lines = []
    for name, c in contenders.items():
        row: dict[str, Any] = {f"ndcg@{k}": c.ndcg, f"coverage@{k}": c.coverage, f"diversity@{k}": c.diversity}
        if champion is not None:
            d = paired_bootstrap(c.per_user, champion.per_user, champion.name, samples=cfg.bootstrap_samples, confidence=cfg.confidence, seed=cfg.seed)
            row.update({"ndcg_diff": d.mean, "ndcg_diff_low": d.low, "ndcg_diff_high": d.high})
            lines.append(f"{name}: ndcg@{k} {c.ndcg:.4f} ({d.text()}), coverage@{k} {c.coverage:.4f}, diversity@{k} {c.diversity:.4f}")
        rows[name] = row
    if champion is not None:
        rows["champion"] = {"name": champion.name, f"ndcg@{k}": champion.ndcg, f"coverage@{k}": champion.coverage,
                            f"diversity@{k}": champion.diversity, "n_users": len(champion.per_user)}
    return {"contenders": rows, "lines": lines}


def _log_gate(run_id: str, decision: str, result: GateResult, evidence: dict[str, Any], version: str, champ_version: Any,
              best: TrainSummary, pick_reason: str, k: int) -> None:
    """Tags, metrics and ``retrain/gate.json`` on the parent run (the active run)."""
    mlflow.set_tags({"retrain.decision": decision, "retrain.candidate": best.model, "retrain.candidate_version": version,
                     "retrain.champion_before": str(champ_version.version) if champ_version is not None else "none",
                     "retrain.reason": result.reason[:5000]})
    metrics: dict[str, float] = {"gate_promote": float(result.promote)}
    if result.ndcg is not None:
        metrics.update({f"gate_ndcg_at_{k}_diff": result.ndcg.mean, f"gate_ndcg_at_{k}_diff_low": result.ndcg.low,
                        f"gate_ndcg_at_{k}_diff_high": result.ndcg.high})
    for name, row in evidence["contenders"].items():
        metrics.update({f"{name}/{tracking.metric_key(m)}": float(v) for m, v in row.items() if isinstance(v, float) and math.isfinite(v)})
    mlflow.log_metrics(metrics)
    mlflow.log_dict({
        "decision": decision, "promote": result.promote, "reason": result.reason, "candidate": best.model, "candidate_version": version,
        "candidate_choice": pick_reason, "champion_before": str(champ_version.version) if champ_version is not None else None,
        "checks": [{"name": c.name, "passed": c.passed, "text": c.text} for c in result.checks],
        "ndcg_difference": None if result.ndcg is None else {"mean": result.ndcg.mean, "low": result.ndcg.low, "high": result.ndcg.high,
                                                             "n_users": result.ndcg.n_users},
        "contenders": evidence["contenders"],
    }, "retrain/gate.json")


# ---- reload -------------------------------------------------------------------------------------


def reload_services(settings: Settings, version: str) -> tuple[list[str], bool]:
    """``POST <url>/admin/reload`` (the service's configured alias again) on every
    ``retrain.reload_urls``, with ``serving.admin_token``; a service that answers with another
    version than ``version`` (it follows another alias, or a pinned version) counts as failed."""
    import httpx

    token = settings.serving.admin_token
    lines: list[str] = []
    ok = True
    for url in settings.retrain.reload_urls:
        target = url.rstrip("/") + "/admin/reload"
        if not token:
            lines.append(f"reload {target}: not called: serving.admin_token is not set")
            ok = False
            continue
        try:
            resp = httpx.post(target, json={}, headers={"x-admin-token": token}, timeout=settings.retrain.reload_timeout_s)
        except httpx.HTTPError as exc:
            lines.append(f"reload {target}: failed: {exc.__class__.__name__}: {exc}")
            ok = False
            continue
        if resp.status_code != 200:
            lines.append(f"reload {target}: failed: HTTP {resp.status_code}: {resp.text[:300]}")
            ok = False
            continue
        body = resp.json()
        served = str(body.get("model_version"))
        if served != str(version):
            lines.append(f"reload {target}: failed: it serves version {served} (follows {body.get('follows')}), not the new champion {version}")
            ok = False
            continue
        lag = "" if body.get("complete", True) else f" (not yet on workers {body.get('lagging')}: they keep retrying)"
        lines.append(f"reload {target}: serving version {served}{lag}")
    return lines, ok
