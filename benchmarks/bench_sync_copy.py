"""Memory and time of ``autolog sync --from A --to B`` on one large run, embedded→embedded.

    python benchmarks/bench_sync_copy.py              # 2,000,000 points
    python benchmarks/bench_sync_copy.py --points N

It fills a source store with one run of N points (one key, in 50,000-point batches),
then runs, each in a fresh interpreter so that each peak is its own: the first copy
into an empty store, the re-sync with nothing new, and a re-sync after one more point
(the key is then compared point by point, holding the copy's points of that key). For
each it prints the wall time and the peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and checks the copy holds every point.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASE = """
import resource, sys, time
from autolog.sync import copy_between
started = time.perf_counter()
report = copy_between(sys.argv[1], sys.argv[2], progress=False)
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(report.points, f"{seconds:.2f}", f"{peak_mib:.0f}")
"""

BASELINE = """
import resource
import autolog.sync
print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
"""


def fill(uri: str, points: int) -> None:
    from autolog.stores.sqlite import SQLiteStore

    store = SQLiteStore(uri)
    experiment = store.get_or_create_experiment("bench")
    run = store.create_run(experiment.experiment_id, "large", 1, {})
    for start in range(0, points, 50_000):
        store.log_batch(run.run_id, metrics=[
            ("loss", step / 3, 1_000 + step, step) for step in range(start, min(start + 50_000, points))])
    store.update_run(run.run_id, "FINISHED", 2)
    store.close()


def add_one(uri: str, points: int) -> None:
    """One more point: the key's counts now differ, so it is compared point by point."""
    from autolog.stores.sqlite import SQLiteStore

    store = SQLiteStore(uri)
    (run,) = store.search_runs([e.experiment_id for e in store.list_experiments()])
    store.log_batch(run.run_id, metrics=[("loss", points / 3, 1_000 + points, points)])
    store.close()


def phase(source: str, dest: str) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, "-c", PHASE, source, dest], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=2_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, dest = f"sqlite:///{Path(tmp) / 'source.db'}", f"sqlite:///{Path(tmp) / 'dest.db'}"
        started = time.perf_counter()
        fill(source, args.points)
        print(f"source: {args.points:,} points in one run, written in "
              f"{time.perf_counter() - started:.1f} s")
        baseline = subprocess.run([sys.executable, "-c", BASELINE], check=True,
                                  capture_output=True, text=True).stdout.strip()
        print(f"interpreter with autolog.sync imported: {baseline} MiB peak RSS")
        for name in ("first copy", "re-sync, nothing new", "re-sync after 1 new point"):
            if name.endswith("new point"):
                add_one(source, args.points)
            points, seconds, peak = phase(source, dest)
            print(f"{name}: {points:,} points copied in {seconds:.1f} s, peak RSS {peak:.0f} MiB")
        from autolog.stores.sqlite import SQLiteStore

        copied = SQLiteStore(dest, create=False)
        (run,) = copied.search_runs([e.experiment_id for e in copied.list_experiments()])
        held = copied.metric_counts(run.run_id)
        assert held == {"loss": args.points + 1}, held
        print(f"checked: the copy holds {held['loss']:,} points")


if __name__ == "__main__":
    main()
