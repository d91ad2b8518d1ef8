"""The ``autolog`` command: look at runs and experiments in any store."""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
import sys
import time
from pathlib import Path

import click

from autolog.config import settings
from autolog.stores import open_store
from autolog.stores.base import (
    KILLED,
    TERMINAL_STATUSES,
    RunNotFoundError,
    RunRecord,
    Store,
    StoreError,
)

_TRACKING_URI = click.option(
    "--tracking-uri",
    envvar="AUTOLOG_TRACKING_URI",
    default=None,
    help="Store to read (default: $AUTOLOG_TRACKING_URI, $MLFLOW_TRACKING_URI, "
    "then sqlite:///mlflow.db).",
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _open(tracking_uri: str | None) -> Store:
    uri = tracking_uri or settings.resolved_tracking_uri()
    try:
        return open_store(uri, create=False)
    except sqlite3.Error as exc:  # a file that is not a store (a sqlite:// URI has no password)
        raise click.ClickException(f"cannot read {uri}: {exc}") from exc


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _json_safe(value: object) -> object:
    """JSON has no NaN or infinity: print them as the strings MLflow's UI shows."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [headers, *rows]]
    return "\n".join(lines)


# What a store, a server, a file or an argument (a malformed URI, one store given twice)
# can do wrong while a command runs: the user's to fix, so one line, not a traceback.
OPERATIONAL_ERRORS = (StoreError, sqlite3.Error, OSError, ValueError)


class _Commands(click.Group):
    """A store that cannot be read, a server that does not answer, a file that is not a
    store: one line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OPERATIONAL_ERRORS as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            raise click.ClickException(message) from exc


@click.group(cls=_Commands)
@click.version_option(package_name="autolog-ml")
def main() -> None:
    """autolog: see what your fits recorded."""


@main.group()
def runs() -> None:
    """List and show runs."""


@runs.command("list")
@click.option("--experiment", "-e", default=None, help="Experiment name (default: all).")
@click.option("--max-results", default=100, show_default=True, type=click.IntRange(1))
@_TRACKING_URI
@_JSON
def runs_list(experiment: str | None, max_results: int, tracking_uri: str | None, as_json: bool) -> None:
    """Runs, newest first."""
    store = _open(tracking_uri)
    experiments = store.list_experiments()
    if experiment is not None:
        experiments = [exp for exp in experiments if exp.name == experiment]
        if not experiments:
            raise click.ClickException(f"no experiment named {experiment!r} in {store.uri}")
    names = {exp.experiment_id: exp.name for exp in experiments}
    records = store.search_runs(names, max_results=max_results)
    if as_json:
        click.echo(json.dumps([_json_safe(record.to_dict()) for record in records], indent=2))
        return
    if not records:
        click.echo("no runs")
        return
    rows = [[r.info.run_id, r.info.run_name, names.get(r.info.experiment_id, "?"), r.info.status,
             _time(r.info.start_time)] for r in records]
    click.echo(_table(["RUN ID", "NAME", "EXPERIMENT", "STATUS", "STARTED"], rows))


@runs.command("show")
@click.argument("run_id")
@_TRACKING_URI
@_JSON
def runs_show(run_id: str, tracking_uri: str | None, as_json: bool) -> None:
    """Params, tags, latest metrics and status of one run."""
    record = _open(tracking_uri).get_run(run_id)
    if as_json:
        click.echo(json.dumps(_json_safe(record.to_dict()), indent=2))
        return
    click.echo(_describe(record))


@runs.command("end")
@click.argument("run_ids", metavar="RUN_ID...", nargs=-1, required=True)
@click.option("--status", type=click.Choice(TERMINAL_STATUSES), default=KILLED, show_default=True,
              help="The status the runs end with.")
@_TRACKING_URI
def runs_end(run_ids: tuple[str, ...], status: str, tracking_uri: str | None) -> None:
    """End runs that a dead job left RUNNING (killed with SIGKILL, or its machine lost).

    A run that has already ended is left as it is. Writes to a server go straight to it,
    not through the spool, so the command says whether they arrived.
    """
    from autolog.sync import open_for_copy

    store = open_for_copy(tracking_uri or settings.resolved_tracking_uri(), create=False)
    now = int(time.time() * 1000)
    missing = []
    for run_id in run_ids:
        try:
            record = store.get_run(run_id)
        except RunNotFoundError as exc:
            missing.append(run_id)
            click.echo(f"{run_id}: {exc}", err=True)
            continue
        if record.info.status in TERMINAL_STATUSES:
            click.echo(f"{run_id}: already {record.info.status}, left as it is")
            continue
        store.update_run(run_id, status, now)
        click.echo(f"{run_id}: {record.info.status} -> {status}")
    if missing:
        sys.exit(1)


def _describe(record: RunRecord) -> str:
    info = record.info
    lines = [
        f"run        {info.run_id}",
        f"name       {info.run_name}",
        f"status     {info.status}",
        f"experiment {info.experiment_id}",
        f"started    {_time(info.start_time)}",
        f"ended      {_time(info.end_time)}",
    ]
    for title, values in (("params", record.params), ("metrics", record.metrics),
                          ("tags", record.tags)):
        lines.append(f"\n{title} ({len(values)})")
        lines.extend(f"  {key} = {values[key]}" for key in sorted(values))
    return "\n".join(lines)


@main.group()
def experiments() -> None:
    """List experiments."""


@experiments.command("list")
@_TRACKING_URI
@_JSON
def experiments_list(tracking_uri: str | None, as_json: bool) -> None:
    """Every experiment in the store."""
    store = _open(tracking_uri)
    found = store.list_experiments()
    if as_json:
        click.echo(json.dumps([{"experiment_id": e.experiment_id, "name": e.name} for e in found],
                              indent=2))
        return
    click.echo(_table(["ID", "NAME"], [[e.experiment_id, e.name] for e in found]))


@main.command("sync")
@click.argument("spools", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", metavar="URI", default=None,
              help="Copy runs from this store: sqlite:///path.db (an MLflow database, or a "
              "file autolog 0.1 wrote in its own format), an MLflow file store (./mlruns or "
              "file:///abs/path/mlruns), or http(s)://host:port.")
@click.option("--to", "dest", metavar="URI", default=None,
              help="With --from: copy runs into this store (a tracking URI, e.g. "
              "sqlite:///mlflow.db). Alone: send the spools to this MLflow server "
              "(http(s)://host:port), whatever server they name.")
@click.option("--experiment", "-e", "experiments", multiple=True,
              help="With --from/--to: copy only this experiment (repeatable; default: all).")
@click.option("--spool-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="AUTOLOG_SPOOL_DIR", default=None,
              help="Spools to send (default: $AUTOLOG_SPOOL_DIR, then ~/.autolog/spool).")
@click.option("--dry-run", is_flag=True,
              help="Write nothing; show what would be done. With --from: the runs, params, "
              "tags and metric points each experiment would have copied. Without: what each "
              "spool would send where (runs, points, batches, damaged or unsendable ones).")
def sync_command(spools: tuple[Path, ...], source: str | None, dest: str | None,
                 experiments: tuple[str, ...], spool_dir: Path | None, dry_run: bool) -> None:
    """Send what spools hold to their MLflow servers, or copy runs between two stores.

    Without --from: send every spool (or the SPOOLS named) that no running process holds
    (data kept while a server was down, or left by a process that exited or was killed).
    A spool is sent to the server it names only if that is the configured tracking
    server ($AUTOLOG_TRACKING_URI, then $MLFLOW_TRACKING_URI); --to URI sends it there
    instead.

    With --from and --to: copy runs, experiments matched by name: each run's name,
    status, times, params, tags, every metric point and its parent link. Running it
    again copies only what is new. This is also how runs leave the stores autolog no
    longer writes to: an autolog 0.1 file (autolog sync --from sqlite:///autolog.db --to
    sqlite:///mlflow.db) or an MLflow file store (autolog sync --from ./mlruns --to
    sqlite:///mlflow.db). Artifacts are not copied.

    Credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN.
    Exits 1 when anything was left unsent; --dry-run exits 0.
    """
    from autolog import sync

    if source is not None:
        if dest is None:
            raise click.UsageError("--from and --to go together")
        if spools:
            raise click.UsageError("spool files go without --from")
        click.echo(sync.copy_between(source, dest, experiments, dry_run=dry_run).summary())
        return
    if experiments:
        raise click.UsageError("--experiment goes with --from and --to")
    if dest is not None and not dest.startswith(("http://", "https://")):
        raise click.UsageError("without --from, --to names the MLflow server to send spools "
                               "to: http(s)://host:port")
    directory = spool_dir or sync.default_spool_dir()
    if dry_run:
        plans = sync.plan_spools(directory, files=spools, to=dest,
                                 configured=settings.resolved_tracking_uri())
        if not plans:
            click.echo(f"nothing to send: no spool in {directory}")
        for plan in plans:
            click.echo(_plan_lines(plan))
        return
    outcomes = sync.send_spools(directory, files=spools, to=dest,
                                configured=settings.resolved_tracking_uri())
    if not outcomes:
        click.echo(f"nothing to send: no spool in {directory}")
    for outcome in outcomes:
        for note in outcome.notes:
            click.echo(f"autolog: {note}", err=True)
        click.echo(_spool_line(outcome))
    if not all(outcome.complete for outcome in outcomes):
        sys.exit(1)


def _plan_lines(plan) -> str:
    """What ``sync --dry-run`` shows for one spool file: where, then one line per run."""
    if plan.held:
        return f"{plan.path.name}: skipped, {plan.problem}"
    if plan.sent_to is None:
        lines = [f"{plan.path}: would not be sent: {plan.problem}"]
    else:
        lines = [f"{plan.path}: would send to {plan.sent_to}"
                 + (f" (recorded for {plan.uri})" if plan.sent_to != plan.uri else "")
                 + (f" ({plan.problem})" if plan.problem else "")]
    for run in plan.runs:
        name = f" ({run.run_name})" if run.run_name else ""
        created = ", created on the server first" if run.server_id is None else ""
        ends = f", then ended {run.status}" if run.status else ""
        lines.append(f"  run {run.run_key}{name}: {run.points:,} metric points in "
                     f"{run.batches:,} batches{created}{ends}")
    left = plan.backlog
    lines.append(f"  in all: {left.describe() or 'nothing to send'}")
    return "\n".join(lines)


def _spool_line(outcome) -> str:
    """One line per spool file: what was sent, what is left and why."""
    if outcome.held:
        return f"{outcome.path.name}: skipped, {outcome.problem}"
    if outcome.sent_to is None:
        return f"{outcome.path}: {outcome.problem}"
    line = (f"{outcome.path.name}: sent {outcome.sent_points:,} metric points "
            f"({outcome.sent_batches} batches) to {outcome.sent_to}")
    if not outcome.left.empty:
        line += f"; left in {outcome.path}: {outcome.left.describe()}"
    if outcome.problem:
        line += f" ({outcome.problem})"
    return line


if __name__ == "__main__":
    sys.exit(main())
