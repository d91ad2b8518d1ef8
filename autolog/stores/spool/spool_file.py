"""One spool: the SQLite file, its lock, and every query on them.

Files: ``$AUTOLOG_SPOOL_DIR`` (default ``~/.autolog/spool``) holds one ``<pid>-<hex>.spool``
per process (a forked child gets its own), with a ``.lock`` file its owner holds
(``flock``) while it lives; ``autolog sync`` sends the files no live process holds.
Credentials are never written: the file names its server's URI, nothing more.

Damage: every stored batch carries a CRC-32 of its kind, point count and body (formats 2
and 3; format 1 spools, written by autolog 0.1, have none and are still read). Format 3
adds batches of dataset inputs (kind ``inputs``); a release that knows only format 2
refuses such a file rather than misread it. A batch whose
checksum fails or whose body SQLite cannot read is never sent: it is set aside (left in
the file, which is then kept) and reported. A batch that cannot be decoded or encoded
(a lone surrogate in a key) is marked unsendable, like one the server refused.

Sequence numbers: a batch's ``seq`` is given once (``AUTOINCREMENT``), so "every batch up
to the newest one now" is exactly what was spooled before now, whatever was deleted since:
the watermark :meth:`SpoolStore.flush <autolog.stores.spool.remote.SpoolStore.flush>`
waits on.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from autolog.stores.base import StoreError
from autolog.stores.local_files import lock_file
from autolog.stores.spool.rows import UNSENDABLE, UNSENDABLE_MARK, Entry, checksum
from autolog.stores.sqlite_file import transaction

OFFLINE_RUN_PREFIX = "offline-"  # the local id of a run started while its server did not answer
SCHEMA_VERSION = 3  # 2: batches carry a checksum; 3: batches of kind 'inputs'
READABLE_VERSIONS = (1, 2, 3)
SUFFIX = ".spool"
APPLICATION_ID = 0x616C6F67  # "alog": a spool file, not any SQLite file left in the directory

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
-- without walking its overflow pages, so a damaged body does not hide its row. seq is
-- never reused (AUTOINCREMENT; files of autolog 0.1 reuse it, and are only ever sent).
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key TEXT NOT NULL REFERENCES runs(run_key),
    kind TEXT NOT NULL CHECK (kind IN ('params', 'tags', 'metrics', 'status', 'inputs')),
    points INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    error TEXT,
    body BLOB NOT NULL
);
CREATE INDEX batches_by_run ON batches(run_key);
"""


def sync_command(spool_dir: Path) -> str:
    """The exact command that sends what is left in ``spool_dir``."""
    if spool_dir == Path.home() / ".autolog" / "spool":
        return "autolog sync"
    return f"autolog sync --spool-dir {shlex.quote(str(spool_dir))}"


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []


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
        self.drops = 0  # how often batches were dropped unsent, on the server's word
        self.uri = self._one("SELECT value FROM meta WHERE key = 'uri'")

    @classmethod
    def create(cls, directory: Path, uri: str) -> SpoolFile:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock_fd = lock_file(directory / f"{stem}.lock")
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
            with transaction(conn):
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [(key, str(value)) for key, value in meta.items()])
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # last: now a spool
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
        lock_fd = lock_file(lock_path)
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
        """All of ``statements`` or none, with one commit (one fsync)."""
        with self._mutex, transaction(self._conn):
            for sql, args in statements:
                self._conn.execute(sql, args)

    # -- writes -------------------------------------------------------------------------

    def add_offline_run(self, run: OfflineRun) -> None:
        self._write([(
            "INSERT OR IGNORE INTO runs (run_key, experiment_id, experiment_name, run_name, "
            "start_time, tags) VALUES (?, ?, ?, ?, ?, ?)",
            (run.run_key, run.experiment_id, run.experiment_name, run.run_name,
             run.start_time, json.dumps(run.tags)))])

    def append(self, run_key: str, entries: list[Entry], server_id: str | None) -> None:
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
        """Forget a batch the server acknowledged."""
        self._write([("DELETE FROM batches WHERE seq = ?", (seq,))])

    def drop(self, seq: int) -> None:
        """Forget a batch the server refused for good (a param another process set)."""
        self._write([("DELETE FROM batches WHERE seq = ?", (seq,))])
        self.drops += 1

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
        self.drops += 1
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

    def newest_seq(self) -> int:
        """The ``seq`` of the newest batch spooled (0 when none is): every batch spooled
        before now has one up to it, every batch spooled later a higher one."""
        return self._one("SELECT coalesce(max(seq), 0) FROM batches")

    def left_upto(self, seq: int) -> tuple[int, int]:
        """Of the batches up to ``seq``: how many are still spooled, and how many of those
        can still be sent (not refused, unsendable or damaged). A run still to be created
        on the server counts in both."""
        intact, skip = self._intact()
        with self._mutex:
            left, sendable = self._conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE b.error IS NULL AND r.error IS NULL "
                f"AND {intact}) FROM batches b JOIN runs r ON r.run_key = b.run_key "
                "WHERE b.seq <= ?", (*skip, seq)).fetchone()
            waiting = self._conn.execute(
                "SELECT count(*) FROM runs WHERE server_id IS NULL AND error IS NULL").fetchone()[0]
        return left + waiting, sendable + waiting

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


def _open(database: str, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(database, uri=uri, timeout=30.0, isolation_level=None,
                           check_same_thread=False)


def _durable(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # committed means on disk, not only in the OS cache
    return conn

