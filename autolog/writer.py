"""The one background writer per process: drains every live run's queues into its store.

The training loop only appends to a run's deques (see :mod:`autolog.run`); this thread
wakes every ``AUTOLOG_FLUSH_INTERVAL`` seconds (default 0.2), converts lazy values
(numpy/torch scalars) and writes batches. ``flush()`` and ``end_run`` drain in the
caller's thread under the same lock, so no handshake is needed.

Nothing is discarded because a write failed:

- A failed write is never silent: one warning per failure streak, and the batch goes back
  to the front of its queue to be written on a later pass ("works again" is said only
  after a write really succeeded). A run whose writes fail is retried at most every
  :data:`RETRY_PAUSE_S` seconds.
- ``end_run`` waits at most ``AUTOLOG_END_TIMEOUT`` seconds (default 10, plus one store
  call in progress: the embedded store waits ``AUTOLOG_SQLITE_BUSY_TIMEOUT`` at most) for
  the run's data and status to be written. If the store still cannot take them, the run
  is ended all the same (a late ``log_metric`` raises), and its data stays queued: the
  writer keeps retrying it in the background.
- Back-pressure: past ``HIGH_WATER_POINTS`` pending points (:mod:`autolog.run`) the
  training thread waits for the writer: as long as the store takes points (a store slower
  than the loop sets its pace: a database is the home of the data, the spool a refuge),
  at most ``AUTOLOG_BACKPRESSURE_WAIT`` seconds (default 0.5) without progress, and not
  at all while the run's writes are failing; what the store has still not taken then
  goes to the fallback spool, so memory stays bounded. Against a failing store one call
  waits at most that long plus one spill (about 0.1 s per 50,000 points, fsync included;
  the first spill of the process also opens the spool, about 0.5 s more). Lazy values
  (numpy, torch) spilled there are converted on the training thread, in that rare case.
- At exit the writer gets ``AUTOLOG_EXIT_TIMEOUT`` seconds (default 10) to finish; what
  the store still cannot take goes to the fallback spool, and one line per run says how
  many points are where, and the ``autolog sync`` command that writes them.
- The fallback spool is a spool file (:mod:`autolog.stores.spool.spool_file`) in
  ``AUTOLOG_SPOOL_DIR`` (default ``~/.autolog/spool``) that records the run's own store
  as its destination, so ``autolog sync`` writes it there (the embedded store too).
- A batch the store can never take (a value it cannot encode) is not retried forever:
  the points it refuses are found by halving the batch, dropped with a warning that counts
  them, and the rest is written.

Fork: a child (a DataLoader worker) gets fresh locks, its own thread and empty queues
(the parent still owns and writes what was pending); it logs into the runs it inherited
but never ends them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from autolog.config import AutologWarning, env_float, users_stacklevel
from autolog.stores.base import DatasetInput, ParamRefusedError, RunNotFoundError
from autolog.validation import to_floats

if TYPE_CHECKING:
    from autolog.run import Run
    from autolog.stores.spool.spool_file import SpoolFile

BATCH_POINTS = 50_000  # points per store call; the REST store splits further to its limits
RETRY_PAUSE_S = 1.0  # a run whose writes fail is retried this often by the thread
SPILL_PAUSE_S = 1.0  # after the fallback spool failed too, how long before trying it again
# Errors that retrying cannot fix: the store cannot encode a value of the batch.
UNSENDABLE = (sqlite3.InterfaceError, sqlite3.DataError, OverflowError, ValueError, TypeError)


class Writer:
    def __init__(self) -> None:
        self.interval = env_float("AUTOLOG_FLUSH_INTERVAL", 0.2)
        self.exit_timeout = env_float("AUTOLOG_EXIT_TIMEOUT", 10.0)
        self.end_timeout = env_float("AUTOLOG_END_TIMEOUT", 10.0)
        self.backpressure_wait = env_float("AUTOLOG_BACKPRESSURE_WAIT", 0.5)
        self._writing = False  # inside a store call (back-pressure waits for it to end)
        self._runs: dict[int, Run] = {}
        self._io_lock = threading.RLock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failing: dict[int, float] = {}  # runs whose last write failed -> when (warned once)
        self.fallback = Fallback()

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

    def drain(self, run: Run, lock_timeout: float = -1) -> bool:
        """Write what ``run`` has pending, then its final status if it has ended. False
        when a write failed (the data is kept) or the lock was not had in ``lock_timeout``."""
        if not self._io_lock.acquire(timeout=lock_timeout):
            return False
        try:  # the warnings too are given under the lock: a flush that follows sees them
            self._writing = True
            try:
                wrote = self._write_params_and_tags(run)
                wrote += self._write_inputs(run)
                wrote += self._write_metrics(run)
                if run.final_status is not None:
                    run.store.update_run(run.id, run.final_status, run.end_time)
                    wrote += 1
                    self._runs.pop(id(run), None)
            except RunNotFoundError as exc:
                self._runs.pop(id(run), None)
                points = run.pending_count()
                run.discard_pending()
                _warn(f"run {run.id} no longer exists in {run.store.uri}; its {points} pending "
                      f"metric points were dropped: {exc}")
                return False
            except Exception as exc:  # noqa: BLE001 - any store failure keeps the data
                failing = id(run) in self._failing
                self._failing[id(run)] = time.monotonic()
                if not failing:
                    _warn(f"could not write to {run.store.uri} for run {run.id} "
                          f"({type(exc).__name__}: {exc}); the data is kept and retried")
                return False
            finally:
                self._writing = False
            if wrote and self._failing.pop(id(run), None) is not None:
                _warn(f"writing run {run.id} to {run.store.uri} works again")
            return True
        finally:
            self._io_lock.release()

    def finish(self, run: Run) -> bool:
        """Write an ended run's data and status, retrying for at most ``end_timeout``;
        what is still not written stays queued for the thread (see the module doc)."""
        deadline = time.monotonic() + self.end_timeout
        while not self.drain(run, lock_timeout=max(deadline - time.monotonic(), 0)):
            left = deadline - time.monotonic()
            if id(run) not in self._runs:  # the run is gone from the store
                return False
            if left <= 0:
                _warn(f"run {run.id} ended {run.final_status}, but {run.pending_count()} metric "
                      f"points and its status are not written to {run.store.uri} after "
                      f"{self.end_timeout:g} s; they are kept and retried in the background, "
                      "and what is left at exit goes to the spool")
                self._wake.set()
                return False
            time.sleep(min(0.1, left))
        return True

    def relieve(self, run: Run, limit: int) -> None:
        """Back-pressure, on the training thread: more than ``limit`` points are queued.
        Wait for the writer while the store takes points (a slow store sets the loop's
        pace), at most ``backpressure_wait`` seconds without progress, and not at all while
        the run's writes fail; then spill what is still queued to the fallback spool."""
        if id(run) not in self._failing:
            self._wake.set()
            deadline = time.monotonic() + self.backpressure_wait
            lowest = len(run.metric_queue) + len(run.lazy_metric_queue)
            while (queued := len(run.metric_queue) + len(run.lazy_metric_queue)) > limit:
                if id(run) in self._failing:
                    break  # the store fails now: spill
                now = time.monotonic()
                if queued < lowest:  # the writer took a batch: the store is slow, not failing
                    lowest, deadline = queued, now + self.backpressure_wait
                elif now >= deadline and not self._writing:
                    break
                time.sleep(0.002)
            else:
                return
        if self.fallback.failed_recently():
            return  # memory grows rather than lose points; the failure was said
        taken = [_take(run.metric_queue, len(run.metric_queue)),
                 _take(run.lazy_metric_queue, len(run.lazy_metric_queue))]
        try:
            self.fallback.keep(run, taken[0] + _convert(taken[1]))
        except BaseException as exc:  # no room anywhere (or a warning made an error)
            run.metric_queue.extendleft(reversed(taken[0]))
            run.lazy_metric_queue.extendleft(reversed(taken[1]))
            if not isinstance(exc, Exception):
                raise
            _warn(f"{run.pending_count()} metric points of run {run.id} wait in memory: "
                  f"{run.store.uri} does not take them and the spool in "
                  f"{self.fallback.directory()} cannot be written ({type(exc).__name__}: {exc})")

    def _write_params_and_tags(self, run: Run) -> int:
        # Params travel in their own batch: a refused param must not take metrics with it.
        wrote = 0
        for queue, kind in ((run.pending_params, "params"), (run.pending_tags, "tags")):
            while queue:
                values = queue[0]
                try:
                    run.store.log_batch(run.id, **{kind: values})
                except ParamRefusedError as exc:
                    _warn(f"param dropped: {exc}")
                except UNSENDABLE as exc:
                    self._write_one_by_one(run, kind, values, exc)
                queue.popleft()
                wrote += 1
        return wrote

    @staticmethod
    def _write_inputs(run: Run) -> int:
        """Dataset inputs, one queued call at a time; a call the store cannot encode is
        dropped with a warning (retrying cannot help)."""
        wrote = 0
        queue = run.pending_inputs
        while queue:
            inputs = queue[0]
            try:
                run.store.log_inputs(run.id, inputs)
            except UNSENDABLE as exc:
                _warn(f"{len(inputs)} dataset input(s) of run {run.id} dropped, {run.store.uri} "
                      f"cannot take them ({type(exc).__name__}: {exc})")
            queue.popleft()
            wrote += 1
        return wrote

    @staticmethod
    def _write_one_by_one(run: Run, kind: str, values: dict[str, str], exc: Exception) -> None:
        """The store cannot encode some value of ``values``: write the others."""
        refused = []
        for key, value in values.items():
            try:
                run.store.log_batch(run.id, **{kind: {key: value}})
            except ParamRefusedError as refusal:
                _warn(f"param dropped: {refusal}")
            except UNSENDABLE:
                refused.append(key)
        if refused:
            _warn(f"{len(refused)} {kind} of run {run.id} dropped, {run.store.uri} cannot take "
                  f"their values ({type(exc).__name__}: {exc}): {', '.join(map(repr, refused))}")

    def _write_metrics(self, run: Run) -> int:
        wrote = 0
        for name, lazy in (("metric_queue", False), ("lazy_metric_queue", True)):
            # The queue is read anew each time: ending the run swaps it (see Run.end).
            while batch := _take(getattr(run, name), BATCH_POINTS):
                rows = _convert(batch) if lazy else batch
                run.in_flight = len(batch)
                try:
                    run.store.log_batch(run.id, metrics=rows)
                except UNSENDABLE as exc:
                    run.in_flight = 0
                    _isolate_unsendable(run, rows, exc)
                except BaseException:
                    getattr(run, name).extendleft(reversed(batch))
                    raise
                finally:
                    run.in_flight = 0
                run.note_written(rows)
                wrote += 1
        return wrote

    # -- the thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing:
            self._wake.wait(self.interval)
            self._wake.clear()
            for run in self.pending_runs():
                failed_at = self._failing.get(id(run))
                if failed_at is not None and time.monotonic() - failed_at < RETRY_PAUSE_S:
                    continue
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

    def keep_at_exit(self, runs: list[Run]) -> list[str]:
        """Spool what ``runs`` still hold (the store did not take it in time); one line per
        run that has points in the fallback spool or lost, saying how many and where."""
        from autolog.stores.sqlite_file import busy_timeout

        # A final write still in progress ends within one store call; wait for it, so that
        # its batch is either written or back in the queue when it is spooled.
        locked = self._io_lock.acquire(timeout=busy_timeout() + 1.0)
        lines = []
        try:
            for run in runs:
                lines.extend(self._keep_run(run))
            for run_id, (uri, points) in self.fallback.kept.items():
                if not any(run.id == run_id for run in runs):
                    lines.append(self.fallback.kept_line(run_id, uri, points))
        finally:
            if locked:
                self._io_lock.release()
        return lines

    def _keep_run(self, run: Run) -> list[str]:
        lines = []
        in_flight = run.in_flight
        if in_flight:
            lines.append(f"{in_flight} metric points of run {run.id} were being written to "
                         f"{run.store.uri} when the exit timeout passed; they may not be stored")
        rows = _take(run.metric_queue, len(run.metric_queue))
        rows += _convert(_take(run.lazy_metric_queue, len(run.lazy_metric_queue)))
        params = _merged(run.pending_params)
        tags = _merged(run.pending_tags)
        inputs = _take(run.pending_inputs, len(run.pending_inputs))
        try:
            self.fallback.keep(run, rows, params, tags, inputs, status=run.final_status,
                               end_time=run.end_time)
        except Exception as exc:  # noqa: BLE001 - nowhere left to keep them: say so
            what = f"{len(rows)} metric points" + (
                f" and the status {run.final_status}" if run.final_status else "")
            lines.append(f"{what} of run {run.id} could not be written to {run.store.uri}, nor "
                         f"kept in a spool in {self.fallback.directory()} "
                         f"({type(exc).__name__}: {exc}); they are lost")
            return lines
        if run.id not in self.fallback.kept:  # nothing was left to keep after all
            return lines
        uri, points = self.fallback.kept[run.id]
        lines.append(self.fallback.kept_line(run.id, uri, points,
                                             status=run.final_status))
        return lines

    def after_fork_in_child(self) -> None:
        self._io_lock = threading.RLock()
        self._writing = False
        self._wake = threading.Event()
        self._thread = None
        self._failing.clear()
        self.fallback.after_fork_in_child()
        for run in self._runs.values():
            run.after_fork_in_child()
        if self._runs:  # the child may log into the runs it inherited: it needs a thread
            self._start_thread()


