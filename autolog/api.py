"""The fluent API: ``autolog()``, ``start_run()``, ``log_*`` and reading runs back.

Thin on purpose: the run (:mod:`autolog.run`) holds the state, the ledger decides about
params, the writer writes, the store stores.
"""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import time
from collections.abc import Iterable
from typing import Any

from autolog import run as _run
from autolog.config import check_on_conflict, settings
from autolog.run import Run, user_call_site
from autolog.source import PARENT_RUN_ID, RUN_NAME, system_tags
from autolog.stores import open_store
from autolog.stores.base import FINISHED, RUNNING, Experiment, Metric, RunRecord, Store
from autolog.uris import redact_uri
from autolog.validation import check_experiment_name, check_tag_key, check_tag_value
from autolog.writer import get_writer

_active = _run.active_run


def autolog(
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    on_conflict: str | None = None,
    silent: bool | None = None,
    disable: bool = False,
    **integrations: bool | dict | None,
) -> None:
    """Turn on autologging for every installed framework (or turn it off with ``disable``).

    ``sklearn=False`` opts one framework out, ``sklearn={"max_tuning_runs": 10}`` passes it
    options; ``AUTOLOG_DISABLE=torch,xgboost`` opts out from the environment.
    ``on_conflict`` is what happens when an autologged param differs from a value the run
    already has: ``"namespace"`` (default; kept as ``<integration>.<key>``), ``"skip"`` or
    ``"raise"``. ``silent=True`` hides autolog's warnings.
    """
    from autolog import integration  # the registry imports frameworks lazily

    if on_conflict is not None:
        settings.set_on_conflict(check_on_conflict(on_conflict))
    if tracking_uri is not None:
        set_tracking_uri(tracking_uri)
    if experiment is not None:
        check_experiment_name(experiment)
        settings.experiment = experiment
    if silent is not None:
        settings.silent = bool(silent)
    integration.configure(integrations, disable=disable)


def set_tracking_uri(uri: str) -> None:
    """Where new runs go: ``sqlite:///path.db`` or ``http(s)://host:port`` (MLflow server)."""
    if not isinstance(uri, str) or not uri.startswith(("sqlite:///", "http://", "https://")):
        raise ValueError(
            "tracking URI must be sqlite:///path/to/file.db or http(s)://host:port, got "
            f"{redact_uri(uri)!r}"
        )
    settings.tracking_uri = uri


def get_tracking_uri() -> str:
    return settings.resolved_tracking_uri()


def set_experiment(name: str) -> Experiment:
    """Make ``name`` the experiment of runs started from now on (created if missing)."""
    check_experiment_name(name)
    settings.experiment = name
    return _store().get_or_create_experiment(name)


def _store() -> Store:
    return open_store(settings.resolved_tracking_uri())


def _default_run_name() -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"run-{stamp}-{secrets.token_hex(2)}"


def start_run(
    run_name: str | None = None,
    *,
    experiment: str | None = None,
    tags: dict[str, Any] | None = None,
    run_id: str | None = None,
    nested: bool = False,
) -> Run:
    """Start a run (or resume ``run_id``) and make it the active run.

    Use it as a context manager (the run ends FINISHED, FAILED if the block raised, KILLED
    on Ctrl-C) or end it with :func:`end_run`. ``nested=True`` starts a child of the active
    run, linked by the ``mlflow.parentRunId`` tag.

    A run started in one thread is the active run for the other threads of the process
    unless they start their own: logging from a worker or DataLoader thread goes to it.
    """
    own = _run.own_run()
    parent = _active() if nested else None
    if own is not None and not nested:
        raise RuntimeError(
            f"run {own.id} is already active in this thread; end it with autolog.end_run() "
            "first, or pass nested=True to start a child run"
        )
    checked_tags = _check_tags(tags or {})
    store = _store()
    if run_id is not None:
        return _resume(store, run_id, checked_tags, run_name)
    if experiment is None and parent is not None and parent.store is store:
        experiment_id = parent.experiment_id  # a child run lives beside its parent
    else:
        name = experiment if experiment is not None else settings.resolved_experiment()
        experiment_id = store.get_or_create_experiment(check_experiment_name(name)).experiment_id
    run_name = check_tag_value(RUN_NAME, run_name or _default_run_name())
    all_tags = {**system_tags(), RUN_NAME: run_name, **checked_tags}
    if parent is not None:
        all_tags[PARENT_RUN_ID] = parent.id
    info = store.create_run(experiment_id, run_name, int(time.time() * 1000), all_tags)
    run = Run(store, info, settings.on_conflict, parent_id=parent.id if parent else None)
    _run.push(run)
    return run


