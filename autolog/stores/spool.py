"""The durable local spool in front of an MLflow server, and the thread that empties it.

Every batch bound for the server is first committed to a SQLite file (WAL,
``synchronous=FULL``) and deleted only when the server has acknowledged it, so the
writer, and the training loop behind it, never wait on the network, and a process that
dies leaves its unsent data on disk. One sender thread per process ships the spool in
order, merging consecutive metric batches of a run into log-batch requests as large as
the server takes (1,000 points, 1 MB). While the server does not answer, the thread asks
it every :data:`PROBE_INTERVAL_S` at most, with one cheap request and no retries, so it
notices the server's return within about a second and sends the backlog at once; a run
that ended meanwhile is ended on the server right after its data.

Replay is safe: a batch whose acknowledgement was lost is sent again, and MLflow stores
an identical metric row once and accepts an identical param again.

Offline start: when the server cannot be reached, ``create_run`` returns at once with a
local id (``offline-<hex>``). The run is created on the server as soon as it answers
(during the run, or later by ``autolog sync``), tagged ``autolog.local_run_id``, and its
spooled data is sent under the server's id. :meth:`SpoolStore.server_run_id` maps a local
id to the server's, and every reading method accepts either.

Exit: :meth:`SpoolStore.close` (run at interpreter exit, after the writer's last flush)
waits up to ``AUTOLOG_EXIT_TIMEOUT`` seconds (default 10) for the spool to drain, less
when an attempt finds the server down, then prints one line with the exact ``autolog
sync`` command that sends the rest.

Files: ``$AUTOLOG_SPOOL_DIR`` (default ``~/.autolog/spool``) holds one ``<pid>-<hex>.spool``
per process (a forked child gets its own), with a ``.lock`` file its owner holds
(``flock``) while it lives; ``autolog sync`` sends the files no live process holds.
Credentials are never written: ``autolog sync`` takes them from the environment, as the
run did, and so sends a spool only to the configured tracking server or the one named
with ``--to`` (a spool is data anyone who can write the folder may have planted).

Damage: every stored batch carries a CRC-32 of its kind, point count and body (format 2;
format 1 spools, written by autolog 0.1, have none and are still read). A batch whose
checksum fails or whose body SQLite cannot read is never sent: it is set aside (left in
the file, which is then kept) and reported. A batch that cannot be decoded or encoded
(a lone surrogate in a key) is marked unsendable, like one the server refused.

Fallback: the spool is where data waits, not a gate. When it cannot be created or
written (a read-only or full disk), :class:`SpoolStore` sends each batch straight to the
server, and while the server does not answer either it raises, so the writer keeps the
data in memory and tries again; one warning names the spool problem.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import secrets
import shlex
import socket
import sqlite3
import stat
import struct
import sys
import threading
import time
import uuid
import warnings
import weakref
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from urllib.parse import quote, urlsplit

from autolog.config import AutologWarning, env_float, users_stacklevel
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
from autolog.stores.mlflow_rest import (
    MlflowRestClient,
    MlflowRestError,
    ServerUnreachableError,
    metric_bodies,
    probe_client,
    tag_bodies,
)
from autolog.stores.sql.store import SqlStore
from autolog.stores.sqlite_file import transaction
from autolog.uris import is_sql_uri, redact_uri
from autolog.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

SPOOL_DIR_ENV = "AUTOLOG_SPOOL_DIR"
OFFLINE_RUN_PREFIX = "offline-"
OFFLINE_EXPERIMENT_PREFIX = "offline:"
LOCAL_RUN_ID_TAG = "autolog.local_run_id"
SCHEMA_VERSION = 2  # 2: batches carry a checksum
READABLE_VERSIONS = (1, 2)
SUFFIX = ".spool"
APPLICATION_ID = 0x616C6F67  # "alog": a spool file, not any SQLite file left in the directory
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0  # after a failure that is not an outage (a local error, say)
PROBE_INTERVAL_S = 1.0  # while the server does not answer: how often to ask whether it is back
IDLE_POLL_S = 1.0
ROWS_PER_FETCH = 128  # stored batches read at a time; the consecutive ones of a run merge
SEARCH_EXPERIMENTS_PER_CALL = 100

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- one row per run with spooled data; server_id is NULL until an offline run is created
CREATE TABLE runs (
    run_key TEXT PRIMARY KEY,
    server_id TEXT,
    experiment_id TEXT,
    experiment_name TEXT,
    run_name TEXT,
    start_time INTEGER,
    tags TEXT,
    error TEXT
);
-- one row per request; a metrics body is pack_rows() of its rows, others are JSON;
-- crc is checksum(kind, points, body). The body comes last: the other columns are read
-- without walking its overflow pages, so a damaged body does not hide its row.
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL REFERENCES runs(run_key),
    kind TEXT NOT NULL CHECK (kind IN ('params', 'tags', 'metrics', 'status')),
    points INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    error TEXT,
    body BLOB NOT NULL
);
CREATE INDEX batches_by_run ON batches(run_key);
"""


def default_spool_dir() -> Path:
    return Path(os.environ.get(SPOOL_DIR_ENV) or Path.home() / ".autolog" / "spool")


def sync_command(spool_dir: Path) -> str:
    """The exact command that sends what is left in ``spool_dir``."""
    if spool_dir == Path.home() / ".autolog" / "spool":
        return "autolog sync"
    return f"autolog sync --spool-dir {shlex.quote(str(spool_dir))}"


def _exit_timeout() -> float:
    return env_float("AUTOLOG_EXIT_TIMEOUT", 10.0)


def _retry_later(exc: BaseException) -> bool:
    """The server cannot take data now (down, overloaded, or refusing the credentials)."""
    return isinstance(exc, ServerUnreachableError) or (
        isinstance(exc, MlflowRestError) and exc.retry_later)


def _warn(message: str) -> None:
    warnings.warn(f"autolog: {message}", AutologWarning, stacklevel=users_stacklevel(3))


def _warn_from_thread(message: str) -> None:
    """A warning from the sender thread. Where warnings are turned into errors (a strict
    test run) the error must not stop the thread, so it ends here."""
    try:
        warnings.warn(f"autolog: {message}", AutologWarning, stacklevel=2)
    except Warning:
        pass


_KEY, _VALUE, _TIMESTAMP, _STEP = (itemgetter(i) for i in range(4))
_COLUMNS = (("I", 4), ("d", 8), ("q", 8), ("q", 8))  # key index, value, timestamp, step
_SWAP = sys.byteorder != "little"
assert all(array(code).itemsize == size for code, size in _COLUMNS)


