"""A local artifact root (the embedded store's ``./mlruns``, or any path or ``file:`` URI).

An upload is a hard link of the staged object (:mod:`autolog.artifacts.staging`), so the
same content logged to many runs takes its space on disk once; across file systems, or
where links are not allowed, it is a copy. The staged object is read-only, and a linked
artifact shares it, so neither can be changed in place by accident.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from autolog.artifacts.destinations.base import (
    ArtifactEntry,
    ArtifactNotFoundError,
    ArtifactRefusedError,
    DestinationUnavailableError,
    Progress,
    VerificationError,
)
from autolog.artifacts.staging import file_sha256

COPY_CHUNK = 1 << 20


def local_root(uri: str) -> Path:
    """The folder a ``file:`` URI or a plain path names."""
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        return Path(unquote(parts.path))
    return Path(uri)


class LocalDestination:
    checksum_first = True

    def __init__(self, uri: str):
        self.uri = uri
        self.root = local_root(uri)

    def __repr__(self) -> str:
        return f"LocalDestination({self.uri!r})"

    def _path(self, artifact_path: str) -> Path:
        return self.root / artifact_path if artifact_path else self.root

    def stored(self, artifact_path: str, sha256: str, size: int) -> bool:
        """The same size and the same sha256 (hashed only when the sizes agree)."""
        target = self._path(artifact_path)
        try:
            return target.stat().st_size == size and file_sha256(target) == sha256
        except OSError:
            return False

    def upload(self, source: Path, artifact_path: str, sha256: str, size: int,
               progress: Progress | None = None) -> None:
        target = self._path(artifact_path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
            temporary.unlink(missing_ok=True)
            try:
                os.link(source, temporary)
            except OSError:  # another file system, or links not allowed: a copy
                _copy(source, temporary, progress)
            else:
                if progress is not None:
                    progress(size)
            os.replace(temporary, target)  # atomic: a reader sees the old file or the new
        except PermissionError as exc:
            raise ArtifactRefusedError(f"cannot write {target}: {exc}") from None
        except OSError as exc:
            raise DestinationUnavailableError(f"cannot write {target}: {exc}") from None
        stored = target.stat().st_size
        if stored != size:
            raise VerificationError(f"{target} holds {stored} bytes after the copy, not {size}")

    def list(self, path: str | None = None) -> list[ArtifactEntry]:
        folder = self._path(path or "")
        if not folder.is_dir():
            return []
        entries = []
        for child in folder.iterdir():
            if child.name.endswith(".partial") and child.name.startswith("."):
                continue  # an upload in progress
            relative = f"{path}/{child.name}" if path else child.name
            if child.is_dir():
                entries.append(ArtifactEntry(relative, True, None))
            else:
                entries.append(ArtifactEntry(relative, False, child.stat().st_size))
        return sorted(entries, key=lambda entry: entry.path)

    def download(self, artifact_path: str, target: Path, progress: Progress | None = None) -> None:
        source = self._path(artifact_path)
        if not source.is_file():
            raise ArtifactNotFoundError(f"no artifact {artifact_path!r} in {self.uri}")
        _copy(source, target, progress)


def _copy(source: Path, target: Path, progress: Progress | None) -> None:
    if progress is None:
        shutil.copyfile(source, target)
        return
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while chunk := reader.read(COPY_CHUNK):
            writer.write(chunk)
            progress(len(chunk))
