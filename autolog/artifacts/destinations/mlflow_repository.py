"""Any other artifact scheme MLflow knows (``gs://``, ``wasbs://``, ``hdfs://``, ``sftp://``…),
through MLflow's own artifact repository for it: the same client, credentials and layout
MLflow uses, in the uploader thread. MLflow is imported on first use only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    Progress,
)


class MlflowRepositoryDestination:
    checksum_first = False

    def __init__(self, artifact_uri: str):
        self.uri = artifact_uri
        try:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            self._repository = get_artifact_repository(artifact_uri)
        except ImportError as exc:  # a scheme whose client library is not installed
            raise ArtifactRefusedError(f"cannot write artifacts to {artifact_uri}: {exc}") from None
        except Exception as exc:  # MLflow's UnsupportedModelRegistryStoreURIException and kin
            raise ArtifactRefusedError(
                f"MLflow has no artifact repository for {artifact_uri}: {exc}") from None

    def __repr__(self) -> str:
        return f"MlflowRepositoryDestination({self.uri!r})"

    def stored(self, artifact_path: str, sha256: str, size: int) -> bool:
        parent, _, name = artifact_path.rpartition("/")
        try:
            entries = self._repository.list_artifacts(parent or None)
        except Exception:
            return False
        return any(entry.path.rpartition("/")[2] == name and entry.file_size == size for entry in entries)

    def upload(self, source: Path, artifact_path: str, sha256: str, size: int,
               progress: Progress | None = None) -> None:
        parent, _, name = artifact_path.rpartition("/")
        # MLflow names the uploaded file after the local one: a link of that name.
        with tempfile.TemporaryDirectory(prefix="autolog-upload-") as folder:
            named = Path(folder) / name
            try:
                os.link(source, named)
            except OSError:
                named.symlink_to(source)
            try:
                self._repository.log_artifact(str(named), parent or None)
            except Exception as exc:  # each scheme's client raises its own errors
                raise DestinationUnavailableError(f"uploading {artifact_path!r} to {self.uri} failed: "
                                                  f"{type(exc).__name__}: {exc}") from None
        if progress is not None:
            progress(size)

    def list(self, path: str | None = None) -> list[ArtifactEntry]:
        try:
            entries = self._repository.list_artifacts(path)
        except Exception as exc:
            raise DestinationUnavailableError(
                f"listing {self.uri} failed: {type(exc).__name__}: {exc}") from None
        return sorted((ArtifactEntry(entry.path, entry.is_dir, entry.file_size) for entry in entries),
                      key=lambda entry: entry.path)

    def download(self, artifact_path: str, target: Path, progress: Progress | None = None) -> None:
        with tempfile.TemporaryDirectory(prefix=".autolog-download-", dir=target.parent) as folder:
            try:
                local = self._repository.download_artifacts(artifact_path, folder)
            except Exception as exc:  # each scheme's client raises its own errors
                raise ArtifactNotFoundError(f"cannot download {artifact_path!r} from {self.uri}: "
                                            f"{type(exc).__name__}: {exc}") from None
            os.replace(local, target)
        if progress is not None:
            progress(target.stat().st_size)
