"""The ``autolog`` command: look at runs and experiments in any store."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import click

from autolog.config import settings
from autolog.models.saver import HISTORY_TAG
from autolog.stores import open_store
from autolog.stores.base import (
    KILLED,
    TERMINAL_STATUSES,
    RunNotFoundError,
    RunRecord,
    Store,
    StoreError,
)
from autolog.uris import redact_uri, split_credentials

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
@click.option("--filter", "filter_string", default="", metavar="EXPR",
              help="MLflow's search filter, e.g. \"metrics.acc > 0.9 AND params.model = 'cnn'\".")
@click.option("--order-by", multiple=True, metavar="EXPR",
              help="MLflow's order, e.g. 'metrics.acc DESC' (repeatable; default: newest first).")
@click.option("--columns", default="", metavar="KEYS",
              help="More table columns, comma-separated: metrics.x,params.y,tags.z.")
@click.option("--max-results", default=100, show_default=True, type=click.IntRange(1))
@_TRACKING_URI
@_JSON
def runs_list(experiment: str | None, filter_string: str, order_by: tuple[str, ...], columns: str,
              max_results: int, tracking_uri: str | None, as_json: bool) -> None:
    """Runs, newest first, or those MLflow's search finds (--filter, --order-by)."""
    extra = _columns(columns)
    store = _open(tracking_uri)
    experiments = store.list_experiments()
    if experiment is not None:
        experiments = [exp for exp in experiments if exp.name == experiment]
        if not experiments:
            raise click.ClickException(f"no experiment named {experiment!r} in {redact_uri(store.uri)}")
    names = {exp.experiment_id: exp.name for exp in experiments}
    records = store.search_runs(names, filter_string, order_by, max_results)
    if as_json:
        click.echo(json.dumps([_json_safe(record.to_dict()) for record in records], indent=2))
        return
    if not records:
        click.echo("no runs")
        return
    rows = [[r.info.run_id, r.info.run_name, names.get(r.info.experiment_id, "?"), r.info.status,
             _time(r.info.start_time), *(_cell(r, field, key) for field, key in extra)]
            for r in records]
    headers = ["RUN ID", "NAME", "EXPERIMENT", "STATUS", "STARTED"]
    click.echo(_table(headers + [f"{field}.{key}" for field, key in extra], rows))


def _columns(spec: str) -> list[tuple[str, str]]:
    """``metrics.x,params.y,tags.z`` as (field, key) pairs; a key may be in backticks."""
    found = []
    for column in filter(None, (part.strip() for part in spec.split(","))):
        field, _, key = column.partition(".")
        if field not in ("metrics", "params", "tags") or not key:
            raise click.BadParameter(f"{column!r} is not metrics.KEY, params.KEY or tags.KEY",
                                     param_hint="--columns")
        found.append((field, key.strip("`")))
    return found


def _cell(record: RunRecord, field: str, key: str) -> str:
    value = getattr(record, field).get(key)
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else value


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
    models = _models(record)
    tags = {key: value for key, value in record.tags.items() if key != HISTORY_TAG or not models}
    for title, values in (("params", record.params), ("metrics", record.metrics), ("tags", tags)):
        lines.append(f"\n{title} ({len(values)})")
        lines.extend(f"  {key} = {values[key]}" for key in sorted(values))
    if models:
        lines.append(f"\nmodels ({len(models)}): open with mlflow.<flavor>.load_model(<uri>)")
        lines.extend(models)
    return "\n".join(lines)


def _models(record: RunRecord) -> list[str]:
    """``runs:/<run>/<path>  (flavors)`` for each model the run's ``mlflow.log-model.history``
    tag records (empty when it has none or it is not MLflow's JSON)."""
    try:
        history = json.loads(record.tags.get(HISTORY_TAG, "[]"))
        return [f"  runs:/{record.info.run_id}/{model['artifact_path']}  "
                f"({', '.join(sorted(set(model.get('flavors', {})) - {'python_function'}))})"
                for model in history]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []


@runs.command("compare")
@click.argument("run_ids", metavar="RUN RUN...", nargs=-1, required=True)
@_TRACKING_URI
@_JSON
def runs_compare(run_ids: tuple[str, ...], tracking_uri: str | None, as_json: bool) -> None:
    """The params that differ between runs, and their latest metrics side by side."""
    if len(run_ids) < 2:
        raise click.UsageError("compare takes two runs or more")
    store = _open(tracking_uri)
    records = [store.get_run(run_id) for run_id in run_ids]
    param_keys = sorted(set().union(*(record.params for record in records)))
    differ = [key for key in param_keys if len({r.params.get(key) for r in records}) > 1]
    metric_keys = sorted(set().union(*(record.metrics for record in records)))
    if as_json:
        click.echo(json.dumps({
            "runs": [{"run_id": r.info.run_id, "run_name": r.info.run_name} for r in records],
            "params_differ": {key: [r.params.get(key) for r in records] for key in differ},
            "params_equal": {key: records[0].params[key] for key in param_keys if key not in differ},
            "metrics": {key: [_json_safe(r.metrics.get(key)) for r in records] for key in metric_keys},
        }, indent=2))
        return
    headers = ["", *(f"{r.info.run_name} ({r.info.run_id[:8]})" if r.info.run_name
                     else r.info.run_id for r in records)]
    equal = len(param_keys) - len(differ)
    click.echo(f"params that differ: {len(differ)} ({equal} equal in all {len(records)} runs)")
    if differ:
        click.echo(_table(headers, [[key, *(r.params.get(key, "-") for r in records)]
                                    for key in differ]))
    click.echo(f"\nlatest metrics: {len(metric_keys)}")
    if metric_keys:
        click.echo(_table(headers, [[key, *(_cell(r, "metrics", key) for r in records)]
                                    for key in metric_keys]))


