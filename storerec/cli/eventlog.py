"""``storerec eventlog``: the event log database's schema (Alembic migrations), contents and
retention. Registered on the main command line in ``storerec/cli.py``; heavy modules are
imported inside each command."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from storerec.core.errors import UserError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

url_option = click.option("--eventlog-url", default=None, help="Event log database (default: eventlog.url).")


def prepare_for_serving(settings: Any) -> str | None:
    """What ``storerec serve`` does to the event log before starting the workers: upgrade the
    schema (``eventlog.auto_upgrade``) or only check it, refusing an outdated one with what to do.
    Returns a line to print when something changed."""
    from storerec.events import eventlog

    ev = settings.eventlog
    if not ev.enabled:
        return None
    if ev.auto_upgrade:
        before, after = eventlog.upgrade(ev.url)
        return f"event log {eventlog.safe_url(ev.url)}: schema {before or 'empty'} -> {after}" if before != after else None
    try:
        eventlog.require_existing(ev.url)
        engine = eventlog.make_engine(ev.url)
        try:
            eventlog.check_schema(engine, ev.url)
        finally:
            engine.dispose()
    except UserError as exc:
        raise UserError(f"{exc} (eventlog.auto_upgrade is off)") from None
    return None


@click.group("eventlog", context_settings=CONTEXT_SETTINGS)
def eventlog_group() -> None:
    """The event log database (impressions and shopper events): schema, status, retention.

    The schema is versioned with Alembic (version table storerec_eventlog_version). `storerec
    serve` upgrades it by itself unless eventlog.auto_upgrade = false; the service's workers
    only check it and refuse an outdated one.
    """


@eventlog_group.command("upgrade", context_settings=CONTEXT_SETTINGS)
@url_option
@click.pass_obj
def upgrade_cmd(state: Any, eventlog_url: str | None) -> None:
    """Create the tables, or upgrade them to the newest schema revision (prints from -> to).

    A database made before schema versions, with exactly the tables of the first revision, is
    adopted with its rows; one with other tables of those names is refused. Several runs at once
    (several hosts starting) wait for each other.
    """
    from storerec.events import eventlog

    url = eventlog_url or state.settings.eventlog.url
    before, after = eventlog.upgrade(url)
    where = eventlog.safe_url(url)
    if before == after:
        click.echo(f"event log {where}: schema already at {after} (newest)")
    else:
        click.echo(f"event log {where}: schema {before or 'empty'} -> {after}")


@eventlog_group.command("status", context_settings=CONTEXT_SETTINGS)
@url_option
@click.pass_obj
def status_cmd(state: Any, eventlog_url: str | None) -> None:
    """Schema revision (and whether it is the newest), rows and oldest/newest timestamp per
    table. Reads only; nothing is created or migrated."""
    from storerec.events import eventlog

    info = eventlog.summary(eventlog_url or state.settings.eventlog.url)
    click.echo(f"event log:   {info['url']}")
    rev, head = info["revision"], info["head"]
    if rev == head:
        click.echo(f"schema:      revision {rev} (newest)")
    elif rev is not None:
        click.echo(f"schema:      revision {rev}; this version needs {head}: run `storerec eventlog upgrade`")
    elif info["unversioned"] == "empty":
        click.echo("schema:      none (no tables yet): `storerec eventlog upgrade` creates them")
    elif info["unversioned"] == "adoptable":
        click.echo(f"schema:      unversioned (made before schema versions): `storerec eventlog upgrade` adopts it as {head}")
    else:
        click.echo(f"schema:      unversioned, cannot be used: {info['problem']}")
    for name, t in info["tables"].items():
        span = f", {t['oldest']:%Y-%m-%d %H:%M:%S} .. {t['newest']:%Y-%m-%d %H:%M:%S} UTC" if t["rows"] else ""
        click.echo(f"{name + ':':<13}{t['rows']:,} rows{span}")


@eventlog_group.command("prune", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Delete impressions and events older than this many days (default: eventlog.retention_days, 90).",
)
@url_option
@click.pass_obj
def prune_cmd(state: Any, older_than_days: float | None, eventlog_url: str | None) -> None:
    """Delete impressions and shopper events older than the retention (prints the counts).

    Deletes in small transactions, so a running service keeps writing meanwhile (it also prunes
    by itself, hourly, when eventlog.retention_days is set).
    """
    import sqlalchemy as sa

    from storerec.events import eventlog

    days = older_than_days if older_than_days is not None else state.settings.eventlog.retention_days
    if not days:
        raise UserError("retention is off (eventlog.retention_days is 0 or unset): pass --older-than-days N")
    url = eventlog_url or state.settings.eventlog.url
    eventlog.require_existing(url)
    engine = eventlog.make_engine(url, bounded=False)
    try:
        eventlog.check_schema(engine, url)
        cutoff = eventlog.now_utc() - timedelta(days=days)
        n_imp, n_fb = eventlog.prune_before(engine, cutoff)
    except sa.exc.DBAPIError as exc:
        raise UserError(f"pruning the event log at {eventlog.safe_url(url)} failed: {eventlog.error_line(exc)}") from None
    finally:
        engine.dispose()
    click.echo(f"deleted {n_imp:,} impressions and {n_fb:,} events older than {days:g} days (before {cutoff:%Y-%m-%d %H:%M:%S} UTC)")
