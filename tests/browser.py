"""MLflow's UI as a user sees it: pages rendered by headless Chromium (Debian's ``chromium``).

MLflow's UI is a React app: the HTML a server sends holds no run data, so a page is
checked by the DOM Chromium has built after running its scripts and fetching the REST
answers (``--dump-dom``). ``--virtual-time-budget`` lets the page settle before the dump;
a page still loading when it runs out is loaded again with a longer budget.

URL forms in MLflow 3.17's UI (hash routes):
  ``/#/experiments/<experiment_id>/runs/<run_id>``                the run's overview: its
      name (the title), status, a "Metrics" table of each key's latest value, the params;
  ``/#/experiments/<experiment_id>/runs/<run_id>/model-metrics``  a chart per metric.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_BUDGETS_MS = (8_000, 20_000, 45_000)
_TIMEOUT_S = 120
_HIDDEN = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")


def chromium_path() -> str | None:
    """Debian's ``chromium`` (or ``AUTOLOG_CHROMIUM``), or None when there is none."""
    return shutil.which(os.environ.get("AUTOLOG_CHROMIUM", "chromium"))


def require_chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium)")
    return path


def run_page_url(server_uri: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """The UI's page of one run; ``tab="model-metrics"`` for its charts."""
    return f"{server_uri}/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")


def _chromium(url: str, budget_ms: int, *extra: str) -> str:
    # A fresh profile each time: nothing cached or remembered from another test's page.
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [require_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url],
            capture_output=True, text=True, timeout=_TIMEOUT_S, check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode} on {url}:\n"
                           f"{result.stderr[-2000:]}")
    return result.stdout


def dom_text(markup: str) -> str:
    """The visible text of rendered HTML, whitespace collapsed to single spaces."""
    text = html.unescape(_TAG.sub(" ", _HIDDEN.sub(" ", markup)))
    return " ".join(text.split())


def page_text(url: str, expect: tuple[str, ...] = ()) -> str:
    """The text of ``url`` once rendered. With ``expect``, the page is loaded again, with
    more time, until every expected string is in it; what the last load showed is
    returned either way, so the caller's assertion shows what was on the page."""
    text = ""
    for budget in _BUDGETS_MS:
        text = dom_text(_chromium(url, budget, "--dump-dom"))
        if all(item in text for item in expect):
            break
    return text


def screenshot(url: str, path: Path, width: int = 1400, height: int = 900,
               budget_ms: int = _BUDGETS_MS[0]) -> Path:
    """A PNG of ``url`` as rendered in a ``width`` × ``height`` window."""
    path = Path(path).resolve()
    # Without the compositor flag a fresh profile's shot can catch MLflow's charts still
    # drawing (their spinners), whatever the budget.
    _chromium(url, budget_ms, f"--screenshot={path}", f"--window-size={width},{height}",
              "--run-all-compositor-stages-before-draw")
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot of {url} to {path}")
    return path
