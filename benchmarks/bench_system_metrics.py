"""What sampling system metrics costs: autolog's sampler beside MLflow's own
``SystemMetricsMonitor``, as CPU time per sample and as a share of one core at the
default interval (10 s; autolog's target: at most 0.1 %).

    python benchmarks/bench_system_metrics.py            # full run, rewrites its RESULTS.md section
    python benchmarks/bench_system_metrics.py --quick    # shorter windows, prints only

Method: each sampler runs at a short interval to collect many samples quickly, into a run
in an SQLite store in a temp dir; its cost per sample is then scaled to the 10 s interval
(the work per sample does not depend on the interval).

* Sampler thread: the CPU time of the sampling thread itself (its own CPU clock,
  ``time.pthread_getcpuclockid``: nanoseconds, everything the thread does, waits
  excluded), over a window that starts after its first sample (imports and NVML's start
  excluded), divided by the samples taken in the window. autolog's thread only reads and
  queues the points; MLflow's also reads the run back (``get_run``, each sample) and
  writes the batch, in that thread.
* autolog, whole process: this process's CPU time (``time.process_time``) over a window
  with the sampler on, minus the same window with it off (the run open in both): the
  sampler's thread plus the writer thread's writing of its points, at an interval (0.25 s)
  where the writer (every 0.2 s) writes each sample in a batch of its own, as at 10 s.
  A difference of two process times: noisier than the thread's own clock on a shared
  machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

SECTION = "bench_system_metrics"
DEFAULT_INTERVAL_S = 10.0
SHORT_INTERVAL_S = 0.05  # the thread measurements
WRITER_INTERVAL_S = 0.25  # the whole-process measurement


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds ``thread`` has used so far."""
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def named_thread(name: str) -> threading.Thread:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [thread for thread in threading.enumerate() if thread.name == name]
        if found:
            return found[0]
        time.sleep(0.01)
    raise RuntimeError(f"no thread {name!r}")


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.005)


def per_sample(thread: threading.Thread, samples, window: float) -> tuple[float, int]:
    """CPU seconds of ``thread`` per sample over ``window`` seconds, and the samples;
    ``samples()`` counts the samples taken so far."""
    wait_until(lambda: samples() >= 1)
    cpu0, count0 = thread_cpu(thread), samples()
    time.sleep(window)
    cpu1, count1 = thread_cpu(thread), samples()
    return (cpu1 - cpu0) / (count1 - count0), count1 - count0


def autolog_thread(uri: str, window: float) -> tuple[float, int]:
    import autolog
    from autolog import system_metrics

    autolog.set_tracking_uri(uri)
    autolog.autolog(system_metrics={"interval": SHORT_INTERVAL_S})
    with autolog.start_run(run_name="autolog sampler") as run:
        series = system_metrics._sampler._runs[run]
        result = per_sample(named_thread("autolog-system-metrics"), lambda: series.next_step, window)
    assert autolog.flush()
    return result


def autolog_process(uri: str, window: float) -> tuple[float, int]:
    """Process CPU per sample: a window with the sampler, minus one without."""
    import autolog
    from autolog import system_metrics

    autolog.set_tracking_uri(uri)
    spent = {}
    for label, option in (("off", False), ("on", {"interval": WRITER_INTERVAL_S})):
        autolog.autolog(system_metrics=option)
        with autolog.start_run(run_name=f"process, sampler {label}") as run:
            autolog.log_metric("warmup", 0.0)
            series = system_metrics._sampler._runs.get(run)
            if series is not None:
                wait_until(lambda series=series: series.next_step >= 1)
            started, count0 = time.process_time(), series.next_step if series else 0
            time.sleep(window)
            spent[label] = time.process_time() - started
            samples = (series.next_step - count0) if series else 0
    assert autolog.flush()
    return (spent["on"] - spent["off"]) / samples, samples


def mlflow_thread(uri: str, window: float) -> tuple[float, int]:
    import mlflow
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("mlflow monitor"))
    monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=SHORT_INTERVAL_S, tracking_uri=uri)
    monitor.start()
    try:
        return per_sample(monitor._process, lambda: monitor._logging_step, window)
    finally:
        monitor.finish()


def row(name: str, seconds: float, samples: int) -> str:
    share = seconds / DEFAULT_INTERVAL_S * 100
    return f"| {name} | {seconds * 1e3:.3f} ms | {share:.4f} % | {samples} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows; print only")
    args = parser.parse_args()
    window = 5.0 if args.quick else 20.0
    os.environ.pop("AUTOLOG_DISABLE", None)
    for name in ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as root:
        autolog_uri = f"sqlite:///{Path(root) / 'autolog.db'}"
        mlflow_uri = f"sqlite:///{Path(root) / 'mlflow.db'}"
        ours = autolog_thread(autolog_uri, window)
        process = autolog_process(autolog_uri, window)
        theirs = mlflow_thread(mlflow_uri, window)
    markdown = "\n".join([
        "## System metrics: the sampler's cost",
        "",
        f"Machine: {machine()}. CPU time per sample, measured at a short interval over a "
        f"{window:g} s window and scaled to the default 10 s interval (see the benchmark's "
        "doc for the method). Both sample CPU, memory, disk and network (autolog's sample "
        "also has its two disk-IO values); no GPU on this machine.",
        "",
        "| sampler | CPU per sample | share of one core at 10 s | samples |",
        "|---|---|---|---|",
        row(f"autolog, its thread ({SHORT_INTERVAL_S:g} s interval)", *ours),
        row(f"autolog, whole process: thread + writer ({WRITER_INTERVAL_S:g} s interval)", *process),
        row(f"MLflow SystemMetricsMonitor, its thread ({SHORT_INTERVAL_S:g} s interval)", *theirs),
    ])
    publish(SECTION, markdown, args.quick)


if __name__ == "__main__":
    main()
