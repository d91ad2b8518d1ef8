"""Fresh SQL databases for tests: PostgreSQL and MariaDB on this machine, SQLite in a temp dir.

``postgres_uri`` and ``mysql_uri`` create a database of their own for one test (a random
``autolog_*`` name) and drop it after; ``sql_uri`` runs a test once on each kind. A
service that does not answer makes its tests skip, with the reason; the rest still run.
Each is an empty database: the first to open it (MLflow, or autolog) creates MLflow's
schema with MLflow's migrations, which takes seconds on a server, so tests take few.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import sys
from collections.abc import Iterator

import pytest

import autolog
from autolog.stores import close_all

POSTGRES = ("127.0.0.1", 5432)  # trust auth, user postgres
MARIADB = ("127.0.0.1", 3306)  # user root, empty password


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def postgres_admin(database: str = "postgres"):
    """An autocommit psycopg2 connection as user postgres (CREATE/DROP DATABASE)."""
    import psycopg2

    conn = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", dbname=database)
    conn.autocommit = True
    return conn


def mariadb_admin():
    """An autocommit PyMySQL connection as root."""
    import pymysql

    return pymysql.connect(host=MARIADB[0], port=MARIADB[1], user="root", password="",
                           autocommit=True)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "autolog") -> Iterator[str]:
    """A new, empty PostgreSQL database (its name), dropped on exit whoever is connected."""
    if not reachable(POSTGRES):
        pytest.skip(f"PostgreSQL does not answer at {POSTGRES[0]}:{POSTGRES[1]}")
    try:
        conn = postgres_admin()
    except Exception as exc:  # noqa: BLE001 - any connection failure means: skip
        pytest.skip(f"PostgreSQL at {POSTGRES[0]}:{POSTGRES[1]} refused user postgres: {exc}")
    database = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with conn.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        yield database
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.close()


@contextlib.contextmanager
def fresh_mariadb_database(prefix: str = "autolog") -> Iterator[str]:
    """A new, empty MariaDB database (its name), dropped on exit."""
    if not reachable(MARIADB):
        pytest.skip(f"MariaDB does not answer at {MARIADB[0]}:{MARIADB[1]}")
    try:
        conn = mariadb_admin()
    except Exception as exc:  # noqa: BLE001 - any connection failure means: skip
        pytest.skip(f"MariaDB at {MARIADB[0]}:{MARIADB[1]} refused user root: {exc}")
    database = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{database}`")
        yield database
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        conn.close()


def release(uri: str) -> None:
    """Let go of every connection this process holds to ``uri`` before its database is
    dropped: autolog's (its runs end and its writes land first; conftest's teardown, which
    does the same, comes after this fixture's) and MLflow's cached engine for it."""
    while autolog.active_run() is not None:
        autolog.end_run()
    flushed = autolog.flush()
    close_all()
    store_module = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store_module is not None:
        engine = store_module.SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    assert flushed, "a write failed during the test"


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def sqlite_uri(tmp_path) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'sql' / 'mlflow.db'}"  # not conftest's default store
    yield uri
    release(uri)


@pytest.fixture
def postgres_uri() -> Iterator[str]:
    with fresh_postgres_database() as database:
        uri = f"postgresql://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{database}"
        yield uri
        release(uri)


@pytest.fixture
def mysql_uri() -> Iterator[str]:
    with fresh_mariadb_database() as database:
        uri = f"mysql+pymysql://root@{MARIADB[0]}:{MARIADB[1]}/{database}"
        yield uri
        release(uri)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_uri(request) -> str:
    """A fresh, empty database of each kind in turn: the test runs once per backend."""
    return request.getfixturevalue(f"{request.param}_uri")
