"""Copying a run's artifacts from one location to another (``autolog sync --from --to``):
each file is staged (downloaded into the staging area when it is not local, hashed),
skipped when the destination already holds it, else uploaded and verified. Memory stays
flat: files are streamed, one at a time."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from autolog.artifacts.destinations import destination_for
from autolog.artifacts.destinations.local import LocalDestination
from autolog.artifacts.reading import files_under
from autolog.artifacts.staging import Staging
from autolog.artifacts.uploader import already_there, with_credentials
from autolog.stores.local_files import lock_file

Progress = Callable[[int], object]


@dataclass
class CopiedArtifacts:
    files: int = 0  # uploaded
    present: int = 0  # already in the destination
    size: int = 0  # bytes uploaded


def copy_artifacts(source_uri: str, source_tracking: str, dest_uri: str, dest_tracking: str,
                   staging: Staging, progress: Progress | None = None) -> CopiedArtifacts:
    """Copy every artifact file under ``source_uri`` to the same path under ``dest_uri``
    (artifact URIs; the tracking URIs are the stores the runs live in)."""
    source = destination_for(source_uri, with_credentials(source_tracking))
    files = files_under(source, "")
    if not files:
        return CopiedArtifacts()
    dest = destination_for(dest_uri, with_credentials(dest_tracking))
    owner = f"copy-{staging.partial_path().name}"
    journals = staging.root / "journals"
    journals.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_fd = lock_file(journals / f"{owner}.lock")  # held: a concurrent sweep leaves our refs
    copied = CopiedArtifacts()
    try:
        for path, _size in files:
            if isinstance(source, LocalDestination):
                staged = staging.hashed(staging.secure_file(source.root / path, owner))
            else:
                partial = staging.partial_path()
                source.download(path, partial)
                staged = staging.adopt_file(partial, owner)
            location = f"{dest_uri}/{path}"
            sent_before = None if dest.checksum_first else staging.sent_before(location)
            try:
                if already_there(dest, path, staged.sha256, staged.size, sent_before):
                    copied.present += 1
                    continue
                dest.upload(staged.ref, path, staged.sha256, staged.size, progress)
                if not dest.checksum_first:
                    staging.record_sent(location, staged.sha256, staged.size)
                copied.files += 1
                copied.size += staged.size
            finally:
                staging.release(staged.ref, staged.sha256)
    finally:
        staging.drop_owner(owner)
        if lock_fd is not None:
            os.close(lock_fd)
            (journals / f"{owner}.lock").unlink(missing_ok=True)
        for opened in (source, dest):
            close = getattr(opened, "close", None)
            if close is not None:
                close()
    return copied
