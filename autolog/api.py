"""The fluent API: ``autolog()``, ``start_run()``, ``log_*`` and reading runs back.

Thin on purpose: :mod:`autolog.lifecycle` starts and ends runs (``start_run`` and
``end_run`` are its own), the run (:mod:`autolog.run`) holds the state, the ledger decides
about params, the writer writes, the store stores.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

from autolog import run as _run
from autolog import system_metrics as _system_metrics
from autolog.artifacts import content as _content
from autolog.artifacts import logged as _logged
from autolog.artifacts import reading as _reading
from autolog.artifacts.destinations.base import ArtifactEntry
from autolog.artifacts.paths import check_file_name
from autolog.artifacts.uploader import existing_uploader
from autolog.config import check_on_conflict, settings, strict
from autolog.config import warn as warn_user
from autolog.datasets import describe
from autolog.lifecycle import active_or_new, current_store
from autolog.lifecycle import end_run as end_run  # the API's own, re-exported (X as X)
from autolog.lifecycle import start_run as start_run
from autolog.models import registry as _registry
from autolog.models import saver as _saver
from autolog.models.saver import ModelInfo, ModelSaveError
from autolog.models.signature import signature_of
from autolog.run import Run, user_call_site
from autolog.stores import check_configuration, wait_acknowledged
from autolog.stores.base import Experiment, Metric, RunRecord, Store
from autolog.uris import check_tracking_uri, redact_uri
from autolog.validation import check_experiment_name
from autolog.writer import get_writer

_active = _run.active_run


def autolog(
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    on_conflict: str | None = None,
    silent: bool | None = None,
    disable: bool = False,
    system_metrics: bool | dict | None = None,
    **integrations: bool | dict | None,
) -> None:
    """Turn on autologging for every installed framework (or turn it off with ``disable``).

    ``sklearn=False`` opts one framework out, ``sklearn={"max_tuning_runs": 10}`` passes it
    options; ``AUTOLOG_DISABLE=torch,xgboost`` opts out from the environment.
    ``on_conflict`` is what happens when an autologged param differs from a value the run
    already has: ``"namespace"`` (default; kept as ``<integration>.<key>``), ``"skip"`` or
    ``"raise"``. ``silent=True`` hides autolog's warnings. A tracking server that cannot
    be MLflow's as written (a host that does not resolve, TLS that fails, a web server
    that is not MLflow) raises here; one that is down does not (runs start offline).

    System metrics (CPU, memory, disk, network, GPU; see :mod:`autolog.system_metrics`)
    are logged into every run, every 10 s, unless ``system_metrics=False``,
    ``disable=True`` or ``AUTOLOG_DISABLE=system``; ``system_metrics={"interval": 5}``
    sets the interval in seconds. In a distributed job, a node's leader that is not rank 0
    logs its node's into the launcher's run (``MLFLOW_RUN_ID``) from this call on.
    """
    from autolog import integration  # the registry imports frameworks lazily

    # Every argument is checked before any setting changes: an error leaves all as it was.
    if on_conflict is not None:
        check_on_conflict(on_conflict)
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)
    if experiment is not None:
        check_experiment_name(experiment)
    system_options = _system_metrics.check_options(system_metrics)
    if not disable:  # a typo'd server URI is an error here, not a silent offline run
        check_configuration(tracking_uri or settings.resolved_tracking_uri())
    if on_conflict is not None:
        settings.set_on_conflict(on_conflict)
    if tracking_uri is not None:
        settings.tracking_uri = tracking_uri
    if experiment is not None:
        settings.experiment = experiment
    if silent is not None:
        settings.silent = bool(silent)
    integration.configure(integrations, disable=disable)
    _system_metrics.configure(None if disable else system_options)
    if (launcher_run := _system_metrics.launcher_run_to_attach()) is not None:
        _system_metrics.attach(current_store(), launcher_run)


def set_tracking_uri(uri: str) -> None:
    """Where new runs go: an MLflow database (``sqlite:///mlflow.db``, ``postgresql://…``,
    ``mysql://…``) or an MLflow tracking server (``http(s)://host:port``)."""
    settings.tracking_uri = check_tracking_uri(uri)


def get_tracking_uri() -> str:
    return settings.resolved_tracking_uri()


def set_experiment(name: str) -> Experiment:
    """Make ``name`` the experiment of runs started from now on (created if missing)."""
    check_experiment_name(name)
    settings.experiment = name
    return current_store().get_or_create_experiment(name)


def active_run() -> Run | None:
    """The run logging calls from this thread go to, or None."""
    return _active()


def log_metric(key: str, value: Any, step: int | None = None, timestamp: int | None = None) -> None:
    """Record one metric point: cheap enough for every step of a training loop.

    ``value`` may be a Python, numpy or torch scalar (converted off this thread, so no
    device sync); ``step`` defaults to 0 and ``timestamp`` (ms) to now. NaN and ±inf are
    stored as such.
    """
    run = _active()
    if run is None:
        run = active_or_new()
    run.log_metric(key, value, step, timestamp)


def log_metrics(metrics: dict[str, Any], step: int | None = None, timestamp: int | None = None) -> None:
    active_or_new().log_metrics(metrics, step, timestamp)


def log_param(key: str, value: Any) -> Any:
    """Record a param. A different value for a key the run already has raises
    :class:`autolog.ParamConflictError` here, and nothing is sent."""
    active_or_new().log_params({key: value}, user_call_site())
    return value


def log_params(params: dict[str, Any]) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"log_params takes a dict, got {type(params).__name__}")
    active_or_new().log_params(params, user_call_site())