class Fallback:
    """The spool for what a store cannot take (see the module doc): one spool file per
    store URI, opened when first needed and held, locked, until exit."""

    def __init__(self) -> None:
        self._files: dict[str, SpoolFile] = {}
        self._lock = threading.Lock()
        self._failed_at: float | None = None
        self.kept: dict[str, tuple[str, int]] = {}  # run id -> (store uri, points kept)

    @staticmethod
    def directory() -> Path:
        from autolog.stores.local_files import default_spool_dir

        return default_spool_dir()

    def failed_recently(self) -> bool:
        return self._failed_at is not None and time.monotonic() - self._failed_at < SPILL_PAUSE_S

    def keep(self, run: Run, rows: list, params: dict[str, str] | None = None,
             tags: dict[str, str] | None = None, inputs: Sequence[Sequence[DatasetInput]] = (),
             status: str | None = None, end_time: int | None = None) -> None:
        """Commit to the spool, in one transaction, what ``run``'s store did not take
        (``inputs``: the queued calls of dataset inputs)."""
        from autolog.stores.spool.rows import encode_entries, inputs_entry, status_entry
        from autolog.stores.spool.spool_file import OFFLINE_RUN_PREFIX, SpoolFile

        if run.id.startswith(OFFLINE_RUN_PREFIX):  # not on the server: no id to send it under
            raise RuntimeError("the run was started offline and is not on the server yet")
        entries = encode_entries(rows, params, tags) + [inputs_entry(batch) for batch in inputs]
        if status is not None:
            entries.append(status_entry(status, end_time))
        if not entries:
            return
        uri = run.store.uri
        try:
            with self._lock:
                spool = self._files.get(uri)
                if spool is None:
                    spool = self._files[uri] = SpoolFile.create(self.directory(), uri)
                spool.append(run.id, entries, server_id=run.id)
        except BaseException:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None
        self.kept[run.id] = (uri, self.kept.get(run.id, (uri, 0))[1] + len(rows))

    def kept_line(self, run_id: str, uri: str, points: int, status: str | None = None) -> str:
        from autolog.stores.spool.spool_file import sync_command

        what = " and ".join(([f"{points} metric points"] if points or not status else [])
                            + ([f"the status {status}"] if status else []))
        return (f"{what} of run {run_id} could not be written to {uri}; kept in "
                f"{self._files[uri].path}; write them with: {sync_command(self.directory())}")

    def close(self) -> None:
        with self._lock:
            for spool in self._files.values():
                spool.close(remove=False)
            self._files.clear()

    def after_fork_in_child(self) -> None:
        """The parent's spools stay the parent's (and locked by it)."""
        for spool in self._files.values():
            spool.release_after_fork()
        self._files = {}
        self._lock = threading.Lock()
        self.kept = {}


