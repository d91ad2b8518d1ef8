"""Shipping a spool to its server, oldest batch first: the one place that decides what
becomes of a batch once the server has answered.

Consecutive metric batches of a run are merged into log-batch requests as large as the
server takes (1,000 points, 1 MB). A run started offline is created on the server first,
tagged ``autolog.local_run_id`` with its local id, and its batches go under the server's id.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence

from autolog.stores.base import ParamRefusedError, RunInfo, RunNotFoundError, StoreError
from autolog.stores.mlflow_rest import (
    MlflowRestClient,
    MlflowRestError,
    ServerUnreachableError,
    metric_bodies,
)
from autolog.stores.spool.rows import UNSENDABLE, UNSENDABLE_MARK, unpack_rows
from autolog.stores.spool.spool_file import Batch, OfflineRun, SpoolFile
from autolog.validation import MAX_METRICS_PER_BATCH

LOCAL_RUN_ID_TAG = "autolog.local_run_id"
ROWS_PER_FETCH = 128  # stored batches read at a time; the consecutive ones of a run merge


def retry_later(exc: BaseException) -> bool:
    """The server cannot take data now (down, overloaded, or refusing the credentials)."""
    return isinstance(exc, ServerUnreachableError) or (
        isinstance(exc, MlflowRestError) and exc.retry_later)


def deliver(client: MlflowRestClient, server_id: str, kind: str, body: bytes) -> None:
    """Send one spool entry (see :mod:`.rows`) of a run to the server."""
    if kind == "metrics":
        for _, request in metric_bodies(unpack_rows(body)):
            client.post_batch(server_id, request)
    elif kind == "tags":
        client.post_batch(server_id, body)
    elif kind == "params":
        client.log_params(server_id, json.loads(body))
    elif kind == "inputs":
        client.post_inputs(server_id, body)
    else:
        status = json.loads(body)
        client.update_run(server_id, status["status"], status["end_time"])


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
                 notify: Callable[[str], None], drop_missing_runs: bool = True):
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
                if retry_later(exc):
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
                if retry_later(exc):
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
            deliver(self.client, batch.server_id, batch.kind, batch.body)
        except ParamRefusedError as exc:
            self.spool.drop(batch.seq)
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
            if retry_later(exc):
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
