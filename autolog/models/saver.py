"""Saving models in MLflow's format, off the training thread.

On the caller's thread, :func:`log_model` only takes a snapshot of the fitted object
(cloudpickle's bytes: the user may refit it right after) and reads the signature from
the training data's dtypes. One background thread per process then, model after model:
imports MLflow's flavor (seconds, once), saves the model with MLflow's own
``save_model`` into a temporary folder, hands the folder to the artifact uploader (staged
by content, uploaded in the background, see :mod:`autolog.artifacts`), records it in the
run's ``mlflow.log-model.history`` tag as MLflow's ``log_model`` does, and registers it
when asked, once its files are uploaded.

With ``log_models="best"`` (a :class:`BestOnly`), the thread first compares the run's
``monitor`` metric with the threshold, or with the best of the experiment's other runs,
and drops the snapshot unless it beats it.

A save that fails (a disk full, a model MLflow cannot save) is one warning and never
touches the fit; ``flush()`` then returns False, and raises in strict mode. At exit the
process waits for the models still queued (``AUTOLOG_ARTIFACT_EXIT_TIMEOUT``, 600 s by
default), then the uploads.
"""

from __future__ import annotations

import collections
import datetime
import io
import json
import math
import pickle
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autolog.artifacts.logged import log_folder
from autolog.artifacts.paths import check_artifact_path
from autolog.artifacts.uploader import get_uploader, with_credentials
from autolog.config import env_float, warn_from_thread
from autolog.models import registry
from autolog.models.flavors import Flavor, flavor_of
from autolog.models.requirements import pinned
from autolog.models.signature import signature_of
from autolog.run import Run
from autolog.stores import wait_acknowledged
from autolog.stores.base import StoreError
from autolog.validation import MAX_TAG_VALUE_LENGTH
from autolog.writer import get_writer

HISTORY_TAG = "mlflow.log-model.history"  # MLflow's record of a run's models (its UI reads it)
MODES = ("min", "max")
ACKNOWLEDGED_TIMEOUT_S = 30.0  # log_models="best": how long a server may take to have the metric


class ModelSaveError(RuntimeError):
    """A model autolog was asked to save could not be saved (strict mode raises it)."""


@dataclass(frozen=True)
class ModelInfo:
    """Where a logged model is: ``model_uri`` (``runs:/<run id>/<artifact path>``) opens
    with ``mlflow.<flavor>.load_model`` and ``mlflow.pyfunc.load_model``."""

    model_uri: str
    run_id: str
    artifact_path: str
    flavor: str
    registered_model_name: str | None = None


@dataclass(frozen=True)
class BestOnly:
    """Log the model only when the run's ``monitor`` metric beats ``threshold``, or (with
    no threshold) the best value of the other runs of its experiment."""

    monitor: str
    mode: str = "min"
    threshold: float | None = None

    def beats(self, value: float, best: float) -> bool:
        return value < best if self.mode == "min" else value > best


@dataclass
class _Job:
    run: Run
    info: ModelInfo
    flavor: Flavor
    snapshot: bytes
    signature: Any
    input_example: Any
    extra_requirements: tuple[str, ...]
    best: BestOnly | None


@dataclass
class _Task:
    """Other work an integration puts off the training thread (diagnostic plots)."""

    description: str  # what failed, as its warning says: "the confusion matrix of run …"
    function: Callable[[], None]


def log_model(run: Run, model: Any, artifact_path: str = "model", *, inputs: Any = None,
              outputs: Any = None, signature: Any = None, input_example: Any = None,
              extra_pip_requirements: Sequence[str] = (), registered_model_name: str | None = None,
              best: BestOnly | None = None, snapshot: bytes | None = None) -> ModelInfo:
    """Snapshot ``model`` now and save it into ``run``'s artifacts at ``artifact_path`` in
    the background. The signature is ``signature`` (MLflow's ``ModelSignature`` or its dict
    form), else read from ``inputs``/``outputs`` (the training data) when given.
    ``snapshot``: the model's cloudpickle bytes, taken by the caller already."""
    import cloudpickle

    path = check_artifact_path(artifact_path)
    if not path:
        raise ValueError("artifact_path must name a folder in the run's artifacts, got ''")
    if registered_model_name is not None:
        registry.check_name(registered_model_name)
    flavor = flavor_of(model)
    requirements = tuple(extra_pip_requirements)
    if not all(isinstance(line, str) for line in requirements):
        raise TypeError(f"extra_pip_requirements must be a list of str, got {extra_pip_requirements!r}")
    if signature is None and inputs is not None:
        signature = signature_of(inputs, outputs)
    if snapshot is None:  # an unpicklable model raises here, in the caller's guard
        snapshot = cloudpickle.dumps(model)
    info = ModelInfo(f"runs:/{run.id}/{path}", run.id, path, flavor.name, registered_model_name)
    get_saver().submit(_Job(run, info, flavor, snapshot, signature, input_example,
                            requirements, best))
    return info