def _warn(message: str) -> None:
    """What happened to logged data: never hidden by ``silent=True``."""
    warnings.warn(f"autolog: {message}", AutologWarning, stacklevel=users_stacklevel(3))


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


def _merged(queue: deque) -> dict[str, str] | None:
    merged: dict[str, str] = {}
    while queue:
        merged.update(queue.popleft())
    return merged or None


def _isolate_unsendable(run: Run, rows: list, exc: Exception) -> None:
    """Write ``rows`` in halves until the points the store cannot take are alone; drop
    those with one warning. Another failure puts what is not written back in the queue."""
    refused: list = []
    parts = [rows]
    while parts:
        part = parts.pop()
        try:
            run.store.log_batch(run.id, metrics=part)
        except UNSENDABLE:
            if len(part) == 1:
                refused.extend(part)
            else:
                parts += [part[len(part) // 2:], part[:len(part) // 2]]
        except BaseException:
            unwritten = [row for rows_left in (part, *reversed(parts)) for row in rows_left]
            run.metric_queue.extendleft(reversed(unwritten))  # back in front, in order
            raise
    if refused:
        key, value, _, step = refused[0]
        _warn(f"{len(refused)} metric point(s) of run {run.id} dropped, {run.store.uri} "
              f"cannot take them ({type(exc).__name__}: {exc}); the first: {key!r} = "
              f"{value!r:.60} at step {step}; the rest of the run was written")


def _convert(batch: list) -> list:
    """numpy/torch scalars to float, here rather than on the training thread."""
    rows = []
    for (key, value, timestamp, step), number in zip(batch, to_floats([row[1] for row in batch])):
        if number is None:
            _warn(f"metric {key!r} at step {step} dropped: {value!r} could not be read as a "
                  "number")
        else:
            rows.append((key, number, timestamp, step))
    return rows


_writer = Writer()


def get_writer() -> Writer:
    return _writer
