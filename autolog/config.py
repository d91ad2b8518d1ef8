"""Process-wide settings and where each comes from (argument, environment, default)."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: `mlflow ui` there shows the runs
DEFAULT_EXPERIMENT = "Default"
ON_CONFLICT_POLICIES = ("namespace", "skip", "raise")


class AutologWarning(UserWarning):
    """Every warning autolog itself gives; ``autolog(silent=True)`` filters this category."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def disabled_names() -> list[str]:
    """The names in ``AUTOLOG_DISABLE`` (comma separated): integrations, ``system`` (the
    system metrics), or ``all``."""
    return [name.strip() for name in os.environ.get("AUTOLOG_DISABLE", "").split(",") if name.strip()]


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


@dataclass
class Settings:
    tracking_uri: str | None = None
    experiment: str | None = None
    on_conflict: str = "namespace"
    silent: bool = False

    def resolved_tracking_uri(self) -> str:
        return (
            self.tracking_uri
            or os.environ.get("AUTOLOG_TRACKING_URI")
            or os.environ.get("MLFLOW_TRACKING_URI")
            or DEFAULT_TRACKING_URI
        )

    def resolved_experiment(self) -> str:
        return self._named_experiment() or DEFAULT_EXPERIMENT

    def _named_experiment(self) -> str | None:
        return (
            self.experiment
            or os.environ.get("AUTOLOG_EXPERIMENT")
            or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        )

    def experiment_id_from_env(self) -> str | None:
        """``MLFLOW_EXPERIMENT_ID`` (as MLflow Projects and job launchers set it), where no
        experiment is named (argument, ``AUTOLOG_EXPERIMENT``, ``MLFLOW_EXPERIMENT_NAME``):
        a name wins over it, as in MLflow."""
        raw = os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip()
        if not raw or self._named_experiment():
            return None
        if not raw.isdigit():  # MLflow's stores number their experiments
            raise ValueError(f"MLFLOW_EXPERIMENT_ID must be an experiment id (a number), got {raw!r}")
        return raw

    def set_on_conflict(self, policy: str) -> None:
        self.on_conflict = check_on_conflict(policy)


_taken_run_id: list[str] = []  # the MLFLOW_RUN_ID that take_launcher_run_id() consumed


def launcher_run_id() -> str | None:
    """The run a launcher (MLflow Projects, a job scheduler) started this process for:
    ``MLFLOW_RUN_ID``, or the value :func:`take_launcher_run_id` removed from the
    environment."""
    value = os.environ.get("MLFLOW_RUN_ID", "").strip()
    return value or (_taken_run_id[-1] if _taken_run_id else None)


def take_launcher_run_id() -> str | None:
    """``MLFLOW_RUN_ID`` for the first run this process starts, then no more: as MLflow's
    ``start_run``, which removes it from the environment, so that the next run is a new
    one (and a child process started later does not resume it too)."""
    value = os.environ.pop("MLFLOW_RUN_ID", "").strip()
    if value:
        _taken_run_id.append(value)
    return value or None


def check_on_conflict(policy: object) -> str:
    if policy not in ON_CONFLICT_POLICIES:
        raise ValueError(f"on_conflict must be one of {ON_CONFLICT_POLICIES}, got {policy!r}")
    return policy  # type: ignore[return-value]


def strict() -> bool:
    """``AUTOLOG_STRICT=1``: autolog's own errors are raised instead of warned about."""
    return env_flag("AUTOLOG_STRICT")


settings = Settings()


# Packages a warning never points into: autolog's own, and the frameworks whose code runs
# between the user's call (``model.fit(...)``) and autolog's hook in it.
_NOT_THE_USERS = frozenset({
    "autolog", "autolog_integrations", "wrapt", "sklearn", "xgboost", "torch", "lightning",
    "lightning_fabric", "pytorch_lightning", "joblib", "contextlib", "functools", "threading",
})


def users_stacklevel(default: int = 2) -> int:
    """The ``stacklevel`` for ``warnings.warn``, called by the caller of this function,
    that points at the user's line: the innermost frame outside autolog and the frameworks
    it hooks into. ``default`` where there is none (a warning of autolog's writer thread)."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] not in _NOT_THE_USERS:
            return level
        frame, level = frame.f_back, level + 1
    return default


def warn_from_thread(message: str) -> None:
    """A warning from one of autolog's background threads (the spool's sender, the
    artifact uploader). Where warnings are errors (a strict test run) the error must not
    stop the thread, so it ends here."""
    try:
        warnings.warn(f"autolog: {message}", AutologWarning, stacklevel=2)
    except Warning:
        pass


def warn(message: str) -> None:
    """An autolog warning that ``silent=True`` hides (failed writes are never hidden),
    pointing at the user's line."""
    if not settings.silent:
        warnings.warn(message, AutologWarning, stacklevel=users_stacklevel())
