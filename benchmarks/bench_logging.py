"""The logging hot path, and ingest into MLflow's own schema, beside MLflow, in one run.

    python benchmarks/bench_logging.py            # full run, rewrites its RESULTS.md section
    python benchmarks/bench_logging.py --quick    # smaller sizes, prints only

In one process (and subprocesses it starts), on one machine:

- the median µs per call of ``autolog.log_metric`` over several rounds of 200,000 calls,
  beside a bare ``list.append((key, value, step, time.time()))`` measured the same way;
- ingest of 1,000,000 points into a new MLflow-schema SQLite file (flush included), beside
  MLflow's ``SqlAlchemyStore.log_batch`` of 1,000 metrics per call on the same kind of file,
  and ``mlflow.log_metric`` sync and ``synchronous=False`` on a sample of a few thousand calls;
- ingest into PostgreSQL (a new database at 127.0.0.1:5432, dropped after) when it answers;
- 16 processes × 20,000 points started at once on one new file: every point stored (counted
  with SQL on MLflow's ``metrics`` table, not with autolog's reading code);
- cold starts, each a new process (median of 5): ``import autolog``; ``start_run()`` +
  ``end_run()`` on an existing store and on a new file; ``autolog runs list``; and MLflow's
  ``start_run()``/``end_run()`` on a SQLite file, with each one's peak RSS.
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
INGEST_TARGET = 100_000
VS_MLFLOW_TARGET = 15.0
POSTGRES_TARGET = 50_000
COLD_START_TARGET_S = 0.5
PROCESSES, PROCESS_POINTS = 16, 20_000


def per_call_us(loop, calls: int, rounds: int, between=None) -> float:
    """Median µs per call; ``between`` runs after each round, untimed (autolog's rounds
    let the writer empty the queue, so a round never meets back-pressure: that is the
    store's pace, measured by the ingest rows)."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        loop(calls)
        samples.append((time.perf_counter() - started) / calls * 1e6)
        if between is not None:
            between()
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


def mlflow_log_batch_rate(workdir: str, points: int) -> float:
    """MLflow's own SQL store, ``log_batch`` of 1,000 metrics a call, on a new SQLite file."""
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{workdir}/mlflow-own.db", f"{workdir}/mlruns")
    run_id = store.create_run("0", "bench", int(time.time() * 1000), [], "log-batch").info.run_id
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for first in range(0, points, 1000):
        store.log_batch(run_id, [Metric("loss", 0.5, now, step) for step in range(first, first + 1000)],
                        [], [])
    elapsed = time.perf_counter() - started
    store.engine.dispose()
    return points / elapsed


def postgres_ingest(points: int) -> float | None:
    """autolog into a new PostgreSQL database; None where PostgreSQL does not answer."""
    import uuid

    try:
        import psycopg
    except ImportError:
        return None
    name = f"autolog_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres",
                                autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        return None
    admin.execute(f"CREATE DATABASE {name}")
    try:
        import autolog

        autolog.set_tracking_uri(f"postgresql://postgres@127.0.0.1:5432/{name}")
        rate = autolog_ingest(points)
        autolog.set_tracking_uri(os.environ["AUTOLOG_TRACKING_URI"])
        from autolog.stores import close_all

        close_all()
        return rate
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


_WRITER = """
import sys, time
import autolog
start_at, index = float(sys.argv[1]), int(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
with autolog.start_run(run_name=f"proc-{index}", experiment="concurrent"):
    for step in range(int(sys.argv[3])):
        autolog.log_metric("loss", step * 0.5, step=step)
"""


def many_processes(workdir: str) -> tuple[int, int, float]:
    """(points stored, processes that exited 0, seconds) for PROCESSES writers at once."""
    import sqlite3
    import subprocess

    db = f"{workdir}/many.db"
    env = {**os.environ, "AUTOLOG_TRACKING_URI": f"sqlite:///{db}"}
    start_at = time.time() + 3.0
    children = [subprocess.Popen([sys.executable, "-c", _WRITER, str(start_at), str(i),
                                  str(PROCESS_POINTS)], env=env) for i in range(PROCESSES)]
    ok = sum(child.wait() == 0 for child in children)
    elapsed = time.time() - start_at
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT COUNT(*) FROM metrics WHERE \"key\" = 'loss'").fetchone()[0]
    conn.close()
    return stored, ok, elapsed


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across exec)
_PEAK = ("print('PEAK', next(line.split()[1] for line in open('/proc/self/status') "
         "if line.startswith('VmHWM')))")


