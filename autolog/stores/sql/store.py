"""The SQL store: runs in MLflow's schema, written with batched inserts of our own.

Reading MLflow's tables back is plain SQL too, except filtered or ordered searches,
which go through MLflow's own search code (:mod:`autolog.stores.sql.search`).

What MLflow's ``SqlAlchemyStore`` does per logged point, done here per batch:

- a metric is a row of ``metrics`` (NaN stored as 0 with ``is_nan``, ±inf as ±max
  float); an identical row is stored once, so replaying a batch is harmless;
- ``latest_metrics`` holds, per key, the point with the greatest (step, timestamp,
  value), exactly MLflow's rule;
- a param never changes: a different value for a stored key is refused
  (:class:`ParamRefusedError`) and nothing of that batch is written;
- a dataset input is a ``datasets`` row per (experiment, name, digest), shared by the
  runs of the experiment, and an ``inputs`` row per run and dataset with the context as
  its input tag, as ``SqlAlchemyStore.log_inputs`` writes them.

Every write is one transaction. One connection per thread; a forked child opens its own.
Driver errors leave as :class:`StoreError` (the database away, locked or full: the writer
retries, then spools) or :class:`ValueError` (a value the database cannot store).
"""

from __future__ import annotations

import getpass
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps

from autolog.stores.base import (
    DATASET_CONTEXT_TAG,
    RUNNING,
    DatasetInput,
    Experiment,
    Metric,
    MetricRow,
    ParamRefusedError,
    RunInfo,
    RunNotFoundError,
    RunRecord,
    StoreError,
)
from autolog.stores.sql.dialects import Dialect, SQLiteDialect, absolute_sqlite_uri, dialect_for
from autolog.stores.sql.schema import ensure_schema
from autolog.uris import without_password

_FLOAT_MAX = sys.float_info.max
_RUN_COLUMNS = "run_uuid, experiment_id, name, status, start_time, end_time, artifact_uri"
_LATEST_COLUMNS = ('"key"', "value", "timestamp", "step", "is_nan", "run_uuid")
_METRIC_COLUMNS = ('"key"', "value", "timestamp", "run_uuid", "step", "is_nan")
_DATASET_COLUMNS = ("dataset_uuid", "experiment_id", "name", "digest", "dataset_source_type",
                    "dataset_source", "dataset_schema", "dataset_profile")
_INPUT_COLUMNS = ("input_uuid", "source_type", "source_id", "destination_type", "destination_id",
                  "step")
_NEWER = ("UPDATE latest_metrics SET value = ?, timestamp = ?, step = ?, is_nan = ? "
          'WHERE run_uuid = ? AND "key" = ? AND (step < ? OR (step = ? AND '
          "(timestamp < ? OR (timestamp = ? AND value < ?))))")


def stored_value(value: float) -> tuple[float, bool]:
    """(value as MLflow's SQL store keeps it, is_nan)."""
    value = float(value)  # an int value is a float metric, as MLflow stores it
    if value != value:
        return 0.0, True
    if math.isinf(value):
        return (_FLOAT_MAX if value > 0 else -_FLOAT_MAX), False
    return value, False


