"""Reading MLflow's ``file:`` tracking stores (``./mlruns``), so that ``autolog sync`` can
copy them into a database: the migration MLflow's own users are asked to make.

Everything is read through MLflow's own ``FileStore``, which MLflow 3.17 keeps in
maintenance mode and opens only when ``MLFLOW_ALLOW_FILE_STORE`` is true: this module
sets that flag while it opens the store, and imports MLflow only then. Active
experiments and runs are read (not MLflow's trash: deleted ones are counted, so a copy
can say it left them), with their params, tags, status, times, names and full metric
histories. :meth:`MlflowFileStore.artifact_location` says where a run's artifacts are,
for ``autolog sync`` to copy them.

``FileStore`` reads a key's history, one text file, whole; so does this reader, one key
at a time. The store is never written to, except that ``FileStore`` creates the empty
``.trash`` folder it expects when a store lacks it (one copied without empty folders).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from autolog.stores.base import Experiment, Metric, MetricRow, RunInfo, RunRecord, StoreError

ALLOW_FLAG = "MLFLOW_ALLOW_FILE_STORE"


def is_file_store_uri(uri: str) -> bool:
    """``file:`` URIs, and paths with no scheme (``./mlruns``, ``/abs/mlruns``)."""
    return uri.startswith("file:") or "://" not in uri


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    before = os.environ.get(ALLOW_FLAG)
    os.environ[ALLOW_FLAG] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ[ALLOW_FLAG]
        else:
            os.environ[ALLOW_FLAG] = before


class MlflowFileStore:
    """A read-only view of an MLflow file store, for ``autolog sync --from``."""

    def __init__(self, uri: str):
        from mlflow.store.tracking.file_store import FileStore
        from mlflow.utils.file_utils import local_file_uri_to_path, path_to_local_file_uri

        self.root = root = Path(os.path.abspath(local_file_uri_to_path(uri)))
        self.uri = path_to_local_file_uri(str(root))
        self._artifact_uris: dict[str, str] = {}  # run id -> where MLflow put its artifacts
        if root.is_file():
            raise StoreError(f"{root} is a file, not an MLflow file store (a folder); a SQLite "
                             f"store is named sqlite:///{root}")
        if not root.is_dir():
            raise StoreError(f"no MLflow file store at {root} (from {uri}): no such folder")
        if not any(root.glob(f"*/{FileStore.META_DATA_FILE_NAME}")):
            raise StoreError(
                f"{root} is not an MLflow file store: no experiment's "
                f"{FileStore.META_DATA_FILE_NAME} in it (a folder of artifacts only, like the "
                "mlruns beside an mlflow.db, holds no runs: copy from the database instead)")
        with _file_store_allowed():
            self._store = FileStore(str(root))

    def close(self) -> None:
        """Nothing to release: every read opens and closes its files."""

    # -- experiments and runs ------------------------------------------------------------

    def _experiments(self, view_type: int) -> list:
        from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD

        found, token = [], None
        while True:
            page = self._store.search_experiments(
                view_type=view_type, max_results=SEARCH_MAX_RESULTS_THRESHOLD, page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                return found

    def list_experiments(self) -> list[Experiment]:
        from mlflow.entities import ViewType

        return sorted((Experiment(e.experiment_id, e.name)
                       for e in self._experiments(ViewType.ACTIVE_ONLY)),
                      key=lambda e: (len(e.experiment_id), e.experiment_id))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return next((e for e in self.list_experiments() if e.name == name), None)

    def _runs(self, experiment_ids: list[str], view_type: int, max_results: int) -> list:
        from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD

        found, token = [], None
        while len(found) < max_results:
            page = self._store.search_runs(
                experiment_ids, filter_string="", run_view_type=view_type,
                max_results=min(max_results - len(found), SEARCH_MAX_RESULTS_THRESHOLD),
                page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        return found

    def search_runs(self, experiment_ids: Iterable[str], max_results: int = 1000) -> list[RunRecord]:
        """The experiments' active runs, newest first (MLflow's order)."""
        from mlflow.entities import ViewType

        ids = list(experiment_ids)
        if not ids:
            return []
        runs = self._runs(ids, ViewType.ACTIVE_ONLY, max_results)
        self._artifact_uris.update((run.info.run_id, run.info.artifact_uri or "") for run in runs)
        return [_record(run) for run in runs]

    def get_run(self, run_id: str) -> RunRecord:
        return _record(self._store.get_run(run_id))

    def deleted_experiments(self) -> list[str]:
        """The names of the experiments in MLflow's trash."""
        from mlflow.entities import ViewType

        return [e.name for e in self._experiments(ViewType.DELETED_ONLY)]

    def deleted_runs(self, experiment_ids: Iterable[str]) -> int:
        """How many runs of these (active) experiments are in MLflow's trash."""
        from mlflow.entities import ViewType

        ids = list(experiment_ids)
        return len(self._runs(ids, ViewType.DELETED_ONLY, 2**31 - 1)) if ids else 0

    def artifact_location(self, record: RunRecord) -> str:
        """Where the artifacts of ``record`` are: the run's ``artifacts`` folder in this
        store when it holds files (a store that was moved keeps its old location in the
        metadata), else the location its metadata records (which may be on another machine
        or in object storage)."""
        folder = self.root / record.info.experiment_id / record.run_id / "artifacts"
        if folder.is_dir() and any(files for _, _, files in os.walk(folder)):
            return str(folder)
        return self._artifact_uris.get(record.run_id, "") or str(folder)

    # -- metric histories ----------------------------------------------------------------

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every point of a key, in the order it was logged."""
        return [Metric(m.key, m.value, m.timestamp, m.step)
                for m in self._store.get_metric_history(run_id, key)]

    def iter_metric_history(self, run_id: str, key: str,
                            page: int = 50_000) -> Iterator[list[MetricRow]]:
        """A key's points in pages of ``page``, in the order they were logged."""
        history = self._store.get_metric_history(run_id, key)
        for start in range(0, len(history), page):
            yield [(m.key, m.value, m.timestamp, m.step) for m in history[start:start + page]]


def _record(run) -> RunRecord:
    """An MLflow ``Run`` as autolog's record: its name from the info, else the tag."""
    info, data = run.info, run.data
    name = info.run_name or data.tags.get("mlflow.runName", "")
    return RunRecord(
        RunInfo(info.run_id, info.experiment_id, name, info.status, info.start_time, info.end_time,
                info.artifact_uri or ""),
        dict(data.params), dict(data.tags), dict(data.metrics))