class ModelSaver:
    """The thread that saves models, and what waiting for it needs."""

    def __init__(self) -> None:
        self._jobs: collections.deque[_Job | _Task] = collections.deque()
        self._changed = threading.Condition()
        self._current: _Job | _Task | None = None  # the job being done now
        self._thread: threading.Thread | None = None
        self._failures: list[str] = []
        self._history: dict[str, list[dict]] = {}  # run id -> its models, for the tag
        self.total_exit_timeout = env_float("AUTOLOG_ARTIFACT_EXIT_TIMEOUT", 600.0)

    def submit(self, job: _Job | _Task) -> None:
        with self._changed:
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="autolog-models", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def run_later(self, description: str, function: Callable[[], None]) -> None:
        """Run ``function`` on the saver's thread, in order with the models queued; a
        failure is one warning naming ``description`` (and ``flush()`` returns False)."""
        self.submit(_Task(description, function))

    def wait(self, timeout: float | None) -> bool:
        """Wait until every queued model is saved (and handed to the uploader): True; False
        at ``timeout`` seconds or when a save failed since the last wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._jobs or self._current is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left if left is not None else 1.0)
            return not self._failures

    def take_failures(self) -> list[str]:
        with self._changed:
            failures, self._failures = self._failures, []
        return failures

    def describe_left(self) -> str | None:
        with self._changed:
            jobs = [self._current, *self._jobs] if self._current is not None else list(self._jobs)
        left = [_describe(job) for job in jobs]
        if not left:
            return None
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        return f"not done yet: {', '.join(left[:3])}{more}"

    def close(self, timeout: float | None = None) -> str | None:
        """At exit: wait for the queued models (``timeout``, else
        ``AUTOLOG_ARTIFACT_EXIT_TIMEOUT``); what is left, in one line."""
        self.wait(self.total_exit_timeout if timeout is None else timeout)
        left = self.describe_left()
        return f"{left} (the process exited first)" if left else None

    def after_fork_in_child(self) -> None:
        """The parent saves what it queued; the child starts with none and no thread."""
        self.__init__()

    # -- the thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        import concurrent.futures.thread  # noqa: F401  (before interpreter shutdown refuses it)

        while True:
            with self._changed:
                while not self._jobs:
                    self._changed.wait()
                job = self._current = self._jobs.popleft()
            try:
                if isinstance(job, _Task):
                    job.function()
                else:
                    self._save(job)
            except BaseException as exc:  # one model lost is a warning; the thread goes on (a
                # SystemExit from a model's __setstate__ too: no later model may be lost to it)
                message = f"{_describe(job)} failed: {type(exc).__name__}: {exc}"
                with self._changed:
                    self._failures.append(message)
                warn_from_thread(message)
            finally:
                with self._changed:
                    self._current = None
                    self._changed.notify_all()

    def _save(self, job: _Job) -> None:
        if job.best is not None and not self._beats_best(job):
            return
        model, referenced = _load(job.snapshot)
        signature = job.signature
        if isinstance(signature, dict):
            from mlflow.models import ModelSignature

            signature = ModelSignature.from_dict(signature)
        folder = tempfile.mkdtemp(prefix="autolog-model-")
        try:
            saved = f"{folder}/{job.info.artifact_path.rpartition('/')[2]}"
            job.flavor.save(model, saved, signature=signature, input_example=job.input_example,
                            pip_requirements=pinned([*job.flavor.modules, *sorted(referenced)])
                            + list(job.extra_requirements))
            log_folder(job.run.artifact_target(), saved, job.info.artifact_path)
            flavors = _flavors(saved)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._record(job, flavors)
        if job.info.registered_model_name is not None:
            register(job.run, job.info, job.info.registered_model_name)

    def _record(self, job: _Job, flavors: dict) -> None:
        """Add the model to the run's ``mlflow.log-model.history`` tag, as MLflow's
        ``log_model`` records it: appended to what the store holds (models another process
        or MLflow's own client logged into the run), straight to the store (the run may
        have ended)."""
        history = self._history.setdefault(job.run.id, [])
        history.append({
            "run_id": job.run.server_id or job.run.id,
            "artifact_path": job.info.artifact_path,
            "utc_time_created": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M:%S.%f"),
            "model_uuid": uuid.uuid4().hex,
            "flavors": flavors,
        })
        ours = {entry["model_uuid"] for entry in history}
        merged = [entry for entry in _stored_history(job.run) if entry.get("model_uuid") not in ours]
        merged += history
        value = json.dumps(merged)
        while len(value) > MAX_TAG_VALUE_LENGTH and len(merged) > 1:  # the newest stay
            del merged[0]
            value = json.dumps(merged)
        job.run.store.log_batch(job.run.id, tags={HISTORY_TAG: value})

    def _beats_best(self, job: _Job) -> bool:
        best, run = job.best, job.run
        get_writer().drain(run)  # its metrics into the store (a server's: into the spool),
        if not wait_acknowledged(ACKNOWLEDGED_TIMEOUT_S) or run.server_id is None:  # then sent
            return True  # a server that is down: nothing to compare with, so the model is kept
        value = run.store.get_run(run.server_id).metrics.get(best.monitor)
        if value is None or math.isnan(value):
            warn_from_thread(f"log_models='best': run {run.id} has no metric {best.monitor!r}; "
                             f"its model {job.info.artifact_path!r} is not logged")
            return False
        if best.threshold is not None:
            return best.beats(value, best.threshold)
        order = "ASC" if best.mode == "min" else "DESC"
        others = run.store.search_runs([run.experiment_id], "", [f"metrics.`{best.monitor}` {order}"], 2)
        for record in others:
            if record.info.run_id in (run.id, run.server_id):
                continue
            known = record.metrics.get(best.monitor)
            return known is None or math.isnan(known) or best.beats(value, known)
        return True


def _describe(job: _Job | _Task) -> str:
    if isinstance(job, _Task):
        return job.description
    return f"saving model {job.info.artifact_path!r} of run {job.info.run_id}"


def _load(snapshot: bytes) -> tuple[Any, set[str]]:
    """The model, and the top-level packages its pickle refers to: the requirements its
    class hierarchy does not show (a Pipeline's XGBoost step, a search's estimator)."""
    referenced: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            referenced.add(module.partition(".")[0])
            return super().find_class(module, name)

    return Recording(io.BytesIO(snapshot)).load(), referenced


def _stored_history(run: Run) -> list[dict]:
    """The run's ``mlflow.log-model.history`` as its store holds it ([] when it holds none
    or cannot say: a run still offline)."""
    try:
        stored = run.store.get_run(run.server_id or run.id).tags.get(HISTORY_TAG, "[]")
        history = json.loads(stored)
    except (StoreError, ValueError):
        return []
    return [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []


def _flavors(saved: str) -> dict:
    """The ``flavors`` section of the MLmodel file MLflow wrote."""
    from mlflow.models import Model

    return Model.load(saved).flavors


def register(run: Run, info: ModelInfo, name: str, alias: str | None = None) -> Any:
    """Register the model ``info`` of ``run`` once its files are uploaded (and the run
    exists on its server); returns MLflow's ``ModelVersion``."""
    uploader = get_uploader()
    if not uploader.wait(None, uploader.exit_timeout, run_id=run.id):
        raise ModelSaveError(f"the files of {info.model_uri} are not uploaded yet "
                             f"({uploader.describe_left()}); not registered as {name!r}")
    server_id = run.server_id or run.id
    artifact_uri = run.store.get_run(server_id).info.artifact_uri
    source = f"{artifact_uri.rstrip('/')}/{info.artifact_path}"
    return registry.create_version(with_credentials(run.store.uri), name, source, server_id, alias)


_saver = ModelSaver()


def get_saver() -> ModelSaver:
    return _saver
