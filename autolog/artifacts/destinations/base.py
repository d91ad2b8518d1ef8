"""What every artifact destination does, and the errors it raises.

A destination is one run's artifact location, its ``artifact_uri`` as MLflow records it.
Paths inside it are relative and ``/``-separated (checked by :mod:`autolog.artifacts.paths`
before they get here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from autolog.stores.base import StoreError

Progress = Callable[[int], None]  # called with the number of bytes just moved


class ArtifactError(StoreError):
    """An artifact could not be stored or read."""


class DestinationUnavailableError(ArtifactError):
    """The destination did not answer, or answered that it cannot take the file now
    (a server down, a 5xx, a timeout): the upload is retried later."""


class ArtifactRefusedError(ArtifactError):
    """The destination refused the request for good (no permission, a bucket that does
    not exist): retrying cannot help until the user fixes it."""


class VerificationError(DestinationUnavailableError):
    """What the destination holds after an upload is not what was sent (its size, or its
    checksum where the destination reports one): the upload is done again."""


class ArtifactNotFoundError(ArtifactError, FileNotFoundError):
    """No artifact at that path."""


@dataclass(frozen=True)
class ArtifactEntry:
    """One entry of a listing, as MLflow's ``FileInfo``: the path relative to the run's
    artifact root, whether it is a folder, and its size in bytes (None for a folder)."""

    path: str
    is_dir: bool
    file_size: int | None


class Destination(Protocol):
    """A run's artifact location."""

    uri: str  # the run's artifact_uri, without credentials
    # Whether upload() needs the sha256 before it starts (S3 sends it with the object; a
    # local root links the staged object, which must be merged with its twins first). A
    # destination that does not is sent a file while its sha256 is computed beside it.
    checksum_first: bool

    def stored(self, artifact_path: str, sha256: str, size: int) -> bool:
        """True if ``artifact_path`` already holds exactly these bytes (as far as the
        destination can tell: the same size, and the same checksum where it keeps one),
        so the upload can be skipped."""
        ...

    def upload(self, source: Path, artifact_path: str, sha256: str, size: int,
               progress: Progress | None = None) -> None:
        """Put the file ``source`` at ``artifact_path``, streamed (never read whole into
        memory), then verify it (``sha256`` is "" when ``checksum_first`` is False).
        Raises :class:`DestinationUnavailableError` (retry later) or
        :class:`ArtifactRefusedError` (give up and say why)."""
        ...

    def list(self, path: str | None = None) -> list[ArtifactEntry]:
        """The entries directly under ``path`` (the root when None), sorted by path; an
        empty list for a path that does not exist."""
        ...

    def download(self, artifact_path: str, target: Path, progress: Progress | None = None) -> None:
        """Copy the file ``artifact_path`` to the local file ``target`` (its folder
        exists), streamed. :class:`ArtifactNotFoundError` when there is no such file."""
        ...
