"""The Store protocol every backend implements, and the records it exchanges.

A store knows runs, params, tags, metric points and dataset inputs; it knows nothing
about frameworks.
Timestamps are integer milliseconds since the epoch and steps are integers, as in MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autolog.validation import (
    MAX_DATASET_DIGEST_LENGTH,
    MAX_DATASET_NAME_LENGTH,
    MAX_DATASET_PROFILE_LENGTH,
    MAX_DATASET_SCHEMA_LENGTH,
    MAX_DATASET_SOURCE_LENGTH,
    MAX_DATASET_SOURCE_TYPE_LENGTH,
    MAX_INPUT_TAG_VALUE_LENGTH,
    check_dataset_field,
)

RUNNING, FINISHED, FAILED, KILLED, SCHEDULED = "RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED"
RUN_STATUSES = (RUNNING, FINISHED, FAILED, KILLED, SCHEDULED)
TERMINAL_STATUSES = (FINISHED, FAILED, KILLED)


class StoreError(RuntimeError):
    """A store refused or could not carry out a request."""


class RunNotFoundError(StoreError, LookupError):
    """No run with that id exists in the store."""


class InvalidSearchError(StoreError, ValueError):
    """MLflow refused a search: its filter string or ``order_by`` is not in MLflow's
    grammar (the message is MLflow's own)."""


class ParamRefusedError(StoreError):
    """The store refused a param because the run holds another value for it (logged by
    another process): retrying cannot help."""


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    timestamp: int
    step: int

    def __eq__(self, other: object) -> bool:  # NaN points compare equal to themselves
        if not isinstance(other, Metric):
            return NotImplemented
        same_value = self.value == other.value or (math.isnan(self.value) and math.isnan(other.value))
        return same_value and (self.key, self.timestamp, self.step) == (
            other.key, other.timestamp, other.step)

    def __hash__(self) -> int:
        return hash((self.key, self.timestamp, self.step))


# The input tag that says what a dataset was to the run ("train", "eval"), MLflow's name
DATASET_CONTEXT_TAG = "mlflow.data.context"


@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run used, as MLflow records it (``mlflow.entities.DatasetInput``): the
    dataset's fields, stored once per experiment, name and digest, and the context the
    run used it in (the input tag :data:`DATASET_CONTEXT_TAG`; None: no tag).

    ``source`` is JSON (for a ``code`` source: the system tags of the code that logged
    it), ``schema`` and ``profile`` are JSON or None. Each field is checked against
    MLflow's limits here: a bad one raises where the input is made, not in the writer."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str | None = None
    profile: str | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        for field_name, limit, required in (
                ("name", MAX_DATASET_NAME_LENGTH, True),
                ("digest", MAX_DATASET_DIGEST_LENGTH, True),
                ("source_type", MAX_DATASET_SOURCE_TYPE_LENGTH, True),
                ("source", MAX_DATASET_SOURCE_LENGTH, True),
                ("schema", MAX_DATASET_SCHEMA_LENGTH, False),
                ("profile", MAX_DATASET_PROFILE_LENGTH, False),
                ("context", MAX_INPUT_TAG_VALUE_LENGTH, False)):
            check_dataset_field(field_name, getattr(self, field_name), limit, required)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str
    status: str
    start_time: int
    end_time: int | None = None
    # Where the run's artifacts live, as MLflow records it (a local path, mlflow-artifacts:/…,
    # s3://…); "" where not known yet (a run started offline).
    artifact_uri: str = ""


@dataclass
class RunRecord:
    """A run as read back: identity and status, params, tags and the latest metric values."""

    info: RunInfo
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.info.run_id

    @property
    def status(self) -> str:
        return self.info.status

    def to_dict(self) -> dict:
        return {
            "run_id": self.info.run_id,
            "experiment_id": self.info.experiment_id,
            "run_name": self.info.run_name,
            "status": self.info.status,
            "start_time": self.info.start_time,
            "end_time": self.info.end_time,
            "artifact_uri": self.info.artifact_uri,
            "params": dict(sorted(self.params.items())),
            "tags": dict(sorted(self.tags.items())),
            "metrics": dict(sorted(self.metrics.items())),
        }


MetricRow = tuple[str, float, int, int]  # key, value, timestamp ms, step


class Store(Protocol):
    """What the writer and the API need from a backend."""

    uri: str

    def get_or_create_experiment(self, name: str) -> Experiment: ...

    def get_experiment_by_name(self, name: str) -> Experiment | None: ...

    def list_experiments(self) -> list[Experiment]: ...

    def create_run(
        self, experiment_id: str, run_name: str, start_time: int, tags: dict[str, str]
    ) -> RunInfo: ...

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None: ...

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[MetricRow] = (),
        params: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None: ...

    def log_inputs(self, run_id: str, inputs: Sequence[DatasetInput]) -> None:
        """Record datasets the run used, as MLflow's ``log_inputs`` does: a dataset is
        stored once per (experiment, name, digest), and a run that logs one again gets no
        second input row (so writing the same inputs twice is harmless)."""
        ...

    def get_run(self, run_id: str) -> RunRecord: ...

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]: ...

    def search_runs(
        self,
        experiment_ids: Iterable[str],
        filter_string: str = "",
        order_by: Sequence[str] = (),
        max_results: int = 1000,
    ) -> list[RunRecord]:
        """Active runs of those experiments that match ``filter_string``, in ``order_by``
        order (default: newest first), as MLflow's ``search_runs`` gives them: its
        grammar, its results, its order. An expression MLflow refuses raises
        :class:`InvalidSearchError`."""
        ...

    def server_run_id(self, run_id: str) -> str | None:
        """The id the backend itself knows the run by: ``run_id`` except for a run started
        while a tracking server was unreachable (None until the server has it)."""
        ...

    def close(self) -> None: ...
