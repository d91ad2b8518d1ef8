"""Run: identity, status, the param ledger, and the queues the writer drains.

``Run.log_metric`` is the hot path: a cached key check, a type check, a timestamp and a
deque append. Values that are not plain ``int``/``float`` (numpy, torch) go to a second
queue as they are and are converted by the writer thread, so a CUDA tensor never syncs
on the training thread.

Past ``HIGH_WATER_POINTS`` queued points a logging call hands over to the writer, which
makes it wait a bounded time (``AUTOLOG_BACKPRESSURE_WAIT``, see :mod:`autolog.writer`).

How a run ends is :func:`ended_status`'s rule; who ends runs, and when, is
:mod:`autolog.lifecycle`'s.

Which run is active: each thread has a stack of the runs it started; a thread that has
started none sees the stack of the thread that started the first run still open (so a
run started in the main thread is the active run of DataLoader or worker threads too).

In Jupyter a run shows itself (``Run._repr_html_``) with the latest metrics the writer
wrote for it in this process (kept as it writes them: displaying asks the store nothing,
so it costs nothing on a cold server) and where to see it: its page in the MLflow UI of
a tracking server, or the ``mlflow ui`` command that shows a database.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NoReturn
from urllib.parse import quote

from autolog.artifacts.uploader import RunTarget
from autolog.ledger import ParamLedger
from autolog.stores.base import FAILED, FINISHED, KILLED, RUN_STATUSES, DatasetInput, RunInfo, Store
from autolog.uris import SERVER_URI_PREFIXES, is_sql_uri, redact_uri, split_credentials
from autolog.validation import (
    check_metric_key,
    check_step,
    check_tag_key,
    check_tag_value,
    check_timestamp_ms,
    metric_value_kind,
)
from autolog.writer import get_writer

HIGH_WATER_POINTS = 250_000  # past this many queued points, back-pressure (bounded memory)
HTML_METRICS = 8  # the latest metrics a run's HTML display shows (by key)

_checked_metric_keys: set[str] = set()
_SMALL_INT_MAX = 2**30 - 1  # the largest int of one digit, which CPython compares fastest
_SMALL_INT_MIN = -_SMALL_INT_MAX
_time = time.time
_INTERNAL_PACKAGES = ("autolog", "autolog_integrations", "wrapt")


class _EndedQueue(deque):
    """An ended run's queue: what was pending stays in it for the writer, and a late
    ``log_metric`` fails loudly without an extra check on the hot path."""

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id

    def append(self, _item: object) -> None:
        self.refuse()

    def refuse(self) -> NoReturn:
        raise RuntimeError(
            f"run {self.run_id} has ended; start a new run, or resume this one with "
            f"autolog.start_run(run_id={self.run_id!r})"
        )


def user_call_site(skip: tuple[str, ...] = ()) -> str:
    """``file:line`` of the innermost frame outside autolog (and outside ``skip`` packages)."""
    frame = sys._getframe(1)
    internal = _INTERNAL_PACKAGES + skip
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.partition(".")[0] not in internal:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


class Run:
    """An open run in this process. Use it as a context manager or end it with ``end()``.

    ``attached``: a run this process logs into without owning it (a node leader's system
    metrics into the launcher's run, see :mod:`autolog.system_metrics`): never active here,
    and never ended here, at exit neither; its points are written as any run's."""

    def __init__(self, store: Store, info: RunInfo, on_conflict: str, parent_id: str | None = None,
                 attached: bool = False):
        self.store = store
        self.attached = attached
        self.info = info
        self.parent_id = parent_id
        self.ledger = ParamLedger(on_conflict)
        self.metric_queue: deque = deque()
        self.lazy_metric_queue: deque = deque()
        self.pending_params: deque[dict[str, str]] = deque()
        self.pending_tags: deque[dict[str, str]] = deque()
        self.pending_inputs: deque[tuple[DatasetInput, ...]] = deque()
        self.in_flight = 0  # points the writer is sending right now
        self.final_status: str | None = None
        self.end_time: int | None = None
        # key -> (value, step) of the latest point written (see note_written)
        self.latest_metrics: dict[str, tuple[float, int]] = {}
        self.owner_pid = os.getpid()
        self._writer = get_writer()
        self._writer.register(self)

    @property
    def id(self) -> str:
        return self.info.run_id

    @property
    def server_id(self) -> str | None:
        """The id on the tracking server; differs from :attr:`id` only for a run started
        while the server was unreachable (None until the server has created it)."""
        return self.store.server_run_id(self.id)

    @property
    def name(self) -> str:
        return self.info.run_name

    @property
    def experiment_id(self) -> str:
        return self.info.experiment_id

    @property
    def status(self) -> str:
        return self.final_status or self.info.status

    def __repr__(self) -> str:
        return f"<autolog.Run id={self.id} name={self.name!r} status={self.status}>"

    def _repr_html_(self) -> str:
        """Jupyter's display (module doc). Never raises: a display must not fail a cell."""
        from html import escape

        try:
            # a copy (the writer adds keys); the user's and the integrations' metrics before
            # the system metrics (a dozen keys of their own), each part by key
            latest = sorted(dict(self.latest_metrics).items(),
                            key=lambda item: (item[0].startswith("system/"), item[0]))
            shown = [f"{escape(key)} = {value:.6g} <small>(step {step})</small>"
                     for key, (value, step) in latest[:HTML_METRICS]]
            if len(latest) > HTML_METRICS:
                shown.append(f"and {len(latest) - HTML_METRICS} more")
            rows = [("Run", f"<b>{escape(self.name)}</b>"),
                    ("ID", f"<code>{escape(self.id)}</code>"),
                    ("Status", escape(self.status)),
                    ("Metrics", "<br>".join(shown) or "none written yet"),
                    ("See it", self._where_html(escape))]
        except Exception:  # noqa: BLE001 - the plain repr instead
            return f"<pre>{escape(repr(self))}</pre>"
        cells = "".join(f'<tr><th style="text-align:left">{label}</th>'
                        f'<td style="text-align:left">{value}</td></tr>' for label, value in rows)
        return f"<table>{cells}</table>"

    def _where_html(self, escape: Callable[[str], str]) -> str:
        """The run's page on a tracking server, or the command that shows its database."""
        from autolog.stores.spool.spool_file import OFFLINE_RUN_PREFIX

        uri = self.store.uri
        if uri.startswith(SERVER_URI_PREFIXES):
            server = split_credentials(uri)[0]
            if self.id.startswith(OFFLINE_RUN_PREFIX):
                return f"on {escape(server)} once it answers (the run was started offline)"
            link = f"{server}/#/experiments/{quote(self.experiment_id)}/runs/{quote(self.id)}"
            return f'<a href="{escape(link)}" target="_blank">{escape(link)}</a>'
        if is_sql_uri(uri):
            import shlex

            command = f"mlflow ui --backend-store-uri {shlex.quote(redact_uri(uri))}"
            return f"<code>{escape(command)}</code>"
        return escape(redact_uri(uri))

    # -- the hot path ---------------------------------------------------------------------

    def log_metric(
        self, key: str, value: Any, step: int | None = None, timestamp: int | None = None
    ) -> None:
        try:
            known = key in _checked_metric_keys
        except TypeError:  # unhashable
            known = False
        if not known:
            _checked_metric_keys.add(check_metric_key(key))
        # A float first, then a small int (comparisons CPython specialises for ints of one
        # 30-bit digit); anything else, a big int included, is checked by
        # metric_value_kind, which refuses an int beyond a float (10**400).
        kind = type(value)
        if kind is float or (kind is int and _SMALL_INT_MIN <= value <= _SMALL_INT_MAX) \
                or metric_value_kind(value) == "native":
            queue = self.metric_queue
        else:
            queue = self.lazy_metric_queue
        if step is None:
            step = 0
        elif type(step) is not int or step < 0 or step > _SMALL_INT_MAX:
            step = check_step(step)  # refuses a step outside int64 (2**63)
        queue.append((key, value, int(_time() * 1000) if timestamp is None
                      else check_timestamp_ms(timestamp), step))
        if len(queue) > HIGH_WATER_POINTS:
            self._writer.relieve(self, HIGH_WATER_POINTS)

    def log_checked_tensor(self, key: str, tensor: Any, step: int) -> None:
        """The per-step path of the torch and Lightning integrations: queue a scalar tensor
        the caller has already checked (``key`` passed :func:`check_metric_key` once, the
        tensor is a real scalar with no autograd graph, ``step`` an ``int``).

        Skipping :meth:`log_metric`'s checks matters there: they read the tensor's
        attributes, which costs microseconds per training step once the step has pushed
        Python's objects out of the CPU caches."""
        queue = self.lazy_metric_queue
        queue.append((key, tensor, int(_time() * 1000), step))
        if len(queue) > HIGH_WATER_POINTS:
            self._writer.relieve(self, HIGH_WATER_POINTS)

    def log_sample(self, metrics: dict[str, float], step: int, timestamp: int) -> None:
        """Queue plain numbers at one ``step`` and ``timestamp``, all or none: the system
        metrics sampler's path (:mod:`autolog.system_metrics`), from its own thread.

        Everything is checked first, then queued by one ``deque.extend`` of a list (one C
        call: :meth:`end` swapping the queue cannot split it), and refused (RuntimeError,
        nothing queued) once the queue is an ended run's (``extend`` is not the refusing
        ``append``). A sample racing ``end`` lands in the live queue whole, where
        :meth:`_close_queues` moves it, before the status, into the ended one, or (when
        that queue was already emptied) in no run at all. No back-pressure: a sample is a
        few points every few seconds."""
        step, timestamp = check_step(step), check_timestamp_ms(timestamp)
        points = []
        for key, value in metrics.items():
            if key not in _checked_metric_keys:
                _checked_metric_keys.add(check_metric_key(key))
            if metric_value_kind(value) != "native":
                raise TypeError(f"log_sample takes int or float values, got "
                                f"{type(value).__name__} for {key!r}")
            points.append((key, value, timestamp, step))
        queue = self.metric_queue
        if isinstance(queue, _EndedQueue):
            queue.refuse()
        queue.extend(points)

    def log_metrics(
        self, metrics: dict[str, Any], step: int | None = None, timestamp: int | None = None
    ) -> None:
        """All values are checked before any is queued."""
        if not isinstance(metrics, dict):
            raise TypeError(f"log_metrics takes a dict of key -> number, got {type(metrics).__name__}")
        for key, value in metrics.items():
            check_metric_key(key)
            metric_value_kind(value)
        if step is not None:
            step = check_step(step)
        if timestamp is None:
            timestamp = int(_time() * 1000)
        for key, value in metrics.items():
            self.log_metric(key, value, step, timestamp)

    # -- params and tags ------------------------------------------------------------------

    def log_params(self, params: dict[str, Any], call_site: str | None = None) -> None:
        """Manual params: a conflict raises :class:`~autolog.ParamConflictError` here."""
        to_send = self.ledger.record_manual(params, call_site or user_call_site())
        if to_send:
            self.pending_params.append(to_send)

    def log_autolog_params(self, params: dict[str, Any], integration: str,
                           call_site: str | None = None) -> dict[str, str]:
        """Autologged params, resolved by the run's ``on_conflict``; returns what was kept."""
        to_send = self.ledger.record_autolog(params, integration, call_site or user_call_site())
        if to_send:
            self.pending_params.append(to_send)
        return to_send

    def set_tags(self, tags: dict[str, Any]) -> None:
        checked = {check_tag_key(key): check_tag_value(key, value) for key, value in tags.items()}
        if checked:
            self.pending_tags.append(checked)

    def log_inputs(self, inputs: Iterable[DatasetInput]) -> None:
        """Queue dataset inputs (see :mod:`autolog.datasets`) for the writer; they are
        written with the run's other data, never on this thread."""
        inputs = tuple(inputs)
        for item in inputs:
            if not isinstance(item, DatasetInput):
                raise TypeError(f"log_inputs takes DatasetInput values (autolog.datasets."
                                f"describe), got {type(item).__name__}")
        if inputs:
            self.pending_inputs.append(inputs)

    def artifact_target(self) -> RunTarget:
        """Where this run's artifacts go. A run started offline has no artifact URI until
        its server creates it: the uploader thread asks for it until then."""
        found: list[str] = []

        def resolve() -> str | None:
            if not found:
                server_id = self.store.server_run_id(self.id)
                if server_id is None:
                    return None
                found.append(self.store.get_run(server_id).info.artifact_uri)
            return found[0]

        return RunTarget(self.store.uri, self.id, self.info.artifact_uri, resolve)

    @property
    def params(self) -> dict[str, str]:
        """The params this process knows for the run (logged here or seeded on resume)."""
        return {key: entry.stored for key, entry in self.ledger.items()}

    def param_sources(self) -> dict[str, str]:
        """key -> ``manual``, ``autolog:<integration>`` or ``store``."""
        return {key: entry.source for key, entry in self.ledger.items()}

    # -- lifecycle ------------------------------------------------------------------------

    def end(self, status: str = FINISHED) -> None:
        """End the run: write everything pending, then the status (idempotent).

        Waits at most ``AUTOLOG_END_TIMEOUT`` seconds for the store (see
        :mod:`autolog.writer`); what it has not taken by then stays queued and is retried
        in the background, and spooled at exit."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if self.final_status is not None:
            return
        self.mark_ended(status)
        self._writer.finish(self)

    def mark_ended(self, status: str) -> None:
        """End the run here (no longer active, a late ``log_metric`` raises) and leave
        writing its data and status to the writer."""
        _context.remove(self)
        self._close_queues()
        self.end_time = int(_time() * 1000)
        self.final_status = status

    def _close_queues(self) -> None:
        """Swap in queues that refuse new points, and move what is pending into them
        (moved, not copied: the writer thread may be taking from the old queue; it puts
        a failed batch back into the run's current queue)."""
        for name in ("metric_queue", "lazy_metric_queue"):
            pending = getattr(self, name)
            ended = _EndedQueue(self.id)
            setattr(self, name, ended)
            moved = []
            take, keep = pending.popleft, moved.append
            try:
                while pending:
                    keep(take())
            except IndexError:  # the writer took the last ones
                pass
            ended.extend(moved)  # deque.extend, not the refusing append

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(ended_status(exc_type))

    # -- writer support -------------------------------------------------------------------

    def has_pending(self) -> bool:
        return bool(self.metric_queue or self.lazy_metric_queue or self.pending_params
                    or self.pending_tags or self.pending_inputs or self.in_flight
                    or self.final_status is not None)

    def pending_count(self) -> int:
        return len(self.metric_queue) + len(self.lazy_metric_queue) + self.in_flight

    def note_written(self, rows: list[tuple[str, float, int, int]]) -> None:
        """Keep the latest point (the highest step) of each metric key the store took, for
        the HTML display; the writer thread calls it after each batch it wrote."""
        latest = self.latest_metrics
        for key, value, _, step in rows:
            known = latest.get(key)
            if known is None or step >= known[1]:
                latest[key] = (value, step)

    def discard_pending(self) -> None:
        for queue in (self.metric_queue, self.lazy_metric_queue, self.pending_params,
                      self.pending_tags, self.pending_inputs):
            if isinstance(queue, deque):
                queue.clear()

    def after_fork_in_child(self) -> None:
        """The parent writes what was pending; the child starts empty with fresh locks."""
        self.discard_pending()
        self.ledger.reset_lock_after_fork()


class _RunContext:
    """Per-thread stacks of open runs; the stack of the oldest opener is shared (module doc)."""

    def __init__(self) -> None:
        self._stacks: dict[int, list[Run]] = {}
        self._shared: list[Run] = []
        self._lock = threading.Lock()

    def active(self) -> Run | None:
        stack = self._stacks.get(threading.get_ident())
        if stack:
            return stack[-1]
        shared = self._shared
        return shared[-1] if shared else None

    def own_stack(self) -> list[Run]:
        return self._stacks.get(threading.get_ident(), [])

    def push(self, run: Run) -> None:
        with self._lock:
            stack = self._stacks.setdefault(threading.get_ident(), [])
            stack.append(run)
            if not self._shared:
                self._shared = stack

    def remove(self, run: Run) -> None:
        with self._lock:
            for ident, stack in list(self._stacks.items()):
                if run in stack:
                    stack.remove(run)
                if not stack:
                    del self._stacks[ident]
            if not self._shared:
                self._shared = next((s for s in self._stacks.values() if s), [])

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


_context = _RunContext()


# The run that logging calls from this thread go to (see the module doc); a bound method,
# so the hot path pays one call for it.
active_run = _context.active


def own_run() -> Run | None:
    """The innermost run this thread itself started, if any."""
    stack = _context.own_stack()
    return stack[-1] if stack else None


def push(run: Run) -> None:
    _context.push(run)


def after_fork_in_child() -> None:
    """The forked child's run context gets a fresh lock (see :mod:`autolog.lifecycle`)."""
    _context.after_fork_in_child()


def ended_status(exc_type: type[BaseException] | None) -> str:
    """How a run ends when its block (a ``with``, a fit) ended with ``exc_type``: FINISHED
    when it returned, KILLED after Ctrl-C (KeyboardInterrupt), FAILED after anything
    else."""
    if exc_type is None:
        return FINISHED
    return KILLED if issubclass(exc_type, KeyboardInterrupt) else FAILED
