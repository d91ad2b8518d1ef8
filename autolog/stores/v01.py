"""Reading autolog v0.1's own store format, so that ``autolog sync`` can copy it whole.

Before MLflow's schema, ``sqlite:///autolog.db`` was a SQLite file of autolog's own:
:data:`SCHEMA` below, ``PRAGMA user_version = 1``, metric points packed per (run, key,
written batch) in ``metric_chunks`` rows (:mod:`autolog.stores.chunks`). Nothing writes
that format any more; :class:`V01Store` reads it, and :func:`is_v01_file` tells such a
file apart from an MLflow database, so that opening one as a tracking URI can say how to
copy it (:data:`SYNC_COMMAND`).

Neither ever writes to the file. A v0.1 file is in WAL mode, whose ``-wal`` log exists
while any connection is open and is removed (its transactions moved into the file) when
the last one closes. So a file with no ``-wal`` beside it holds everything, and nothing
has it open: it is read as immutable, with no lock and no file created. One with a
``-wal`` (a v0.1 process still runs, or was killed) is opened read-only through the
log, so that its transactions are read too; SQLite then creates the ``-shm`` index
beside it if that is missing.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

from autolog.stores.base import (
    Experiment,
    Metric,
    MetricRow,
    RunInfo,
    RunNotFoundError,
    RunRecord,
    StoreError,
)
from autolog.stores.chunks import unpack_chunk

VERSION = 1  # PRAGMA user_version of a v0.1 file
SYNC_COMMAND = "autolog sync --from sqlite:///autolog.db --to sqlite:///mlflow.db"

# The format, as v0.1 created it (its only migration). Kept as the reader's reference,
# and to write v0.1 files in tests.
SCHEMA = """
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
-- One row per (run, key, written batch): three little-endian arrays of the batch's
-- points of that key, float64 values, int64 timestamps (ms), int64 steps, in the order
-- they were logged.
CREATE TABLE metric_chunks (
    chunk_id INTEGER PRIMARY KEY,
    run_pk INTEGER NOT NULL, key TEXT NOT NULL, points INTEGER NOT NULL,
    min_step INTEGER NOT NULL, max_step INTEGER NOT NULL,
    vals BLOB NOT NULL, timestamps BLOB NOT NULL, steps BLOB NOT NULL
);
CREATE INDEX metric_chunks_history ON metric_chunks(run_pk, key, chunk_id);
-- The point with the highest (step, timestamp) per key (a NULL value is NaN).
CREATE TABLE latest_metrics (
    run_pk INTEGER NOT NULL, key TEXT NOT NULL, value REAL,
    timestamp INTEGER NOT NULL, step INTEGER NOT NULL,
    PRIMARY KEY (run_pk, key)
) WITHOUT ROWID;
"""

_RUN_COLUMNS = "run_pk, run_uuid, experiment_id, name, status, start_time, end_time"


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that cannot write to ``path`` (see the module's docstring)."""
    has_log = Path(f"{path}-wal").exists()
    mode = "mode=ro" if has_log else "mode=ro&immutable=1"
    return sqlite3.connect(f"file:{quote(str(path.absolute()))}?{mode}", uri=True,
                           check_same_thread=False)


def is_v01_file(path: str | Path) -> bool:
    """Whether ``path`` is a store in autolog v0.1's format: ``user_version`` 1 and a
    ``metric_chunks`` table, without MLflow's ``alembic_version``. False for a missing
    file, an MLflow database, or a file that is not SQLite. Reads the schema only."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        conn = _connect(path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
    return version == VERSION and "metric_chunks" in tables and "alembic_version" not in tables


class V01Store:
    """The reading half of the v0.1 store, for ``autolog sync --from``.

    ``uri`` is ``sqlite:///`` and the file's absolute path, as v0.1 named it."""

    def __init__(self, path: str | Path):
        self.path = Path(os.path.abspath(path))
        self.uri = f"sqlite:///{self.path}"
        if not is_v01_file(self.path):
            raise StoreError(f"{self.path} is not an autolog v0.1 store")
        self._conn = _connect(self.path)

    def close(self) -> None:
        self._conn.close()

    # -- experiments and runs ------------------------------------------------------------

    def list_experiments(self) -> list[Experiment]:
        rows = self._conn.execute(
            "SELECT experiment_id, name FROM experiments ORDER BY experiment_id").fetchall()
        return [Experiment(str(i), name) for i, name in rows]

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        row = self._conn.execute(
            "SELECT experiment_id, name FROM experiments WHERE name = ?", (name,)).fetchone()
        return Experiment(str(row[0]), row[1]) if row else None

    def search_runs(self, experiment_ids: Iterable[str], max_results: int = 1000) -> list[RunRecord]:
        """The experiments' runs, newest first."""
        ids = [int(i) for i in experiment_ids]
        if not ids:
            return []
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE experiment_id IN "
            f"({','.join('?' * len(ids))}) ORDER BY start_time DESC, run_pk DESC LIMIT ?",
            (*ids, max_results)).fetchall()
        return [self._record(row) for row in rows]

    def get_run(self, run_id: str) -> RunRecord:
        row = self._conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_uuid = ?",
                                 (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")
        return self._record(row)

    def _record(self, row: tuple) -> RunRecord:
        run_pk, run_id, experiment_id, name, status, start, end = row
        conn = self._conn
        params = dict(conn.execute("SELECT key, value FROM params WHERE run_pk = ?", (run_pk,)))
        tags = dict(conn.execute("SELECT key, value FROM tags WHERE run_pk = ?", (run_pk,)))
        metrics = {key: float("nan") if value is None else value for key, value in conn.execute(
            "SELECT key, value FROM latest_metrics WHERE run_pk = ?", (run_pk,))}
        return RunRecord(RunInfo(run_id, str(experiment_id), name, status, start, end),
                         params, tags, metrics)

    def _run_pk(self, run_id: str) -> int:
        row = self._conn.execute("SELECT run_pk FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.uri}")
        return row[0]

    # -- metric histories ----------------------------------------------------------------

    def metric_counts(self, run_id: str) -> dict[str, int]:
        """key -> number of points the run holds, from the chunk rows' counts alone."""
        return dict(self._conn.execute(
            "SELECT key, sum(points) FROM metric_chunks WHERE run_pk = ? GROUP BY key",
            (self._run_pk(run_id),)))

    def iter_metric_history(self, run_id: str, key: str,
                            page: int = 50_000) -> Iterator[list[MetricRow]]:
        """A key's points in pages of about ``page`` rows (whole chunks), in the order
        they were logged; one chunk row is read at a time."""
        chunks = self._conn.execute(
            "SELECT vals, timestamps, steps FROM metric_chunks WHERE run_pk = ? AND key = ? "
            "ORDER BY chunk_id", (self._run_pk(run_id), key))
        buffered: list[MetricRow] = []
        for chunk in chunks:
            buffered.extend((key, value, timestamp, step)
                            for value, timestamp, step in unpack_chunk(*chunk))
            if len(buffered) >= page:
                yield buffered
                buffered = []
        if buffered:
            yield buffered

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every point of a key, by step then timestamp (equal ones in logging order)."""
        points = [point for page in self.iter_metric_history(run_id, key) for point in page]
        points.sort(key=lambda point: (point[3], point[2]))
        return [Metric(*point) for point in points]
