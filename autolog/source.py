"""Who and where a run comes from: the system tags every run gets, under MLflow's names.

Computed once per process (git costs a few milliseconds) and reused for every run.

Source: the script (or ``-m`` module) the process runs, ``mlflow.source.type`` LOCAL, git
tags from its directory. Under a Jupyter kernel, the script is ``ipykernel_launcher.py``,
which says nothing; the source is the notebook instead, found where the tools put it:

* VS Code's ``__vsc_ipynb_file__`` in the kernel's user namespace;
* ipykernel's ``__session__`` there, which it copies from ``JPY_SESSION_NAME``, the
  variable jupyter_server sets in a kernel's environment (the notebook's full path since
  jupyter_server 2.0.7; the path relative to the server's root before);
* ``JPY_SESSION_NAME`` itself.

The first that names an existing file (as given, relative to the kernel's working
directory, or its file name there) is ``mlflow.source.name``, resolved to a full path as a
script's is, and git tags come from its directory. MLflow's own Jupyter context records
only the file name; the path says which of two notebooks of that name it was. A kernel
with no notebook to name (``jupyter console``, nbclient without a session name) is
``<notebook>``, with git tags from its working directory. Either way
``mlflow.source.type`` is NOTEBOOK, as MLflow sets it in any Jupyter kernel. IPython's
terminal shell is ``<interactive>`` (type LOCAL, as MLflow has it), like Python's REPL.

The shell is read from ``sys.modules``: outside IPython nothing of it is imported.
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
from typing import Any

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


LOCAL = "LOCAL"
NOTEBOOK = "NOTEBOOK"  # MLflow's SourceType names
INTERACTIVE = "<interactive>"
NOTEBOOK_WITHOUT_PATH = "<notebook>"
# where the tools put the notebook's path, in this order (module doc)
NOTEBOOK_NAMESPACE_KEYS = ("__vsc_ipynb_file__", "__session__")
SESSION_NAME_ENV = "JPY_SESSION_NAME"


def ipython_shell() -> Any:
    """The running IPython shell (a Jupyter kernel's or IPython's terminal), or None;
    never imports IPython (its shell class is looked up in ``sys.modules``)."""
    module = sys.modules.get("IPython.core.interactiveshell")
    shell_class = getattr(module, "InteractiveShell", None)
    if shell_class is None or not shell_class.initialized():
        return None
    return shell_class.instance()


def entry_point() -> str:
    """The script (or ``-m`` module file) the process was started with."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path and ipython_shell() is not None:
        return INTERACTIVE  # sys.argv[0] is IPython's own script
    path = path or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    if not path or path == "-c":
        return INTERACTIVE if hasattr(sys, "ps1") or not path else "<command>"
    return str(Path(path).resolve())


def notebook_path(shell: Any) -> str | None:
    """The full path of the notebook a Jupyter kernel runs, if a tool said (module doc)."""
    namespace = getattr(shell, "user_ns", None) or {}
    values = [namespace.get(key) for key in NOTEBOOK_NAMESPACE_KEYS]
    values.append(os.environ.get(SESSION_NAME_ENV))
    cwd = os.getcwd()
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        for candidate in (Path(cwd, value), Path(cwd, Path(value).name)):
            if candidate.is_file():
                return str(candidate.resolve())
    return None


def source() -> tuple[str, str, str]:
    """``(mlflow.source.name, mlflow.source.type, directory for the git tags)``."""
    shell = ipython_shell()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        path = notebook_path(shell)
        if path is None:
            return NOTEBOOK_WITHOUT_PATH, NOTEBOOK, os.getcwd()
        return path, NOTEBOOK, os.path.dirname(path)
    name = entry_point()
    return name, LOCAL, os.path.dirname(name) if os.path.isfile(name) else os.getcwd()


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
    name, source_type, directory = source()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    tags = {
        USER: user,
        SOURCE_NAME: name,
        SOURCE_TYPE: source_type,
        HOST: socket.gethostname(),
        PYTHON_VERSION: platform.python_version(),
    }
    tags.update(git_tags(directory))
    return tags
