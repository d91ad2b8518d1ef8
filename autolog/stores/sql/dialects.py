"""What differs between the databases the SQL store writes: how to connect, the
placeholder style, insert-or-ignore and upsert syntax, a whole-database lock, and which
driver errors mean "try again later".

The statements themselves are written once, with ``?`` placeholders and standard
double-quoted identifiers (MySQL connections are switched to ``ANSI_QUOTES``), and go to
the driver as they are: ``sqlite3`` directly for SQLite (so the default store never
imports SQLAlchemy on the training path), and for PostgreSQL and MySQL the DBAPI
connection of a SQLAlchemy engine, so URLs, drivers and their options are SQLAlchemy's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from autolog.stores.base import StoreError
from autolog.stores.sqlite_file import busy_timeout, retry_locked, transaction
from autolog.uris import redact_uri

SCHEMA_LOCK = "autolog-mlflow-schema"
ROWS_PER_STATEMENT = 1000


def sqlite_path(uri: str) -> Path:
    """``sqlite:///rel/path.db`` is relative to the working directory, ``sqlite:////abs`` absolute."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or len(uri) == len(prefix):
        raise ValueError(f"not a SQLite store URI: {uri!r} (expected sqlite:///path/to/file.db)")
    return Path(uri[len(prefix):])


def absolute_sqlite_uri(uri: str) -> str:
    """``uri`` with its path made absolute against the working directory of this moment."""
    return f"sqlite:///{Path(os.path.abspath(sqlite_path(uri)))}"


def dialect_for(uri: str) -> Dialect:
    if uri.startswith("sqlite:///"):
        return SQLiteDialect(uri)
    if uri.startswith("postgresql"):
        return PostgresDialect(uri)
    if uri.startswith("mysql"):
        return MySQLDialect(uri)
    raise StoreError(f"not a SQL database URI: {redact_uri(uri)!r}")


class Dialect:
    """One database server's ways. ``connect`` gives a DBAPI connection with no
    transaction open; :meth:`transaction` runs writes in one."""

    name = ""
    format_placeholders = True  # the driver wants %s, not ?

    def __init__(self, uri: str):
        self.uri = uri

    def connect(self):
        raise NotImplementedError

    def connect_plain(self):
        """A connection for creating or checking the schema (see :mod:`.schema`)."""
        return self.connect()

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.format_placeholders else statement

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """INSERT that skips rows whose primary or unique key exists."""
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING")

    def upsert(self, table: str, columns: Sequence[str], keys: Sequence[str],
               updated: Sequence[str]) -> str:
        sets = ", ".join(f"{column} = excluded.{column}" for column in updated)
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(columns))}) ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}")

    def executemany(self, cursor, statement: str, rows: Sequence[Sequence]) -> None:
        cursor.executemany(self.sql(statement), rows)

    def insert_metrics(self, cursor, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
        """Insert metric rows, an identical row (same primary key) stored once."""
        self.executemany(cursor, self.insert_ignore("metrics", columns), rows)

    @contextmanager
    def transaction(self, conn) -> Iterator:
        cursor = conn.cursor()
        try:
            yield cursor
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    @contextmanager
    def schema_lock(self, conn) -> Iterator[None]:
        raise NotImplementedError

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database being away, locked or full: try again later."""
        return False

    def bad_value(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a value the database cannot store (retrying cannot help)."""
        return False


class SQLiteDialect(Dialect):
    name = "sqlite"
    format_placeholders = False

    def __init__(self, uri: str):
        super().__init__(uri)
        self.path = sqlite_path(uri)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=busy_timeout(), isolation_level=None,
                               check_same_thread=False)
        retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint the WAL every ~40 MB instead of ~4 MB: the index pages a batch of
        # metric rows touches are copied back once per checkpoint (+8% rows/s measured
        # on a 1,000,000-point ingest).
        conn.execute("PRAGMA wal_autocheckpoint=10000")
        return conn

    def connect_plain(self) -> sqlite3.Connection:
        return sqlite3.connect(str(self.path), timeout=busy_timeout(), isolation_level=None)

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
        with transaction(conn):
            yield conn.cursor()

    @contextmanager
    def schema_lock(self, conn) -> Iterator[None]:
        """``flock`` on the database file itself: independent of SQLite's own (POSIX
        record) locks, so it serialises schema creation without blocking readers."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError)

    def bad_value(self, exc: BaseException) -> bool:
        return isinstance(exc, (sqlite3.InterfaceError, sqlite3.DataError))


class _ServerDialect(Dialect):
    """PostgreSQL and MySQL through SQLAlchemy's engine (imported only for them)."""

    def __init__(self, uri: str):
        super().__init__(uri)
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        url = sqlalchemy.engine.make_url(self.driver_url(uri))
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.dbapi = self.engine.dialect.dbapi

    @staticmethod
    def driver_url(uri: str) -> str:
        return uri

    def connect(self):
        try:
            conn = self.engine.raw_connection()
        except Exception as exc:
            raise StoreError(f"cannot connect to {redact_uri(self.uri)}: {_first_line(exc)}") from exc
        self.configure(conn)
        return conn

    def configure(self, conn) -> None:
        pass

    def executemany(self, cursor, statement: str, rows: Sequence[Sequence]) -> None:
        """An INSERT goes as multi-row statements of :data:`ROWS_PER_STATEMENT` rows:
        drivers' own ``executemany`` costs a round trip per row (psycopg2) or parses
        each row's SQL anew."""
        if not statement.startswith("INSERT"):
            return super().executemany(cursor, statement, rows)
        head, _, tail = statement.partition(" VALUES ")
        group_end = tail.index(")") + 1
        group, rest = tail[:group_end], tail[group_end:]
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            page = rows[start:start + ROWS_PER_STATEMENT]
            cursor.execute(self.sql(f"{head} VALUES {', '.join([group] * len(page))}{rest}"),
                           [value for row in page for value in row])

    def transient(self, exc: BaseException) -> bool:
        return isinstance(exc, (self.dbapi.OperationalError, self.dbapi.InterfaceError))

    def bad_value(self, exc: BaseException) -> bool:
        return isinstance(exc, self.dbapi.DataError)