def _column(code: str, items: Iterable) -> bytes:
    column = array(code, items)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def pack_rows(rows: Sequence[MetricRow]) -> bytes:
    """Metric rows as the spool keeps them: a header (sizes, then the distinct keys as
    JSON) and four little-endian columns. Building it is C-level work per point, and
    reading it back runs no code (unlike pickle)."""
    keys = list(map(_KEY, rows))
    names = list(dict.fromkeys(keys))
    index = {name: i for i, name in enumerate(names)}
    header = json.dumps(names).encode()
    return b"".join([struct.pack("<II", len(header), len(rows)), header,
                     _column("I", map(index.__getitem__, keys)), _column("d", map(_VALUE, rows)),
                     _column("q", map(_TIMESTAMP, rows)), _column("q", map(_STEP, rows))])


def checksum(kind: str, points: int, body: bytes) -> int:
    """The CRC-32 a stored batch carries (format 2)."""
    return zlib.crc32(body, zlib.crc32(f"{kind}:{points}:".encode()))


UNSENDABLE_MARK = "unsendable: "  # how the error of a batch that cannot be sent begins
# What decoding a stored body or encoding it for the server raises when the body cannot
# be sent (damaged in a format-1 spool, or text JSON cannot carry): set aside, not retried.
UNSENDABLE = (ValueError, UnicodeError, struct.error, KeyError, IndexError, TypeError,
              OverflowError)


def unpack_rows(body: bytes) -> list[MetricRow]:
    """The rows of a :func:`pack_rows` body; raises one of :data:`UNSENDABLE` on a body
    that is not one (sizes beyond the body, keys that are not a JSON list of text)."""
    header_size, count = struct.unpack_from("<II", body)
    offset = 8 + header_size
    if offset + 28 * count != len(body):
        raise ValueError(f"a metrics body of {len(body)} bytes cannot hold {count} rows")
    names = json.loads(body[8:offset])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("the keys of a metrics body are not a list of text")
    columns = []
    for code, size in _COLUMNS:
        column = array(code)
        column.frombytes(body[offset:offset + size * count])
        if _SWAP:
            column.byteswap()
        columns.append(column)
        offset += size * count
    keys, values, timestamps, steps = columns
    return [(names[key], value, timestamp, step)
            for key, value, timestamp, step in zip(keys, values, timestamps, steps)]


def encode_entries(metrics: Sequence[MetricRow] = (), params: dict[str, str] | None = None,
                   tags: dict[str, str] | None = None) -> list[tuple[str, int, bytes]]:
    """A batch as spool entries (kind, points, body), one per request to send."""
    entries: list[tuple[str, int, bytes]] = []
    if params:
        items = list(params.items())
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = dict(items[start:start + MAX_PARAMS_TAGS_PER_BATCH])
            entries.append(("params", len(chunk), json.dumps(chunk).encode()))
    if tags:
        entries.extend(("tags", count, body) for count, body in tag_bodies(tags))
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        chunk = metrics[start:start + MAX_METRICS_PER_BATCH]
        entries.append(("metrics", len(chunk), pack_rows(chunk)))
    return entries


def status_entry(status: str, end_time: int | None) -> tuple[str, int, bytes]:
    """A run's status change as a spool entry."""
    return "status", 0, json.dumps({"status": status, "end_time": end_time}).encode()


@dataclass(frozen=True)
class OfflineRun:
    """What creating a run on the server needs, kept until the server has it."""

    run_key: str
    experiment_id: str | None  # the server's id when it was known, else None
    experiment_name: str | None  # always set when experiment_id is None
    run_name: str
    start_time: int
    tags: dict[str, str]


@dataclass(frozen=True)
class Batch:
    seq: int
    run_key: str
    server_id: str
    kind: str
    points: int
    body: bytes


@dataclass(frozen=True)
class Backlog:
    """What a spool still holds. ``batches``/``points``/``runs`` are sendable; ``waiting``
    counts runs not yet created on the server; ``failed`` batches the server refused;
    ``unsendable`` batches that cannot be decoded or encoded for the server; ``damaged``
    batches (of ``damaged_points`` metric points) whose checksum failed or whose body
    could not be read, set aside."""

    batches: int = 0
    points: int = 0
    runs: int = 0
    waiting: int = 0
    failed: int = 0
    unsendable: int = 0
    damaged: int = 0
    damaged_points: int = 0

    @property
    def empty(self) -> bool:
        return not (self.batches or self.waiting or self.failed or self.unsendable
                    or self.damaged)

    def describe(self) -> str:
        parts = []
        if self.batches:
            parts.append(f"{self.points:,} metric points in {self.batches:,} batches of "
                         f"{self.runs} run(s)")
        if self.waiting:
            parts.append(f"{self.waiting} run(s) not yet created on the server")
        if self.failed:
            parts.append(f"{self.failed} batch(es) the server refused (see the warnings)")
        if self.unsendable:
            parts.append(f"{self.unsendable} batch(es) that cannot be sent (undecodable, or "
                         "text JSON cannot carry)")
        if self.damaged:
            parts.append(f"{self.damaged} damaged batch(es) of {self.damaged_points:,} metric "
                         "points, set aside (checksum failed or unreadable), not sent")
        return "; ".join(parts)


@dataclass(frozen=True)
class RunPlan:
    """What sending a spool would do for one run (``autolog sync --dry-run``)."""

    run_key: str
    server_id: str | None  # None: started offline, created on the server first
    run_name: str | None
    batches: int
    points: int  # metric points
    status: str | None  # the status it would be ended with, if the spool holds one


