"""MLflow's schema in the database: created by MLflow's own migrations when the
database is new, checked (its alembic revision) when it exists.

Creating the schema runs MLflow's ``SqlAlchemyStore`` once, which applies every alembic
migration and adds the ``Default`` experiment: about 1.5 s of migrations plus 2.5 s of
importing MLflow. For SQLite that work is done once per MLflow version and kept as a
template file (``$AUTOLOG_CACHE_DIR``, default ``~/.cache/autolog``); a new SQLite store
is a copy of it (SQLite's backup API), with the ``Default`` experiment's artifact
location and times set as MLflow would set them. A server database is migrated in place.

Processes that open one new database at the same instant create it once: they queue on
a lock (``flock`` on the SQLite file, an advisory lock on PostgreSQL, ``GET_LOCK`` on
MySQL) and the others find the schema made.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import sqlite3
import tempfile
import time
import warnings
from pathlib import Path

from autolog.stores.base import StoreError
from autolog.stores.sql.dialects import Dialect, SQLiteDialect
from autolog.stores.sqlite_file import retry_locked, transaction
from autolog.uris import redact_uri

# The alembic heads autolog writes into: what the pinned mlflow-skinny creates.
TESTED_REVISIONS = {"dc11669786a5": "MLflow 3.17"}
CACHE_DIR_ENV = "AUTOLOG_CACHE_DIR"
DEFAULT_EXPERIMENT_ID = 0


def ensure_schema(dialect: Dialect, artifact_root: str) -> None:
    """Make the database an MLflow database autolog can write, or raise
    :class:`StoreError` saying what to do. Runs before the store opens its own
    connections: a SQLite file is filled (and switched to WAL) while no connection of
    ours has it open, as SQLite's backup into a database others hold in WAL mode is not
    safe (measured: "disk I/O error" in the other processes)."""
    conn = dialect.connect_plain()
    try:
        _ensure(dialect, conn, artifact_root)
    finally:
        conn.close()


def _ensure(dialect: Dialect, conn, artifact_root: str) -> None:
    if _revision(dialect, conn) in TESTED_REVISIONS:
        return
    with dialect.schema_lock(conn):
        revision = _revision(dialect, conn)
        if revision is None:
            _refuse_foreign(dialect, conn)
            _create(dialect, conn, artifact_root)
            revision = _revision(dialect, conn)
        if revision not in TESTED_REVISIONS:
            tested = ", ".join(f"{rev} ({what})" for rev, what in TESTED_REVISIONS.items())
            raise StoreError(
                f"{redact_uri(dialect.uri)} is an MLflow database at schema revision {revision}; "
                f"this autolog writes revision {tested}. If the database is older, upgrade it "
                f"with: mlflow db upgrade {redact_uri(dialect.uri)} (back it up first); if it is "
                "newer, install the autolog release made for that MLflow")


def _revision(dialect: Dialect, conn) -> str | None:
    """The database's alembic revision, or None where MLflow's schema is absent."""
    if "alembic_version" not in _tables(dialect, conn):
        return None
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT version_num FROM alembic_version")
        rows = cursor.fetchall()
    finally:
        cursor.close()
        _end_read(dialect, conn)
    return rows[0][0] if len(rows) == 1 else ",".join(sorted(row[0] for row in rows)) or None


def _tables(dialect: Dialect, conn) -> set[str]:
    cursor = conn.cursor()
    try:
        if dialect.name == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        elif dialect.name == "postgresql":
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        else:
            cursor.execute("SELECT table_name FROM information_schema.tables "
                           "WHERE table_schema = DATABASE()")
        return {row[0] for row in cursor.fetchall()}
    finally:
        cursor.close()
        _end_read(dialect, conn)


def _end_read(dialect: Dialect, conn) -> None:
    if dialect.name != "sqlite":  # a read opened a transaction: end it
        conn.rollback()


def _refuse_foreign(dialect: Dialect, conn) -> None:
    """A database with tables but no MLflow schema is not ours to migrate."""
    tables = _tables(dialect, conn)
    if not tables:
        return
    if isinstance(dialect, SQLiteDialect) and "metric_chunks" in tables:
        raise StoreError(
            f"{dialect.uri} is an autolog 0.1 store, not an MLflow database; copy its runs into "
            f"one with: autolog sync --from sqlite:///{dialect.path} --to sqlite:///mlflow.db")
    raise StoreError(
        f"{redact_uri(dialect.uri)} holds tables ({', '.join(sorted(tables)[:5])}, ...) but not "
        "MLflow's schema; point the tracking URI at an MLflow database or a new one")


def _create(dialect: Dialect, conn, artifact_root: str) -> None:
    if isinstance(dialect, SQLiteDialect):
        template = _sqlite_template()
        source = sqlite3.connect(str(template))
        try:
            source.backup(conn)
        finally:
            source.close()
        now = int(time.time() * 1000)
        with transaction(conn):
            conn.execute(
                "UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                "last_update_time = ? WHERE experiment_id = ?",
                (f"{artifact_root}/{DEFAULT_EXPERIMENT_ID}", now, now, DEFAULT_EXPERIMENT_ID))
        retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
        return
    _run_mlflow_migrations(dialect.engine.url.render_as_string(hide_password=False), artifact_root)


def _run_mlflow_migrations(db_uri: str, artifact_root: str) -> None:
    """MLflow's own store initialisation: every migration, then the Default experiment."""
    quiet = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # MLflow's own deprecations are not the user's
            warnings.simplefilter("ignore")
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = SqlAlchemyStore(db_uri, artifact_root)
            store.engine.dispose()
    except Exception as exc:
        raise StoreError(f"MLflow could not create its schema in {redact_uri(db_uri)}: "
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _mlflow_version() -> str:
    for distribution in ("mlflow-skinny", "mlflow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(distribution)
    raise StoreError("MLflow is not installed: install mlflow-skinny (a dependency of autolog-ml)")


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autolog"


def _sqlite_template() -> Path:
    """An empty MLflow SQLite database made by MLflow's migrations, one per MLflow version."""
    directory = cache_dir()
    template = directory / f"mlflow-{_mlflow_version()}-schema.db"
    if template.exists():
        return template
    directory.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=template.name, suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        _run_mlflow_migrations(f"sqlite:///{scratch}", "/mlruns")
        os.replace(scratch, template)  # whole or not at all, whoever else builds one too
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    return template
