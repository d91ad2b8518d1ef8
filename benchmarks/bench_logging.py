"""Hot-path cost of log_metric and end-to-end ingest into the embedded store, beside MLflow.

    python benchmarks/bench_logging.py            # full run, rewrites its RESULTS.md section
    python benchmarks/bench_logging.py --quick    # smaller sizes, prints only

In one process and one run: the median µs per call of ``autolog.log_metric`` over several
rounds of 200,000 calls, a bare ``list.append((key, value, step, time.time()))`` measured the
same way, ingest of 1,000,000 points into a fresh SQLite store (flush included), and, when
mlflow is installed, ``mlflow.log_metric`` sync and ``synchronous=False`` against a local
SQLite tracking URI on a sample of a few thousand calls (each takes milliseconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, mlflow_log_metric_us, write_section  # noqa: E402

HOT_PATH_TARGET_US = 2.0
RATIO_TARGET = 15.0
INGEST_TARGET = 500_000


def per_call_us(loop, calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        loop(calls)
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def bare_append(calls: int) -> None:
    points = []
    append, now = points.append, time.time
    for step in range(calls):
        append(("loss", 0.5, step, now()))


def autolog_hot_path(calls: int) -> None:
    import autolog

    log_metric = autolog.log_metric
    for step in range(calls):
        log_metric("loss", 0.5, step)


def autolog_ingest(points: int) -> float:
    import autolog

    with autolog.start_run(run_name="ingest") as run:
        log_metric = autolog.log_metric
        started = time.perf_counter()
        for step in range(points):
            log_metric("ingest", 0.5, step)
        assert autolog.flush()
        elapsed = time.perf_counter() - started
    stored = len(autolog.get_metric_history(run.id, "ingest"))
    assert stored == points, f"only {stored} of {points} points stored"
    return points / elapsed


def mlflow_per_call_us(workdir: str, calls: int, synchronous: bool) -> float:
    return mlflow_log_metric_us(f"sqlite:///{workdir}/mlflow.db", "bench", calls, synchronous)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; do not write RESULTS.md")
    args = parser.parse_args()
    calls, rounds = (50_000, 3) if args.quick else (200_000, 7)
    ingest_points = 100_000 if args.quick else 1_000_000
    mlflow_calls = 300 if args.quick else 3_000

    workdir = tempfile.mkdtemp(prefix="autolog-bench-")
    os.environ["AUTOLOG_TRACKING_URI"] = f"sqlite:///{workdir}/autolog.db"
    import autolog

    rows = []
    append_us = per_call_us(bare_append, calls, rounds)
    with autolog.start_run(run_name="hot-path"):
        hot_us = per_call_us(autolog_hot_path, calls, rounds)
    ingest = autolog_ingest(ingest_points)
    rows.append(("bare `list.append((key, value, step, time.time()))`", f"{append_us:.3f} µs/call", "1.0×"))
    rows.append(("`autolog.log_metric` (hot path, writer running)", f"{hot_us:.3f} µs/call",
                 f"{hot_us / append_us:.1f}× the append"))
    rows.append((f"autolog ingest, {ingest_points:,} points, flush included",
                 f"{ingest:,.0f} points/s", ""))
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("mlflow is not installed: skipping its figures")
    else:
        sync_us = mlflow_per_call_us(workdir, mlflow_calls, synchronous=True)
        async_us = mlflow_per_call_us(workdir, mlflow_calls * 3, synchronous=False)
        rows.append((f"`mlflow.log_metric` sync, SQLite URI ({mlflow_calls:,} calls)",
                     f"{sync_us:,.0f} µs/call", f"{sync_us / hot_us:,.0f}× autolog"))
        rows.append((f"`mlflow.log_metric(synchronous=False)` ({mlflow_calls * 3:,} calls)",
                     f"{async_us:,.0f} µs/call", f"{async_us / hot_us:,.0f}× autolog"))

    checks = [
        (hot_us <= HOT_PATH_TARGET_US, f"hot path {hot_us:.2f} µs ≤ {HOT_PATH_TARGET_US} µs"),
        (hot_us / append_us <= RATIO_TARGET,
         f"hot path {hot_us / append_us:.1f}× ≤ {RATIO_TARGET:.0f}× the bare append"),
        (ingest >= INGEST_TARGET, f"ingest {ingest:,.0f} ≥ {INGEST_TARGET:,} points/s"),
    ]
    table = "\n".join(["| measurement | figure | ratio |", "|---|---|---|"]
                      + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    verdicts = "\n".join(f"- {'met' if ok else 'MISSED'}: {text}" for ok, text in checks)
    report = (f"## Logging hot path and embedded-store ingest (`bench_logging.py`)\n\n"
              f"Machine: {machine()}. Median of {rounds} rounds of {calls:,} calls.\n\n"
              f"{table}\n\nTargets:\n{verdicts}\n")
    print(report)
    if not args.quick:
        write_section("bench_logging", report)
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
