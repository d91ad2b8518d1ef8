"""One owner of a run's life: starting, resuming, nesting and ending runs (the user's and
the integrations' alike), and the process hooks that end the runs still open.

How a run ends is one rule, :func:`autolog.run.ended_status`: FINISHED when its block
(``with`` or a fit) returned, KILLED after Ctrl-C, FAILED after any other exception.

The process hooks, installed in this order:

1. fork (when this module is imported, so by ``import autolog``): one handler, so that a
   forked child (a DataLoader worker) resets in this order: the run context's lock,
   patching's owner table (only the forking thread's entry stays), the writer (fresh
   locks and thread, empty queues: the parent writes what was pending), the open
   stores (a child gets its own spool), the model saver (the parent saves what it
   queued), the artifact uploader (a child gets its own journal; the parent's
   uploads stay the parent's), then the system metrics sampler (a child starts with
   none; it samples into the runs the child starts).
2. atexit (also at import): :func:`shutdown`.
3. ``sys.excepthook``, chained (when the first run starts): notes an uncaught exception,
   so that :func:`shutdown` ends the runs still open FAILED, or KILLED after Ctrl-C.
4. SIGTERM, chained (when the first run started from the main thread starts: only it may
   set a handler): :func:`shutdown` with KILLED, in a thread of its own, then the handler
   that was there before (the default one ends the process as SIGTERM would; a
   ``SIG_IGN`` the process set is left alone).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import os
import secrets
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from autolog import patching, stores
from autolog import run as _run
from autolog import system_metrics as _system_metrics
from autolog.artifacts import uploader as _uploads
from autolog.config import settings, take_launcher_run_id
from autolog.models.saver import get_saver
from autolog.run import Run, ended_status
from autolog.source import PARENT_RUN_ID, RUN_NAME, system_tags
from autolog.stores import open_store
from autolog.stores.base import FAILED, FINISHED, KILLED, RUNNING, Store
from autolog.validation import check_experiment_name, check_tag_key, check_tag_value
from autolog.writer import get_writer

__all__ = ["FAILED", "FINISHED", "INTEGRATION_TAG", "KILLED", "end_lingering_run", "end_run",
           "fit_run", "lingering_run", "shutdown", "start_run"]

INTEGRATION_TAG = "autolog.integration"  # on a run an integration started itself
_fit_runs: weakref.WeakSet[Run] = weakref.WeakSet()  # the runs fit_run() created
# Runs started for logging that has no end of its own (a plain PyTorch loop, a
# SummaryWriter call): they stay active after the call that started them.
_lingering: weakref.WeakSet[Run] = weakref.WeakSet()


# -- starting and ending --------------------------------------------------------------------


def current_store() -> Store:
    """The store of the tracking URI in force (argument, environment, default)."""
    return open_store(settings.resolved_tracking_uri())


def start_run(
    run_name: str | None = None,
    *,
    experiment: str | None = None,
    tags: dict[str, Any] | None = None,
    run_id: str | None = None,
    nested: bool = False,
) -> Run:
    """Start a run (or resume ``run_id``) and make it the active run.

    Where the environment has ``MLFLOW_RUN_ID`` (MLflow Projects and job launchers set it),
    the first run this process starts without ``run_id`` (and not ``nested``) resumes that
    run, as MLflow's ``start_run`` does; later ones are new runs.

    Use it as a context manager (the run ends FINISHED, FAILED if the block raised, KILLED
    on Ctrl-C) or end it with :func:`end_run`. ``nested=True`` starts a child of the active
    run, linked by the ``mlflow.parentRunId`` tag.

    A run started in one thread is the active run for the other threads of the process
    unless they start their own: logging from a worker or DataLoader thread goes to it.
    This thread's lingering run (a plain loop's, see :func:`lingering_run`) ends FINISHED
    first, unless ``nested``.
    """
    if not nested:
        end_lingering_run()
    own = _run.own_run()
    parent = _run.active_run() if nested else None
    if own is not None and not nested:
        raise RuntimeError(
            f"run {own.id} is already active in this thread; end it with autolog.end_run() "
            "first, or pass nested=True to start a child run"
        )
    checked_tags = _check_tags(tags or {})
    sampling = _system_metrics.plan()  # before the run: a bad setting leaves none behind
    store = current_store()
    if run_id is None and not nested:
        run_id = take_launcher_run_id()
        if run_id is not None:  # the launcher's run, not one an integration started
            checked_tags.pop(INTEGRATION_TAG, None)
    if run_id is not None:
        return _resume(store, run_id, checked_tags, run_name, sampling)
    if experiment is None and parent is not None and parent.store is store:
        experiment_id = parent.experiment_id  # a child run lives beside its parent
    else:
        experiment_id = current_experiment_id(store, experiment)
    run_name = check_tag_value(RUN_NAME, run_name or _default_run_name())
    all_tags = {**system_tags(), RUN_NAME: run_name, **checked_tags}
    if parent is not None:
        all_tags[PARENT_RUN_ID] = parent.id
    info = store.create_run(experiment_id, run_name, int(time.time() * 1000), all_tags)
    run = Run(store, info, settings.on_conflict, parent_id=parent.id if parent else None)
    _activate(run)
    _system_metrics.watch(run, sampling)
    return run


def current_experiment_id(store: Store, experiment: str | None = None) -> str:
    """The id of ``experiment``, else of the experiment in force: ``MLFLOW_EXPERIMENT_ID``
    where no name is set (see :meth:`autolog.config.Settings.experiment_id_from_env`),
    else the name's (created if missing)."""
    if experiment is None:
        experiment_id = settings.experiment_id_from_env()
        if experiment_id is not None:
            return experiment_id
        experiment = settings.resolved_experiment()
    return store.get_or_create_experiment(check_experiment_name(experiment)).experiment_id


