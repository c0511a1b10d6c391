"""The ``storerec`` command line. Every Makefile target is a one-line call to a sub-command here.

Stage modules are imported inside each command, so ``storerec --help`` is fast and importing
this module does no work.
"""

from __future__ import annotations

import os
import sys

# polars' allocator (jemalloc) returns freed pages to the system at once instead of keeping them
# for reuse: on a 200k users x 500k items x 5M events store, `storerec train` peaks about 0.1 GiB
# lower (docs/benchmarks.md, "Evaluation at scale"). Set before polars is first imported; a value
# the user sets wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import click

from storerec import __version__
from storerec.core.errors import UserError
from storerec.models.registry import MODEL_CLASSES

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _State:
    def __init__(self, config: Path | None, quiet: bool) -> None:
        self.config = config
        self.quiet = quiet
        self._settings: Any = None

    @property
    def settings(self):
        if self._settings is None:
            from storerec.core.settings import load_settings

            self._settings = load_settings(self.config)
        return self._settings

    def data_dir(self, override: Path | None) -> Path:
        """The data folder in force (``--data-dir`` wins over data.dir; the settings follow it, so
        the registered model name derived from the folder does too)."""
        if override:
            self.settings.data.dir = Path(override)
        return Path(self.settings.data.dir)


def _parse_as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO date/time such as 2026-10-01 or 2026-10-01T12:00:00Z") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