def _driver_errors(method):
    """Driver exceptions become the store's: see the module doc."""
    @wraps(method)
    def call(self: SqlStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (StoreError, ValueError, TypeError, OverflowError, LookupError):
            raise
        except Exception as exc:
            if self.dialect.bad_value(exc):
                raise ValueError(f"{self.uri} cannot store a value: {exc}") from exc
            server = not isinstance(self.dialect, SQLiteDialect)
            if server:  # the connection may be broken: the next call opens a new one
                self._drop_connection()
            if server or self.dialect.transient(exc):
                raise StoreError(f"{self.uri}: {type(exc).__name__}: {exc}") from exc
            raise
    return call


class SqlStore:
    """The :class:`~autolog.stores.base.Store` for ``sqlite:///``, ``postgresql://`` and
    ``mysql://`` URIs: an MLflow tracking database."""

    def __init__(self, uri: str, create: bool = True):
        full = absolute_sqlite_uri(uri) if uri.startswith("sqlite:///") else uri
        # The URI as shown and as recorded in a spool: never its password (the connection,
        # made by the dialect, keeps it; `autolog sync` takes it from the configured URI).
        self.uri = without_password(full)
        # MLflow's client puts a run's artifacts under ./mlruns of the process that logs it
        self.artifact_root = os.path.abspath("mlruns")
        self.dialect: Dialect = dialect_for(full)
        if isinstance(self.dialect, SQLiteDialect):
            self._prepare_file(create)
        self._local = threading.local()
        self._pid = os.getpid()
        self._inherited: list = []
        try:
            ensure_schema(self.dialect, self.artifact_root)
        except Exception as exc:
            self.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{self.uri}: {type(exc).__name__}: {exc}") from exc

    def _prepare_file(self, create: bool) -> None:
        path = self.dialect.path
        if path.exists():
            return
        if not create:
            raise StoreError(
                f"no MLflow database at {path} (from {self.uri}); pass --tracking-uri or set "
                "AUTOLOG_TRACKING_URI to the store your runs were logged to")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created here, not by sqlite3, so that it is never world-readable (0644).
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))

    # -- connections ---------------------------------------------------------------------

    def _connection(self):
        if self._pid != os.getpid():
            # Forked: keep the parent's connections referenced but never use or close them.
            self._inherited.append(getattr(self._local, "conn", None))
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.dialect.connect()
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                pass

    @contextmanager
    def _write(self) -> Iterator:
        with self.dialect.transaction(self._connection()) as cursor:
            yield cursor

    @contextmanager
    def _read(self) -> Iterator:
        conn = self._connection()
        cursor = conn.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
            if not isinstance(self.dialect, SQLiteDialect):
                conn.rollback()  # end the read's implicit transaction

    def _execute(self, cursor, statement: str, params: Sequence = ()):
        cursor.execute(self.dialect.sql(statement), tuple(params))
        return cursor

    def close(self) -> None:
        if self._pid == os.getpid():
            self._drop_connection()
        engine = getattr(self.dialect, "engine", None)
        if engine is not None:
            engine.dispose()

    # -- experiments ---------------------------------------------------------------------

    @_driver_errors
    def get_experiment_by_name(self, name: str) -> Experiment | None:
        with self._read() as cursor:
            row = self._execute(cursor, "SELECT experiment_id, name, lifecycle_stage FROM experiments "
                                "WHERE name = ? AND workspace = 'default'", (name,)).fetchone()
        if row is None:
            return None
        if row[2] == "deleted":
            raise StoreError(f"experiment {name!r} is deleted in {self.uri}; restore it "
                             f"with: mlflow experiments restore --experiment-id {row[0]}")
        return Experiment(str(row[0]), row[1])

    @_driver_errors
    def get_or_create_experiment(self, name: str) -> Experiment:
        found = self.get_experiment_by_name(name)
        if found is not None:
            return found
        now = int(time.time() * 1000)
        with self._write() as cursor:
            self._execute(cursor, self.dialect.insert_ignore(
                "experiments", ("name", "lifecycle_stage", "creation_time", "last_update_time",
                                "workspace")), (name, "active", now, now, "default"))
            experiment_id, location = self._execute(
                cursor, "SELECT experiment_id, artifact_location FROM experiments "
                "WHERE name = ? AND workspace = 'default'", (name,)).fetchone()
            if location is None:  # as MLflow's create_experiment: the root, then the id
                self._execute(cursor, "UPDATE experiments SET artifact_location = ? "
                              "WHERE experiment_id = ?",
                              (f"{self.artifact_root}/{experiment_id}", experiment_id))
        return Experiment(str(experiment_id), name)

    @_driver_errors
    def list_experiments(self) -> list[Experiment]:
        with self._read() as cursor:
            rows = self._execute(cursor, "SELECT experiment_id, name FROM experiments "
                                 "WHERE lifecycle_stage = 'active' ORDER BY experiment_id").fetchall()
        return [Experiment(str(i), n) for i, n in rows]

    # -- runs ----------------------------------------------------------------------------

    @_driver_errors
    def create_run(self, experiment_id: str, run_name: str, start_time: int,
                   tags: dict[str, str]) -> RunInfo:
        run_id = uuid.uuid4().hex
        tags = {"mlflow.runName": run_name, **tags}
        with self._write() as cursor:
            row = self._execute(cursor, "SELECT artifact_location, lifecycle_stage FROM experiments "
                                "WHERE experiment_id = ?", (int(experiment_id),)).fetchone()
            if row is None or row[1] != "active":
                raise StoreError(f"experiment {experiment_id} is {'deleted' if row else 'missing'} "
                                 f"in {self.uri}")
            self._execute(
                cursor,
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
                "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
                "artifact_uri, experiment_id, deleted_time) "
                "VALUES (?, ?, 'UNKNOWN', '', '', ?, ?, ?, NULL, '', 'active', ?, ?, NULL)",
                (run_id, run_name, tags.get("mlflow.user") or _user(), RUNNING, start_time,
                 f"{row[0]}/{run_id}/artifacts", int(experiment_id)))
            self.dialect.executemany(cursor, self.dialect.insert_ignore(
                "tags", ('"key"', "value", "run_uuid")),
                [(key, value, run_id) for key, value in tags.items()])
        return RunInfo(run_id, str(experiment_id), run_name, RUNNING, start_time,
                       artifact_uri=f"{row[0]}/{run_id}/artifacts")

    def _require_run(self, cursor, run_id: str) -> None:
        if self._execute(cursor, "SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")

    @_driver_errors
    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        with self._write() as cursor:
            self._require_run(cursor, run_id)
            self._execute(cursor, "UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                          (status, end_time, run_id))

    @_driver_errors
    def log_batch(self, run_id: str, metrics: Sequence[MetricRow] = (),
                  params: dict[str, str] | None = None,
                  tags: dict[str, str] | None = None) -> None:
        """Write one batch in one transaction (see the module doc)."""
        with self._write() as cursor:
            self._require_run(cursor, run_id)
            if params:
                self._insert_params(cursor, run_id, params)
            if tags:
                self.dialect.executemany(cursor, self.dialect.upsert(
                    "tags", ('"key"', "value", "run_uuid"), ('"key"', "run_uuid"), ("value",)),
                    [(key, value, run_id) for key, value in tags.items()])
            if metrics:
                self._insert_metrics(cursor, run_id, metrics)

    def _insert_params(self, cursor, run_id: str, params: dict[str, str]) -> None:
        keys = list(params)
        stored = dict(self._execute(
            cursor, f'SELECT "key", value FROM params WHERE run_uuid = ? AND "key" IN '
            f"({', '.join('?' * len(keys))})", (run_id, *keys)).fetchall())
        for key, value in params.items():
            if key in stored and stored[key] != value:
                raise ParamRefusedError(
                    f"INVALID_PARAMETER_VALUE: Changing param values is not allowed. Param "
                    f"with key={key!r} was already logged with value={stored[key]!r}; new "
                    f"value={value!r}")
        new = [(key, value, run_id) for key, value in params.items() if key not in stored]
        if new:
            self.dialect.executemany(cursor, self.dialect.insert_ignore(
                "params", ('"key"', "value", "run_uuid")), new)

    def _insert_metrics(self, cursor, run_id: str, metrics: Sequence[MetricRow]) -> None:
        rows = []
        latest: dict[str, tuple] = {}  # key -> (step, timestamp, value, is_nan)
        for key, value, timestamp, step in metrics:
            value, is_nan = stored_value(value)
            rows.append((key, value, timestamp, run_id, step, is_nan))
            best = latest.get(key)
            if best is None or (step, timestamp, value) > best[:3]:
                latest[key] = (step, timestamp, value, is_nan)
        self.dialect.insert_metrics(cursor, _METRIC_COLUMNS, rows)
        ordered = sorted(latest.items())  # one lock order for every writer: no deadlock
        self.dialect.executemany(cursor, self.dialect.insert_ignore("latest_metrics", _LATEST_COLUMNS),
                                 [(key, v, ts, step, nan, run_id) for key, (step, ts, v, nan) in ordered])
        self.dialect.executemany(cursor, _NEWER, [
            (v, ts, step, nan, run_id, key, step, step, ts, ts, v)
            for key, (step, ts, v, nan) in ordered])

    @_driver_errors
    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInput]) -> None:
        """Record dataset inputs in one transaction, as MLflow's ``SqlAlchemyStore`` does
        (see the module doc): inputs of the same name and digest count once (the first);
        a dataset the experiment has is reused, an input the run has is left as it is, and
        only a new input gets the context tag."""
        unique: dict[tuple[str, str], DatasetInput] = {}
        for item in inputs:
            unique.setdefault((item.name, item.digest), item)
        if not unique:
            return
        with self._write() as cursor:
            row = self._execute(cursor, "SELECT experiment_id FROM runs WHERE run_uuid = ?",
                                (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")
            for item in unique.values():
                self._log_input(cursor, run_id, row[0], item)

    def _log_input(self, cursor, run_id: str, experiment_id: int, item: DatasetInput) -> None:
        # Insert-or-ignore, then read back what is stored: another writer may have made
        # the dataset or the input first, and then its uuid is the one to use.
        self._execute(cursor, self.dialect.insert_ignore("datasets", _DATASET_COLUMNS), (
            uuid.uuid4().hex, experiment_id, item.name, item.digest, item.source_type,
            item.source, item.schema, item.profile))
        dataset_uuid = self._execute(
            cursor, "SELECT dataset_uuid FROM datasets WHERE experiment_id = ? AND name = ? "
            "AND digest = ?", (experiment_id, item.name, item.digest)).fetchone()[0]
        input_uuid = uuid.uuid4().hex
        self._execute(cursor, self.dialect.insert_ignore("inputs", _INPUT_COLUMNS),
                      (input_uuid, "DATASET", dataset_uuid, "RUN", run_id, 0))
        stored = self._execute(
            cursor, "SELECT input_uuid FROM inputs WHERE source_type = 'DATASET' AND "
            "source_id = ? AND destination_type = 'RUN' AND destination_id = ?",
            (dataset_uuid, run_id)).fetchone()[0]
        if stored == input_uuid and item.context is not None:
            self._execute(cursor, self.dialect.insert_ignore("input_tags", ("input_uuid", "name", "value")),
                          (input_uuid, DATASET_CONTEXT_TAG, item.context))

    # -- reading -------------------------------------------------------------------------

    @_driver_errors
    def get_run(self, run_id: str) -> RunRecord:
        with self._read() as cursor:
            row = self._execute(cursor, f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_uuid = ?",
                                (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")
            return self._record(cursor, row)

    def _record(self, cursor, row: tuple) -> RunRecord:
        run_id, experiment_id, name, status, start, end, artifact_uri = row
        params = dict(self._execute(cursor, 'SELECT "key", value FROM params WHERE run_uuid = ?',
                                    (run_id,)).fetchall())
        tags = dict(self._execute(cursor, 'SELECT "key", value FROM tags WHERE run_uuid = ?',
                                  (run_id,)).fetchall())
        metrics = {key: math.nan if is_nan else value for key, value, is_nan in self._execute(
            cursor, 'SELECT "key", value, is_nan FROM latest_metrics WHERE run_uuid = ?',
            (run_id,)).fetchall()}
        info = RunInfo(run_id, str(experiment_id), name or "", status, start, end, artifact_uri or "")
        return RunRecord(info, params, tags, metrics)

    @_driver_errors
    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return [Metric(key, value, timestamp, step)
                for page in self.iter_metric_history(run_id, key)
                for _, value, timestamp, step in page]

    def iter_metric_history(self, run_id: str, key: str,
                            page: int = 50_000) -> Iterator[list[MetricRow]]:
        """A key's points in pages of ``page`` rows, ordered by step, then time (keyset
        pagination: memory stays at one page, on every database)."""
        after = None
        while rows := self._history_page(run_id, key, after, page):
            yield [(key, math.nan if is_nan else value, timestamp, step)
                   for step, timestamp, value, is_nan in rows]
            if len(rows) < page:
                return
            after = rows[-1]

    @_driver_errors
    def _history_page(self, run_id: str, key: str, after: tuple | None, page: int) -> list[tuple]:
        """(step, timestamp, value, is_nan) rows after ``after``; the first page (``after``
        None) checks that the run exists. A method of its own so that driver errors are
        translated while a caller iterates, not only when the generator is made."""
        with self._read() as cursor:
            if after is None:
                self._require_run(cursor, run_id)
            keyset = "" if after is None else "AND (step, timestamp, value, is_nan) > (?, ?, ?, ?) "
            return self._execute(
                cursor, "SELECT step, timestamp, value, is_nan FROM metrics "
                f'WHERE run_uuid = ? AND "key" = ? {keyset}'
                "ORDER BY step, timestamp, value, is_nan LIMIT ?",
                (run_id, key, *(after or ()), page)).fetchall()

    @_driver_errors
    def metric_counts(self, run_id: str) -> dict[str, int]:
        """key -> number of points the run holds."""
        with self._read() as cursor:
            self._require_run(cursor, run_id)
            return dict(self._execute(cursor, 'SELECT "key", COUNT(*) FROM metrics '
                                      'WHERE run_uuid = ? GROUP BY "key"', (run_id,)).fetchall())

    def server_run_id(self, run_id: str) -> str:
        return run_id

    @_driver_errors
    def search_runs(self, experiment_ids: Iterable[str], filter_string: str = "",
                    order_by: Sequence[str] = (), max_results: int = 1000) -> list[RunRecord]:
        """Active runs of the experiments, newest first as MLflow orders them (start time
        descending, then run id); a filter or an order goes through MLflow's own search."""
        ids = [int(i) for i in experiment_ids]
        if not ids:
            return []
        if filter_string or order_by:
            from autolog.stores.sql.search import search_runs_with_mlflow

            return search_runs_with_mlflow(self.sqlalchemy_uri(), self.artifact_root, ids,
                                           filter_string, order_by, max_results)
        with self._read() as cursor:
            rows = self._execute(
                cursor, f"SELECT {_RUN_COLUMNS} FROM runs WHERE experiment_id IN "
                f"({', '.join('?' * len(ids))}) AND lifecycle_stage = 'active' "
                "ORDER BY start_time DESC, run_uuid LIMIT ?", (*ids, max_results)).fetchall()
            return [self._record(cursor, row) for row in rows]

    def sqlalchemy_uri(self) -> str:
        """The URI MLflow's own code opens this database with."""
        engine = getattr(self.dialect, "engine", None)
        return self.dialect.uri if engine is None else engine.url.render_as_string(hide_password=False)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
