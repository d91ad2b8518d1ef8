"""The Store for ``http(s)://`` URIs: the spool in front of an MLflow server.

Writes are committed to this process's spool and return; one sender thread per process
ships the spool in order (:mod:`.sender`). While the server does not answer, the thread
asks it every :data:`PROBE_INTERVAL_S` at most, with one cheap request and no retries, so
it notices the server's return within about a second and sends the backlog at once; a
run that ended meanwhile is ended on the server right after its data.

Offline start: when the server cannot be reached, ``create_run`` returns at once with a
local id (``offline-<hex>``). The run is created on the server as soon as it answers
(during the run, or later by ``autolog sync``), and its spooled data is sent under the
server's id. :meth:`SpoolStore.server_run_id` maps a local id to the server's, and every
reading method accepts either.

Flush: :meth:`SpoolStore.flush` (``autolog.flush``) waits on a watermark: the newest
``seq`` spooled when it was called, against what is left of the batches up to it. The
sender wakes it whenever the server acknowledges a batch or an attempt ends; the server
itself is never polled for it.

Exit: :meth:`SpoolStore.close` (run at interpreter exit, after the writer's last flush)
waits up to ``AUTOLOG_EXIT_TIMEOUT`` seconds (default 10) for the spool to drain, less
when an attempt finds the server down, then prints one line with the exact ``autolog
sync`` command that sends the rest.

Fallback: the spool is where data waits, not a gate. When it cannot be created or
written (a read-only or full disk), :class:`SpoolStore` sends each batch straight to the
server, and while the server does not answer either it raises, so the writer keeps the
data in memory and tries again; one warning names the spool problem.
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from autolog.config import AutologWarning, env_float, users_stacklevel, warn_from_thread
from autolog.stores.base import (
    RUNNING,
    DatasetInput,
    Experiment,
    Metric,
    MetricRow,
    RunInfo,
    RunNotFoundError,
    RunRecord,
    StoreError,
)
from autolog.stores.local_files import default_spool_dir
from autolog.stores.mlflow_rest import (
    MlflowRestClient,
    MlflowRestError,
    ServerUnreachableError,
    probe_client,
)
from autolog.stores.spool.rows import Entry, encode_entries, inputs_entry, status_entry
from autolog.stores.spool.sender import (
    LOCAL_RUN_ID_TAG,
    Sender,
    create_offline_run,
    deliver,
    retry_later,
)
from autolog.stores.spool.spool_file import (
    OFFLINE_RUN_PREFIX,
    Backlog,
    Batch,
    OfflineRun,
    SpoolFile,
    sync_command,
)

OFFLINE_EXPERIMENT_PREFIX = "offline:"
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0  # after a failure that is not an outage (a local error, say)
PROBE_INTERVAL_S = 1.0  # while the server does not answer: how often to ask whether it is back
IDLE_POLL_S = 1.0
SEARCH_EXPERIMENTS_PER_CALL = 100


def _exit_timeout() -> float:
    return env_float("AUTOLOG_EXIT_TIMEOUT", 10.0)


def _warn(message: str) -> None:
    warnings.warn(f"autolog: {message}", AutologWarning, stacklevel=users_stacklevel(3))


class SpoolStore:
    """The Store for ``http(s)://`` URIs: writes go to the spool, reads to the server.

    ``log_batch`` and ``update_run`` commit to the spool and return; the sender thread
    sends. ``create_run`` and ``get_or_create_experiment`` try the server once, without
    retries, and fall back to local ids when it does not answer. Reads (``get_run``,
    ``get_metric_history``, ``search_runs``) first wait a bounded time for what is spooled
    for them to arrive, so a process reads what it wrote. When the spool cannot be created
    or written, writes go straight to the server (see the module doc).
    """

    def __init__(self, uri: str, spool_dir: Path | str | None = None):
        self.client = MlflowRestClient(uri)
        self._probe = probe_client(uri)
        self.uri = self.client.uri
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool_dir()
        self._offline: dict[str, OfflineRun] = {}
        self._resolved: dict[str, str] = {}  # offline ids of other processes -> server ids
        self._experiment_names: dict[str, str] = {}
        self._spool_problem: str | None = None  # why the spool cannot be written, once warned
        self._inherited: SpoolFile | None = None  # a forked child keeps the parent's, unused
        self._reset_process_state()
        _stores.add(self)

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._spool: SpoolFile | None = None
        self._mutex = threading.Lock()
        self._wake = threading.Event()  # new data
        self._kick = threading.Event()  # try now, even while backing off
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage: str | None = None  # why the server did not answer, until it does
        self._warned_outage = False
        self._failures = 0  # failed send attempts so far, so waiters can stop early
        self._progress = threading.Condition()  # notified when a batch is acknowledged or
        # an attempt ends: what waiters on the sender wait for

    def after_fork_in_child(self) -> None:
        """A forked child gets its own spool and sender; the parent's file stays the
        parent's (its connection is left alone here, never closed)."""
        if self._pid != os.getpid():
            if self._spool is not None:
                self._spool.release_after_fork()
            self._inherited = self._spool
            self._reset_process_state()

    def __repr__(self) -> str:
        return f"SpoolStore({self.uri!r}, spool={self.spool_path})"

    @property
    def spool_path(self) -> Path | None:
        """This process's spool file (None until something was spooled)."""
        return self._spool.path if self._spool is not None else None

    # -- spool and sender -----------------------------------------------------------------

    def _file(self) -> SpoolFile:
        if self._spool is None:
            with self._mutex:
                if self._spool is None:
                    self._spool = SpoolFile.create(self.spool_dir, self.uri)
        self._start_sender()
        return self._spool

    def _writable_file(self) -> SpoolFile | None:
        """This process's spool, or None when it cannot be created (warned once)."""
        try:
            return self._file()
        except (OSError, sqlite3.Error, StoreError) as exc:
            self._spool_failed(exc)
            return None

    def _spool_failed(self, exc: BaseException) -> None:
        if self._spool_problem is None:
            self._spool_problem = f"{type(exc).__name__}: {exc}"
            where = self._spool.path if self._spool is not None else self.spool_dir
            warn_from_thread(
                f"the spool {where} cannot be written ({self._spool_problem}); data goes "
                f"straight to {self.uri} while it answers, and is kept in memory and retried "
                "while it does not")

    def _start_sender(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._mutex:
                if self._thread is None or not self._thread.is_alive():
                    self._stopping.clear()
                    self._thread = threading.Thread(target=self._send_loop, args=(self._spool,),
                                                    name="autolog-spool-sender", daemon=True)
                    self._thread.start()

    def _send_loop(self, spool: SpoolFile) -> None:
        sender = Sender(spool, self.client, warn_from_thread)
        delay = 0.0
        down = False  # the last attempt found the server not taking data
        while not self._stopping.is_set():
            if delay:
                self._kick.wait(random.uniform(delay / 2, delay))  # jitter: no thundering herd
            else:
                self._wake.wait(IDLE_POLL_S)
            self._wake.clear()
            self._kick.clear()
            if self._stopping.is_set():
                return
            try:
                if down or self._outage is not None:  # one quick request first: a send
                    # would spend its retries (seconds) on a server that does not answer
                    self._probe.ping()
                sender.send_available(stop=self._stopping.is_set, progress=self._progressed)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any failure
                down = retry_later(exc)
                delay = (PROBE_INTERVAL_S if down
                         else min(max(delay * 2, BACKOFF_FIRST_S), BACKOFF_MAX_S))
                if self._stopping.is_set():
                    return
                if not down:
                    warn_from_thread(f"sending the spool {spool.path} failed "
                                      f"({type(exc).__name__}: {exc}); retrying")
                elif not self._warned_outage:
                    self._warned_outage = True
                    warn_from_thread(
                        f"{self.uri} does not take data now ({exc}); it stays in the spool "
                        f"{spool.path} and is sent when the server answers (or with "
                        f"`{sync_command(self.spool_dir)}`)")
                self._outage = str(exc)
                self._failures += 1  # after the warning: a waiter that stops now saw it
                self._progressed()
                continue
            delay, down = 0.0, False
            self._outage = None
            self._progressed()
            if self._warned_outage and not spool.sendable():  # not when stopped half-way
                self._warned_outage = False
                left = spool.backlog()
                warn_from_thread(f"{self.uri} answers again; the spooled data was sent" + (
                    "" if left.empty else f"; kept in {spool.path}: {left.describe()}"))

    def _progressed(self, _: Batch | None = None) -> None:
        with self._progress:
            self._progress.notify_all()

    def _await(self, check: Callable[[], bool | None], deadline: float | None,
               give_up: Callable[[], bool] = lambda: False) -> bool | None:
        """Have the sender try now, then wait until ``check()`` gives True or False (None:
        not yet), re-checking whenever the sender reports progress. None when ``deadline``
        (a ``time.monotonic()``; None: no limit) passes or ``give_up()`` first."""
        self._start_sender()
        self._kick.set()
        self._wake.set()
        with self._progress:
            while (verdict := check()) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if give_up() or (left is not None and left <= 0):
                    return None
                self._progress.wait(left)
        return verdict

    def wait_until_sent(self, timeout: float | None = None, run_id: str | None = None) -> bool:
        """Wait until what is spooled (for ``run_id``, or all) has reached the server.

        False when ``timeout`` (default ``AUTOLOG_EXIT_TIMEOUT``) passed, or when the
        server failed to answer an attempt made after this call began.
        """
        spool = self._spool
        if spool is None:
            return True
        run_key = run_id if run_id is not None and spool.has_run(run_id) else None
        failures = self._failures
        sent = self._await(lambda: None if spool.sendable(run_key) else True,
                           time.monotonic() + (_exit_timeout() if timeout is None else timeout),
                           give_up=lambda: self._failures > failures)
        return bool(sent)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the server has acknowledged every batch spooled before this call
        (the watermark: the newest ``seq`` now). ``timeout=None`` waits as long as it takes.

        False, with one warning that says what is left in the spool and how to send it,
        when ``timeout`` passed first or a batch up to the watermark can no longer be sent
        (refused by the server, unsendable or damaged). False too when the server's answer
        dropped a batch meanwhile (a param another process set, a run deleted on the
        server): the sender warned then. A server that is down fails nothing here: the
        sender keeps trying until the timeout.
        """
        spool = self._spool
        if spool is None:
            return True
        upto, drops = spool.newest_seq(), spool.drops

        def check() -> bool | None:
            left, sendable = spool.left_upto(upto)
            return True if not left else None if sendable else False

        started = time.monotonic()
        acknowledged = self._await(check, None if timeout is None else started + timeout)
        if acknowledged:
            return spool.drops == drops
        left = spool.backlog()
        if acknowledged is None:
            _warn(f"{self.uri} has not acknowledged all that was logged before flush() within "
                  f"{time.monotonic() - started:.1f} s; kept in {spool.path}: {left.describe()}"
                  "; it is sent while this process runs and the server answers, or after exit "
                  f"with `{sync_command(self.spool_dir)}`")
        else:
            _warn(f"{self.uri} will not take all that was logged before flush(); kept in "
                  f"{spool.path}: {left.describe()}; after exit, "
                  f"`{sync_command(self.spool_dir)}` tries again")
        return False

    def backlog(self) -> Backlog:
        return self._spool.backlog() if self._spool is not None else Backlog()

    def close(self) -> None:
        """Wait up to ``AUTOLOG_EXIT_TIMEOUT`` for the spool to drain, stop the sender,
        and print the command that sends what is left (or remove the empty spool)."""
        spool = self._spool
        if spool is not None:
            started = time.monotonic()
            timeout = _exit_timeout()
            self.wait_until_sent(timeout)
            self._stopping.set()
            self._kick.set()
            self._wake.set()
            if self._thread is not None:  # a request in flight is abandoned, not awaited
                self._thread.join(timeout=min(1.0, max(0.05, started + timeout - time.monotonic())))
            left = spool.backlog()
            if not left.empty:
                print(f"autolog: not sent to {self.uri} within {time.monotonic() - started:.1f} s, "
                      f"kept in {spool.path}: {left.describe()}; send them with: "
                      f"{sync_command(self.spool_dir)}", file=sys.stderr, flush=True)
            spool.close(remove=left.empty)
            self._spool = None
            self._thread = None
        self.client.close()
        self._probe.close()

    # -- ids ----------------------------------------------------------------------------

    def server_run_id(self, run_id: str) -> str | None:
        """The server's id for ``run_id``: itself for a run created online; for a run
        started offline (``offline-...``), the id it got on the server, or None while the
        server does not have it yet."""
        if not run_id.startswith(OFFLINE_RUN_PREFIX):
            return run_id
        if run_id in self._resolved:
            return self._resolved[run_id]
        if self._spool is not None and self._spool.has_run(run_id):
            return self._spool.server_id(run_id)
        # Started by another process: the server's run carries the local id as a tag.
        experiment_ids = [e.experiment_id for e in self.client.list_experiments()]
        for start in range(0, len(experiment_ids), SEARCH_EXPERIMENTS_PER_CALL):
            found = self.client.find_run_by_tag(
                experiment_ids[start:start + SEARCH_EXPERIMENTS_PER_CALL], LOCAL_RUN_ID_TAG, run_id)
            if found is not None:
                return found.run_id
        return None

    def _run_key(self, spool: SpoolFile, run_id: str) -> tuple[str, str | None]:
        """The spool key for ``run_id`` and, for a run the spool may not know yet, its
        server id (which is the id itself for any run not started offline)."""
        if not run_id.startswith(OFFLINE_RUN_PREFIX):
            return run_id, run_id
        if run_id in self._resolved:  # on the server already (created without the spool)
            return self._resolved[run_id], self._resolved[run_id]
        if spool.has_run(run_id):
            return run_id, None
        if run_id in self._offline:  # a forked child's own spool
            spool.add_offline_run(self._offline[run_id])
            return run_id, None
        # Started offline by another process (resumed here): log under the server's id.
        server_id = self.server_run_id(run_id)
        if server_id is None:
            raise RunNotFoundError(f"run {run_id} is not on {self.uri} yet, nor in this "
                                   "process's spool")
        self._resolved[run_id] = server_id
        return server_id, server_id

    def _server_id_for_read(self, run_id: str) -> str:
        self.wait_until_sent(run_id=run_id)
        server_id = self.server_run_id(run_id)
        if server_id is None:
            raise RunNotFoundError(
                f"run {run_id} was started while {self.uri} did not answer and is not on the "
                f"server yet; it is created there when the server answers, or with "
                f"`{sync_command(self.spool_dir)}`")
        return server_id

    # -- the Store protocol: writes -------------------------------------------------------

    def _note_probe_failure(self, exc: StoreError) -> None:
        if not retry_later(exc):
            raise exc
        self._outage = str(exc)

    def get_or_create_experiment(self, name: str) -> Experiment:
        if self._outage is None:
            try:
                experiment = self._probe.get_or_create_experiment(name)
            except (ServerUnreachableError, MlflowRestError) as exc:
                self._note_probe_failure(exc)
            else:
                self._experiment_names[experiment.experiment_id] = experiment.name
                return experiment
        return Experiment(OFFLINE_EXPERIMENT_PREFIX + name, name)

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return self.client.get_experiment_by_name(name)

    def list_experiments(self) -> list[Experiment]:
        return self.client.list_experiments()

    def create_run(
        self, experiment_id: str, run_name: str, start_time: int, tags: dict[str, str]
    ) -> RunInfo:
        offline_experiment = experiment_id.startswith(OFFLINE_EXPERIMENT_PREFIX)
        if not offline_experiment and self._outage is None:
            try:
                return self._probe.create_run(experiment_id, run_name, start_time, tags)
            except (ServerUnreachableError, MlflowRestError) as exc:
                self._note_probe_failure(exc)
        if offline_experiment:
            known_id, name = None, experiment_id[len(OFFLINE_EXPERIMENT_PREFIX):]
        else:
            known_id, name = experiment_id, self._experiment_names.get(experiment_id)
        run = OfflineRun(OFFLINE_RUN_PREFIX + uuid.uuid4().hex, known_id, name, run_name,
                         start_time, dict(tags))
        self._offline[run.run_key] = run
        spool = self._writable_file()
        if spool is not None:
            try:
                spool.add_offline_run(run)
            except sqlite3.Error as exc:
                self._spool_failed(exc)
                spool = None
        self._warned_outage = True
        self._wake.set()
        if spool is not None:
            where = (f"the spool {spool.path} and sent when the server answers (or with "
                     f"`{sync_command(self.spool_dir)}`)")
        else:
            where = ("memory (the spool cannot be written) and sent when the server answers, "
                     "if this process is still running then")
        _warn(f"{self.uri} cannot take the run now ({self._outage}); run {run.run_key} started "
              f"offline: it and its data are kept in {where}")
        return RunInfo(run.run_key, experiment_id, run_name, RUNNING, start_time)

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        self._append(run_id, [status_entry(status, end_time)])

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricRow] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Commit the batch to the spool, one stored batch per request to send, and return."""
        entries = encode_entries(metrics, params, tags)
        if entries:
            self._append(run_id, entries)

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInput]) -> None:
        """Commit the dataset inputs to the spool, one log-inputs request, and return."""
        if inputs:
            self._append(run_id, [inputs_entry(inputs)])

    def _append(self, run_id: str, entries: list[Entry]) -> None:
        """Spool the entries; when the spool cannot be written, send them now (raising,
        so that the writer keeps them and retries, when the server does not answer)."""
        spool = self._writable_file()
        if spool is not None:
            run_key, server_id = self._run_key(spool, run_id)
            try:
                spool.append(run_key, entries, server_id)
            except sqlite3.Error as exc:  # a full disk, an I/O error: nothing was committed
                self._spool_failed(exc)
            else:
                self._wake.set()
                return
        self._deliver_now(run_id, entries)

    def _deliver_now(self, run_id: str, entries: list[Entry]) -> None:
        """Send spool entries straight to the server, in order (the spool's fallback)."""
        server_id = self._direct_server_id(run_id)
        for kind, _, body in entries:
            deliver(self.client, server_id, kind, body)

    def _direct_server_id(self, run_id: str) -> str:
        """The server's id for a run whose data cannot be spooled; a run started offline
        is created on the server here (raising while the server does not answer)."""
        if not run_id.startswith(OFFLINE_RUN_PREFIX):
            return run_id
        server_id = self._resolved.get(run_id)
        if server_id is not None:
            return server_id
        if self._spool is not None and self._spool.has_run(run_id):
            server_id = self._spool.server_id(run_id)
            if server_id is None:  # the sender creates it from the spool: not twice
                self._wake.set()
                raise StoreError(f"run {run_id} is not created on {self.uri} yet")
        elif run_id in self._offline:
            server_id = create_offline_run(self.client, self._offline[run_id]).run_id
        else:
            server_id = self.server_run_id(run_id)
            if server_id is None:
                raise RunNotFoundError(f"run {run_id} is not on {self.uri} yet, nor in this "
                                       "process's spool")
        self._resolved[run_id] = server_id
        return server_id

    # -- the Store protocol: reads --------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord:
        return self.client.get_run(self._server_id_for_read(run_id))

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return self.client.get_metric_history(self._server_id_for_read(run_id), key)

    def search_runs(self, experiment_ids: Iterable[str], filter_string: str = "",
                    order_by: Sequence[str] = (), max_results: int = 1000) -> list[RunRecord]:
        self.wait_until_sent()
        return self.client.search_runs(experiment_ids, filter_string, order_by, max_results)


_stores: weakref.WeakSet[SpoolStore] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """Each server store of the parent gets its own spool and sender in the child (called
    through :func:`autolog.stores.after_fork_in_child`)."""
    for store in list(_stores):
        store.after_fork_in_child()


def flush_all(timeout: float | None) -> bool:
    """:meth:`SpoolStore.flush` of every server store of this process, within one
    ``timeout`` in all (through :func:`autolog.stores.wait_acknowledged`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return all([store.flush(None if deadline is None else max(deadline - time.monotonic(), 0))
                for store in list(_stores)])