def set_tag(key: str, value: Any) -> None:
    active_or_new().set_tags({key: value})


def set_tags(tags: dict[str, Any]) -> None:
    active_or_new().set_tags(tags)


def log_input(features: Any, targets: Any = None, *, context: str | None = "train",
              name: str | None = None) -> None:
    """Record the data a run used as an MLflow dataset input (what ``mlflow.log_input``
    records, shown on the run in MLflow's UI): its digest, schema, row count and source,
    with ``context`` (``"train"``, ``"eval"``...) as its input tag.

    ``features`` (and ``targets``) are numpy arrays, pandas DataFrames or Series, or scipy
    sparse matrices; the name defaults to ``"dataset"``. Described here, from a sample
    (see :mod:`autolog.datasets`), and written by the background writer."""
    dataset = describe(features, targets, context=context, name=name)
    active_or_new().log_inputs([dataset])


def flush(timeout: float | None = 60.0) -> bool:
    """Write everything pending now, wait for the models queued to be saved, then until
    every tracking server this process logged to has acknowledged all that was logged
    before the call: params, tags (the saved models' ``mlflow.log-model.history``
    included), metric points and the status of ended runs, then for every artifact to be
    uploaded. True once they have (a database store: once it is committed).

    False, with a warning that says what is left and how it is sent, when a write failed,
    a server refused a batch for good, a model could not be saved (strict mode:
    :class:`ModelSaveError`), or ``timeout`` seconds passed first (60 by
    default, so a script never hangs on a server that is down; None waits as long as it
    takes); what is left is kept, and sent while the process runs and the server answers.
    """
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be None or a number of seconds, got {timeout!r}")
        if not timeout >= 0:  # NaN too
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
    started = time.monotonic()

    def left() -> float | None:
        return None if timeout is None else max(timeout - (time.monotonic() - started), 0.0)

    if not get_writer().flush():
        return False
    saver = _saver.get_saver()
    if not saver.wait(left()):
        failures = saver.take_failures()
        if failures and strict():
            raise ModelSaveError("; ".join(failures))
        warn_user(f"autolog.flush: {'; '.join(failures) or saver.describe_left()}")
        return False
    if not wait_acknowledged(left()):  # after the saver: it records each model in a tag
        return False
    uploader = existing_uploader()
    if uploader is None or uploader.wait(left()):
        return True
    warn_user(f"autolog.flush: {uploader.describe_left()}")
    return False


def _store_for(run_id: str) -> Store:
    """The store of a run open in this process (flushed first), else the configured one."""
    for open_run in get_writer().pending_runs():
        if open_run.id == run_id:
            get_writer().drain(open_run)
            return open_run.store
    return current_store()


def get_run(run_id: str) -> RunRecord:
    """Params, tags, latest metrics and status of a run."""
    return _store_for(run_id).get_run(run_id)


def get_metric_history(run_id: str, key: str) -> list[Metric]:
    """Every point of one metric, ordered by step then time."""
    return _store_for(run_id).get_metric_history(run_id, key)


