"""Who and where a run comes from: the system tags every run gets, under MLflow's names.

Computed once per process (git costs a few milliseconds) and reused for every run.
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

USER = "mlflow.user"
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_BRANCH = "mlflow.source.git.branch"
GIT_DIRTY = "autolog.source.git.dirty"
RUN_NAME = "mlflow.runName"
PARENT_RUN_ID = "mlflow.parentRunId"
HOST = "autolog.host"
PYTHON_VERSION = "autolog.python_version"


def entry_point() -> str:
    """The script (or ``-m`` module file) the process was started with."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    if not path or path == "-c":
        return "<interactive>" if hasattr(sys, "ps1") or not path else "<command>"
    return str(Path(path).resolve())


def _git(args: list[str], cwd: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_tags(directory: str) -> dict[str, str]:
    """Commit, branch and dirty flag of the git work tree holding ``directory``, if any."""
    heads = _git(["rev-parse", "HEAD", "--abbrev-ref", "HEAD"], directory)
    if heads is None:
        return {}
    commit, branch = (heads.split() + ["", ""])[:2]
    tags = {GIT_COMMIT: commit}
    if branch and branch != "HEAD":
        tags[GIT_BRANCH] = branch
    status = _git(["status", "--porcelain", "--untracked-files=no"], directory)
    if status is not None:
        tags[GIT_DIRTY] = "true" if status.strip() else "false"
    return tags


@functools.lru_cache(maxsize=1)
def system_tags() -> dict[str, str]:
    source = entry_point()
    directory = os.path.dirname(source) if os.path.isfile(source) else os.getcwd()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    tags = {
        USER: user,
        SOURCE_NAME: source,
        SOURCE_TYPE: "LOCAL",
        HOST: socket.gethostname(),
        PYTHON_VERSION: platform.python_version(),
    }
    tags.update(git_tags(directory))
    return tags
