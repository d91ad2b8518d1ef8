"""Reading a run's artifacts back: listing and downloading, from wherever they live."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from autolog.artifacts.destinations import destination_for
from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactError,
    ArtifactNotFoundError,
    Destination,
)
from autolog.artifacts.paths import check_artifact_path
from autolog.artifacts.uploader import with_credentials

ProgressFactory = Callable[[int, str], "Callable[[int], None] | None"]  # (total bytes, name)


def destination(artifact_uri: str, tracking_uri: str) -> Destination:
    if not artifact_uri:
        raise ArtifactNotFoundError("the run has no artifact location yet (it was started offline "
                                    "and its server has not created it)")
    return destination_for(artifact_uri, with_credentials(tracking_uri))


def list_entries(where: Destination, path: object = None) -> list[ArtifactEntry]:
    return where.list(check_artifact_path(path, "path") or None)


def download(where: Destination, path: object, dst: object = None,
             progress: ProgressFactory | None = None) -> Path:
    """Download the file or folder ``path`` (the whole run when empty) into ``dst`` (a new
    temporary folder when None), keeping its path; returns the local path."""
    artifact_path = check_artifact_path(path, "path")
    root = Path(tempfile.mkdtemp(prefix="autolog-artifacts-")) if dst is None else Path(dst)
    root.mkdir(parents=True, exist_ok=True)
    files = files_under(where, artifact_path)
    if not files:
        raise ArtifactNotFoundError(f"no artifact {artifact_path!r} in {where.uri}")
    for relative, size in files:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        where.download(relative, target, progress(size, relative) if progress else None)
    return root / artifact_path if artifact_path else root


def files_under(where: Destination, artifact_path: str) -> list[tuple[str, int | None]]:
    """The files at or under ``artifact_path``, with their sizes. A listed path that is
    absolute or climbs out with ``..`` (an S3 key can be anything) is an error: it would
    be written outside the folder a download or a copy writes into."""
    parent = artifact_path.rpartition("/")[0]
    if artifact_path:
        for entry in where.list(parent or None):
            if entry.path == artifact_path and not entry.is_dir:
                return [(entry.path, entry.file_size)]
    files, folders = [], [artifact_path]
    while folders:
        for entry in where.list(folders.pop() or None):
            try:
                if check_artifact_path(entry.path) != entry.path:
                    raise ValueError(f"{entry.path!r} is not in its normal form")
            except ValueError as exc:
                raise ArtifactError(f"{where.uri} lists an unsafe artifact path: {exc}") from None
            if entry.is_dir:
                folders.append(entry.path)
            else:
                files.append((entry.path, entry.file_size))
    return sorted(files)