def search_runs(
    experiment: str | Iterable[str] | None = None,
    filter_string: str = "",
    *,
    order_by: str | Sequence[str] | None = None,
    max_results: int = 1000,
    output_format: str = "list",
) -> Any:
    """Runs of an experiment (a name, or a list of names; default: the current one) as
    MLflow's ``search_runs`` finds them: its grammar, the same runs, the same order.

    ``filter_string`` is MLflow's (``"metrics.acc > 0.9 AND params.model = 'cnn'"``),
    ``order_by`` a list of MLflow's order expressions (``["metrics.acc DESC"]``; default:
    newest first). An expression MLflow refuses raises :class:`ValueError` with MLflow's
    message, and so does an experiment name that does not exist (unless it is the current
    experiment, which has no runs yet then; with ``MLFLOW_EXPERIMENT_ID`` set and no name,
    the current experiment is that id). ``output_format="pandas"``
    gives a DataFrame shaped like MLflow's (``run_id``, ``experiment_id``, ``status``,
    ``start_time``, ``end_time``, ``metrics.*``, ``params.*``, ``tags.*``); else a list of
    :class:`~autolog.RunRecord`.
    """
    if output_format not in ("list", "pandas"):
        raise ValueError(f'output_format must be "list" or "pandas", got {output_format!r}')
    if not isinstance(filter_string, str):
        raise TypeError(f"filter_string must be a str, got {type(filter_string).__name__}")
    order = [order_by] if isinstance(order_by, str) else list(order_by or ())
    if not all(isinstance(clause, str) for clause in order):
        raise TypeError(f"order_by must be a list of str, got {order_by!r}")
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise ValueError(f"max_results must be a positive int, got {max_results!r}")
    pandas = _pandas() if output_format == "pandas" else None
    get_writer().flush()
    store = current_store()
    current = settings.resolved_experiment()
    names = [current] if experiment is None else [experiment] if isinstance(experiment, str) else experiment
    ids = []
    env_id = settings.experiment_id_from_env() if experiment is None else None
    if env_id is not None:  # MLFLOW_EXPERIMENT_ID: the current experiment, by id
        names, ids = [], [env_id]
    for name in names:
        found = store.get_experiment_by_name(name)
        if found is not None:
            ids.append(found.experiment_id)
        elif name != current:  # the current one is created with its first run: none yet is no error
            raise ValueError(f"no experiment named {name!r} in {redact_uri(store.uri)}")
    records = store.search_runs(ids, filter_string, order, max_results)
    return records if pandas is None else _runs_frame(pandas, records)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError('output_format="pandas" needs pandas: pip install "autolog-ml[pandas]"') from None
    return pandas


def _runs_frame(pandas, records: list[RunRecord]):
    """The DataFrame ``mlflow.search_runs`` gives, less its ``artifact_uri`` column: a
    missing metric is NaN, a missing param or tag None; times are UTC timestamps."""
    columns: dict[str, Any] = {
        "run_id": [r.info.run_id for r in records],
        "experiment_id": [r.info.experiment_id for r in records],
        "status": [r.info.status for r in records],
        "start_time": pandas.to_datetime([r.info.start_time for r in records], unit="ms", utc=True),
        "end_time": pandas.to_datetime([r.info.end_time for r in records], unit="ms", utc=True),
    }
    for field, missing in (("metrics", math.nan), ("params", None), ("tags", None)):
        per_run = [getattr(record, field) for record in records]
        for key in sorted({key for values in per_run for key in values}):
            columns[f"{field}.{key}"] = [values.get(key, missing) for values in per_run]
    return pandas.DataFrame(columns)


# -- artifacts --------------------------------------------------------------------------------


def log_artifact(local_path: Any, artifact_path: str | None = None) -> None:
    """Log a file into the active run's artifacts (under ``artifact_path`` when given).

    Returns once the bytes are secured on local disk (copied into the staging area with
    their sha256); the upload to the run's artifact location (its ``mlruns`` folder, the
    tracking server's artifact proxy, S3…) runs in the background, is verified, survives
    an outage, and what is left at exit is sent by ``autolog sync``. A missing file, a
    folder, or a path with ``..`` raises here and nothing is logged.
    """
    _logged.log_file(active_or_new().artifact_target(), local_path, artifact_path)


