"""Where a run's artifacts go, chosen by its ``artifact_uri`` as MLflow chose it.

- a path or ``file:`` URI: :mod:`.local` (hard links of the staged content);
- ``mlflow-artifacts:`` (and ``http(s)://`` artifact URIs): the tracking server's artifact
  proxy over REST, :mod:`.proxy`;
- ``s3://``: object storage, straight from this process, :mod:`.s3`;
- any other scheme MLflow knows (``gs://``, ``wasbs://``, ``hdfs://``…): MLflow's own
  artifact repository for it, :mod:`.mlflow_repository`.
"""

from __future__ import annotations

from autolog.artifacts.destinations.base import Destination


def destination_for(artifact_uri: str, tracking_uri: str) -> Destination:
    """The destination of a run whose artifacts MLflow put at ``artifact_uri``;
    ``tracking_uri`` is the store the run lives in (the server an ``mlflow-artifacts:``
    URI is relative to)."""
    scheme = artifact_uri.partition(":")[0].lower() if "://" in artifact_uri or artifact_uri.startswith(
        ("file:", "mlflow-artifacts:")) else ""
    if scheme in ("", "file"):
        from autolog.artifacts.destinations.local import LocalDestination

        return LocalDestination(artifact_uri)
    if scheme in ("mlflow-artifacts", "http", "https"):
        from autolog.artifacts.destinations.proxy import ProxyDestination

        return ProxyDestination(artifact_uri, tracking_uri)
    if scheme == "s3":
        from autolog.artifacts.destinations.s3 import S3Destination

        return S3Destination(artifact_uri)
    from autolog.artifacts.destinations.mlflow_repository import MlflowRepositoryDestination

    return MlflowRepositoryDestination(artifact_uri)