def cold_start(code: list[str], cwd: str, rounds: int = 5) -> tuple[float, float]:
    """Median wall seconds of a new process running ``code`` in ``cwd``, and its peak RSS
    in MiB (the process prints its own)."""
    import subprocess

    times, peaks = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(code, cwd=cwd, capture_output=True, text=True, check=True,
                              env={k: v for k, v in os.environ.items()  # as a new shell's
                                   if k != "AUTOLOG_TRACKING_URI" and not k.startswith("MLFLOW_")})
        times.append(time.perf_counter() - started)
        peaks += [int(line.split()[1]) / 1024 for line in done.stdout.splitlines()
                  if line.startswith("PEAK ")]
    return statistics.median(times), (statistics.median(peaks) if peaks else float("nan"))


def cold_starts(workdir: str) -> list[tuple[str, float, float]]:
    python = sys.executable
    run = f"import autolog; autolog.start_run(); autolog.end_run(); {_PEAK}"
    rows = [("`import autolog`", *cold_start([python, "-c", f"import autolog; {_PEAK}"], workdir))]
    cold = Path(workdir, "cold")
    cold.mkdir()
    first = cold_start([python, "-c", run], str(cold), rounds=1)  # makes ./mlflow.db
    rows.append(("`start_run()` + `end_run()`, new ./mlflow.db (schema template cached)",
                 *first))
    rows.append(("`start_run()` + `end_run()`, existing ./mlflow.db", *cold_start([python, "-c", run],
                                                                                 str(cold))))
    rows.append(("`autolog runs list`", *cold_start(
        [python, "-c", f"import sys; from autolog.cli import main; sys.argv = ['autolog', 'runs', 'list']\n"
         f"try:\n    main()\nexcept SystemExit:\n    pass\n{_PEAK}"], str(cold))))
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return rows
    theirs = Path(workdir, "cold-mlflow")
    theirs.mkdir()
    mlflow_run = f"import mlflow; mlflow.start_run(); mlflow.end_run(); {_PEAK}"
    rows.append(("MLflow `start_run()` + `end_run()`, new ./mlflow.db",
                 *cold_start([python, "-c", mlflow_run], str(theirs), rounds=1)))
    rows.append(("MLflow `start_run()` + `end_run()`, existing ./mlflow.db",
                  *cold_start([python, "-c", mlflow_run], str(theirs))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; do not write RESULTS.md")
    args = parser.parse_args()
    calls, rounds = (50_000, 3) if args.quick else (200_000, 7)
    ingest_points = 100_000 if args.quick else 1_000_000
    mlflow_calls = 300 if args.quick else 3_000
    mlflow_batch_points = 20_000 if args.quick else 100_000

    workdir = tempfile.mkdtemp(prefix="autolog-bench-")
    os.environ["AUTOLOG_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    import autolog

    rows = []
    append_us = per_call_us(bare_append, calls, rounds)
    with autolog.start_run(run_name="hot-path"):
        hot_us = per_call_us(autolog_hot_path, calls, rounds, between=autolog.flush)
    ingest = autolog_ingest(ingest_points)
    rows.append(("bare `list.append((key, value, step, time.time()))`", f"{append_us:.3f} µs/call", "1.0×"))
    rows.append(("`autolog.log_metric` (hot path, writer running)", f"{hot_us:.3f} µs/call",
                 f"{hot_us / append_us:.1f}× the append"))
    rows.append((f"autolog ingest into MLflow-schema SQLite, {ingest_points:,} points, flush included",
                 f"{ingest:,.0f} points/s", ""))
    checks = [
        (hot_us <= HOT_PATH_TARGET_US, f"hot path {hot_us:.2f} µs ≤ {HOT_PATH_TARGET_US} µs"),
        (hot_us / append_us <= RATIO_TARGET,
         f"hot path {hot_us / append_us:.1f}× ≤ {RATIO_TARGET:.0f}× the bare append"),
        (ingest >= INGEST_TARGET, f"SQLite ingest {ingest:,.0f} ≥ {INGEST_TARGET:,} points/s"),
    ]
    try:
        import mlflow  # noqa: F401
    except ImportError:
        print("mlflow is not installed: skipping its figures")
    else:
        batch_rate = mlflow_log_batch_rate(workdir, mlflow_batch_points)
        rows.append((f"MLflow `SqlAlchemyStore.log_batch`, 1,000 metrics a call, SQLite "
                     f"({mlflow_batch_points:,} points)", f"{batch_rate:,.0f} points/s",
                     f"autolog {ingest / batch_rate:,.1f}×"))
        checks.append((ingest / batch_rate >= VS_MLFLOW_TARGET, f"SQLite ingest {ingest / batch_rate:.1f}× "
                       f"≥ {VS_MLFLOW_TARGET:.0f}× MLflow's log_batch"))
        sync_us = mlflow_per_call_us(workdir, mlflow_calls, synchronous=True)
        async_us = mlflow_per_call_us(workdir, mlflow_calls * 3, synchronous=False)
        rows.append((f"`mlflow.log_metric` sync, SQLite URI ({mlflow_calls:,} calls)",
                     f"{sync_us:,.0f} µs/call", f"{sync_us / hot_us:,.0f}× autolog's hot path"))
        rows.append((f"`mlflow.log_metric(synchronous=False)` ({mlflow_calls * 3:,} calls)",
                     f"{async_us:,.0f} µs/call", f"{async_us / hot_us:,.0f}× autolog's hot path"))
    postgres = postgres_ingest(ingest_points // 2)
    if postgres is None:
        rows.append(("autolog ingest into PostgreSQL", "not measured: no PostgreSQL at 127.0.0.1:5432", ""))
    else:
        rows.append((f"autolog ingest into PostgreSQL, {ingest_points // 2:,} points, flush included",
                     f"{postgres:,.0f} points/s", ""))
        checks.append((postgres >= POSTGRES_TARGET,
                       f"PostgreSQL ingest {postgres:,.0f} ≥ {POSTGRES_TARGET:,} points/s"))
    stored, ok, elapsed = many_processes(workdir)
    expected = PROCESSES * PROCESS_POINTS
    rows.append((f"{PROCESSES} processes × {PROCESS_POINTS:,} points at once, one new file",
                 f"{stored:,} of {expected:,} stored, {ok} of {PROCESSES} exited 0, {elapsed:.1f} s", ""))
    checks.append((stored == expected and ok == PROCESSES,
                   f"{PROCESSES} processes: every point stored ({stored:,} of {expected:,})"))
    starts = cold_starts(workdir)
    start_table = "\n".join(["| new process | wall (median) | peak RSS |", "|---|---|---|"]
                             + [f"| {what} | {seconds:.2f} s | {peak:.0f} MiB |"
                                for what, seconds, peak in starts])
    for what, seconds, _ in starts:
        if not what.startswith("MLflow"):
            checks.append((seconds <= COLD_START_TARGET_S,
                           f"cold start {what}: {seconds:.2f} s ≤ {COLD_START_TARGET_S} s"))

    table = "\n".join(["| measurement | figure | ratio |", "|---|---|---|"]
                      + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    verdicts = "\n".join(f"- {'met' if ok else 'MISSED'}: {text}" for ok, text in checks)
    report = (f"## Logging hot path and ingest into MLflow's schema (`bench_logging.py`)\n\n"
              f"Machine: {machine()}. Median of {rounds} rounds of {calls:,} calls.\n\n"
              f"{table}\n\nCold starts:\n\n{start_table}\n\nTargets:\n{verdicts}\n")
    print(report)
    if not args.quick:
        write_section("bench_logging", report)
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
