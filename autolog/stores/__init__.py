"""Where runs live. :func:`open_store` maps a tracking URI to its backend."""

from __future__ import annotations

import sys
import threading

from autolog.stores.base import Store, StoreError
from autolog.uris import check_tracking_uri, is_sql_uri

_open: dict[tuple[str, bool], Store] = {}
_lock = threading.Lock()


def open_store(uri: str, create: bool = True) -> Store:
    """The store for ``uri``, shared by every caller in this process.

    ``sqlite:///``, ``postgresql://`` and ``mysql://`` are MLflow databases;
    ``http://`` and ``https://`` an MLflow tracking server; a relative ``sqlite:///``
    path is resolved against the working directory now. With ``create=False`` a missing
    SQLite file is an error instead of a new database (for reading commands).
    """
    if uri.startswith("sqlite:///"):
        from autolog.stores.sql.dialects import absolute_sqlite_uri

        uri = absolute_sqlite_uri(uri)  # once, here: a later os.chdir must not move the store
    with _lock:
        store = _open.get((uri, create)) or _open.get((uri, True))
        if store is None:
            store = _make(uri, create)
            _open[(uri, create)] = store
        return store


def _make(uri: str, create: bool) -> Store:
    try:
        check_tracking_uri(uri)  # an MLflow database or an MLflow server, else why not
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if is_sql_uri(uri):
        from autolog.stores.sql.store import SqlStore

        return SqlStore(uri, create=create)
    from autolog.stores.spool.remote import SpoolStore

    return SpoolStore(uri)  # the durable spool in front of the server


def close_all() -> None:
    """Close every open store (tests and interpreter exit)."""
    with _lock:
        for store in {id(store): store for store in _open.values()}.values():
            store.close()
        _open.clear()


def after_fork_in_child() -> None:
    """Reset what the open stores hold per process (see :mod:`autolog.lifecycle`). Only a
    server store holds anything (its spool and sender); its module is imported only for an
    ``http(s)://`` URI."""
    remote = sys.modules.get(f"{__name__}.spool.remote")
    if remote is not None:
        remote.after_fork_in_child()


def wait_acknowledged(timeout: float | None) -> bool:
    """Wait until the tracking servers of this process's stores have acknowledged all that
    was spooled for them (:meth:`~autolog.stores.spool.remote.SpoolStore.flush`), within
    ``timeout`` seconds in all (None: no limit). True at once without a server store: the
    other stores have what they were given once it is written."""
    remote = sys.modules.get(f"{__name__}.spool.remote")
    return remote is None or remote.flush_all(timeout)


def check_configuration(uri: str) -> None:
    """Raise :class:`~autolog.stores.mlflow_rest.MisconfiguredServerError` when ``uri``
    names a server that cannot be MLflow's as written (its host does not resolve, TLS
    fails, what answers is not MLflow): an error to fix now. A server that is down or
    overloaded is not an error here: runs then start offline, into the spool."""
    if not uri.startswith(("http://", "https://")):
        return
    from autolog.stores.mlflow_rest import MisconfiguredServerError, probe_client

    client = probe_client(uri)
    try:
        client.ping()
    except MisconfiguredServerError:
        raise
    except StoreError:  # an outage, or credentials to fix before the spool is sent
        pass
    finally:
        client.close()
