"""Where autolog keeps files for later, and the lock a live process holds on its own.

Kept apart from the spool's modules, which import the HTTP client: ``import autolog``
reaches this through the artifact journal and must stay light.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

SPOOL_DIR_ENV = "AUTOLOG_SPOOL_DIR"


def default_spool_dir() -> Path:
    return Path(os.environ.get(SPOOL_DIR_ENV) or Path.home() / ".autolog" / "spool")


def lock_file(path: Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path`` (created if missing), or None when
    another process holds it. The kernel releases it when the holder dies, even by SIGKILL."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
