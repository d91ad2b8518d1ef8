"""The fallback destination, MLflow's own artifact repository for schemes autolog has no
client of its own for (gs://, wasbs://, hdfs://…): exercised here through MLflow's
repository for ``file:`` URIs (the one that runs without a service), and read back with
MLflow's own client."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
import pytest

from autolog.artifacts.destinations.base import ArtifactEntry, ArtifactNotFoundError, ArtifactRefusedError
from autolog.artifacts.destinations.mlflow_repository import MlflowRepositoryDestination


def test_uploads_lists_and_downloads_through_mlflows_repository(tmp_path):
    root = tmp_path / "artifacts"
    destination = MlflowRepositoryDestination(root.as_uri())
    data = os.urandom(50_000)
    staged = tmp_path / "0123abcd"  # a staged ref's name: the file must arrive under its own
    staged.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    assert not destination.stored("model/weights.bin", sha256, len(data))

    moved: list[int] = []
    destination.upload(staged, "model/weights.bin", sha256, len(data), moved.append)
    assert sum(moved) == len(data)
    assert (root / "model" / "weights.bin").read_bytes() == data
    assert destination.stored("model/weights.bin", sha256, len(data))
    assert destination.list() == [ArtifactEntry("model", True, None)]
    assert destination.list("model") == [ArtifactEntry("model/weights.bin", False, len(data))]

    # MLflow's own download of the same location gives the same bytes
    fetched = mlflow.artifacts.download_artifacts(artifact_uri=f"{root.as_uri()}/model/weights.bin",
                                                  dst_path=str(tmp_path / "mlflow"))
    assert Path(fetched).read_bytes() == data
    target = tmp_path / "mine.bin"
    destination.download("model/weights.bin", target)
    assert target.read_bytes() == data
    with pytest.raises(ArtifactNotFoundError):
        destination.download("model/missing.bin", tmp_path / "none.bin")


def test_a_scheme_mlflow_does_not_know_is_refused_with_a_reason():
    with pytest.raises(ArtifactRefusedError, match="nosuchscheme"):
        MlflowRepositoryDestination("nosuchscheme://bucket/path")