def _resume(store: Store, run_id: str, tags: dict[str, str], run_name: str | None) -> Run:
    record = store.get_run(run_id)  # RunNotFoundError names the run and the store
    store.update_run(run_id, RUNNING, None)
    info = dataclasses.replace(record.info, run_name=run_name or record.info.run_name,
                               status=RUNNING, end_time=None)
    run = Run(store, info, settings.on_conflict, parent_id=record.tags.get(PARENT_RUN_ID))
    run.ledger.seed(record.params)
    if tags:
        run.set_tags(tags)
    _run.push(run)
    return run


def _check_tags(tags: dict[str, Any]) -> dict[str, str]:
    if not isinstance(tags, dict):
        raise TypeError(f"tags must be a dict, got {type(tags).__name__}")
    return {check_tag_key(key): check_tag_value(key, value) for key, value in tags.items()}


def active_run() -> Run | None:
    """The run logging calls from this thread go to, or None."""
    return _active()


def end_run(status: str = FINISHED) -> None:
    """End the active run (this thread's own, else the shared one); no-op without one."""
    run = _run.own_run() or _active()
    if run is not None:
        run.end(status)


def _active_or_new() -> Run:
    """The active run, or a new one (as MLflow does) that ends at exit."""
    run = _active()
    return run if run is not None else start_run()


def log_metric(key: str, value: Any, step: int | None = None, timestamp: int | None = None) -> None:
    """Record one metric point: cheap enough for every step of a training loop.

    ``value`` may be a Python, numpy or torch scalar (converted off this thread, so no
    device sync); ``step`` defaults to 0 and ``timestamp`` (ms) to now. NaN and ±inf are
    stored as such.
    """
    run = _active()
    if run is None:
        run = _active_or_new()
    run.log_metric(key, value, step, timestamp)


def log_metrics(metrics: dict[str, Any], step: int | None = None, timestamp: int | None = None) -> None:
    _active_or_new().log_metrics(metrics, step, timestamp)


def log_param(key: str, value: Any) -> Any:
    """Record a param. A different value for a key the run already has raises
    :class:`autolog.ParamConflictError` here, and nothing is sent."""
    _active_or_new().log_params({key: value}, user_call_site())
    return value


def log_params(params: dict[str, Any]) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"log_params takes a dict, got {type(params).__name__}")
    _active_or_new().log_params(params, user_call_site())


def set_tag(key: str, value: Any) -> None:
    _active_or_new().set_tags({key: value})


def set_tags(tags: dict[str, Any]) -> None:
    _active_or_new().set_tags(tags)


def flush() -> bool:
    """Write everything pending now. True when all was written (False: see the warning)."""
    return get_writer().flush()


def _store_for(run_id: str) -> Store:
    """The store of a run open in this process (flushed first), else the configured one."""
    for open_run in get_writer().pending_runs():
        if open_run.id == run_id:
            get_writer().drain(open_run)
            return open_run.store
    return _store()


def get_run(run_id: str) -> RunRecord:
    """Params, tags, latest metrics and status of a run."""
    return _store_for(run_id).get_run(run_id)


def get_metric_history(run_id: str, key: str) -> list[Metric]:
    """Every point of one metric, ordered by step then time."""
    return _store_for(run_id).get_metric_history(run_id, key)


def search_runs(
    experiment: str | Iterable[str] | None = None, *, max_results: int = 1000
) -> list[RunRecord]:
    """Runs of one experiment name (or several), newest first; default: the current one."""
    get_writer().flush()
    store = _store()
    names = [experiment] if isinstance(experiment, str) else list(experiment or [])
    names = names or [settings.resolved_experiment()]
    ids = [exp.experiment_id for exp in map(store.get_experiment_by_name, names) if exp]
    return store.search_runs(ids, max_results=max_results)

