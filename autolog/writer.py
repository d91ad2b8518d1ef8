"""The one background writer per process: drains every live run's queues into its store.

The training loop only appends to a run's deques (see :mod:`autolog.run`); this thread
wakes every ``AUTOLOG_FLUSH_INTERVAL`` seconds (default 0.2), converts lazy values
(numpy/torch scalars) and writes batches. ``flush()`` and ``end_run`` drain in the
caller's thread under the same lock, so no handshake is needed. A failed write is never
silent: one warning per failure streak, and the batch goes back to the front of its
queue to be written on the next pass. At exit the writer gets a bounded time
(``AUTOLOG_EXIT_TIMEOUT``, default 10 s) to finish, then says what is left.

Fork: a child (a DataLoader worker) gets fresh locks, its own thread and empty queues
(the parent still owns and writes what was pending); it logs into the runs it inherited
but never ends them.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import warnings
from collections import deque
from typing import TYPE_CHECKING

from autolog.config import AutologWarning, env_float
from autolog.stores.base import ParamRefusedError, RunNotFoundError
from autolog.validation import to_floats

if TYPE_CHECKING:
    from autolog.run import Run

BATCH_POINTS = 50_000  # points per store call; the REST store splits further to its limits


class Writer:
    def __init__(self) -> None:
        self.interval = env_float("AUTOLOG_FLUSH_INTERVAL", 0.2)
        self.exit_timeout = env_float("AUTOLOG_EXIT_TIMEOUT", 10.0)
        self._runs: dict[int, Run] = {}
        self._io_lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failing: set[int] = set()  # runs whose last write failed (warned once)

    # -- registration ---------------------------------------------------------------------

    def register(self, run: Run) -> None:
        self._runs[id(run)] = run
        if self._thread is None or not self._thread.is_alive():
            self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="autolog-writer", daemon=True)
        self._thread.start()

    def pending_runs(self) -> list[Run]:
        return list(self._runs.values())

    # -- draining -------------------------------------------------------------------------

    def flush(self, run: Run | None = None) -> bool:
        """Write everything pending (for ``run``, or for every run). True if all was written."""
        runs = [run] if run is not None else self.pending_runs()
        return all([self.drain(r) for r in runs])

    def drain(self, run: Run) -> bool:
        """Write what ``run`` has pending, then its final status if it has ended."""
        with self._io_lock:
            try:
                self._write_params_and_tags(run)
                self._write_metrics(run)
                if run.final_status is not None:
                    run.store.update_run(run.id, run.final_status, run.end_time)
                    self._runs.pop(id(run), None)
            except RunNotFoundError as exc:
                self._runs.pop(id(run), None)
                run.discard_pending()
                _warn(f"run {run.id} no longer exists in {run.store.uri}; its pending "
                           f"data was dropped: {exc}")
                return False
            except Exception as exc:  # noqa: BLE001 - any store failure keeps the data
                if id(run) not in self._failing:
                    self._failing.add(id(run))
                    _warn(f"could not write to {run.store.uri} for run {run.id} "
                               f"({type(exc).__name__}: {exc}); the data is kept and retried")
                return False
            if id(run) in self._failing:
                self._failing.discard(id(run))
                warnings.warn(f"autolog: writing run {run.id} to {run.store.uri} works again",
                              AutologWarning, stacklevel=2)
            return True

    def _write_params_and_tags(self, run: Run) -> None:
        # Params travel in their own batch: a refused param must not take metrics with it.
        while run.pending_params:
            params = run.pending_params[0]
            try:
                run.store.log_batch(run.id, params=params)
            except ParamRefusedError as exc:
                _warn(f"param dropped: {exc}")
            run.pending_params.popleft()
        while run.pending_tags:
            run.store.log_batch(run.id, tags=run.pending_tags[0])
            run.pending_tags.popleft()

    def _write_metrics(self, run: Run) -> None:
        for queue, lazy in ((run.metric_queue, False), (run.lazy_metric_queue, True)):
            while queue:
                batch = _take(queue, BATCH_POINTS)
                rows = _convert(batch) if lazy else batch
                run.in_flight = len(batch)
                try:
                    run.store.log_batch(run.id, metrics=rows)
                except BaseException:
                    queue.extendleft(reversed(batch))
                    raise
                finally:
                    run.in_flight = 0

    # -- the thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing:
            self._wake.wait(self.interval)
            self._wake.clear()
            for run in self.pending_runs():
                try:
                    self.drain(run)
                except Exception:  # noqa: BLE001 - only a warning made an error (-W error)
                    continue  # gets here; drain kept the data, and the thread must live on

    def close(self, timeout: float | None = None) -> list[Run]:
        """Stop the thread after a final pass; return the runs left with pending data."""
        timeout = self.exit_timeout if timeout is None else timeout
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        final = threading.Thread(target=self.flush, name="autolog-final-flush", daemon=True)
        final.start()
        final.join(max(timeout, 0.1))
        return [run for run in self.pending_runs() if run.has_pending()]

    def after_fork_in_child(self) -> None:
        self._io_lock = threading.RLock()
        self._wake = threading.Event()
        self._thread = None
        self._failing.clear()
        for run in self._runs.values():
            run.after_fork_in_child()
        if self._runs:  # the child may log into the runs it inherited: it needs a thread
            self._start_thread()


def _warn(message: str) -> None:
    """A failed write: never hidden by ``silent=True``."""
    warnings.warn(f"autolog: {message}", AutologWarning, stacklevel=3)


def _take(queue: deque, limit: int) -> list:
    pop = queue.popleft
    taken = []
    append = taken.append
    try:
        for _ in range(min(len(queue), limit)):
            append(pop())
    except IndexError:  # another drain emptied it first
        pass
    return taken


def _convert(batch: list) -> list:
    """numpy/torch scalars to float, here rather than on the training thread."""
    rows = []
    for (key, value, timestamp, step), number in zip(batch, to_floats([row[1] for row in batch])):
        if number is None:
            warnings.warn(f"autolog: metric {key!r} at step {step} dropped: {value!r} could not "
                          "be read as a number", AutologWarning, stacklevel=2)
        else:
            rows.append((key, number, timestamp, step))
    return rows


_writer = Writer()


def get_writer() -> Writer:
    return _writer


def _at_exit() -> None:
    """End open runs, give the writer its bounded time, then close the stores (a remote
    store's close drains its spool within the same limit)."""
    from autolog import run as run_module  # the module imports this one
    from autolog.stores import close_all

    run_module.end_runs_at_exit()
    started = time.monotonic()
    left = _writer.close()
    if left:
        points = sum(run.pending_count() for run in left)
        print(
            f"autolog: {points} metric points of {len(left)} run(s) could not be written within "
            f"{time.monotonic() - started:.1f} s at exit and are lost; the store was "
            f"{left[0].store.uri}",
            file=sys.stderr,
        )
    close_all()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_writer.after_fork_in_child)