def _resume(store: Store, run_id: str, tags: dict[str, str], run_name: str | None,
            sampling: _system_metrics.Plan | None) -> Run:
    record = store.get_run(run_id)  # RunNotFoundError names the run and the store
    store.update_run(run_id, RUNNING, None)
    info = dataclasses.replace(record.info, run_name=run_name or record.info.run_name,
                               status=RUNNING, end_time=None)
    run = Run(store, info, settings.on_conflict, parent_id=record.tags.get(PARENT_RUN_ID))
    run.ledger.seed(record.params)
    if tags:
        run.set_tags(tags)
    _activate(run)
    _system_metrics.watch(run, sampling, list(record.metrics))  # its steps go on
    return run


def _activate(run: Run) -> None:
    _install_run_hooks()
    _run.push(run)


def _default_run_name() -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"run-{stamp}-{secrets.token_hex(2)}"


def _check_tags(tags: dict[str, Any]) -> dict[str, str]:
    if not isinstance(tags, dict):
        raise TypeError(f"tags must be a dict, got {type(tags).__name__}")
    return {check_tag_key(key): check_tag_value(key, value) for key, value in tags.items()}


def end_run(status: str = FINISHED) -> None:
    """End the active run (this thread's own, else the shared one); no-op without one."""
    run = _run.own_run() or _run.active_run()
    if run is not None:
        run.end(status)


def active_or_new() -> Run:
    """The active run, or a new one (as MLflow does) that ends at exit."""
    run = _run.active_run()
    return run if run is not None else start_run()


# -- the runs of integrations ----------------------------------------------------------------


@contextlib.contextmanager
def fit_run(integration: str, guard: Callable[[], contextlib.AbstractContextManager]
            ) -> Iterator[Run | None]:
    """The run a fit of ``integration`` logs into: the active run (left open), or a new
    one tagged ``autolog.integration=<integration>`` that ends as the fit ended (see
    :func:`autolog.run.ended_status`). Yields None if autolog could not start a run (one
    warning, through ``guard``).

    A run that a fit or a loop in another thread created is not joined: two fits in two
    threads, with no run of the user's, get a run each. Nor is a lingering run (see
    :func:`lingering_run`): this thread's own ends FINISHED here, and the fit gets a run
    of its own."""
    with guard():
        end_lingering_run()
    run, own = _run.active_run(), _run.own_run()
    if run is not None and (run is own or (run not in _fit_runs and run not in _lingering)):
        yield run
        return
    created = None
    with guard():
        created = start_run(tags={INTEGRATION_TAG: integration})
        _fit_runs.add(created)
    with ended_with_block(created, guard):
        yield created


@contextlib.contextmanager
def ended_with_block(run: Run | None, guard: Callable[[], contextlib.AbstractContextManager]
                     ) -> Iterator[Run | None]:
    """Yield ``run``, then end it as the block ended; the block's exception goes on
    unchanged, and an error of autolog's own in ending goes through ``guard``."""
    try:
        yield run
    except BaseException as exc:
        if run is not None:
            with guard():
                run.end(ended_status(type(exc)))
        raise
    if run is not None:
        with guard():
            run.end(FINISHED)


def lingering_run(integration: str) -> Run:
    """A new run for logging that has no end of its own (a plain PyTorch loop, a
    SummaryWriter call outside any fit): it stays the active run until
    ``autolog.end_run()``, the process's exit, or :func:`end_lingering_run` (the next fit,
    the next ``start_run``, a new plain loop), which ends it FINISHED."""
    run = start_run(tags={INTEGRATION_TAG: integration})
    _lingering.add(run)
    return run


