"""autolog against an MLflow tracking server, beside MLflow's own client, in one run.

    python benchmarks/bench_rest.py            # full run, rewrites its RESULTS.md section
    python benchmarks/bench_rest.py --quick    # smaller sizes, prints only

The script starts one local ``mlflow server`` (SQLite backend store, temp dir) and
measures, against it:

* autolog's end-to-end ingest: ``autolog.log_metric`` for every point, then the time
  until the server has acknowledged them all (the spool drained), in points/s;
* raw ``MlflowClient.log_batch`` with 1,000 metrics per call on the same number of
  points (the fastest MLflow's client can send); two rounds of each, in the order raw,
  autolog, autolog, raw;
* ``mlflow.log_metric`` synchronous and ``synchronous=False`` on a sample of a few
  thousand calls (each takes milliseconds), µs per call;
* autolog's hot path while the server is down (killed): median µs per
  ``autolog.log_metric`` over rounds of 200,000 calls.

Every point count is checked on the server with ``MlflowClient.get_metric_history``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, mlflow_log_metric_us, publish  # noqa: E402

THROUGHPUT_RATIO_TARGET = 0.8
HOT_PATH_TARGET_US = 2.0
BATCH = 1000


@contextmanager
def mlflow_server(workdir: Path):
    """A local MLflow server; yields (uri, kill) where kill() stops it with SIGKILL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AUTOLOG_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(workdir / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"sqlite:///{workdir / 'mlflow.db'}", "--artifacts-destination",
             str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill() -> None:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start; see {workdir / 'server.log'}")
            time.sleep(0.1)
        yield uri, kill
    finally:
        kill()


def stored(uri: str, run_id: str, key: str) -> int:
    import mlflow

    return len(mlflow.MlflowClient(uri).get_metric_history(run_id, key))


def raw_log_batch(uri: str, points: int) -> float:
    """Seconds for MlflowClient.log_batch, BATCH metrics per call, entities built per call."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench/raw") or client.get_experiment(
        client.create_experiment("bench/raw"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    started = time.perf_counter()
    for first in range(0, points, BATCH):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric("loss", 0.5, now, step)
                                          for step in range(first, min(first + BATCH, points))])
    elapsed = time.perf_counter() - started
    assert stored(uri, run_id, "loss") == points
    return elapsed


def autolog_ingest(uri: str, points: int) -> float:
    """Seconds from the first log_metric until the server acknowledged the last point."""
    import autolog

    autolog.set_tracking_uri(uri)
    with autolog.start_run(run_name="ingest", experiment="bench/autolog") as run:
        log_metric = autolog.log_metric
        started = time.perf_counter()
        for step in range(points):
            log_metric("loss", 0.5, step)
        assert autolog.flush(timeout=600), "the server did not acknowledge every point"
        elapsed = time.perf_counter() - started
    assert run.store.wait_until_sent(60)
    assert stored(uri, run.id, "loss") == points
    return elapsed


def mlflow_per_call_us(uri: str, calls: int, synchronous: bool) -> float:
    per_call, run_id = mlflow_log_metric_us(uri, "bench/mlflow-fluent", calls, synchronous)
    assert stored(uri, run_id, "loss") == calls
    return per_call


def hot_path_server_down_us(uri: str, calls: int, rounds: int) -> float:
    import warnings

    import autolog

    autolog.set_tracking_uri(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autolog.AutologWarning)  # "started offline"
        with autolog.start_run(run_name="hot-path", experiment="bench/down") as run:
            assert run.id.startswith("offline-")
            log_metric = autolog.log_metric
            samples = []
            for _ in range(rounds):
                started = time.perf_counter()
                for step in range(calls):
                    log_metric("loss", 0.5, step)
                samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; print only")
    args = parser.parse_args()
    points = 20_000 if args.quick else 100_000
    sync_calls, async_calls = (300, 1000) if args.quick else (2000, 5000)
    calls, rounds = (50_000, 3) if args.quick else (200_000, 7)

    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp:
        workdir = Path(tmp)
        os.environ["AUTOLOG_SPOOL_DIR"] = str(workdir / "spool")
        os.environ["AUTOLOG_EXIT_TIMEOUT"] = "1"
        with mlflow_server(workdir) as (uri, kill):
            # A B B A: the server slows a little as its tables grow; neither side gains.
            raw_s = raw_log_batch(uri, points)
            ours_s = autolog_ingest(uri, points) + autolog_ingest(uri, points)
            raw_s += raw_log_batch(uri, points)
            raw, ours = 2 * points / raw_s, 2 * points / ours_s
            sync_us = mlflow_per_call_us(uri, sync_calls, synchronous=True)
            async_us = mlflow_per_call_us(uri, async_calls, synchronous=False)
            kill()
            hot_us = hot_path_server_down_us(uri, calls, rounds)
        from autolog.stores import close_all

        close_all()  # the spool of the offline run is left in the temp dir, which goes

    ratio = ours / raw
    rows = [
        (f"raw `MlflowClient.log_batch`, {BATCH:,} per call, 2 × {points:,} points",
         f"{raw:,.0f} points/s", "1.00×"),
        (f"autolog end-to-end ingest, 2 × {points:,} points, until the server has them",
         f"{ours:,.0f} points/s", f"{ratio:.2f}× raw log_batch"),
        (f"`mlflow.log_metric` sync ({sync_calls:,} calls)", f"{sync_us:,.0f} µs/call",
         f"{sync_us / hot_us:,.0f}× autolog's hot path"),
        (f"`mlflow.log_metric(synchronous=False)` ({async_calls:,} calls)",
         f"{async_us:,.0f} µs/call", f"{async_us / hot_us:,.0f}× autolog's hot path"),
        ("`autolog.log_metric`, server down (hot path)", f"{hot_us:.3f} µs/call", ""),
    ]
    table = "\n".join(["| measurement | figure | ratio |", "|---|---|---|"]
                      + [f"| {a} | {b} | {c} |" for a, b, c in rows])
    verdicts = [
        f"- {'met' if ratio >= THROUGHPUT_RATIO_TARGET else 'MISSED'}: end-to-end ingest "
        f"{ratio:.2f}× ≥ {THROUGHPUT_RATIO_TARGET}× raw log_batch",
        f"- {'met' if hot_us <= HOT_PATH_TARGET_US else 'MISSED'}: hot path with the server "
        f"down {hot_us:.2f} µs ≤ {HOT_PATH_TARGET_US} µs",
    ]
    markdown = "\n".join([
        "## MLflow tracking server over REST (`bench_rest.py`)", "",
        f"Machine: {machine()}. One local `mlflow server` (SQLite backend store, one worker) "
        f"started by the script; hot path: median of {rounds} rounds of {calls:,} calls.", "",
        table, "", "Targets:", *verdicts,
    ])
    publish("bench_rest", markdown, args.quick)


if __name__ == "__main__":
    main()
