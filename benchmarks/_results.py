"""Shared by the benchmarks: machine description and RESULTS.md sections.

Each benchmark owns one section of ``benchmarks/RESULTS.md`` between markers, so running
one benchmark rewrites its own table and leaves the others as they were.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")

# Every benchmark (and each process it starts) spools into a folder of its own: what a
# benchmark's run leaves there names its temporary store, and must never join the user's
# own spool in ~/.autolog/spool, where `autolog sync` would try it.
os.environ["AUTOLOG_SPOOL_DIR"] = tempfile.mkdtemp(prefix="autolog-bench-spool-")


def machine() -> str:
    try:
        import psutil  # optional

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        memory = f"{pages * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB" if pages else "?"
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {memory} RAM, "
            f"Python {platform.python_version()}, {platform.system()}")


def median_time(function, rounds: int) -> float:
    """Median wall time of ``function()`` over ``rounds`` calls, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def mlflow_log_metric_us(uri: str, experiment: str, calls: int, synchronous: bool) -> tuple[float, str]:
    """µs per ``mlflow.log_metric`` call (async ones flushed before the run ends), and the
    run's id so the caller can check what arrived."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_metric("warmup", 0.0, synchronous=synchronous)
        started = time.perf_counter()
        for step in range(calls):
            mlflow.log_metric("loss", 0.5, step=step, synchronous=synchronous)
        elapsed = time.perf_counter() - started
        if not synchronous:
            mlflow.flush_async_logging()
    return elapsed / calls * 1e6, run.info.run_id


def publish(name: str, markdown: str, quick: bool) -> None:
    """Print a benchmark's section; unless it was a quick run, write it to RESULTS.md too."""
    print(markdown)
    if not quick:
        write_section(name, markdown)


def write_section(name: str, markdown: str) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    body = f"{begin}\n{markdown.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + body + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + body + "\n"
    RESULTS.write_text(text)
    print(f"wrote section {name!r} of {RESULTS}")
