"""Searching an MLflow database with MLflow's own search code.

A filtered or ordered search must give exactly what ``MlflowClient.search_runs`` gives on
the same database: MLflow's grammar (``metrics.``/``params.``/``tags.``/``attributes.``,
comparisons, ``AND``, ``LIKE``/``ILIKE``, ``IN``), its results and its order, ties
included. So it is MLflow's ``SqlAlchemyStore.search_runs`` itself that runs, and its
``Run`` entities are mapped to :class:`~autolog.stores.base.RunRecord`.

MLflow is imported here, on the first search (about 2.5 s), never at ``import autolog``.
One ``SqlAlchemyStore`` per database URI is kept for the process (opening one checks the
schema revision and costs a few hundred milliseconds); a forked child builds its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence

from autolog.stores.base import InvalidSearchError, RunInfo, RunRecord, StoreError
from autolog.uris import redact_uri

MLFLOW_PAGE_LIMIT = 50_000  # SqlAlchemyStore refuses a larger max_results per call

_stores: dict[str, object] = {}
_stores_pid = os.getpid()
_lock = threading.Lock()


def search_runs_with_mlflow(
    db_uri: str,
    artifact_root: str,
    experiment_ids: Iterable[str | int],
    filter_string: str = "",
    order_by: Sequence[str] = (),
    max_results: int = 1000,
) -> list[RunRecord]:
    """Active runs of ``experiment_ids`` matching ``filter_string``, in ``order_by`` order,
    at most ``max_results``, as MLflow's ``SqlAlchemyStore.search_runs`` finds them on the
    database at ``db_uri`` (a SQLAlchemy URI). ``artifact_root`` is what MLflow's store is
    opened with: it only matters if MLflow has to create the ``Default`` experiment.

    An expression MLflow refuses raises :class:`InvalidSearchError` with MLflow's message;
    a database that fails raises :class:`StoreError`.
    """
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    ids = [str(i) for i in experiment_ids]
    if not ids or max_results < 1:
        return []
    store = _store(db_uri, artifact_root)
    records: list[RunRecord] = []
    token = None
    while len(records) < max_results:
        try:
            page = store.search_runs(
                ids, filter_string or "", ViewType.ACTIVE_ONLY,
                max_results=min(max_results - len(records), MLFLOW_PAGE_LIMIT),
                order_by=list(order_by) or None, page_token=token)
        except MlflowException as exc:
            # MLflow raises its refusals of the query itself; a database failure comes
            # wrapped (``raise MlflowException(...) from`` the driver's error).
            if exc.error_code == "INVALID_PARAMETER_VALUE" or exc.__cause__ is None:
                raise InvalidSearchError(exc.message) from None
            raise StoreError(f"searching {redact_uri(db_uri)} failed: {exc.message}") from None
        records.extend(_record(run) for run in page)
        token = page.token
        if not token:
            break
    return records


def _store(db_uri: str, artifact_root: str):
    """The process's ``SqlAlchemyStore`` for ``db_uri``, opened on first use."""
    global _stores_pid
    with _lock:
        if _stores_pid != os.getpid():  # forked: the parent's pooled connections are not ours
            for inherited in _stores.values():
                inherited.engine.dispose(close=False)
            _stores.clear()
            _stores_pid = os.getpid()
        store = _stores.get(db_uri)
        if store is None:
            from mlflow.exceptions import MlflowException
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            try:
                store = SqlAlchemyStore(db_uri, artifact_root)
            except MlflowException as exc:
                raise StoreError(f"MLflow cannot search {redact_uri(db_uri)}: {exc.message}") from None
            _stores[db_uri] = store
        return store


def _record(run) -> RunRecord:
    """An MLflow ``Run`` as autolog's record: latest metrics as MLflow gives them (NaN
    included), params and tags as stored."""
    info = run.info
    return RunRecord(
        RunInfo(
            run_id=info.run_id,
            experiment_id=str(info.experiment_id),
            run_name=info.run_name or "",
            status=info.status,
            start_time=info.start_time or 0,
            end_time=info.end_time,
            artifact_uri=info.artifact_uri or "",
        ),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )
