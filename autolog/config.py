"""Process-wide settings and where each comes from (argument, environment, default)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

DEFAULT_TRACKING_URI = "sqlite:///autolog.db"
DEFAULT_EXPERIMENT = "Default"
ON_CONFLICT_POLICIES = ("namespace", "skip", "raise")


class AutologWarning(UserWarning):
    """Every warning autolog itself gives; ``autolog(silent=True)`` filters this category."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


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
        return (
            self.experiment
            or os.environ.get("AUTOLOG_EXPERIMENT")
            or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or DEFAULT_EXPERIMENT
        )

    def set_on_conflict(self, policy: str) -> None:
        self.on_conflict = check_on_conflict(policy)


def check_on_conflict(policy: object) -> str:
    if policy not in ON_CONFLICT_POLICIES:
        raise ValueError(f"on_conflict must be one of {ON_CONFLICT_POLICIES}, got {policy!r}")
    return policy  # type: ignore[return-value]


def strict() -> bool:
    """``AUTOLOG_STRICT=1``: autolog's own errors are raised instead of warned about."""
    return env_flag("AUTOLOG_STRICT")


settings = Settings()


def warn(message: str, stacklevel: int = 2) -> None:
    """An autolog warning that ``silent=True`` hides (failed writes are never hidden)."""
    if not settings.silent:
        warnings.warn(message, AutologWarning, stacklevel=stacklevel + 1)