def _lock_file(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path`` (created if missing), or None when
    another process holds it. The kernel releases it when the holder dies, even by SIGKILL."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class SpoolFile:
    """One spool: the SQLite file, its lock, and every query on them (thread-safe)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int,
                 version: int = SCHEMA_VERSION):
        self.path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self._crc = "b.crc" if version >= 2 else "NULL"  # format 1 has no checksums
        self.damaged: dict[int, int] = {}  # seq -> metric points of batches set aside
        self.uri = self._one("SELECT value FROM meta WHERE key = 'uri'")

    @classmethod
    def create(cls, directory: Path, uri: str) -> SpoolFile:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock_fd = _lock_file(directory / f"{stem}.lock")
        if lock_fd is None:  # a fresh random name: cannot be held
            raise StoreError(f"could not lock a new spool file in {directory}")
        path = directory / f"{stem}{SUFFIX}"
        conn = None
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            conn = _durable(_open(str(path)))
            conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
            meta = {"uri": uri, "pid": os.getpid(), "host": socket.gethostname(),
                    "created": int(time.time() * 1000)}
            _transaction(conn, [
                *(("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(value)))
                  for key, value in meta.items()),
                (f"PRAGMA user_version = {SCHEMA_VERSION}", ()),
                (f"PRAGMA application_id = {APPLICATION_ID}", ()),  # last: now it is a spool
            ])
        except BaseException:  # a full disk, say: leave no half-made spool behind
            if conn is not None:
                conn.close()
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"),
                             directory / f"{stem}.lock"):
                leftover.unlink(missing_ok=True)
            os.close(lock_fd)
            raise
        return cls(path, conn, lock_fd)

    @classmethod
    def claim(cls, path: Path) -> SpoolFile | None:
        """Open another process's spool if no live process holds it, else None."""
        lock_path = path.with_suffix(".lock")
        lock_fd = _lock_file(lock_path)
        if lock_fd is None:
            return None
        if not path.exists():  # its owner removed it a moment ago
            lock_path.unlink(missing_ok=True)
            os.close(lock_fd)
            return None
        try:
            conn = _open(f"file:{quote(str(path))}?mode=rw", uri=True)
            application, version = (conn.execute(f"PRAGMA {pragma}").fetchone()[0]
                                    for pragma in ("application_id", "user_version"))
            if application != APPLICATION_ID or version not in READABLE_VERSIONS:
                conn.close()
                raise StoreError(f"{path} is not an autolog spool of format "
                                 f"{' or '.join(map(str, READABLE_VERSIONS))}")
            return cls(path, _durable(conn), lock_fd, version)
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self, remove: bool) -> None:
        with self._mutex:
            self._conn.close()
        if remove:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.path.with_suffix(".lock").unlink(missing_ok=True)
        os.close(self._lock_fd)

    def release_after_fork(self) -> None:
        """In a forked child: drop the child's copy of the lock, so the lock lives as long
        as the parent does; the SQLite connection is the parent's and is left alone."""
        os.close(self._lock_fd)

    # -- plumbing -----------------------------------------------------------------------

    def _one(self, sql: str, args: Sequence = ()):
        with self._mutex:
            row = self._conn.execute(sql, args).fetchone()
        return row[0] if row else None

    def _write(self, statements: Iterable[tuple[str, Sequence]]) -> None:
        with self._mutex:
            _transaction(self._conn, statements)

    # -- writes -------------------------------------------------------------------------

    def add_offline_run(self, run: OfflineRun) -> None:
        self._write([(
            "INSERT OR IGNORE INTO runs (run_key, experiment_id, experiment_name, run_name, "
            "start_time, tags) VALUES (?, ?, ?, ?, ?, ?)",
            (run.run_key, run.experiment_id, run.experiment_name, run.run_name,
             run.start_time, json.dumps(run.tags)))])

    def append(self, run_key: str, entries: list[tuple[str, int, bytes]],
               server_id: str | None) -> None:
        """Commit ``entries`` (kind, points, body) for a run in one transaction. A run
        the spool has not seen is registered with ``server_id`` (its own id)."""
        statements: list[tuple[str, Sequence]] = []
        if server_id is not None:
            statements.append(("INSERT OR IGNORE INTO runs (run_key, server_id) VALUES (?, ?)",
                               (run_key, server_id)))
        statements.extend(
            ("INSERT INTO batches (run_key, kind, points, crc, body) VALUES (?, ?, ?, ?, ?)",
             (run_key, kind, points, checksum(kind, points, body), body))
            for kind, points, body in entries)
        self._write(statements)

    def set_server_id(self, run_key: str, server_id: str) -> None:
        self._write([("UPDATE runs SET server_id = ? WHERE run_key = ?", (server_id, run_key))])

    def delete(self, seq: int) -> None:
        self._write([("DELETE FROM batches WHERE seq = ?", (seq,))])

    def delete_many(self, seqs: Sequence[int]) -> None:
        """Forget batches the server acknowledged together, in one transaction."""
        self._write([("DELETE FROM batches WHERE seq = ?", (seq,)) for seq in seqs])

    def set_aside(self, seq: int, points: int) -> None:
        """A damaged batch: never sent, left in the file (which is then kept). Only this
        object knows: the row itself may be unreadable, so it is not written to."""
        self.damaged[seq] = points

    def mark_failed(self, seq: int, error: str) -> None:
        self._write([("UPDATE batches SET error = ? WHERE seq = ?", (error, seq))])

    def mark_run_failed(self, run_key: str, error: str) -> None:
        self._write([("UPDATE runs SET error = ? WHERE run_key = ?", (error, run_key))])

    def drop_run(self, run_key: str) -> int:
        """Forget a run's batches (the server no longer has the run); the points dropped."""
        points = self._one("SELECT coalesce(sum(points), 0) FROM batches WHERE run_key = ? "
                           "AND kind = 'metrics'", (run_key,))
        self._write([("DELETE FROM batches WHERE run_key = ?", (run_key,))])
        return points

    def retry_failed(self) -> None:
        """Make refused batches and runs sendable again (``autolog sync`` retries them)."""
        # Only the rows marked: rewriting a row reads its body, and a damaged one fails.
        self._write([("UPDATE batches SET error = NULL WHERE error IS NOT NULL", ()),
                     ("UPDATE runs SET error = NULL WHERE error IS NOT NULL", ())])

    # -- reads --------------------------------------------------------------------------

    def runs_to_create(self) -> list[OfflineRun]:
        with self._mutex:
            rows = self._conn.execute(
                "SELECT run_key, experiment_id, experiment_name, run_name, start_time, tags "
                "FROM runs WHERE server_id IS NULL AND error IS NULL ORDER BY rowid").fetchall()
        return [OfflineRun(key, exp_id, exp_name, name, start, json.loads(tags))
                for key, exp_id, exp_name, name, start, tags in rows]

    def _intact(self) -> tuple[str, list]:
        """The condition (and its argument) that leaves out the batches set aside."""
        return "b.seq NOT IN (SELECT value FROM json_each(?))", [json.dumps(list(self.damaged))]

    def next_batches(self, limit: int) -> list[Batch]:
        """The oldest sendable batches: not refused, not damaged, of runs the server has.

        Each body is read on its own and checked against its checksum; a batch whose body
        SQLite reports corrupt, or whose checksum fails, is set aside (:meth:`set_aside`).
        """
        batches: list[Batch] = []
        while not batches:
            intact, args = self._intact()
            with self._mutex:
                rows = self._conn.execute(
                    f"SELECT b.seq, b.run_key, r.server_id, b.kind, b.points, {self._crc} "
                    "FROM batches b JOIN runs r ON r.run_key = b.run_key "
                    f"WHERE b.error IS NULL AND r.server_id IS NOT NULL AND {intact} "
                    "ORDER BY b.seq LIMIT ?", (*args, limit)).fetchall()
                if not rows:
                    break
                for seq, run_key, server_id, kind, points, crc in rows:
                    body = self._checked_body(seq, kind, points, crc)
                    if body is not None:
                        batches.append(Batch(seq, run_key, server_id, kind, points, body))
        return batches

    def _checked_body(self, seq: int, kind: str, points: int, crc: int | None) -> bytes | None:
        """A batch's body if it is intact; else None, and the batch is set aside."""
        body = self._body(seq)
        if body is None or (crc is not None and checksum(kind, points, body) != crc):
            self.set_aside(seq, points if kind == "metrics" else 0)
            return None
        return body

    def _body(self, seq: int) -> bytes | None:
        """A batch's body, or None when SQLite finds its pages corrupt."""
        try:
            row = self._conn.execute("SELECT body FROM batches WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.OperationalError:  # I/O, locking: not this row's damage
            raise
        except sqlite3.DatabaseError:
            return None
        return bytes(row[0]) if row is not None and isinstance(row[0], bytes) else None

    def has_run(self, run_key: str) -> bool:
        return self._one("SELECT 1 FROM runs WHERE run_key = ?", (run_key,)) is not None

    def server_id(self, run_key: str) -> str | None:
        return self._one("SELECT server_id FROM runs WHERE run_key = ?", (run_key,))

    def sendable(self, run_key: str | None = None) -> int:
        """Batches and run creations still to send (for one run, or all)."""
        only = "" if run_key is None else " AND b.run_key = ?"
        args = () if run_key is None else (run_key,)
        intact, skip = self._intact()
        batches = self._one(
            "SELECT count(*) FROM batches b JOIN runs r ON r.run_key = b.run_key "
            f"WHERE b.error IS NULL AND r.error IS NULL AND {intact}{only}", (*skip, *args))
        creations = self._one(
            "SELECT count(*) FROM runs WHERE server_id IS NULL AND error IS NULL"
            + ("" if run_key is None else " AND run_key = ?"), args)
        return batches + creations

    def audit(self) -> list[RunPlan]:
        """What sending would do, per run, sending nothing: every batch's checksum is
        checked (a failing one is set aside, as sending would), then counted per run.
        Batches and runs refused before count too: ``autolog sync`` retries them."""
        statuses: dict[str, str] = {}
        with self._mutex:
            rows = self._conn.execute(
                f"SELECT b.seq, b.run_key, b.kind, b.points, {self._crc} FROM batches b "
                "ORDER BY b.seq").fetchall()
            for seq, run_key, kind, points, crc in rows:
                body = self._checked_body(seq, kind, points, crc)
                if body is not None and kind == "status":
                    try:
                        statuses[run_key] = str(json.loads(body)["status"])
                    except UNSENDABLE:
                        pass  # sending marks it unsendable; the plan names no status
            intact, skip = self._intact()
            runs = self._conn.execute(
                "SELECT r.run_key, r.server_id, r.run_name, count(b.seq), "
                "coalesce(sum(CASE WHEN b.kind = 'metrics' THEN b.points END), 0) "
                "FROM runs r LEFT JOIN batches b ON b.run_key = r.run_key AND "
                f"{intact} GROUP BY r.run_key ORDER BY r.rowid", skip).fetchall()
        return [RunPlan(key, server_id, name, batches, points, statuses.get(key))
                for key, server_id, name, batches, points in runs
                if batches or server_id is None]

    def backlog(self) -> Backlog:
        intact, skip = self._intact()
        with self._mutex:
            batches, points, runs = self._conn.execute(
                "SELECT count(*), coalesce(sum(CASE WHEN b.kind = 'metrics' THEN b.points END), 0),"
                " count(DISTINCT b.run_key) FROM batches b JOIN runs r ON r.run_key = b.run_key "
                f"WHERE b.error IS NULL AND r.error IS NULL AND {intact}", skip).fetchone()
            waiting = self._conn.execute(
                "SELECT count(*) FROM runs WHERE server_id IS NULL").fetchone()[0]
            failed, unsendable = self._conn.execute(
                f"SELECT count(*) FILTER (WHERE b.error NOT LIKE '{UNSENDABLE_MARK}%' "
                f"OR b.error IS NULL), count(*) FILTER (WHERE b.error LIKE '{UNSENDABLE_MARK}%') "
                "FROM batches b JOIN runs r ON r.run_key = b.run_key "
                "WHERE b.error IS NOT NULL OR r.error IS NOT NULL").fetchone()
        return Backlog(batches, points, runs, waiting, failed, unsendable, len(self.damaged),
                       sum(self.damaged.values()))


def _transaction(conn: sqlite3.Connection, statements: Iterable[tuple[str, Sequence]]) -> None:
    """All of ``statements`` or none, with one commit (one fsync)."""
    with transaction(conn):
        for sql, args in statements:
            conn.execute(sql, args)


def _open(database: str, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(database, uri=uri, timeout=30.0, isolation_level=None,
                           check_same_thread=False)


def _durable(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # committed means on disk, not only in the OS cache
    return conn


def create_offline_run(client: MlflowRestClient, run: OfflineRun) -> RunInfo:
    """Create a run started offline on the server, tagged with its local id; found first,
    so that a creation whose answer was lost does not make a second run."""
    experiment_id = run.experiment_id or client.get_or_create_experiment(
        run.experiment_name).experiment_id
    info = client.find_run_by_tag([experiment_id], LOCAL_RUN_ID_TAG, run.run_key)
    if info is None:
        info = client.create_run(experiment_id, run.run_name, run.start_time,
                                 {**run.tags, LOCAL_RUN_ID_TAG: run.run_key})
    return info


class Sender:
    """Ships one spool to its server, oldest batch first; no thread of its own.

    :meth:`send_available` returns when nothing sendable is left and raises
    :class:`ServerUnreachableError` (or a retry-later :class:`MlflowRestError`) when the
    server cannot take data now; what was not acknowledged stays spooled. A batch the
    server refuses for good is handled here: a refused param is dropped (another process
    logged another value; retrying cannot help), a run deleted on the server loses its
    batches, anything else is kept and marked refused for ``autolog sync`` to retry.
    """

    def __init__(self, spool: SpoolFile, client: MlflowRestClient,
                 notify: Callable[[str], None] = _warn, drop_missing_runs: bool = True):
        self.spool = spool
        self.client = client
        self.notify = notify
        # False when sending to another server than the spool's (``autolog sync --to``):
        # a run it does not know was never there, and its data must not be dropped.
        self.drop_missing_runs = drop_missing_runs
        self._delivered: list[Batch] = []  # acknowledged by the server, since the last report

    def send_available(self, stop: Callable[[], bool] = lambda: False,
                       progress: Callable[[Batch], None] | None = None) -> None:
        self._create_runs()
        while not stop():
            damaged = len(self.spool.damaged)
            batches = self.spool.next_batches(ROWS_PER_FETCH)
            if len(self.spool.damaged) > damaged:
                self.notify(f"{len(self.spool.damaged)} damaged batch(es) of "
                            f"{sum(self.spool.damaged.values()):,} metric "
                            f"points in {self.spool.path} (checksum failed or unreadable) are "
                            "set aside, not sent; the file is kept")
            if not batches:
                return
            groups = list(merged(batches))
            if len(batches) == ROWS_PER_FETCH and len(groups) > 1 and groups[-1][0].kind == "metrics":
                groups.pop()  # may merge with what the next fetch reads first: sent then
            for group in groups:
                if stop():
                    return
                handled = self._send_group(group)
                if progress is not None:  # what the server acknowledged, nothing dropped
                    for batch in self._delivered:
                        progress(batch)
                self._delivered.clear()
                if not handled:  # the spool changed beyond this batch: fetch again
                    break

    def _create_runs(self) -> None:
        for run in self.spool.runs_to_create():
            try:
                info = create_offline_run(self.client, run)
            except (StoreError, *UNSENDABLE) as exc:
                if _retry_later(exc):
                    raise
                self.spool.mark_run_failed(run.run_key, str(exc))
                self.notify(f"{self.client.uri} refused to create run {run.run_key}; its data "
                            f"is kept in {self.spool.path}: {exc}")
                continue
            self.spool.set_server_id(run.run_key, info.run_id)

    def _send_group(self, group: list[Batch]) -> bool:
        """Send batches of :func:`merged` in as few requests as the server's limits allow;
        False when the spool changed beyond them. When the merged send fails for good
        (refused, or a batch cannot be encoded), each batch is sent on its own, so that
        each meets its own fate (what was acknowledged is sent again: the server keeps
        one copy)."""
        if len(group) > 1:
            try:
                rows = [row for batch in group for row in unpack_rows(batch.body)]
                bodies = [body for _, body in metric_bodies(rows)]
            except UNSENDABLE:
                bodies = []
            try:
                for body in bodies:
                    self.client.post_batch(group[0].server_id, body)
            except StoreError as exc:
                if _retry_later(exc):
                    raise
            else:
                if bodies:
                    self.spool.delete_many([batch.seq for batch in group])
                    self._delivered.extend(group)
                    return True
        return all(self._send_one(batch) for batch in group)  # stops at a dropped run

    def _send_one(self, batch: Batch) -> bool:
        try:
            return self._send(batch)
        except UNSENDABLE as exc:  # decoding or encoding it fails: so would a retry
            self.spool.mark_failed(batch.seq, f"{UNSENDABLE_MARK}{type(exc).__name__}: {exc}")
            self.notify(f"a {batch.kind} batch of run {batch.server_id} in "
                        f"{self.spool.path} cannot be sent ({type(exc).__name__}: "
                        f"{exc}); it is set aside in the file")
            return True

    def _send(self, batch: Batch) -> bool:
        """Send one batch; False when the spool changed beyond it (a run was dropped)."""
        try:
            if batch.kind == "metrics":
                for _, body in metric_bodies(unpack_rows(batch.body)):
                    self.client.post_batch(batch.server_id, body)
            elif batch.kind == "tags":
                self.client.post_batch(batch.server_id, batch.body)
            elif batch.kind == "params":
                self.client.log_params(batch.server_id, json.loads(batch.body))
            else:
                status = json.loads(batch.body)
                self.client.update_run(batch.server_id, status["status"], status["end_time"])
        except ParamRefusedError as exc:
            self.spool.delete(batch.seq)
            self.notify(f"param dropped: {exc}")
        except RunNotFoundError as exc:
            if not self.drop_missing_runs:
                self.spool.mark_failed(batch.seq, str(exc))
                self.notify(f"run {batch.server_id} is not on {self.client.uri}; the batch is "
                            f"kept in {self.spool.path}: {exc}")
                return True
            points = self.spool.drop_run(batch.run_key)
            self.notify(f"run {batch.server_id} no longer exists on {self.client.uri}; its "
                        f"{points} spooled metric points were dropped: {exc}")
            return False
        except StoreError as exc:
            if _retry_later(exc):
                raise
            self.spool.mark_failed(batch.seq, str(exc))
            self.notify(f"{self.client.uri} refused a {batch.kind} batch of run "
                        f"{batch.server_id}; it is kept in {self.spool.path} and retried by "
                        f"`autolog sync`: {exc}")
        else:
            self.spool.delete(batch.seq)
            self._delivered.append(batch)
        return True


def merged(batches: Sequence[Batch]) -> Iterator[list[Batch]]:
    """``batches`` in order, in groups to send together: consecutive metric batches of one
    run, up to :data:`MAX_METRICS_PER_BATCH` points; any other batch alone (so a run's
    status still follows its data)."""
    group: list[Batch] = []
    points = 0
    for batch in batches:
        joins = (batch.kind == "metrics" and group and group[0].kind == "metrics"
                 and group[0].run_key == batch.run_key
                 and points + batch.points <= MAX_METRICS_PER_BATCH)
        if group and not joins:
            yield group
            group, points = [], 0
        group.append(batch)
        points += batch.points
    if group:
        yield group


class SpoolStore:
    """The Store for ``http(s)://`` URIs: writes go to the spool, reads to the server.

    ``log_batch`` and ``update_run`` commit to the spool and return; the sender thread
    sends. ``create_run`` and ``get_or_create_experiment`` try the server once, without
    retries, and fall back to local ids when it does not answer. Reads (``get_run``,
    ``get_metric_history``, ``search_runs``) first wait a bounded time for what is spooled
    for them to arrive, so a process reads what it wrote. When the spool cannot be created
    or written, writes go straight to the server (see the module doc).
    """

    def __init__(self, uri: str, spool_dir: Path | str | None = None):
        self.client = MlflowRestClient(uri)
        self._probe = probe_client(uri)
        self.uri = self.client.uri
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        self._offline: dict[str, OfflineRun] = {}
        self._resolved: dict[str, str] = {}  # offline ids of other processes -> server ids
        self._experiment_names: dict[str, str] = {}
        self._spool_problem: str | None = None  # why the spool cannot be written, once warned
        self._inherited: SpoolFile | None = None  # a forked child keeps the parent's, unused
        self._reset_process_state()
        _stores.add(self)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._spool: SpoolFile | None = None
        self._mutex = threading.Lock()
        self._wake = threading.Event()  # new data
        self._kick = threading.Event()  # try now, even while backing off
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage: str | None = None  # why the server did not answer, until it does
        self._warned_outage = False
        self._failures = 0  # failed send attempts so far, so waiters can stop early

    def after_fork_in_child(self) -> None:
        """A forked child gets its own spool and sender; the parent's file stays the
        parent's (its connection is left alone here, never closed)."""
        if self._pid != os.getpid():
            if self._spool is not None:
                self._spool.release_after_fork()
            self._inherited = self._spool
            self._reset_process_state()

    def __repr__(self) -> str:
        return f"SpoolStore({self.uri!r}, spool={self.spool_path})"

    @property
    def spool_path(self) -> Path | None:
        """This process's spool file (None until something was spooled)."""
        return self._spool.path if self._spool is not None else None

    # -- spool and sender -----------------------------------------------------------------

    def _file(self) -> SpoolFile:
        if self._spool is None:
            with self._mutex:
                if self._spool is None:
                    self._spool = SpoolFile.create(self.spool_dir, self.uri)
        self._start_sender()
        return self._spool

    def _writable_file(self) -> SpoolFile | None:
        """This process's spool, or None when it cannot be created (warned once)."""
        try:
            return self._file()
        except (OSError, sqlite3.Error, StoreError) as exc:
            self._spool_failed(exc)
            return None

    def _spool_failed(self, exc: BaseException) -> None:
        if self._spool_problem is None:
            self._spool_problem = f"{type(exc).__name__}: {exc}"
            where = self._spool.path if self._spool is not None else self.spool_dir
            _warn_from_thread(
                f"the spool {where} cannot be written ({self._spool_problem}); data goes "
                f"straight to {self.uri} while it answers, and is kept in memory and retried "
                "while it does not")

    def _start_sender(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._mutex:
                if self._thread is None or not self._thread.is_alive():
                    self._stopping.clear()
                    self._thread = threading.Thread(target=self._send_loop, args=(self._spool,),
                                                    name="autolog-spool-sender", daemon=True)
                    self._thread.start()

    def _send_loop(self, spool: SpoolFile) -> None:
        sender = Sender(spool, self.client, _warn_from_thread)
        delay = 0.0
        down = False  # the last attempt found the server not taking data
        while not self._stopping.is_set():
            if delay:
                self._kick.wait(random.uniform(delay / 2, delay))  # jitter: no thundering herd
            else:
                self._wake.wait(IDLE_POLL_S)
            self._wake.clear()
            self._kick.clear()
            if self._stopping.is_set():
                return
            try:
                if down or self._outage is not None:  # one quick request first: a send
                    # would spend its retries (seconds) on a server that does not answer
                    self._probe.ping()
                sender.send_available(stop=self._stopping.is_set)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any failure
                down = _retry_later(exc)
                delay = (PROBE_INTERVAL_S if down
                         else min(max(delay * 2, BACKOFF_FIRST_S), BACKOFF_MAX_S))
                if self._stopping.is_set():
                    return
                if not down:
                    _warn_from_thread(f"sending the spool {spool.path} failed "
                                      f"({type(exc).__name__}: {exc}); retrying")
                elif not self._warned_outage:
                    self._warned_outage = True
                    _warn_from_thread(
                        f"{self.uri} does not take data now ({exc}); it stays in the spool "
                        f"{spool.path} and is sent when the server answers (or with "
                        f"`{sync_command(self.spool_dir)}`)")
                self._outage = str(exc)
                self._failures += 1  # after the warning: a waiter that stops now saw it
                continue
            delay, down = 0.0, False
            self._outage = None
            if self._warned_outage and not spool.sendable():  # not when stopped half-way
                self._warned_outage = False
                left = spool.backlog()
                _warn_from_thread(f"{self.uri} answers again; the spooled data was sent" + (
                    "" if left.empty else f"; kept in {spool.path}: {left.describe()}"))

    def wait_until_sent(self, timeout: float | None = None, run_id: str | None = None) -> bool:
        """Wait until what is spooled (for ``run_id``, or all) has reached the server.

        False when ``timeout`` (default ``AUTOLOG_EXIT_TIMEOUT``) passed, or when the
        server failed to answer an attempt made after this call began.
        """
        spool = self._spool
        if spool is None:
            return True
        run_key = run_id if run_id is not None and spool.has_run(run_id) else None
        deadline = time.monotonic() + (_exit_timeout() if timeout is None else timeout)
        failures = self._failures
        self._start_sender()
        self._kick.set()
        self._wake.set()
        while spool.sendable(run_key):
            if self._failures > failures or time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def backlog(self) -> Backlog:
        return self._spool.backlog() if self._spool is not None else Backlog()

    def close(self) -> None:
        """Wait up to ``AUTOLOG_EXIT_TIMEOUT`` for the spool to drain, stop the sender,
        and print the command that sends what is left (or remove the empty spool)."""
        spool = self._spool
        if spool is not None:
            started = time.monotonic()
            timeout = _exit_timeout()
            self.wait_until_sent(timeout)
            self._stopping.set()
            self._kick.set()
            self._wake.set()
            if self._thread is not None:  # a request in flight is abandoned, not awaited
                self._thread.join(timeout=min(1.0, max(0.05, started + timeout - time.monotonic())))
            left = spool.backlog()
            if not left.empty:
                print(f"autolog: not sent to {self.uri} within {time.monotonic() - started:.1f} s, "
                      f"kept in {spool.path}: {left.describe()}; send them with: "
                      f"{sync_command(self.spool_dir)}", file=sys.stderr, flush=True)
            spool.close(remove=left.empty)
            self._spool = None
            self._thread = None
        self.client.close()
        self._probe.close()

    # -- ids ----------------------------------------------------------------------------

    def server_run_id(self, run_id: str) -> str | None:
        """The server's id for ``run_id``: itself for a run created online; for a run
        started offline (``offline-...``), the id it got on the server, or None while the
        server does not have it yet."""
        if not run_id.startswith(OFFLINE_RUN_PREFIX):
            return run_id
        if run_id in self._resolved:
            return self._resolved[run_id]
        if self._spool is not None and self._spool.has_run(run_id):
            return self._spool.server_id(run_id)
        # Started by another process: the server's run carries the local id as a tag.
        experiment_ids = [e.experiment_id for e in self.client.list_experiments()]
        for start in range(0, len(experiment_ids), SEARCH_EXPERIMENTS_PER_CALL):
            found = self.client.find_run_by_tag(
                experiment_ids[start:start + SEARCH_EXPERIMENTS_PER_CALL], LOCAL_RUN_ID_TAG, run_id)
            if found is not None:
                return found.run_id
        return None

    def _run_key(self, spool: SpoolFile, run_id: str) -> tuple[str, str | None]:
        """The spool key for ``run_id`` and, for a run the spool may not know yet, its
        server id (which is the id itself for any run not started offline)."""
        if not run_id.startswith(OFFLINE_RUN_PREFIX):
            return run_id, run_id
        if run_id in self._resolved:  # on the server already (created without the spool)
            return self._resolved[run_id], self._resolved[run_id]
        if spool.has_run(run_id):
            return run_id, None
        if run_id in self._offline:  # a forked child's own spool
            spool.add_offline_run(self._offline[run_id])
            return run_id, None
        # Started offline by another process (resumed here): log under the server's id.
        server_id = self.server_run_id(run_id)
        if server_id is None:
            raise RunNotFoundError(f"run {run_id} is not on {self.uri} yet, nor in this "
                                   "process's spool")
        self._resolved[run_id] = server_id
        return server_id, server_id

    def _server_id_for_read(self, run_id: str) -> str:
        self.wait_until_sent(run_id=run_id)
        server_id = self.server_run_id(run_id)
        if server_id is None:
            raise RunNotFoundError(
                f"run {run_id} was started while {self.uri} did not answer and is not on the "
                f"server yet; it is created there when the server answers, or with "
                f"`{sync_command(self.spool_dir)}`")
        return server_id

    # -- the Store protocol: writes -------------------------------------------------------

    def _note_probe_failure(self, exc: StoreError) -> None:
        if not _retry_later(exc):
            raise exc
        self._outage = str(exc)

    def get_or_create_experiment(self, name: str) -> Experiment:
        if self._outage is None:
            try:
                experiment = self._probe.get_or_create_experiment(name)
            except (ServerUnreachableError, MlflowRestError) as exc:
                self._note_probe_failure(exc)
            else:
                self._experiment_names[experiment.experiment_id] = experiment.name
                return experiment
        return Experiment(OFFLINE_EXPERIMENT_PREFIX + name, name)

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return self.client.get_experiment_by_name(name)

    def list_experiments(self) -> list[Experiment]:
        return self.client.list_experiments()

    def create_run(
        self, experiment_id: str, run_name: str, start_time: int, tags: dict[str, str]
    ) -> RunInfo:
        offline_experiment = experiment_id.startswith(OFFLINE_EXPERIMENT_PREFIX)
        if not offline_experiment and self._outage is None:
            try:
                return self._probe.create_run(experiment_id, run_name, start_time, tags)
            except (ServerUnreachableError, MlflowRestError) as exc:
                self._note_probe_failure(exc)
        if offline_experiment:
            known_id, name = None, experiment_id[len(OFFLINE_EXPERIMENT_PREFIX):]
        else:
            known_id, name = experiment_id, self._experiment_names.get(experiment_id)
        run = OfflineRun(OFFLINE_RUN_PREFIX + uuid.uuid4().hex, known_id, name, run_name,
                         start_time, dict(tags))
        self._offline[run.run_key] = run
        spool = self._writable_file()
        if spool is not None:
            try:
                spool.add_offline_run(run)
            except sqlite3.Error as exc:
                self._spool_failed(exc)
                spool = None
        self._warned_outage = True
        self._wake.set()
        if spool is not None:
            where = (f"the spool {spool.path} and sent when the server answers (or with "
                     f"`{sync_command(self.spool_dir)}`)")
        else:
            where = ("memory (the spool cannot be written) and sent when the server answers, "
                     "if this process is still running then")
        _warn(f"{self.uri} cannot take the run now ({self._outage}); run {run.run_key} started "
              f"offline: it and its data are kept in {where}")
        return RunInfo(run.run_key, experiment_id, run_name, RUNNING, start_time)

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        self._append(run_id, [status_entry(status, end_time)])

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricRow] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Commit the batch to the spool, one stored batch per request to send, and return."""
        entries = encode_entries(metrics, params, tags)
        if entries:
            self._append(run_id, entries)

    def _append(self, run_id: str, entries: list[tuple[str, int, bytes]]) -> None:
        """Spool the entries; when the spool cannot be written, send them now (raising,
        so that the writer keeps them and retries, when the server does not answer)."""
        spool = self._writable_file()
        if spool is not None:
            run_key, server_id = self._run_key(spool, run_id)
            try:
                spool.append(run_key, entries, server_id)
            except sqlite3.Error as exc:  # a full disk, an I/O error: nothing was committed
                self._spool_failed(exc)
            else:
                self._wake.set()
                return
        self._deliver_now(run_id, entries)

    def _deliver_now(self, run_id: str, entries: list[tuple[str, int, bytes]]) -> None:
        """Send spool entries straight to the server, in order (the spool's fallback)."""
        server_id = self._direct_server_id(run_id)
        for kind, _, body in entries:
            if kind == "metrics":
                for _, request in metric_bodies(unpack_rows(body)):
                    self.client.post_batch(server_id, request)
            elif kind == "tags":
                self.client.post_batch(server_id, body)
            elif kind == "params":
                self.client.log_params(server_id, json.loads(body))
            else:
                status = json.loads(body)
                self.client.update_run(server_id, status["status"], status["end_time"])

    def _direct_server_id(self, run_id: str) -> str:
        """The server's id for a run whose data cannot be spooled; a run started offline
        is created on the server here (raising while the server does not answer)."""
        if not run_id.startswith(OFFLINE_RUN_PREFIX):
            return run_id
        server_id = self._resolved.get(run_id)
        if server_id is not None:
            return server_id
        if self._spool is not None and self._spool.has_run(run_id):
            server_id = self._spool.server_id(run_id)
            if server_id is None:  # the sender creates it from the spool: not twice
                self._wake.set()
                raise StoreError(f"run {run_id} is not created on {self.uri} yet")
        elif run_id in self._offline:
            server_id = create_offline_run(self.client, self._offline[run_id]).run_id
        else:
            server_id = self.server_run_id(run_id)
            if server_id is None:
                raise RunNotFoundError(f"run {run_id} is not on {self.uri} yet, nor in this "
                                       "process's spool")
        self._resolved[run_id] = server_id
        return server_id

    # -- the Store protocol: reads --------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        return self.client.get_run(self._server_id_for_read(run_id))

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return self.client.get_metric_history(self._server_id_for_read(run_id), key)

    def search_runs(self, experiment_ids: Iterable[str], filter_string: str = "",
                    order_by: Sequence[str] = (), max_results: int = 1000) -> list[RunRecord]:
        self.wait_until_sent()
        return self.client.search_runs(experiment_ids, filter_string, order_by, max_results)


_stores: weakref.WeakSet[SpoolStore] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """Each server store of the parent gets its own spool and sender in the child (called
    through :func:`autolog.stores.after_fork_in_child`)."""
    for store in list(_stores):
        store.after_fork_in_child()


@dataclass
class SpoolPlan:
    """What ``autolog sync --dry-run`` found in one spool file: where it would go (None
    and ``problem`` when it would not be sent), per run what, and what is damaged."""

    path: Path
    uri: str | None
    sent_to: str | None = None
    runs: list[RunPlan] = field(default_factory=list)
    backlog: Backlog = Backlog()
    problem: str | None = None
    held: bool = False


@dataclass
class SpoolOutcome:
    """What ``autolog sync`` did with one spool file."""

    path: Path
    uri: str | None  # the server it names (None when it could not be read)
    sent_to: str | None = None  # where it was sent (``--to``, else ``uri``)
    sent_batches: int = 0
    sent_points: int = 0
    left: Backlog = Backlog()
    problem: str | None = None  # why it stopped early, or why it was not sent
    held: bool = False  # a live process holds it and sends it itself
    notes: list[str] = field(default_factory=list)  # what the sender reported on the way

    @property
    def complete(self) -> bool:
        """Nothing is left in it for anyone to send (a held file is its owner's)."""
        return self.held or (self.problem is None and self.left.empty)


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []


def origin(uri: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of an http(s) URI: where credentials may go."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a port: matches nothing
        port = -1
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _takes_credentials(uri: str) -> bool:
    """A spool for the embedded store sends nothing over the network: no check needed."""
    return not uri.startswith("sqlite:///")


def _not_yours(path: Path) -> str | None:
    """Why ``path`` must not be opened: another user's file (planted in a shared folder,
    its URI would get this user's credentials) or not a regular file."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a link, say); not opened"
    if info.st_uid != os.getuid():
        return f"owned by uid {info.st_uid}, not by you (uid {os.getuid()}); not opened"
    return None


def _not_for(uri: str, to: str | None, configured: str | None,
             command: Callable[[str], str] | None) -> str | None:
    """Why a spool naming ``uri`` is not sent (see :func:`send_spool_file`), or None."""
    if to is None and _takes_credentials(uri) and (
            configured is None or origin(uri) != origin(configured)):
        return (f"not sent: it names {uri}, not the configured tracking server "
                f"({redact_uri(configured) if configured else 'none set'}), and credentials go "
                f"only there; if you trust "
                f"{uri}, send it with: "
                f"{command(uri) if command else f'autolog sync --to {uri}'}")
    return None


def _open_for_sync(path: Path) -> tuple[SpoolFile | None, str | None]:
    """The spool file at ``path`` claimed, or None and why not (held: None, None)."""
    try:
        refusal = _not_yours(path)
        if refusal is not None:
            return None, refusal
        return SpoolFile.claim(path), None
    except FileNotFoundError:  # its owner removed it a moment ago, as claim() allows for
        return None, None
    except (sqlite3.OperationalError, OSError) as exc:  # a full disk, a read-only folder
        return None, f"could not open ({type(exc).__name__}: {exc})"
    except (StoreError, sqlite3.Error) as exc:  # not a database, not a spool
        return None, f"unreadable ({type(exc).__name__}: {exc})"


HELD = "in use by a running process, whose own sender is sending it"


def plan_spool_file(path: Path, *, to: str | None = None, configured: str | None = None,
                    command: Callable[[str], str] | None = None) -> SpoolPlan:
    """What :func:`send_spool_file` would do with ``path``, doing none of it: no request
    is made and the file is left as it is."""
    spool, problem = _open_for_sync(path)
    if spool is None:
        return SpoolPlan(path, None, held=problem is None, problem=problem or HELD)
    plan = SpoolPlan(path, spool.uri, problem=_not_for(spool.uri, to, configured, command))
    try:
        if plan.problem is None:
            plan.sent_to = redact_uri(to) if to else spool.uri
        plan.runs = spool.audit()
        plan.backlog = spool.backlog()
    except sqlite3.Error as exc:
        plan.problem = f"damaged ({type(exc).__name__}: {exc})"
    finally:
        spool.close(remove=False)
    return plan


def send_spool_file(path: Path, progress_factory=None, *, to: str | None = None,
                    configured: str | None = None,
                    command: Callable[[str], str] | None = None) -> SpoolOutcome:
    """Send one spool file no live process holds; remove it once empty. Never raises for
    a damaged or foreign file: the outcome says what happened.

    The spool goes to ``to`` if given, else to the server it names, but only when that
    server has the origin (scheme, host, port) of ``configured``, the tracking URI the
    user set: the environment's credentials go nowhere else (a spool for an embedded
    store, which takes no credentials, goes to its store). ``command(uri)`` is the
    command that sends it to ``uri`` (for the message when it is not sent). Batches
    refused earlier are retried. ``progress_factory(total)`` may return an object with
    ``update(n)`` and ``close()`` (a tqdm bar) that counts metric points.
    """
    spool, problem = _open_for_sync(path)
    if spool is None:
        return SpoolOutcome(path, None, held=problem is None, problem=problem or HELD)
    outcome = SpoolOutcome(path, spool.uri)
    client = bar = None
    try:
        outcome.problem = _not_for(spool.uri, to, configured, command)
        if outcome.problem is not None:
            return outcome
        outcome.sent_to = redact_uri(to) if to else spool.uri  # what messages name
        client = destination(to or spool.uri)
        spool.retry_failed()
        if progress_factory is not None:
            bar = progress_factory(spool.backlog().points)

        def sent(batch: Batch) -> None:
            outcome.sent_batches += 1
            if batch.kind == "metrics":
                outcome.sent_points += batch.points
                if bar is not None:
                    bar.update(batch.points)

        elsewhere = to is not None and origin(to) != origin(spool.uri)
        Sender(spool, client, outcome.notes.append,
               drop_missing_runs=not elsewhere).send_available(progress=sent)
    except StoreError as exc:
        outcome.problem = (f"{outcome.sent_to} does not take data now: {exc}" if _retry_later(exc)
                           else f"stopped: {exc}")
    except sqlite3.OperationalError as exc:  # a full disk: the deletes cannot be written
        outcome.problem = (f"could not update the spool file ({exc}); what was sent since its "
                           "last update is sent again next time (the server keeps one copy)")
    except sqlite3.Error as exc:  # a truncated or corrupt file
        outcome.problem = f"damaged ({type(exc).__name__}: {exc})"
    except (OSError, *UNSENDABLE) as exc:
        outcome.problem = f"stopped ({type(exc).__name__}: {exc})"
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        _release(spool, outcome)
    return outcome


class EmbeddedDestination:
    """What :class:`Sender` sends to, for a spool kept for the embedded store: data the
    SQLite store could not take when it was logged (locked, or its disk full). It speaks
    the few calls of :class:`MlflowRestClient` the sender makes, through the store's own
    ``log_batch`` and ``update_run``, so the spool is sent the same way to either."""

    def __init__(self, uri: str):
        self.uri = uri
        self._store = SqlStore(uri, create=False)

    def _call(self, write: Callable[[], None]) -> None:
        try:
            write()
        except (sqlite3.OperationalError, OSError) as exc:  # locked, full: try again later
            raise ServerUnreachableError(f"{self.uri} cannot take data now: {exc}") from exc
        except StoreError as exc:
            if isinstance(exc, (ParamRefusedError, RunNotFoundError)):
                raise
            raise ServerUnreachableError(f"{self.uri} cannot take data now: {exc}") from exc

    def post_batch(self, run_id: str, body: bytes) -> None:
        """A metrics or tags body of :func:`metric_bodies`/:func:`tag_bodies`, decoded."""
        decoded = json.loads(body)
        rows = [(m["key"], float(m["value"]), m["timestamp"], m["step"])
                for m in decoded.get("metrics", ())]  # float() reads "NaN", "Infinity"
        tags = {t["key"]: t["value"] for t in decoded.get("tags", ())}
        self._call(lambda: self._store.log_batch(run_id, metrics=rows, tags=tags or None))

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self._call(lambda: self._store.log_batch(run_id, params=params))

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        self._call(lambda: self._store.update_run(run_id, status, end_time))

    def close(self) -> None:
        self._store.close()


def destination(uri: str) -> MlflowRestClient | EmbeddedDestination:
    """Where a spool recorded for ``uri`` is sent."""
    return EmbeddedDestination(uri) if is_sql_uri(uri) else MlflowRestClient(uri)


def _release(spool: SpoolFile, outcome: SpoolOutcome) -> None:
    """Count what is left, close, and remove the file if nothing is."""
    try:
        outcome.left = spool.backlog()
    except sqlite3.Error as exc:
        outcome.problem = outcome.problem or f"damaged ({type(exc).__name__}: {exc})"
    try:
        spool.close(remove=outcome.problem is None and outcome.left.empty)
    except (sqlite3.Error, OSError) as exc:
        outcome.problem = outcome.problem or f"could not close ({type(exc).__name__}: {exc})"