FOLDER = click.Path(file_okay=False, path_type=Path)  # the type of an option naming a folder
FILE = click.Path(dir_okay=False, path_type=Path)  # ... or a file
data_dir_option = click.option("--data-dir", type=FOLDER, default=None, help="Data folder (default: data.dir from the config, './data').")


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="storerec")
@click.option(
    "--config",
    type=FILE,
    default=None,
    help="TOML config file (default: $STOREREC_CONFIG, else ./configs/storerec.toml if present).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, quiet: bool) -> None:
    """storerec: recommendations for online stores.

    Typical chain: simulate (or import) -> features -> train -> evaluate -> serve.
    """
    ctx.obj = _State(config, quiet)


@cli.command("import", context_settings=CONTEXT_SETTINGS)
@click.option("--events", type=FILE, help="Events file (CSV or Parquet).")
@click.option("--items", type=FILE, help="Items file (CSV or Parquet).")
@click.option("--users", type=FILE, help="Users file (CSV or Parquet).")
@click.option(
    "--mapping",
    type=FILE,
    help="TOML column mapping (see configs/mapping.example.toml).",
)
@click.option(
    "--movielens",
    type=FOLDER,
    help="Import a MovieLens-100K folder (u.data, u.item, u.user) instead of files.",
)
@click.option(
    "--quarantine",
    is_flag=True,
    help="Keep the good rows and write bad rows to <data-dir>/quarantine/ (default: refuse the import).",
)
@click.option("--max-report", default=20, show_default=True, help="Bad rows to print per table.")
@click.option("--append", is_flag=True, help="Add the rows to the tables already in the data folder (rows already there are skipped).")
@click.option("--replace", is_flag=True, help="Replace the tables already in the data folder.")
@data_dir_option
@click.pass_obj
def import_cmd(
    state: _State,
    events: Path | None,
    items: Path | None,
    users: Path | None,
    mapping: Path | None,
    movielens: Path | None,
    quarantine: bool,
    max_report: int,
    append: bool,
    replace: bool,
    data_dir: Path | None,
) -> None:
    """Validate and import events/items/users into the data folder as Parquet.

    Every bad row is reported with file, row, field, value and reason. By default a file with
    bad rows is refused and nothing changes; with --quarantine the bad rows go to a quarantine
    file and the rest is imported. A table the data folder already holds is only changed with
    --append or --replace. Outputs are written atomically.
    """
    from storerec.core.progress import Progress
    from storerec.features.importer import import_files, import_movielens

    if append and replace:
        raise click.UsageError("--append and --replace cannot be used together")
    mode: Literal["append", "replace"] | None = "append" if append else "replace" if replace else None
    progress = Progress("import", quiet=state.quiet)
    out = state.data_dir(data_dir)
    if movielens is not None:
        if events or items or users or mapping:
            raise click.UsageError("--movielens cannot be combined with --events/--items/--users/--mapping")
        summary = import_movielens(
            state.settings, movielens, out, quarantine=quarantine, max_report=max_report, progress=progress, mode=mode
        )
    else:
        if not (events or items or users):
            raise click.UsageError("give at least one of --events, --items, --users (or --movielens DIR)")
        summary = import_files(
            state.settings,
            out,
            events=events,
            items=items,
            users=users,
            mapping=mapping,
            quarantine=quarantine,
            max_report=max_report,
            progress=progress,
            mode=mode,
        )
    click.echo(summary.render())


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--seed", type=int, default=None, help="Random seed (default: simulate.seed, 42).")
@click.option("--users", "n_users", type=int, default=None, help="Number of users (default 5,000).")
@click.option("--items", "n_items", type=int, default=None, help="Number of items (default 2,000).")
@click.option("--events", "n_events", type=int, default=None, help="Target number of events (default 300,000).")
@click.option("--days", type=int, default=None, help="Days of history (default 180).")
@click.option("--force", is_flag=True, help="Overwrite a data folder that holds imported (not simulated) data.")
@data_dir_option
@click.pass_obj
def simulate(
    state: _State,
    seed: int | None,
    n_users: int | None,
    n_items: int | None,
    n_events: int | None,
    days: int | None,
    force: bool,
    data_dir: Path | None,
) -> None:
    """Build the built-in storefront: users, items and events with planted structure.

    Deterministic for a seed. Ground truth (true category tastes, complementary pairs) is saved
    in <data-dir>/truth/ for tests and A/B simulations.
    """
    from storerec.core.config import validate_config
    from storerec.core.progress import Progress
    from storerec.core.settings import SETTINGS_HINT, Settings
    from storerec.features.simulate import simulate_store

    options = dict(seed="--seed", n_users="--users", n_items="--items", n_events="--events", days="--days")
    given = dict(seed=seed, n_users=n_users, n_items=n_items, n_events=n_events, days=days)
    overrides = {k: v for k, v in given.items() if v is not None}
    sim_settings = validate_config(
        Settings, {"simulate": {**state.settings.simulate.model_dump(), **overrides}},
        header="invalid simulation settings:", hint=SETTINGS_HINT, sources={("simulate", k): options[k] for k in overrides},
    ).simulate
    summary = simulate_store(
        sim_settings, state.settings.events, state.data_dir(data_dir), force=force, progress=Progress("simulate", quiet=state.quiet)
    )
    click.echo(summary.render())


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--as-of", "as_of", default=None, help="Use only events before this UTC date/time (default: end of data).")
@click.option(
    "--out",
    type=FOLDER,
    default=None,
    help="Output folder (default: <data-dir>/profiles).",
)
@data_dir_option
@click.pass_obj
def features(state: _State, as_of: str | None, out: Path | None, data_dir: Path | None) -> None:
    """Build user profiles (RFM, segment, tier, points, affinities) and item features."""
    from storerec.core.progress import Progress
    from storerec.features.profiles import build_profiles

    ddir = state.data_dir(data_dir)
    summary = build_profiles(
        state.settings, ddir, as_of=_parse_as_of(as_of), out_dir=out, progress=Progress("features", quiet=state.quiet)
    )
    click.echo(summary.render())


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--no-train", is_flag=True, help="Stop after the profiles.")
@data_dir_option
@click.pass_obj
def run(state: _State, no_train: bool, data_dir: Path | None) -> None:
    """The whole chain on the built-in store: simulate (if needed) -> features -> train
    (training.run_models) -> evaluate -> register -> promote the best to champion.

    The simulation is reused when the data folder already holds one made with the same
    settings; a folder of imported data is used as it is.
    """
    from storerec.core.progress import Progress
    from storerec.features.profiles import build_profiles
    from storerec.features.simulate import ensure_simulated

    ddir = state.data_dir(data_dir)
    progress = Progress("run", quiet=state.quiet)
    click.echo(ensure_simulated(state.settings.simulate, state.settings.events, ddir, progress=progress))
    summary = build_profiles(state.settings, ddir, as_of=None, out_dir=None, progress=Progress("features", quiet=state.quiet))
    click.echo(summary.render())
    if not no_train:
        from storerec.training.chain import train_register_promote

        click.echo(train_register_promote(state.settings, ddir, Progress("train", quiet=state.quiet)))
        click.echo("next: `storerec serve` (or `make serve`) starts the HTTP service on the champion")


@cli.command(context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.pass_obj
def retrain(state: _State, data_dir: Path | None) -> None:
    """Unattended retraining (docs/retrain.md): sync the event log's new events -> features ->
    train training.run_models (automatic search) -> evaluate them and the champion (refit with its
    registered parameters on the same train window) on the newest validation window -> quality
    gate (NDCG@k not worse beyond a paired bootstrap CI, coverage and diversity within
    retrain.*_tolerance) -> promote, or register the candidate as challenger and say why ->
    POST /admin/reload on retrain.reload_urls. Evidence in the MLflow run retrain-<time>.

    Exit status: 0 promoted or kept by the gate; 1 promoted but a reload failed; 2 error;
    3 another retrain is running or the champion alias moved meanwhile (nothing promoted).
    """
    from storerec.core.progress import Progress
    from storerec.training.retrain import EXIT_CONFLICT, RetrainConflict
    from storerec.training.retrain import retrain as run_retrain

    try:
        outcome = run_retrain(state.settings, state.data_dir(data_dir), Progress("retrain", quiet=state.quiet))
    except RetrainConflict as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(EXIT_CONFLICT) from None
    click.echo(outcome.render())
    if outcome.exit_code:
        raise SystemExit(outcome.exit_code)


model_option = click.option(  # checked before anything is loaded (storerec.models.registry names them)
    "--model", "model", required=True, type=click.Choice(list(MODEL_CLASSES)), help="The model to fit."
)
param_option = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a parameter (repeatable), e.g. --param factors=128 --param interactions.recency_half_life=20.",
)


@cli.command(context_settings=CONTEXT_SETTINGS)
@model_option
@param_option
@click.option("--no-register", is_flag=True, help="Log the run but do not register a model version.")
@data_dir_option
@click.pass_obj
def train(state: _State, model: str, params: tuple[str, ...], no_register: bool, data_dir: Path | None) -> None:
    """Fit a model on the training window, evaluate it on the validation window, log it to
    MLflow and register a model version (refit on all data for serving)."""
    from storerec.core.progress import Progress
    from storerec.training.train import parse_params, run_training

    summary = run_training(
        state.settings, state.data_dir(data_dir), model, parse_params(params),
        register=not no_register, progress=Progress("train", quiet=state.quiet),
    )
    click.echo(summary.render(state.settings.training.k))


@cli.command(context_settings=CONTEXT_SETTINGS)
@model_option
@click.option("--trials", type=int, default=30, show_default=True,
              help="Most settings fitted (coordinate search stops earlier when a pass brings no gain).")
@click.option("--random", "random_search", is_flag=True, help="Draw --trials settings at random instead of the coordinate search.")
@click.option("--grid", is_flag=True, help="Try the whole grid.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
@click.option("--register", is_flag=True, help="Register the best trial as a new model version.")
@data_dir_option
@click.pass_obj
def tune(state: _State, model: str, trials: int, random_search: bool, grid: bool, seed: int, register: bool,
         data_dir: Path | None) -> None:
    """Search a model's main hyperparameters: select by NDCG@k on an inner validation window cut
    from the train window, then report the chosen setting once on the outer validation window.

    Coordinate search from the configured defaults: one parameter at a time, each value tried with
    the others at the best so far, passes repeated until one brings no gain. Every trial is fitted
    on the inner train window and scored on the inner validation window (selection); the best is
    fitted on the whole train window and evaluated once on the outer validation window (the
    estimate, free of the selection's optimism). One MLflow parent run per search (metrics
    inner_best_* and outer_*) and a nested run per trial.
    """
    from storerec.core.progress import Progress
    from storerec.training.tune import run_tuning

    if trials < 1:
        raise click.BadParameter("must be >= 1", param_hint="--trials")
    if grid and random_search:
        raise click.BadParameter("choose one of --grid and --random", param_hint="--grid")
    method = "grid" if grid else "random" if random_search else "coordinate"
    summary = run_tuning(
        state.settings, state.data_dir(data_dir), model, trials=trials, seed=seed, method=method,
        register=register, progress=Progress("tune", quiet=state.quiet),
    )
    click.echo(summary.render())


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--version", "version", required=True, help="Registered model version number.")
@click.option("--alias", default="champion", show_default=True, help="Alias to point at it (champion, challenger, ...).")
@data_dir_option
@click.pass_obj
def promote(state: _State, version: str, alias: str, data_dir: Path | None) -> None:
    """Point an alias (champion by default) at a registered model version (of the data folder's
    registered model, storerec-<folder name> unless mlflow.registered_model is set)."""
    from storerec.registry import tracking

    state.data_dir(data_dir)
    name = state.settings.registered_model_name()
    client = tracking.configure(state.settings.mlflow)
    tracking.set_alias(client, name, version, alias)
    click.echo(f"{name}@{alias} -> version {version}")


@cli.command("models", context_settings=CONTEXT_SETTINGS)
@click.option("--containing-forgotten", is_flag=True,
              help="Only the versions whose id maps still hold a user erased with `storerec forget-user` (retrain them out: see README).")
@data_dir_option
@click.pass_obj
def models_cmd(state: _State, containing_forgotten: bool, data_dir: Path | None) -> None:
    """List registered model versions with aliases, headline metrics and the data set each was
    trained on (folder name and fingerprint; * marks another folder than the one in force)."""
    from storerec.registry import tracking

    folder = state.data_dir(data_dir)
    client = tracking.configure(state.settings.mlflow)
    name = state.settings.registered_model_name()
    if containing_forgotten:
        from storerec.training.forget import versions_containing_forgotten

        rows = versions_containing_forgotten(client, name, folder)
        if not rows:
            click.echo(f"no version of {name} holds a forgotten user")
            return
        click.echo(f"versions of {name} that still hold forgotten users (train again, promote, then delete these):")
        for r in rows:
            held = "unreadable" if r["forgotten_users"] is None else f"{r['forgotten_users']} forgotten user(s)"
            click.echo(f"  version {r['version']}{' [' + r['aliases'] + ']' if r['aliases'] else ''}: {held}")
        return
    click.echo(tracking.render_versions(client, name, folder))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--models", "model_names", default=None, help="Comma-separated models to fit on one split and compare (default: training.run_models).")
@click.option("--runs", default=None, help="Comma-separated MLflow run ids to compare instead (must share a split).")
@click.option("--out", type=FOLDER, default=None, help="Report folder (default: reports/evaluation-<time> beside the data folder).")
@click.option(
    "--pipeline/--no-pipeline",
    default=False,
    show_default=True,
    help="Also evaluate each model through the serving pipeline (filters, extra candidates, MMR diversity), "
    "with and without diversity: shows what diversity costs in NDCG and gains in coverage and intra-list diversity.",
)
@click.option("--no-cache", is_flag=True, help="Fit every model again instead of reusing the fits kept in <data-dir>/cache/fits/ "
              "(reused only when the data, split and parameters are the same).")
@data_dir_option
@click.pass_obj
def evaluate(
    state: _State, model_names: str | None, runs: str | None, out: Path | None, pipeline: bool, no_cache: bool, data_dir: Path | None
) -> None:
    """Compare models or runs on the same split; writes a Markdown report with PNG charts
    (metrics per model, NDCG per segment, coverage against NDCG) and logs it to MLflow.

    Each model's fit on the split is kept in <data-dir>/cache/fits/ and reused by the next
    evaluate when the data, split and parameters are the same (--no-cache fits again;
    `make clean-data` removes the cache with the data)."""
    from storerec.core.progress import Progress
    from storerec.training.compare import compare_models, compare_runs

    if runs and model_names:
        raise click.UsageError("give --models or --runs, not both")
    if runs and pipeline:
        raise click.UsageError("--pipeline needs models fitted here (--models), not logged --runs")
    if runs:
        path = compare_runs(state.settings, [r.strip() for r in runs.split(",") if r.strip()], out)
    else:
        names = [m.strip() for m in model_names.split(",")] if model_names else state.settings.training.run_models
        path = compare_models(state.settings, state.data_dir(data_dir), names, out, Progress("evaluate", quiet=state.quiet), pipeline=pipeline,
                              use_cache=not no_cache)
    click.echo(f"report: {path}")


@cli.command("recommend-batch", context_settings=CONTEXT_SETTINGS)
@click.option("--model", "model_ref", default="champion", show_default=True,
              help="Version: 3, champion, or another registered model's: storerec@champion, storerec/3.")
@click.option("--users", "users_file", type=FILE, default=None,
              help="CSV/Parquet with user_id, or a text file with one id per line (default: every user of the data folder).")
@click.option("--segment", default=None, help="Only users of this lifecycle segment (new, active, dormant, churned).")
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--out", type=FILE, required=True, help="Output file: .parquet (Parquet) or .csv (CSV).")
@data_dir_option
@click.pass_obj
def recommend_batch(state: _State, model_ref: str, users_file: Path | None, segment: str | None, k: int, out: Path, data_dir: Path | None) -> None:
    """Top-k lists for many users (campaigns, or scoring storerec with your own evaluation)."""
    from storerec.core.progress import Progress
    from storerec.training.batch import recommend_batch as run_batch

    summary = run_batch(
        state.settings, state.data_dir(data_dir), model_ref=model_ref, users_file=users_file, segment=segment,
        k=k, out=out, progress=Progress("recommend-batch", quiet=state.quiet),
    )
    click.echo(summary.render())


@cli.command("campaign", context_settings=CONTEXT_SETTINGS)
@click.option("--kind", type=click.Choice(["replenish", "winback", "points-expiring", "new-arrivals"]), required=True,
              help="replenish: members whose repurchase falls due; winback: dormant members; points-expiring: members whose points "
              "expire within 30 days, items their balance covers; new-arrivals: new items in members' top categories.")
@click.option("--segment", default=None, help="Only members of this lifecycle segment (new, active, dormant, churned).")
@click.option("--tier", default=None, help="Only members of this tier (bronze, silver, gold, ...).")
@click.option("--point-value", type=float, default=0.10, show_default=True, help="points-expiring: currency per loyalty point.")
@click.option("--campaign-id", default=None, help="Id recorded in the event log (default: KIND-YYYYMMDD-HHMMSS); one campaign per id.")
@click.option("--k", type=click.IntRange(1, 100), default=5, show_default=True, help="Items per member.")
@click.option("--holdout", type=float, default=0.1, show_default=True, help="Share of members held out (sticky per campaign id; they receive nothing).")
@click.option("--due-days", type=click.IntRange(1, 365), default=7, show_default=True, help="replenish: due within this many days.")
@click.option("--cap-days", type=click.FloatRange(0, 365), default=7.0, show_default=True,
              help="Leave out members another campaign reached this recently (0: no cap).")
@click.option("--model", "model_ref", default="champion", show_default=True, help="Version whose ranker builds the lists.")
@click.option("--out", type=FILE, required=True, help="Item rows: .parquet or .csv; the members (holdout flag) go to NAME-members.SUFFIX.")
@data_dir_option
@click.pass_obj
def campaign_cmd(state: _State, kind: str, segment: str | None, tier: str | None, point_value: float, campaign_id: str | None, k: int,
                 holdout: float, due_days: int, cap_days: float, model_ref: str, out: Path, data_dir: Path | None) -> None:
    """Loyalty campaign lists through the service's ranking pipeline, with reasons, a sticky
    holdout and a frequency cap across campaigns (remembered in the event log)."""
    from datetime import UTC, datetime

    from storerec.core.progress import Progress
    from storerec.training.campaign import CampaignSpec, run_campaign

    cid = campaign_id or f"{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    spec = CampaignSpec(kind=kind, campaign_id=cid, k=k, holdout=holdout, due_days=due_days, point_value=point_value, segment=segment, tier=tier)
    summary = run_campaign(state.settings, state.data_dir(data_dir), spec, out=out, model_ref=model_ref, cap_days=cap_days,
                           progress=Progress("campaign", quiet=state.quiet))
    click.echo(summary.render())


@cli.command("campaign-report", context_settings=CONTEXT_SETTINGS)
@click.option("--campaign", "campaign_id", default=None, help="Campaign id (as recorded by `storerec campaign`; --list shows them).")
@click.option("--window-days", type=click.FloatRange(0, 3650, min_open=True), default=14.0, show_default=True,
              help="Purchases from the campaign's time up to this many days later count.")
@click.option("--holdout-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="The --holdout the campaign was run with, for the sample-ratio check (default: as the ledger recorded it, else 0.1).")
@click.option("--bootstrap", type=click.IntRange(0, 100_000), default=2000, show_default=True, help="Bootstrap resamples for the revenue CI (0: none).")
@click.option("--permutations", type=click.IntRange(0, 100_000), default=2000, show_default=True,
              help="Permutations for the revenue p-value (0: Welch's t-test's instead).")
@click.option("--eventlog-url", default=None, help="Event log database (default: eventlog.url).")
@click.option("--out", type=FILE, default=None, help="Also write the report here, atomically: Markdown, or JSON for a .json name.")
@click.option("--list", "list_only", is_flag=True, help="List the recorded campaigns and exit.")
@data_dir_option
@click.pass_obj
def campaign_report_cmd(state: _State, campaign_id: str | None, window_days: float, holdout_share: float | None, bootstrap: int, permutations: int,
                        eventlog_url: str | None, out: Path | None, list_only: bool, data_dir: Path | None) -> None:
    """A campaign's outcome: conversion and revenue per member, treated vs holdout, over a window
    after it (purchases from the data folder and the event log), with 95% CIs, p-values and the
    sample-ratio check."""
    from storerec.training.campaign_report import campaign_report, list_campaigns, render_list, write_report

    url = eventlog_url or state.settings.eventlog.url
    if list_only:
        click.echo(render_list(list_campaigns(url)))
        return
    if not campaign_id:
        raise UserError("give --campaign ID (`storerec campaign-report --list` lists the recorded campaigns)")
    md, result = campaign_report(state.settings, state.data_dir(data_dir), campaign_id, window_days=window_days, holdout_share=holdout_share,
                                 eventlog_url=url, bootstrap=bootstrap, permutations=permutations)
    click.echo(md)
    if out is not None:
        write_report(out, md, result)
        click.echo(f"report: {out}")


@cli.command("mlflow-ui", context_settings=CONTEXT_SETTINGS)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.pass_obj
def mlflow_ui(state: _State, port: int, host: str) -> None:
    """Open the MLflow UI on the configured tracking store (an MLflow server serves its own)."""
    import os
    import sys

    from storerec.registry import tracking

    uri = state.settings.mlflow.resolved_tracking_uri()
    if tracking.is_server(uri):
        click.echo(f"the tracking store is the MLflow server {uri}: its UI is there (open {uri} in a browser)")
        return

    exe = str(Path(sys.executable).with_name("mlflow"))
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    click.echo(" ".join(cmd))
    os.execvp(cmd[0], cmd)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--events", "n_events", type=int, default=10_000_000, show_default=True, help="Events for the scale run.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Runs per figure (the median is reported).")
@click.option("--out", type=FOLDER, default=Path("bench-out"), show_default=True, help="Scratch folder for generated data and the JSON results.")
@click.option(
    "--suite",
    type=click.Choice(["offline", "ml100k", "serve", "all"]),
    default="all",
    show_default=True,
    help="offline: simulator + profiles at scale; ml100k: every model on MovieLens-100K; "
    "serve: the HTTP service under load (against a hand-written server; 2k to 1M items).",
)
@click.option("--ml-dir", type=FOLDER, default=Path("../shared/data/ml-100k"), show_default=True, help="MovieLens-100K folder.")
@click.option("--trials", type=int, default=20, show_default=True, help="Tuning trials per model (ml100k suite).")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per wrk run (serve suite).")
@click.option("--connections", type=click.IntRange(1, 1024), default=8, show_default=True, help="wrk connections (serve suite).")
@click.option("--open-loop", "open_loop_s", type=float, default=15.0, show_default=True,
              help="Seconds per open-loop run at 50 %% and 80 %% of the measured maximum; 0 skips them (serve suite).")
@click.option("--scale/--no-scale", default=True, show_default=True,
              help="The scale table: 2k, 50k, 500k and 1M items (builds the stores under --out once; serve suite).")
@click.pass_obj
def bench(
    state: _State, n_events: int, repeats: int, out: Path, suite: str, ml_dir: Path, trials: int, duration: float, connections: int,
    open_loop_s: float, scale: bool,
) -> None:
    """Benchmarks: simulator and profiles at scale (seconds, peak memory), every model on
    MovieLens-100K against the libraries called directly, and the HTTP service under load (wrk
    and an open-loop generator; the full pipeline against a hand-written Starlette + implicit
    server, and at 2k to 1M items). Prints Markdown tables (medians)."""
    from storerec.tools.bench import ml100k_benchmark, run_benchmarks

    if suite in ("ml100k", "all"):
        if not (ml_dir / "u.data").exists():
            raise UserError(f"{ml_dir}/u.data not found: pass --ml-dir to the MovieLens-100K folder")
        click.echo(ml100k_benchmark(state.settings, ml_dir, out, trials=trials, repeats=repeats, quiet=state.quiet))
    if suite in ("serve", "all"):
        from storerec.tools.bench_serve import serve_benchmark

        click.echo(serve_benchmark(out, connections=connections, duration=duration, repeats=repeats, open_loop_s=open_loop_s,
                                   scale=scale, quiet=state.quiet))
    if suite in ("offline", "all"):
        click.echo(run_benchmarks(state.settings, n_events=n_events, repeats=repeats, out=out, quiet=state.quiet))


@cli.command("bench-quality", context_settings=CONTEXT_SETTINGS)
@click.option("--sets", default="ml100k,lastfm,online_retail", show_default=True,
              help="Data sets (ml100k reads --ml-dir; lastfm and online_retail read bench-out/datasets/<name>/raw).")
@click.option("--ml-dir", type=FOLDER, default=Path("../shared/data/ml-100k"), show_default=True, help="MovieLens-100K folder.")
@click.option("--out", type=FOLDER, default=Path("bench-out/quality"), show_default=True, help="Scratch folder (data folders, MLflow stores, logs, results).")
@click.option("--tune-models", default="als,ease,itemknn", show_default=True, help="Models `storerec tune` searches.")
@click.option("--tune-trials", type=int, default=30, show_default=True, help="`storerec tune --trials`.")
@click.option("--peer-trials", type=int, default=20, show_default=True, help="Random-search trials per peer library.")
@click.pass_obj
def bench_quality_cmd(state: _State, sets: str, ml_dir: Path, out: Path, tune_models: str, tune_trials: int, peer_trials: int) -> None:
    """storerec's `run` champion and `tune` against implicit, LightFM and EASE called directly and
    tuned, on MovieLens-100K and public data sets storerec was not tuned on; the same held-out
    test part and metric code for all. Prints the Markdown table (also in OUT/bench-quality.md)."""
    from storerec.tools.quality import SETS, bench_quality

    names = [s.strip() for s in sets.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown or not names:
        raise click.BadParameter(f"unknown data set(s) {unknown}; choose from {', '.join(SETS)}", param_hint="--sets")
    if "ml100k" in names and not (ml_dir / "u.data").exists():
        raise UserError(f"{ml_dir}/u.data not found: pass --ml-dir to the MovieLens-100K folder")
    models = [m.strip() for m in tune_models.split(",") if m.strip()]
    click.echo(bench_quality(ml_dir.resolve(), out.resolve(), sets=names, tune_models=models, tune_trials=tune_trials,
                             peer_trials=peer_trials, quiet=state.quiet))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--host", default=None, help="Interface (default serving.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default serving.port, 3000).")
@click.option("--model", "model_ref", default=None, help="Alias or version to serve (default serving.model, champion).")
@click.option("--workers", type=int, default=None, help="Worker processes (default serving.workers, 1).")
@data_dir_option
@click.pass_obj
def serve(state: _State, host: str | None, port: int | None, model_ref: str | None, workers: int | None, data_dir: Path | None) -> None:
    """Start the HTTP service (BentoML) on the registered model (champion by default).

    Endpoints: POST /recommend, /similar_items, /trending, /new_arrivals, /events, /score,
    /admin/reload; GET /readyz, /experiments, /healthz, /livez, /metrics, and the OpenAPI
    document at /docs.json (its page at /). Exits with an error when no model is registered.
    """
    import os
    import time

    t0 = time.time()  # the start watch counts from here (serving/startwatch.py)
    from storerec.cli.eventlog import prepare_for_serving
    from storerec.events.experiments import load_experiments
    from storerec.registry import tracking
    from storerec.serving import launch
    from storerec.serving.control import ControlStore, absolute_url, service_key

    settings = state.settings
    ref = model_ref or settings.serving.model
    folder = state.data_dir(data_dir).resolve()
    name = settings.registered_model_name()
    client = tracking.configure(settings.mlflow)
    version = tracking.resolve_version(client, name, ref)  # clear error if none
    tracking.check_version_for_folder(client, version, folder, ref)  # refuses a version trained on another data set
    experiments = load_experiments(settings.experiments.file)  # a broken file stops us here, with the reason
    if experiments:
        click.echo(f"experiments from {settings.experiments.file}: {', '.join(e.name for e in experiments)}")
    note = prepare_for_serving(settings)  # upgrades the event log schema (eventlog.auto_upgrade), or refuses an outdated one
    if note:
        click.echo(note)
    host = host or settings.serving.host
    port = port or settings.serving.port
    serving = settings.serving.model_copy(update={"workers": workers}) if workers else settings.serving
    # The workers share this store to serve one version (serving/control.py); a new start
    # serves `ref`, whatever an earlier run was reloaded to.
    control_url = absolute_url(settings.serving.control_url)
    control = ControlStore(control_url, service_key(name, host, port))
    if control.reset(ref, str(version.version)) is None:
        click.echo(f"warning: {control.error}; a reload will reach only the worker that takes it", err=True)
    control.close()
    # BentoML's process-level options (workers, access log, metrics); each worker reads the
    # settings itself, with what this start decided on top (serving/launch.py).
    env = {**os.environ, **launch.process_env(serving)}
    env.update({
        "STOREREC__SERVING__MODEL": ref,
        "STOREREC__DATA__DIR": str(folder),
        "STOREREC__MLFLOW__TRACKING_URI": settings.mlflow.resolved_tracking_uri(),
        "STOREREC__SERVING__CONTROL_URL": control_url,
        "STOREREC__SERVING__HOST": host,
        "STOREREC__SERVING__PORT": str(port),
        "STOREREC__SERVING__WORKERS": str(serving.workers),
    })
    if state.config:
        env["STOREREC_CONFIG"] = str(Path(state.config).resolve())
    explorer = ", explorer: /explore" if serving.explorer else ""
    click.echo(f"serving {name} version {version.version} ({ref}) on http://{host}:{port} (API page: /, OpenAPI: /docs.json{explorer})")
    if not settings.serving.admin_token:
        import secrets

        token = "sr-" + secrets.token_urlsafe(24)  # this start only; every worker gets it
        env["STOREREC__SERVING__ADMIN_TOKEN"] = token
        click.echo(launch.ADMIN_TOKEN_LINE.format(token=token))
    from storerec.serving.arbiter import PROMETHEUS_DIR_VAR, prometheus_dir

    env[PROMETHEUS_DIR_VAR] = str(prometheus_dir(host, port))  # its own metrics folder (serving/arbiter.py)
    from storerec.serving.startwatch import WATCH_VAR, StartWatch, probe_url, record_path

    # lines with the time taken and left until GET /readyz answers 200 (serving/startwatch.py)
    env[WATCH_VAR] = StartWatch(url=probe_url(host, port), record=record_path(folder), version=str(version.version),
                                workers=serving.workers, t0=t0).to_env()
    cmd = [sys.executable, "-m", "storerec.serving.arbiter", "serve", launch.SERVICE_IMPORT, "--host", host, "--port", str(port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--include-model", is_flag=True,
              help="Bake the version's artifacts (model, item features, serving snapshot) into the Bento: it then serves without MLflow.")
@click.option("--model", "model_ref", default=None, help="Alias or version (default serving.model, champion).")
@data_dir_option
@click.pass_obj
def build(state: _State, include_model: bool, model_ref: str | None, data_dir: Path | None) -> None:
    """Build a Bento of the service (`bentoml build`; docs/deploy.md) and print its tag.

    Without --include-model the Bento loads the version from the registry when it starts
    (MLFLOW_TRACKING_URI). Serve it with `bentoml serve TAG`; `bentoml containerize TAG` makes
    an OCI image.
    """
    from storerec.serving.bento import build as build_bento

    state.data_dir(data_dir)
    built = build_bento(state.settings, ref=model_ref, include_model=include_model)
    if not state.quiet:
        what = (f"{built.registered_model} version {built.version} ({built.ref}) baked in" if built.version
                else f"loads {built.registered_model}@{built.ref} from MLFLOW_TRACKING_URI at start")
        click.echo(f"built Bento {built.tag}: {what}", err=True)
    click.echo(built.tag)


@cli.command("forget-user", context_settings=CONTEXT_SETTINGS)
@click.argument("user_ids", nargs=-1)
@click.option("--from-file", type=FILE, default=None,
              help="More ids: one per line, or a CSV/Parquet file with a user_id column.")
@click.option("--eventlog-url", default=None, help="Event log to clean too (default: eventlog.url).")
@click.option("--no-eventlog", is_flag=True, help="Leave the event log alone (e.g. cleaned separately).")
@data_dir_option
@click.pass_obj
def forget_user(state: _State, user_ids: tuple[str, ...], from_file: Path | None, eventlog_url: str | None,
                no_eventlog: bool, data_dir: Path | None) -> None:
    """Erase users: their rows in the data folder (events, users, profiles, simulator truth,
    quarantine files) and in the event log, and record their hashed ids so that later imports
    drop them again and the service serves them as unknown users after its next reload.

    Registered model versions are not rewritten: `storerec models --containing-forgotten` lists
    those that still hold a forgotten user (retrain, promote, then delete them; see README).
    """
    from storerec.training.forget import forget_users, read_ids

    ids = read_ids(user_ids, from_file)
    url = None if no_eventlog else (eventlog_url or state.settings.eventlog.url)
    report = forget_users(state.data_dir(data_dir), ids, url)
    click.echo(report.render())
    click.echo("next: POST /admin/reload on a running service; `storerec models --containing-forgotten` lists versions to retrain")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--url", default=None, help="Fuzz this running service (default: start one on the built-in store under --out).")
@click.option("--examples", type=click.IntRange(1), default=200, show_default=True, help="Test cases per API operation.")
@click.option("--token", default=None, help="Admin token of the service at --url (so /admin/reload is fuzzed too).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=FOLDER, default=Path("bench-out/fuzz"), show_default=True,
              help="Work folder: store, model, service log and schemathesis reports.")
@click.pass_obj
def fuzz(state: _State, url: str | None, examples: int, token: str | None, seed: int, out: Path) -> None:
    """Fuzz the HTTP API with schemathesis against its live OpenAPI document (/docs.json): no
    server errors, every answer documented, invalid input refused, valid input accepted.
    Exits 1 when schemathesis finds a failure."""
    import uuid

    from storerec.tools.fuzz import run_schemathesis

    log = (lambda m: None) if state.quiet else (lambda m: click.echo(f"[fuzz] {m}", err=True))
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if url is None:
        from storerec.tools.bench_serve import Server, prepare_store

        cfg = prepare_store(out / "fuzz-store", log)
        token = "fuzz-" + uuid.uuid4().hex
        server = Server(cfg, {"STOREREC__SERVING__ADMIN_TOKEN": token, "STOREREC__SERVING__ACCESS_LOG": "false"}, out / "fuzz-serve.log")
        url = f"http://127.0.0.1:{server.port}"
    try:
        summary = run_schemathesis(url, out, examples=examples, token=token, seed=seed, log=log)
    finally:
        if server is not None:
            server.stop()
    click.echo(summary["tail"])
    click.echo(f"fuzz: {summary['cases']} test cases over {summary['operations']} operations; failures: {summary['failures'] or 'none'}; "
               f"report in {out / 'report'}")
    if summary["exit_code"] != 0:
        raise SystemExit(1)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("mode", type=click.Choice(["record", "compare"]))
@click.option("--file", "file", type=FILE, default=Path("bench-out/behaviour.jsonl"), show_default=True,
              help="The recorded responses (written by record, read by compare).")
@click.option("--out", type=FOLDER, default=Path("bench-out/behaviour"), show_default=True,
              help="Work folder: the store and six registered versions, made on the first run and reused after.")
@click.pass_obj
def behaviour(state: _State, mode: str, file: Path, out: Path) -> None:
    """The recorded-request check: the same 2,298 requests (hot, warm, cold and anonymous
    shoppers, context, every filter and diversity setting, similar items, trending, new arrivals,
    bare scores) to the real service on six registered versions. `record` keeps every response;
    `compare` (after a change) sends them again and exits 1 when any response differs."""
    from storerec.tools.behaviour import run

    log = (lambda m: None) if state.quiet else (lambda m: click.echo(f"[behaviour] {m}", err=True))
    if mode == "compare" and not file.exists():
        raise UserError(f"{file} does not exist: run `storerec behaviour record --file {file}` on the code to compare with first")
    differ = run(out, mode, file, log)
    if differ:
        raise SystemExit(1)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--duration", type=click.FloatRange(30), default=600, show_default=True, help="Seconds of load.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=16, show_default=True, help="Shoppers at a time.")
@click.option("--reload-every", type=click.FloatRange(5), default=30, show_default=True, help="Seconds between model reloads.")
@click.option("--lock-seconds", type=click.FloatRange(0), default=40, show_default=True, help="Exclusive lock on the event log, mid-run.")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--eventlog-url", default=None, help="Event log to use (default: a new SQLite file under --out; e.g. postgresql+psycopg://postgres@127.0.0.1/soak).")
@click.option("--out", type=FOLDER, default=Path("bench-out/soak"), show_default=True)
@click.pass_obj
def soak(state: _State, duration: float, concurrency: int, reload_every: float, lock_seconds: float, workers: int,
         eventlog_url: str | None, out: Path) -> None:
    """Soak the real service: steady load, a reload every 30 s, a 40 s event-log lock in the
    middle; then check that no acknowledged event was lost, impressions resumed, /readyz told
    the truth and worker memory stayed flat. Exits 1 when a check fails."""
    from storerec.tools.soak import soak as run_soak

    text, passed = run_soak(out, duration=duration, concurrency=concurrency, reload_every=reload_every, lock_seconds=lock_seconds,
                            workers=workers, eventlog_url=eventlog_url, quiet=state.quiet)
    click.echo(text)
    if not passed:
        raise SystemExit(1)


@cli.command("simulate-traffic", context_settings=CONTEXT_SETTINGS)
@click.option("--url", default=None, help="Service base URL (default http://<serving.host>:<serving.port>).")
@click.option("--shoppers", type=click.IntRange(1), default=1000, show_default=True, help="Distinct simulated shoppers.")
@click.option("--lists", "lists_per_shopper", type=click.IntRange(1), default=1, show_default=True, help="Lists each shopper asks for.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which shoppers, and their clicks and purchases.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Shoppers at a time.")
@click.option("--anonymous-share", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of shoppers without a user_id (session id only).")
@data_dir_option
@click.pass_obj
def simulate_traffic_cmd(
    state: _State, url: str | None, shoppers: int, lists_per_shopper: int, seed: int, concurrency: int, anonymous_share: float, data_dir: Path | None
) -> None:
    """Play shoppers of the built-in store against the running service: each asks /recommend
    for a list, then clicks, carts and buys according to the tastes the simulator planted
    (ground truth), sending the events through POST /events."""
    from storerec.core.progress import Progress
    from storerec.tools.traffic import simulate_traffic

    base = url or f"http://{state.settings.serving.host}:{state.settings.serving.port}"
    summary = simulate_traffic(
        base, state.data_dir(data_dir), shoppers=shoppers, lists_per_shopper=lists_per_shopper, seed=seed,
        concurrency=concurrency, anonymous_share=anonymous_share, progress=Progress("traffic", quiet=state.quiet),
    )
    click.echo(summary.render())
    if summary.errors:
        raise UserError(f"{len(summary.errors)} requests failed; first: {summary.errors[0]}")


@cli.command("ab-report", context_settings=CONTEXT_SETTINGS)
@click.option("--experiment", "name", required=True, help="Experiment name (from the experiments file).")
@click.option("--experiments-file", type=FILE, default=None, help="Default: experiments.file.")
@click.option("--eventlog-url", default=None, help="Event log database (default: eventlog.url).")
@click.option("--out", type=FOLDER, default=None, help="Report folder (default: reports/ab-<name>-<time>).")
@click.option("--resalt", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="A/A check: re-split the users with this many other salts (A/A experiments only).")
@click.pass_obj
def ab_report_cmd(state: _State, name: str, experiments_file: Path | None, eventlog_url: str | None, out: Path | None, resalt: int) -> None:
    """The A/B report of an experiment: per variant users, impressions, clicks, CTR, conversion,
    revenue per user; lifts over the control with 95% CIs and p-values (per user); the
    sample-ratio-mismatch check; a chart. Markdown + HTML, also logged to MLflow."""
    from datetime import datetime

    from storerec.training.ab_report import ab_report

    out = out or Path("reports") / f"ab-{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    path, result = ab_report(state.settings, name, out, experiments_file=experiments_file, eventlog_url=eventlog_url, resalt=resalt)
    click.echo(path.read_text())
    click.echo(f"report: {path} (and report.html, report.json, ab.png)")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--a", "ref_a", required=True, help="First registered version (alias or number), e.g. champion.")
@click.option("--b", "ref_b", required=True, help="Second registered version, e.g. challenger.")
@click.option("--out", type=FOLDER, default=None, help="Report folder (default: reports/evaluation-<time> beside the data folder).")
@data_dir_option
@click.pass_obj
def replay(state: _State, ref_a: str, ref_b: str, out: Path | None, data_dir: Path | None) -> None:
    """Offline replay before a launch: refit both versions' models (their exact logged params) on
    the events before the held-out window and compare them on it, raw and through the serving
    pipeline, with the same metrics and report as `storerec evaluate`."""
    from storerec.core.progress import Progress
    from storerec.training.compare import replay_versions

    path = replay_versions(state.settings, state.data_dir(data_dir), ref_a, ref_b, out, Progress("replay", quiet=state.quiet))
    click.echo(f"report: {path}")


@cli.command("export-events", context_settings=CONTEXT_SETTINGS)
@click.option("--out", type=FILE, required=True, help="Output file (.parquet or .csv) in the events table format.")
@click.option("--eventlog-url", default=None, help="Event log database (default: eventlog.url).")
@click.pass_obj
def export_events(state: _State, out: Path, eventlog_url: str | None) -> None:
    """Export logged shopper events in the events table format (click -> view, cart -> cart,
    purchase -> purchase with its revenue as price), ready for `storerec import --append --events`."""
    from storerec.events.export import export_events as run_export

    n = run_export(eventlog_url or state.settings.eventlog.url, out)
    click.echo(f"{n} events written to {out}; add them to your events with `storerec import --append --events {out}`")


@cli.command("sync-events", context_settings=CONTEXT_SETTINGS)
@data_dir_option
@click.option("--eventlog-url", default=None, help="Event log database (default: eventlog.url).")
@click.option("--full", is_flag=True, help="Ignore the watermark and read the whole log (rows already in the table are skipped).")
@click.pass_obj
def sync_events(state: _State, data_dir: Path | None, eventlog_url: str | None, full: bool) -> None:
    """Append the event log's new events to the data folder's events table: those above the
    watermark in <data-dir>/sync-state.json (the log's own event id), converted as by
    `storerec export-events`, rows already in the table skipped; the table is written atomically,
    then the watermark. Safe to run twice and to re-run after a crash."""
    from storerec.events.sync import sync_events as run_sync

    summary = run_sync(state.data_dir(data_dir), eventlog_url or state.settings.eventlog.url, full=full)
    for note in summary.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(summary.line())


@cli.command("live-replay", context_settings=CONTEXT_SETTINGS)
@click.option("--out", type=FOLDER, default=Path("bench-out/live"), show_default=True, help="Scratch folder (store, registry, logs, live-replay.json).")
@click.option("--source", type=FOLDER, default=None, help="Data folder to replay (default: the built-in store, simulated under --out).")
@click.option("--k", type=int, default=10, show_default=True, help="List length (hit rate@k).")
@click.option("--repeats", type=int, default=3, show_default=True, help="Load rounds per service (the median is reported).")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds measured per load round.")
@click.option("--asks/--no-asks", default=True, show_default=True, help="--no-asks: track the day in batches and measure the load only.")
@click.pass_obj
def live_replay(state: _State, out: Path, source: Path | None, k: int, repeats: int, duration: float, asks: bool) -> None:
    """Do lists react to POST /track? Hold out the last day, train on the rest, replay the day
    through a live service and a snapshot-only one, and compare next-cart/purchase hit rate@k;
    then /recommend p99 at concurrency 8 with the overlay full (storerec/tools/live_replay.py)."""
    from storerec.tools.live_replay import live_replay as run_replay
    from storerec.tools.live_replay import to_markdown

    click.echo(to_markdown(run_replay(out, source=source, k=k, repeats=repeats, duration=duration, asks=asks, quiet=state.quiet)))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.pass_obj
def config(state: _State) -> None:
    """Print the settings in force (defaults + config file + STOREREC__* variables) as JSON."""
    click.echo(state.settings.model_dump_json(indent=2))


from storerec.cli.eventlog import eventlog_group  # noqa: E402  (storerec eventlog upgrade|status|prune)

cli.add_command(eventlog_group)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns user errors into a message and exit status 2."""
    try:
        cli.main(args=argv, prog_name="storerec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
