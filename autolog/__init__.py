"""autolog: one line, and every fit records its parameters and metrics into a run.

    import autolog
    autolog.autolog()
    with autolog.start_run(run_name="baseline"):
        model.fit(X, y)
        autolog.log_metric("test_acc", 0.93)

The core never imports a framework at import time; integrations are plugins found through
the ``autolog.integrations`` entry-point group.
"""

from autolog.api import (
    active_run,
    autolog,
    delete_model_alias,
    download_artifacts,
    end_run,
    flush,
    get_metric_history,
    get_model_version_by_alias,
    get_run,
    get_tracking_uri,
    list_artifacts,
    load_checkpoint,
    log_artifact,
    log_artifact_reference,
    log_artifacts,
    log_dict,
    log_figure,
    log_input,
    log_metric,
    log_metrics,
    log_model,
    log_param,
    log_params,
    log_text,
    register_model,
    search_runs,
    set_experiment,
    set_model_alias,
    set_tag,
    set_tags,
    set_tracking_uri,
    start_run,
)
from autolog.artifacts.destinations.base import ArtifactEntry, ArtifactError
from autolog.config import AutologWarning
from autolog.ledger import ParamConflictError
from autolog.models.saver import ModelInfo, ModelSaveError
from autolog.run import Run
from autolog.stores.base import Experiment, Metric, RunInfo, RunNotFoundError, RunRecord, StoreError

__all__ = [
    "ArtifactEntry",
    "ArtifactError",
    "AutologWarning",
    "Experiment",
    "Metric",
    "ModelInfo",
    "ModelSaveError",
    "ParamConflictError",
    "Run",
    "RunInfo",
    "RunNotFoundError",
    "RunRecord",
    "StoreError",
    "active_run",
    "autolog",
    "delete_model_alias",
    "download_artifacts",
    "end_run",
    "flush",
    "get_metric_history",
    "get_model_version_by_alias",
    "get_run",
    "get_tracking_uri",
    "list_artifacts",
    "load_checkpoint",
    "log_artifact",
    "log_artifact_reference",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_input",
    "log_metric",
    "log_metrics",
    "log_model",
    "log_param",
    "log_params",
    "log_text",
    "register_model",
    "search_runs",
    "set_experiment",
    "set_model_alias",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]