def is_own_lingering(run: Run | None) -> bool:
    """Whether ``run`` is a lingering run this thread started and still has active."""
    return run is not None and run is _run.own_run() and run in _lingering


def end_lingering_run() -> bool:
    """End the active run FINISHED if it is a lingering run this thread started; return
    whether it did. A lingering run that another thread started is left alone: that
    thread's loop may still be logging into it."""
    run = _run.active_run()
    if not is_own_lingering(run):
        return False
    _lingering.discard(run)
    run.end(FINISHED)
    return True


# -- the process hooks (see the module doc for their order) --------------------------------


def _after_fork_in_child() -> None:
    _run.after_fork_in_child()
    patching.after_fork_in_child()
    get_writer().after_fork_in_child()
    stores.after_fork_in_child()
    get_saver().after_fork_in_child()
    uploader = _uploads.existing_uploader()
    if uploader is not None:
        uploader.after_fork_in_child()
    _system_metrics.after_fork_in_child()


_shut_down = False


def shutdown(status: str | None = None, on_signal: bool = False) -> None:
    """Stop the system metrics sampler, end the runs still open (``status``, by default
    FINISHED, KILLED after an uncaught
    Ctrl-C, FAILED after another uncaught exception), save the models still queued
    (:mod:`autolog.models.saver`), give the writer its bounded time
    (``AUTOLOG_EXIT_TIMEOUT``), spool what the stores did not take and say where, wait
    for the artifact uploads as long as they progress (:mod:`autolog.artifacts.uploader`)
    and say what is left, then close the stores (a server's spool drains within the same
    limit). Runs at interpreter exit, or first at SIGTERM (``on_signal``: the models get
    ``AUTOLOG_EXIT_TIMEOUT`` at most, so that the writer's turn comes before the process
    dies; then at exit it does nothing).
    A forked child never ends the runs it inherited, nor does any process end a run it
    logs into ``attached`` (a node leader's system metrics, :mod:`autolog.system_metrics`):
    its points are written, its status is not touched."""
    global _shut_down
    if _shut_down:
        return
    _shut_down = True
    if status is None:
        status = ended_status(type(_uncaught[-1])) if _uncaught else FINISHED
    _system_metrics.stop(final=True)  # no sample into a run ending here or after the writer
    writer = get_writer()
    for run in writer.pending_runs():
        if run.final_status is None and run.owner_pid == os.getpid() and not run.attached:
            run.mark_ended(status)
    models_left = None
    try:  # before the writer: a "best" model reads its run; at SIGTERM only briefly
        models_left = get_saver().close(writer.exit_timeout if on_signal else None)
    finally:  # even after Ctrl-C in that wait: what the store did not take is spooled
        left = writer.close()
        lines = writer.keep_at_exit(left)
        writer.fallback.close()
    for line in [*lines, *([models_left] if models_left else [])]:
        print(f"autolog: {line}", file=sys.stderr, flush=True)
    uploader = _uploads.existing_uploader()  # before the stores close: a run started
    uploads_left = uploader.close() if uploader is not None else None  # offline needs its server
    if uploads_left:
        print(f"autolog: {uploads_left}", file=sys.stderr, flush=True)
    stores.close_all()


_uncaught: list[BaseException] = []
_hooks_installed = False
_sigterm_installed = False
_previous_excepthook: Any = sys.excepthook
_previous_sigterm: Any = signal.SIG_DFL


def _install_run_hooks() -> None:
    """Hooks 3 and 4 of the module doc, once each."""
    global _hooks_installed, _previous_excepthook
    if not _hooks_installed:
        _hooks_installed = True
        _previous_excepthook = sys.excepthook
        sys.excepthook = _note_uncaught
    if not _sigterm_installed:
        _install_sigterm_handler()


def _note_uncaught(exc_type, exc, tb) -> None:
    _uncaught.append(exc)
    _previous_excepthook(exc_type, exc, tb)


def _install_sigterm_handler() -> None:
    global _sigterm_installed, _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set a handler: the next run it starts will
    previous = signal.getsignal(signal.SIGTERM)
    _sigterm_installed = True
    if previous is signal.SIG_IGN:  # the process is meant to outlive SIGTERM
        return
    _previous_sigterm = previous
    signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: Any) -> None:
    # In a thread of its own: the main thread, interrupted here, may hold a lock the
    # shutdown needs (the run context's, the spool's); then the wait below is what ends.
    writer = get_writer()
    worker = threading.Thread(target=shutdown, args=(KILLED, True), name="autolog-sigterm",
                              daemon=True)
    worker.start()
    worker.join(2 * writer.exit_timeout + writer.end_timeout)
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    # SIG_DFL, or a handler not set from Python (None): die of SIGTERM, as without us.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown)
