"""The embedded store: one SQLite file in WAL mode that many processes write at once.

Every write is one ``BEGIN IMMEDIATE`` transaction under a busy timeout
(``AUTOLOG_SQLITE_BUSY_TIMEOUT`` seconds, default 5), so concurrent writers queue instead
of failing. The wait is short on purpose: a store locked for longer fails the write, and
the writer keeps the data and retries on its next pass (or spools it, see
:mod:`autolog.writer`), so no caller blocks for minutes on someone else's lock.

The path is made absolute when the store is opened (a relative ``sqlite:///autolog.db``
is the working directory of that moment), so a later ``os.chdir`` changes nothing. A new
file is created mode 0600; SQLite gives its ``-wal`` and ``-shm`` files the same mode.

The schema version lives in ``PRAGMA user_version``; :data:`MIGRATIONS` holds one step
per version, applied in order inside a write transaction, so processes that open a fresh
file at the same instant create it exactly once.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from autolog.stores.base import (
    RUNNING,
    Experiment,
    Metric,
    MetricRow,
    ParamRefusedError,
    RunInfo,
    RunNotFoundError,
    RunRecord,
    StoreError,
)
from autolog.stores.chunks import pack_chunks, unpack_chunk
from autolog.stores.sqlite_file import busy_timeout, retry_locked, transaction

DEFAULT_EXPERIMENT = "Default"

MIGRATIONS: tuple[str, ...] = (
    # version 1
    """
    CREATE TABLE experiments (
        experiment_id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        creation_time INTEGER NOT NULL
    );
    CREATE TABLE runs (
        run_pk INTEGER PRIMARY KEY,
        run_uuid TEXT NOT NULL UNIQUE,
        experiment_id INTEGER NOT NULL REFERENCES experiments(experiment_id),
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        start_time INTEGER NOT NULL,
        end_time INTEGER
    );
    CREATE INDEX runs_by_experiment ON runs(experiment_id, start_time);
    CREATE TABLE params (
        run_pk INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (run_pk, key)
    ) WITHOUT ROWID;
    CREATE TABLE tags (
        run_pk INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (run_pk, key)
    ) WITHOUT ROWID;
    -- Metric points are stored in chunks, one row per (run, key, written batch), each
    -- holding three little-endian arrays: float64 values, int64 timestamps, int64 steps.
    -- A row per point costs ~2 us to insert with its index, a chunk costs that per batch,
    -- which is what lets one process ingest well over 500,000 points/s.
    CREATE TABLE metric_chunks (
        chunk_id INTEGER PRIMARY KEY,
        run_pk INTEGER NOT NULL, key TEXT NOT NULL, points INTEGER NOT NULL,
        min_step INTEGER NOT NULL, max_step INTEGER NOT NULL,
        vals BLOB NOT NULL, timestamps BLOB NOT NULL, steps BLOB NOT NULL
    );
    CREATE INDEX metric_chunks_history ON metric_chunks(run_pk, key, chunk_id);
    -- value NULL stores NaN (SQLite turns NaN into NULL)
    CREATE TABLE latest_metrics (
        run_pk INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
        timestamp INTEGER NOT NULL, step INTEGER NOT NULL,
        PRIMARY KEY (run_pk, key)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_UPSERT_LATEST = """
INSERT INTO latest_metrics (run_pk, key, value, timestamp, step) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (run_pk, key) DO UPDATE SET
    value = excluded.value, timestamp = excluded.timestamp, step = excluded.step
WHERE excluded.step > latest_metrics.step
   OR (excluded.step = latest_metrics.step AND excluded.timestamp >= latest_metrics.timestamp)
"""


def path_from_uri(uri: str) -> Path:
    """``sqlite:///rel/path.db`` is relative to the working directory, ``sqlite:////abs`` absolute."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or len(uri) == len(prefix):
        raise ValueError(f"not a SQLite store URI: {uri!r} (expected sqlite:///path/to/file.db)")
    return Path(uri[len(prefix):])


def absolute_uri(uri: str) -> str:
    """``uri`` with its path made absolute against the working directory of this moment."""
    return f"sqlite:///{Path(os.path.abspath(path_from_uri(uri)))}"


def _by_step_then_time(point: tuple[float, int, int]) -> tuple[int, int]:
    return point[2], point[1]


def _nan_to_none(value: float | None) -> float:
    return math.nan if value is None else value


class SQLiteStore:
    """The :class:`~autolog.stores.base.Store` for ``sqlite:///`` URIs.

    One connection per thread (SQLite connections must not be shared across threads or
    carried over a fork); a forked child opens its own on first use.
    """

    def __init__(self, uri: str, create: bool = True):
        self.uri = absolute_uri(uri)
        self.path = path_from_uri(self.uri)
        if not create and not self.path.exists():
            raise StoreError(
                f"no autolog store at {self.path} (from {uri}); pass --tracking-uri or set "
                "AUTOLOG_TRACKING_URI to the store your runs were logged to"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Created here, not by sqlite3, so that it is never world-readable (0644).
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._local = threading.local()
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self._migrate()

    # -- connections and transactions -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # Forked: keep the parent's connections referenced but never use or close them.
            self._inherited.append(getattr(self._local, "conn", None))
            self._local = threading.local()
            self._pid = os.getpid()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                str(self.path), timeout=busy_timeout(), isolation_level=None,
                check_same_thread=False,
            )
            retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self._connection())

    def _migrate(self) -> None:
        conn = self._connection()
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with self._write():
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this autolog "
                    f"understands ({SCHEMA_VERSION}); upgrade autolog"
                )
            for step in MIGRATIONS[version:]:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            conn.close()
            self._local.conn = None

    # -- experiments ---------------------------------------------------------------------

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        row = self._connection().execute(
            "SELECT experiment_id, name FROM experiments WHERE name = ?", (name,)
        ).fetchone()
        return Experiment(str(row[0]), row[1]) if row else None

    def get_or_create_experiment(self, name: str) -> Experiment:
        found = self.get_experiment_by_name(name)
        if found is not None:
            return found
        with self._write() as conn:
            conn.execute(
                "INSERT INTO experiments (name, creation_time) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, int(time.time() * 1000)),
            )
        return self.get_experiment_by_name(name)  # type: ignore[return-value]

    def list_experiments(self) -> list[Experiment]:
        rows = self._connection().execute(
            "SELECT experiment_id, name FROM experiments ORDER BY experiment_id"
        ).fetchall()
        return [Experiment(str(i), n) for i, n in rows]

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self, experiment_id: str, run_name: str, start_time: int, tags: dict[str, str]
    ) -> RunInfo:
        run_id = uuid.uuid4().hex
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (run_uuid, experiment_id, name, status, start_time) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, int(experiment_id), run_name, RUNNING, start_time),
            )
            conn.executemany(
                f"INSERT INTO tags (run_pk, key, value) VALUES ({cursor.lastrowid}, ?, ?)",
                tags.items(),
            )
        return RunInfo(run_id, str(experiment_id), run_name, RUNNING, start_time)

    def _run_pk(self, conn: sqlite3.Connection, run_id: str) -> int:
        row = conn.execute("SELECT run_pk FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")
        return row[0]

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        with self._write() as conn:
            run_pk = self._run_pk(conn, run_id)
            conn.execute(
                "UPDATE runs SET status = ?, end_time = ? WHERE run_pk = ?",
                (status, end_time, run_pk),
            )

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricRow] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Write one batch atomically. A param whose stored value differs is refused with
        :class:`StoreError` and nothing of the batch is written, as MLflow does."""
        with self._write() as conn:
            run_pk = self._run_pk(conn, run_id)
            if params:
                self._insert_params(conn, run_pk, params)
            if tags:
                conn.executemany(
                    f"INSERT INTO tags (run_pk, key, value) VALUES ({run_pk}, ?, ?) "
                    "ON CONFLICT (run_pk, key) DO UPDATE SET value = excluded.value",
                    tags.items(),
                )
            if metrics:
                chunks = pack_chunks(metrics)
                conn.executemany(
                    "INSERT INTO metric_chunks (run_pk, key, points, min_step, max_step, vals, "
                    f"timestamps, steps) VALUES ({run_pk}, ?, ?, ?, ?, ?, ?, ?)",
                    (chunk.row() for chunk in chunks),
                )
                conn.executemany(
                    _UPSERT_LATEST, ((run_pk, chunk.key, *chunk.latest) for chunk in chunks)
                )

    @staticmethod
    def _insert_params(conn: sqlite3.Connection, run_pk: int, params: dict[str, str]) -> None:
        stored = dict(
            conn.execute(
                f"SELECT key, value FROM params WHERE run_pk = ? AND key IN "
                f"({','.join('?' * len(params))})",
                (run_pk, *params),
            ).fetchall()
        )
        for key, value in params.items():
            if key in stored and stored[key] != value:
                raise ParamRefusedError(
                    f"INVALID_PARAMETER_VALUE: Changing param values is not allowed. Param "
                    f"with key={key!r} was already logged with value={stored[key]!r}; new "
                    f"value={value!r}"
                )
        conn.executemany(
            f"INSERT INTO params (run_pk, key, value) VALUES ({run_pk}, ?, ?) "
            "ON CONFLICT (run_pk, key) DO NOTHING",
            params.items(),
        )

    def get_run(self, run_id: str) -> RunRecord:
        conn = self._connection()
        row = conn.execute(
            "SELECT run_pk, run_uuid, experiment_id, name, status, start_time, end_time "
            "FROM runs WHERE run_uuid = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")
        return self._record(conn, row)

    @staticmethod
    def _record(conn: sqlite3.Connection, row: tuple) -> RunRecord:
        run_pk, run_id, experiment_id, name, status, start, end = row
        params = dict(conn.execute("SELECT key, value FROM params WHERE run_pk = ?", (run_pk,)))
        tags = dict(conn.execute("SELECT key, value FROM tags WHERE run_pk = ?", (run_pk,)))
        metrics = {
            key: _nan_to_none(value)
            for key, value in conn.execute(
                "SELECT key, value FROM latest_metrics WHERE run_pk = ?", (run_pk,)
            )
        }
        info = RunInfo(run_id, str(experiment_id), name, status, start, end)
        return RunRecord(info, params, tags, metrics)

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        conn = self._connection()
        run_pk = self._run_pk(conn, run_id)
        rows = conn.execute(
            "SELECT vals, timestamps, steps FROM metric_chunks WHERE run_pk = ? AND key = ? "
            "ORDER BY chunk_id",
            (run_pk, key),
        )
        points = [point for row in rows for point in unpack_chunk(*row)]
        points.sort(key=_by_step_then_time)  # stable: equal (step, time) keep logging order
        return [Metric(key, value, timestamp, step) for value, timestamp, step in points]

    def metric_counts(self, run_id: str) -> dict[str, int]:
        """key -> number of points the run holds (read from the chunk headers only)."""
        conn = self._connection()
        run_pk = self._run_pk(conn, run_id)
        return dict(conn.execute(
            "SELECT key, sum(points) FROM metric_chunks WHERE run_pk = ? GROUP BY key", (run_pk,)))

    def iter_metric_history(self, run_id: str, key: str,
                            page: int = 50_000) -> Iterator[list[MetricRow]]:
        """A key's points in pages of about ``page`` rows, in the order they were logged
        (not sorted: :meth:`get_metric_history` sorts, and holds them all to do so)."""
        conn = self._connection()
        run_pk = self._run_pk(conn, run_id)
        rows = conn.execute(
            "SELECT vals, timestamps, steps FROM metric_chunks WHERE run_pk = ? AND key = ? "
            "ORDER BY chunk_id", (run_pk, key))
        buffered: list[MetricRow] = []
        for chunk in rows:
            buffered.extend((key, value, timestamp, step)
                            for value, timestamp, step in unpack_chunk(*chunk))
            if len(buffered) >= page:
                yield buffered
                buffered = []
        if buffered:
            yield buffered

    def server_run_id(self, run_id: str) -> str:
        return run_id

    def search_runs(self, experiment_ids: Iterable[str], filter_string: str = "",
                    order_by: Sequence[str] = (), max_results: int = 1000) -> list[RunRecord]:
        """Runs newest first. This file is not in MLflow's schema, so MLflow's search
        cannot read it: a filter or an order is not supported here."""
        if filter_string or order_by:
            raise NotImplementedError(
                f"{self.uri} is autolog's own format, which MLflow's search cannot read: copy it "
                f"into an MLflow database (autolog sync --from {self.uri} --to sqlite:///mlflow.db) "
                "to filter or order its runs")
        ids = [int(i) for i in experiment_ids]
        if not ids:
            return []
        conn = self._connection()
        rows = conn.execute(
            "SELECT run_pk, run_uuid, experiment_id, name, status, start_time, end_time "
            f"FROM runs WHERE experiment_id IN ({','.join('?' * len(ids))}) "
            "ORDER BY start_time DESC, run_pk DESC LIMIT ?",
            (*ids, max_results),
        ).fetchall()
        return [self._record(conn, row) for row in rows]