def log_artifacts(local_dir: Any, artifact_path: str | None = None) -> None:
    """Log every file under ``local_dir`` into the active run's artifacts, keeping the
    folder's layout (under ``artifact_path`` when given); as :func:`log_artifact`."""
    _logged.log_folder(active_or_new().artifact_target(), local_dir, artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    """Log ``text`` as the artifact file ``artifact_file`` (UTF-8)."""
    data = _content.text_bytes(text)
    _logged.log_bytes(active_or_new().artifact_target(), data, artifact_file)


def log_dict(dictionary: Any, artifact_file: str) -> None:
    """Log ``dictionary`` as ``artifact_file``: YAML for ``.yaml``/``.yml``, else JSON. A
    value that cannot be written raises :class:`TypeError` here."""
    check_file_name(artifact_file)
    data = _content.dict_bytes(dictionary, artifact_file)
    _logged.log_bytes(active_or_new().artifact_target(), data, artifact_file)


def log_figure(figure: Any, artifact_file: str, *, save_kwargs: dict | None = None) -> None:
    """Log a matplotlib figure (any format ``savefig`` knows, by the extension) or a plotly
    figure (``.html``, ``.json``) as ``artifact_file``, saved as it is now."""
    check_file_name(artifact_file)
    data = _content.figure_bytes(figure, artifact_file, save_kwargs)
    _logged.log_bytes(active_or_new().artifact_target(), data, artifact_file)


def log_artifact_reference(uri: str, name: str, sha256: str | None = None,
                           size: int | None = None) -> None:
    """Record a file or folder too big to upload (a model, a dataset) by reference: the
    artifact ``references/<name>.json`` holds its URI, and its sha256 and size when given,
    and the tag ``autolog.reference.<name>`` its URI, so MLflow's UI shows both."""
    if not isinstance(uri, str) or "://" not in uri and not uri.startswith("/"):
        raise ValueError(f"uri must be a URI (s3://…, gs://…, https://…) or an absolute path, got {uri!r}")
    check_file_name(name, "name")
    if sha256 is not None and (not isinstance(sha256, str) or len(sha256) != 64
                               or any(c not in "0123456789abcdefABCDEF" for c in sha256)):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a number of bytes (an int >= 0), got {size!r}")
    run = active_or_new()
    data = _content.reference_bytes(uri, name, sha256.lower() if sha256 else None, size)
    run.set_tags({f"autolog.reference.{name}": uri})
    _logged.log_bytes(run.artifact_target(), data, f"references/{name}.json")


def _artifacts_of(run_id: str):
    """The artifact destination of ``run_id``; a run open in this process first gets its
    queued uploads done (as long as they progress)."""
    if not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str, got {type(run_id).__name__}")
    store = _store_for(run_id)
    uploader = existing_uploader()
    if uploader is not None:
        uploader.wait(None, uploader.exit_timeout, run_id=run_id)
    server_id = store.server_run_id(run_id) or run_id
    return _reading.destination(store.get_run(server_id).info.artifact_uri, store.uri)


def list_artifacts(run_id: str, path: str | None = None) -> list[ArtifactEntry]:
    """The artifacts directly under ``path`` (the run's root when None), as MLflow's
    ``MlflowClient.list_artifacts`` lists them: path, whether a folder, size."""
    return _reading.list_entries(_artifacts_of(run_id), path)


def download_artifacts(run_id: str, path: str = "", dst: Any = None) -> str:
    """Download the artifact file or folder ``path`` of a run (all of them when empty)
    into the folder ``dst`` (a new temporary folder when None); returns the local path."""
    return str(_reading.download(_artifacts_of(run_id), path, dst))


# -- models and the registry -----------------------------------------------------------------


def log_model(model: Any, name: str = "model", *, input_example: Any = None, signature: Any = None,
              registered_model_name: str | None = None,
              extra_pip_requirements: Sequence[str] = ()) -> ModelInfo:
    """Log ``model`` (a scikit-learn estimator, an XGBoost model, a ``torch.nn.Module`` or a
    Lightning module) in MLflow's model format under the artifact folder ``name`` of the
    active run; ``mlflow.<flavor>.load_model(info.model_uri)`` and
    ``mlflow.pyfunc.load_model`` open it.

    The model is snapshotted now (a model that cannot be pickled raises here) and saved
    with MLflow's own ``save_model`` on a background thread, then uploaded like any
    artifact; ``flush()`` waits for both. ``signature`` is MLflow's ``ModelSignature`` (or
    its dict form); without one, it is read from ``input_example``'s dtypes and shape.
    ``registered_model_name`` registers it as a new version of that model once uploaded.
    """
    if input_example is not None:
        input_example = copy.deepcopy(input_example)  # saved later, as it is now
        if signature is None:
            signature = signature_of(input_example)
    return _saver.log_model(active_or_new(), model, name, signature=signature,
                            input_example=input_example, registered_model_name=registered_model_name,
                            extra_pip_requirements=extra_pip_requirements)


def register_model(model_uri: str, name: str, alias: str | None = None,
                   tags: dict[str, Any] | None = None) -> Any:
    """Register the model at ``model_uri`` (``runs:/<run id>/<path>``, as
    :func:`log_model` returns it, or any URI MLflow can load from) as a new version of the
    registered model ``name`` (created if missing), in the registry of the tracking URI
    in force; ``alias`` (``"champion"``) then points at the new version. A model of this
    process is registered once it is saved and uploaded. Returns MLflow's
    ``ModelVersion``: ``version``, ``source``, ``run_id``, ``aliases``."""
    if not isinstance(model_uri, str) or not model_uri:
        raise ValueError(f"model_uri must be a model URI such as runs:/<run id>/model, got {model_uri!r}")
    _registry.check_name(name)
    if alias is not None:
        _registry.check_alias(alias)
    checked_tags = {str(key): str(value) for key, value in (tags or {}).items()}
    source, run_id = model_uri, None
    if model_uri.startswith("runs:/"):
        run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
        if not run_id or not path:
            raise ValueError(f"a runs:/ model URI is runs:/<run id>/<path>, got {model_uri!r}")
        saver = _saver.get_saver()  # a model of this process: saved, then uploaded
        if not saver.wait(None):
            raise ModelSaveError(f"not registered as {name!r}: {'; '.join(saver.take_failures())}")
        store = _store_for(run_id)
        uploader = existing_uploader()
        if uploader is not None and not uploader.wait(None, uploader.exit_timeout, run_id=run_id):
            raise ModelSaveError(f"not registered as {name!r}: the files of run {run_id} are not "
                                 f"uploaded ({uploader.describe_left()})")
        run_id = store.server_run_id(run_id) or run_id
        source = f"{store.get_run(run_id).info.artifact_uri.rstrip('/')}/{path.strip('/')}"
    return _registry.create_version(settings.resolved_tracking_uri(), name, source, run_id, alias,
                                    checked_tags or None)


def set_model_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``alias`` of the registered model ``name`` at ``version``, moving it from the
    version it named before in one write: ``models:/name@alias`` never resolves to none."""
    _registry.set_alias(settings.resolved_tracking_uri(), _registry.check_name(name),
                        _registry.check_alias(alias), _registry.check_version(version))


def delete_model_alias(name: str, alias: str) -> None:
    _registry.delete_alias(settings.resolved_tracking_uri(), _registry.check_name(name),
                           _registry.check_alias(alias))


def get_model_version_by_alias(name: str, alias: str) -> Any:
    """The version ``alias`` points at (MLflow's ``ModelVersion``), as
    ``models:/name@alias`` resolves it."""
    return _registry.version_by_alias(settings.resolved_tracking_uri(), _registry.check_name(name),
                                      _registry.check_alias(alias))


# -- checkpoints -------------------------------------------------------------------------------

# MLflow's tag naming a run's latest checkpoint artifact: the Lightning integration sets it
# with checkpoint=True, and mlflow.pytorch.load_checkpoint reads it too
_CHECKPOINT_TAG = "mlflow.latest_checkpoint_artifact"


def load_checkpoint(model_class: Any, run_id: str | None = None, kwargs: dict | None = None) -> Any:
    """The Lightning module restored from the checkpoint that
    ``autolog(lightning={"checkpoint": True})`` logged into ``run_id`` (the active run when
    None): downloaded, then ``model_class.load_from_checkpoint(path, **kwargs)``, as MLflow's
    ``mlflow.pytorch.load_checkpoint`` does. To resume training instead, pass the file
    ``download_artifacts(run_id, get_run(run_id).tags["mlflow.latest_checkpoint_artifact"])``
    to ``trainer.fit(..., ckpt_path=)``."""
    if not callable(getattr(model_class, "load_from_checkpoint", None)):
        raise TypeError(f"model_class must be a LightningModule class, got {model_class!r}")
    if run_id is None:
        run = _active()
        if run is None:
            raise ValueError("load_checkpoint: no active run; pass run_id=")
        run_id = run.id
    path = get_run(run_id).tags.get(_CHECKPOINT_TAG)
    if path is None:
        raise ValueError(f"run {run_id} has no logged checkpoint (the Lightning integration logs "
                         f"the best one with autolog(lightning={{'checkpoint': True}}))")
    with tempfile.TemporaryDirectory(prefix="autolog-checkpoint-") as folder:
        return model_class.load_from_checkpoint(download_artifacts(run_id, path, folder), **(kwargs or {}))
