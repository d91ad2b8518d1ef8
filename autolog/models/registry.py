"""MLflow's model registry, through MLflow's own client: registered models, versions and
aliases (``champion``/``challenger``), in the tracking server's registry or the MLflow
database the runs live in.

Registry calls are rare and not on a training loop, so they go through
``mlflow.MlflowClient`` (its REST client with retries, or its SQL store with MLflow's
schema) rather than autolog's own stores: what MLflow's registry UI shows is what
MLflow's client wrote.
"""

from __future__ import annotations

import re
from typing import Any

_NAME_LIMIT = 256  # MLflow's registered-model name column
_ALIAS = re.compile(r"^[A-Za-z_][\w\-]{0,255}$")


def registry_uri(tracking_uri: str) -> str:
    """The URI MLflow's client opens for ``tracking_uri``: the same, with the database
    driver autolog installs named where the URI leaves it to SQLAlchemy's default."""
    if tracking_uri.startswith("mysql://"):
        return "mysql+pymysql://" + tracking_uri.removeprefix("mysql://")
    if tracking_uri.startswith("postgresql://"):
        try:
            import psycopg2  # noqa: F401  SQLAlchemy's default PostgreSQL driver
        except ImportError:
            return "postgresql+psycopg://" + tracking_uri.removeprefix("postgresql://")
    return tracking_uri


def client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    uri = registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_LIMIT:
        raise ValueError(f"a registered model name must be a non-empty str of at most "
                         f"{_NAME_LIMIT} characters, got {name!r}")
    return name


def check_alias(alias: object) -> str:
    """MLflow's alias rule: letters, digits, ``_`` and ``-``, not a version (``v3``) nor
    ``latest``, which ``models:/name@...`` would read otherwise."""
    if not isinstance(alias, str) or not _ALIAS.match(alias) \
            or re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest":
        raise ValueError(f"an alias is letters, digits, '_' and '-' (not 'latest' nor a version "
                         f"like 'v3'), got {alias!r}")
    return alias


def check_version(version: object) -> str:
    if isinstance(version, bool) or not (isinstance(version, int) and version > 0
                                         or isinstance(version, str) and version.isdigit()):
        raise ValueError(f"a model version is a positive int, got {version!r}")
    return str(int(version))


def create_version(tracking_uri: str, name: str, source: str, run_id: str | None,
                   alias: str | None = None, tags: dict[str, str] | None = None) -> Any:
    """Register ``source`` (the model's folder in its run's artifact location) as a new
    version of ``name`` (created if missing), optionally under ``alias``; returns MLflow's
    ``ModelVersion``."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = mlflow_client.create_model_version(name, source, run_id=run_id, tags=tags)
    if alias is not None:
        mlflow_client.set_registered_model_alias(name, alias, version.version)
        version = mlflow_client.get_model_version(name, version.version)
    return version


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``: one write, so a reader sees the old version or the
    new one, never none (the champion moves atomically)."""
    client(tracking_uri).set_registered_model_alias(name, alias, version)


def delete_alias(tracking_uri: str, name: str, alias: str) -> None:
    client(tracking_uri).delete_registered_model_alias(name, alias)


def version_by_alias(tracking_uri: str, name: str, alias: str) -> Any:
    return client(tracking_uri).get_model_version_by_alias(name, alias)