@runs.command("history")
@click.argument("run_id")
@click.argument("key")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the curve as a PNG (needs matplotlib) instead of drawing it here.")
@click.option("--height", default=12, show_default=True, type=click.IntRange(2, 200),
              help="Rows of the terminal chart.")
@_TRACKING_URI
@_JSON
def runs_history(run_id: str, key: str, png: Path | None, height: int, tracking_uri: str | None,
                 as_json: bool) -> None:
    """Every point of one metric: its curve in the terminal, with min, max and last."""
    from autolog import plots

    store = _open(tracking_uri)
    points = store.get_metric_history(run_id, key)
    if not points:
        logged = sorted(store.get_run(run_id).metrics)
        raise click.ClickException(f"run {run_id} has no metric {key!r}; its metrics: "
                                   f"{', '.join(logged) or 'none'}")
    if as_json:
        click.echo(json.dumps([_json_safe({"step": p.step, "timestamp": p.timestamp,
                                           "value": p.value}) for p in points], indent=2))
    if png is not None:
        try:
            plots.write_png(points, png, f"{key} (run {run_id})", key)
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {png} ({len(points)} points)", err=as_json)
    if as_json or png is not None:
        return
    click.echo(f"{key} of run {run_id}: {len(points)} points, "
               f"steps {points[0].step}..{points[-1].step}")
    width = shutil.get_terminal_size().columns
    click.echo(plots.terminal_chart(points, width, height) or "(no finite value to draw)")
    click.echo(plots.summary(points))


@main.group()
def artifacts() -> None:
    """List and download a run's artifacts, wherever they are stored."""


def _artifacts_of(run_id: str, tracking_uri: str | None):
    from autolog.artifacts.reading import destination

    store = _open(tracking_uri)
    return destination(store.get_run(run_id).info.artifact_uri, store.uri)


@artifacts.command("list")
@click.argument("run_id")
@click.argument("path", required=False, default="")
@_TRACKING_URI
@_JSON
def artifacts_list(run_id: str, path: str, tracking_uri: str | None, as_json: bool) -> None:
    """The artifacts of RUN_ID directly under PATH (default: the run's root)."""
    from autolog.artifacts.reading import list_entries

    entries = list_entries(_artifacts_of(run_id, tracking_uri), path)
    if as_json:
        click.echo(json.dumps([{"path": e.path, "is_dir": e.is_dir, "file_size": e.file_size}
                               for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no artifacts under {path!r}" if path else "no artifacts")
        return
    click.echo(_table(["path", "size"], [[e.path + ("/" if e.is_dir else ""),
                                          "" if e.is_dir else f"{e.file_size:,}"] for e in entries]))


@artifacts.command("download")
@click.argument("run_id")
@click.argument("path", required=False, default="")
@click.option("--output", "-o", "output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="Folder to download into.")
@_TRACKING_URI
def artifacts_download(run_id: str, path: str, output: Path, tracking_uri: str | None) -> None:
    """Download the artifact file or folder PATH of RUN_ID (all of them when omitted) into
    OUTPUT, keeping its path. A progress bar shows on a terminal."""
    from tqdm import tqdm

    from autolog.artifacts.reading import download

    def bar(total: int | None, name: str):
        return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False,
                    disable=None).update

    local = download(_artifacts_of(run_id, tracking_uri), path, output, bar)
    click.echo(str(local))


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


@main.command("ui")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@_TRACKING_URI
def ui_command(port: int, host: str, tracking_uri: str | None) -> None:
    """MLflow's own UI on the store (it needs the full mlflow package).

    For an MLflow tracking server, its UI is the server itself: the command prints its URL.
    """
    uri = tracking_uri or settings.resolved_tracking_uri()
    if uri.startswith(("http://", "https://")):
        click.echo(f"{split_credentials(uri)[0]} is an MLflow tracking server: its own UI is there")
        return
    missing = _mlflow_ui_missing()
    if missing:
        raise click.ClickException(f"autolog ui runs MLflow's UI, and {missing}: pip install mlflow")
    store = _open(uri)  # a missing file, or one not in MLflow's schema: an error here
    click.echo(f"MLflow's UI on {redact_uri(store.uri)}: http://{host}:{port} (Ctrl-C stops it)")
    sys.stdout.flush()
    # MLflow's server takes this process over; the store's URI goes in the environment
    # variable `mlflow ui` reads, so a password in it is not on the command line (ps).
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port)],
              {**os.environ, "MLFLOW_BACKEND_STORE_URI": store.sqlalchemy_uri()})


def _mlflow_ui_missing() -> str | None:
    """What keeps MLflow's UI from running here (None: nothing). Found without importing
    mlflow: ``mlflow-skinny`` has the package and its server code, not the UI's assets."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return "mlflow is not installed"
    server = Path(next(iter(spec.submodule_search_locations))) / "server"
    if not (server / "__init__.py").is_file() or not (server / "js" / "build" / "index.html").is_file():
        return "the mlflow installed has no UI (mlflow-skinny ships none)"
    return None


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
    sqlite:///mlflow.db). Artifacts are copied too; a file the copy holds already is
    not sent again.

    Without --from, artifact uploads that processes left (a server or S3 endpoint down at
    exit, a process killed) are sent too, from the staging area.

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
    uploads = [] if spools else sync.send_uploads(spool_dir)  # after the spools: runs exist
    if not outcomes and not uploads:
        click.echo(f"nothing to send: no spool and no artifact upload in {directory}")
    for outcome in outcomes:
        for note in outcome.notes:
            click.echo(f"autolog: {note}", err=True)
        click.echo(_spool_line(outcome))
    for upload in uploads:
        click.echo(upload.line())
    if not all(outcome.complete for outcome in [*outcomes, *uploads]):
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
