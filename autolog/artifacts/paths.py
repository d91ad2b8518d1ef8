"""Artifact paths: relative, ``/``-separated, inside the run's artifact root.

Checked on the caller's thread, so that a bad path is an error at the user's line and
never reaches a destination (where ``..`` would write outside the run).
"""

from __future__ import annotations

import posixpath


def check_artifact_path(path: object, what: str = "artifact_path") -> str:
    """``path`` normalised ("a//b/" → "a/b"; "" and "." → ""), or a :class:`ValueError` for
    an absolute path, a ``..`` part or a non-string."""
    if path is None:
        return ""
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str, got {type(path).__name__}")
    text = path.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise ValueError(f"{what} must be relative to the run's artifact root, got {path!r}")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what} must stay inside the run's artifacts: {path!r} has a '..' part")
    return "/".join(parts)


def join(*parts: str) -> str:
    """Artifact paths joined with ``/``, empty parts skipped."""
    return posixpath.join(*[part for part in parts if part]) if any(parts) else ""


def check_file_name(name: object, what: str = "artifact_file") -> str:
    """A path naming a file: as :func:`check_artifact_path`, and not empty."""
    checked = check_artifact_path(name, what)
    if not checked:
        raise ValueError(f"{what} must name a file, got {name!r}")
    return checked
