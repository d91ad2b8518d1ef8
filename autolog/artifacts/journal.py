"""The upload journal: one SQLite file per process that lists the uploads it still owes.

``<staging>/journals/<pid>-<hex>.db``, with a ``.lock`` file its owner holds (``flock``)
while it lives, as the metric spool does: a row is committed (WAL, ``synchronous=FULL``)
before ``log_artifact`` returns, and deleted once its upload is verified. ``autolog sync``
takes the journals no live process holds (a process killed by SIGKILL, or one that exited
before its uploads were done) and sends what they list, from the staged objects.

A row holds what an upload needs and nothing secret: the run's tracking URI without its
password (the password comes back from the configured URI, as for spools), the run's id
(an ``offline-…`` id until its server creates it), its ``artifact_uri`` when known, the
path in the run's artifacts, the staged ref, the sha256 (once the uploader has hashed the
copy) and the size.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autolog.stores.base import StoreError
from autolog.stores.local_files import lock_file

SUFFIX = ".db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id INTEGER PRIMARY KEY,
    tracking_uri TEXT NOT NULL,
    run_id TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    artifact_path TEXT NOT NULL,
    ref TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    logged_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
)
"""


@dataclass(frozen=True)
class Upload:
    id: int
    tracking_uri: str
    run_id: str
    artifact_uri: str
    artifact_path: str
    ref: Path
    sha256: str
    size: int
    attempts: int
    error: str | None


class Journal:
    """One journal file and its lock; thread-safe."""

    def __init__(self, path: Path, lock_fd: int):
        self.path = path
        self.name = path.stem
        self._lock_fd = lock_fd
        self._conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)
        self._mutex = threading.Lock()
        self._closed = False

    @classmethod
    def create(cls, directory: Path) -> Journal:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock_fd = lock_file(directory / f"{stem}.lock")
        if lock_fd is None:  # a fresh random name cannot be held by another process
            raise StoreError(f"could not lock a new upload journal in {directory}")
        return cls(directory / f"{stem}{SUFFIX}", lock_fd)

    @classmethod
    def claim(cls, path: Path) -> Journal | None:
        """The journal at ``path`` if no live process holds it, else None."""
        lock_fd = lock_file(path.with_suffix(".lock"))
        if lock_fd is None:
            return None
        return cls(path, lock_fd)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    def add(self, tracking_uri: str, run_id: str, artifact_uri: str,
            files: list[tuple[str, Path, str, int]]) -> None:
        """Record uploads of ``files`` (artifact path, staged ref, sha256, size) to one run,
        in one transaction (one fsync, however many files a folder holds)."""
        now = int(time.time() * 1000)
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO uploads (tracking_uri, run_id, artifact_uri, artifact_path, ref, "
                    "sha256, size, logged_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(tracking_uri, run_id, artifact_uri, path, str(ref), sha256, size, now)
                     for path, ref, sha256, size in files])
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def pending(self) -> list[Upload]:
        """Every upload still owed, oldest first (none once closed)."""
        with self._mutex:
            if self._closed:
                return []
            rows = self._conn.execute(
                "SELECT id, tracking_uri, run_id, artifact_uri, artifact_path, ref, sha256, size, "
                "attempts, error FROM uploads ORDER BY id").fetchall()
        return [Upload(*row[:5], Path(row[5]), *row[6:]) for row in rows]

    def set_artifact_uri(self, upload_id: int, artifact_uri: str) -> None:
        with self._mutex:
            if not self._closed:
                self._conn.execute("UPDATE uploads SET artifact_uri = ? WHERE id = ?",
                                   (artifact_uri, upload_id))

    def set_sha256(self, upload_id: int, sha256: str) -> None:
        with self._mutex:
            if not self._closed:
                self._conn.execute("UPDATE uploads SET sha256 = ? WHERE id = ?", (sha256, upload_id))

    def note_failure(self, upload_id: int, error: str) -> None:
        with self._mutex:
            if not self._closed:
                self._conn.execute("UPDATE uploads SET attempts = attempts + 1, error = ? "
                                   "WHERE id = ?", (error, upload_id))

    def done(self, upload_id: int) -> bool:
        """Forget a finished upload; True when the row went. After :meth:`close` (an upload
        that finished while the process exited) the row stays, and so must its staged copy:
        ``autolog sync`` finds the file there and skips it."""
        with self._mutex:
            if self._closed:
                return False
            return self._conn.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)).rowcount > 0

    def release_after_fork(self) -> None:
        """In a forked child: drop the inherited lock (the parent keeps it) and leave the
        connection alone (it is the parent's)."""
        os.close(self._lock_fd)
        self._closed = True

    def close(self, remove: bool) -> None:
        """Close the file and its lock; with ``remove``, delete both (nothing is owed)."""
        with self._mutex:
            self._closed = True
            self._conn.close()
            if remove:
                for suffix in (SUFFIX, ".db-wal", ".db-shm"):
                    self.path.with_suffix(suffix).unlink(missing_ok=True)
                self.path.with_suffix(".lock").unlink(missing_ok=True)
            os.close(self._lock_fd)


def journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []
