"""SQLite connections shared by every SQLite file autolog writes: an MLflow tracking
database and the spool files.

Each write is one ``BEGIN IMMEDIATE`` transaction under a busy timeout
(``AUTOLOG_SQLITE_BUSY_TIMEOUT`` seconds, default 5), so concurrent writers queue instead
of failing. The wait is short on purpose: a store locked for longer fails the write, and
the writer keeps the data and retries on its next pass (or spools it), so no caller
blocks for minutes on someone else's lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

from autolog.config import env_float
from autolog.stores.base import StoreError

BUSY_TIMEOUT_ENV = "AUTOLOG_SQLITE_BUSY_TIMEOUT"
BUSY_TIMEOUT_S = 5.0  # the default of AUTOLOG_SQLITE_BUSY_TIMEOUT


def busy_timeout() -> float:
    return env_float(BUSY_TIMEOUT_ENV, BUSY_TIMEOUT_S)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` … ``COMMIT`` on ``conn`` (the embedded store's, a spool's),
    retried while the database is locked. On any failure, COMMIT's included (a full
    disk), it is rolled back if SQLite has not done so already, and the error that got
    here is the one raised."""
    retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def retry_locked(operation):
    """Run ``operation``, retrying while SQLite reports the database locked, up to the
    busy timeout in all (then :class:`StoreError`).

    The busy timeout covers most waits; switching a fresh file to WAL and ``BEGIN
    IMMEDIATE`` under heavy contention can still report ``locked`` at once.
    """
    deadline_s = busy_timeout()
    deadline = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise StoreError(f"SQLite store stayed locked for {deadline_s:g} s: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