class PostgresDialect(_ServerDialect):
    name = "postgresql"

    @staticmethod
    def driver_url(uri: str) -> str:
        """``postgresql://`` is SQLAlchemy 2.1's psycopg (3) driver; psycopg2 where only
        that is installed."""
        if uri.startswith("postgresql://"):
            try:
                import psycopg  # noqa: F401
            except ImportError:
                return "postgresql+psycopg2://" + uri[len("postgresql://"):]
        return uri

    def insert_metrics(self, cursor, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
        """With psycopg (3): ``COPY`` into a temporary table, then one INSERT … SELECT
        that skips rows already stored. Measured here: twice the rows per second of
        multi-row INSERTs, which the server's index upkeep limits to about 30,000/s."""
        if self.engine.dialect.driver != "psycopg":
            return super().insert_metrics(cursor, columns, rows)
        names = ", ".join(columns)
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS autolog_metrics_in "
                       "(LIKE metrics INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        with cursor.copy(f"COPY autolog_metrics_in ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO metrics ({names}) SELECT {names} FROM autolog_metrics_in "
                       "ON CONFLICT DO NOTHING")

    @contextmanager
    def schema_lock(self, conn) -> Iterator[None]:
        cursor = conn.cursor()
        cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", (SCHEMA_LOCK,))
        conn.commit()
        try:
            yield
        finally:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", (SCHEMA_LOCK,))
            conn.commit()
            cursor.close()


class MySQLDialect(_ServerDialect):
    name = "mysql"

    @staticmethod
    def driver_url(uri: str) -> str:
        """``mysql://`` is SQLAlchemy's mysqlclient driver; PyMySQL where that is absent."""
        if uri.startswith("mysql://"):
            try:
                import MySQLdb  # noqa: F401
            except ImportError:
                return "mysql+pymysql://" + uri[len("mysql://"):]
        return uri

    def configure(self, conn) -> None:
        cursor = conn.cursor()
        cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',ANSI_QUOTES')")
        cursor.close()
        conn.commit()

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        return (f"INSERT IGNORE INTO {table} ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(columns))})")

    def upsert(self, table: str, columns: Sequence[str], keys: Sequence[str],
               updated: Sequence[str]) -> str:
        sets = ", ".join(f"{column} = VALUES({column})" for column in updated)
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                f"({', '.join('?' * len(columns))}) ON DUPLICATE KEY UPDATE {sets}")

    @contextmanager
    def schema_lock(self, conn) -> Iterator[None]:
        cursor = conn.cursor()
        cursor.execute("SELECT GET_LOCK(%s, 600)", (SCHEMA_LOCK,))
        try:
            yield
        finally:
            cursor.execute("SELECT RELEASE_LOCK(%s)", (SCHEMA_LOCK,))
            cursor.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
