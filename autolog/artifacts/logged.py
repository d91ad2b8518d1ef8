"""Logging artifacts to a run: secure the bytes, record the upload, return.

The API (:mod:`autolog.api`) resolves the run; this module only needs where the run
lives (:class:`RunTarget`). Everything that can be wrong with the input (a missing file,
a folder given as a file, a bad path, a value that cannot be written) raises before any
byte is staged.
"""

from __future__ import annotations

import os
from pathlib import Path

from autolog.artifacts.paths import check_artifact_path, check_file_name, join
from autolog.artifacts.uploader import RunTarget, get_uploader


def log_file(target: RunTarget, local_path: object, artifact_path: object = None) -> str:
    """Stage one file and queue its upload to ``<artifact_path>/<its name>``; returns that
    path in the run's artifacts."""
    source = _existing(local_path)
    if source.is_dir():
        raise IsADirectoryError(f"{source} is a folder: use autolog.log_artifacts() for a folder")
    destination = join(check_artifact_path(artifact_path), source.name)
    uploader = get_uploader()
    staged = uploader.staging.secure_file(source, uploader.owner())
    uploader.submit(target, [(destination, staged)])
    return destination


def log_folder(target: RunTarget, local_dir: object, artifact_path: object = None) -> list[str]:
    """Stage every file under ``local_dir`` (symbolic links followed, as MLflow does) and
    queue their uploads under ``artifact_path``, keeping the folder's layout."""
    root = _existing(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file: use autolog.log_artifact() for a file")
    prefix = check_artifact_path(artifact_path)
    files = []
    for folder, _, names in os.walk(root, followlinks=True):
        relative = Path(folder).relative_to(root).as_posix()
        files += [(Path(folder) / name, join(prefix, "" if relative == "." else relative, name))
                  for name in sorted(names)]
    uploader = get_uploader()
    staged: list = []
    try:
        for source, destination in files:
            staged.append((destination, uploader.staging.secure_file(source, uploader.owner())))
    except BaseException:  # a file that cannot be read, a full disk: none of the folder is logged
        for _, done in staged:
            uploader.staging.release(done.ref, done.sha256)
        raise
    if staged:
        uploader.submit(target, staged)
    return [destination for _, destination in files]


def log_bytes(target: RunTarget, data: bytes, artifact_file: object) -> str:
    """Stage bytes made in memory and queue their upload to ``artifact_file``."""
    destination = check_file_name(artifact_file)
    uploader = get_uploader()
    staged = uploader.staging.secure_bytes(data, uploader.owner())
    uploader.submit(target, [(destination, staged)])
    return destination


def _existing(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected a path (str or os.PathLike), got {type(path).__name__}")
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no such file or folder: {str(source)!r}")
    return source
