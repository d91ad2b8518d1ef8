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

Where CUDA sees a GPU, :func:`gpu_witness` also shows that the GPU metrics are real: a
run idle, then loading ``cuda:0``, its ``system/gpu_0_*`` series read back with MLflow's
client, beside what ``nvidia-smi`` says during the load.
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


GPU_KEYS = ("utilization_percentage", "memory_usage_megabytes", "power_usage_watts")


def gpu_witness(uri: str) -> list[str]:
    """Where CUDA sees a GPU: are the GPU metrics real? A run sampled every 0.5 s, idle for
    3 s, then 6 s of matrix products on ``cuda:0``; its ``system/gpu_0_*`` series are read
    back with MLflow's client, idle samples beside busy ones, and ``nvidia-smi`` asked
    during the load as an independent witness. Lines of markdown (one, without a GPU)."""
    try:
        import torch
    except ImportError:
        return ["GPU metrics: not measured (no torch)."]
    if not torch.cuda.is_available():
        return ["GPU metrics: not measured here (no CUDA device visible)."]
    import mlflow

    import autolog

    autolog.set_tracking_uri(uri)
    autolog.autolog(system_metrics={"interval": 0.5})
    with autolog.start_run(run_name="gpu witness") as run:
        time.sleep(3.0)
        busy_from = time.time() * 1000
        a = torch.randn(8192, 8192, device="cuda")
        smi = None
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            for _ in range(20):
                a = (a @ a).tanh_()
            torch.cuda.synchronize()
            if smi is None and time.monotonic() > deadline - 3.0:
                smi = _nvidia_smi()
        busy_to = time.time() * 1000
    assert autolog.flush()
    client = mlflow.MlflowClient(uri)
    lines = [f"GPU metrics on {torch.cuda.get_device_name(0)}, read back with `MlflowClient`:",
             "", "| metric | idle (mean of the samples before the load) | busy (max during the load) |",
             "|---|---|---|"]
    for key in GPU_KEYS:
        points = client.get_metric_history(run.id, f"system/gpu_0_{key}")
        idle = [p.value for p in points if p.timestamp < busy_from]
        busy = [p.value for p in points if busy_from <= p.timestamp <= busy_to]
        idle_text = f"{sum(idle) / len(idle):.1f}" if idle else "none"
        lines.append(f"| `system/gpu_0_{key}` | {idle_text} | {max(busy) if busy else 'none'} |")
    smi_text = smi or "not available"
    lines += ["", f"`nvidia-smi` during the load (utilization %, memory MiB, power W): {smi_text}."]
    return lines


def _nvidia_smi() -> str | None:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used,power.draw",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


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
        gpu = gpu_witness(f"sqlite:///{Path(root) / 'gpu.db'}")
    markdown = "\n".join([
        "## System metrics: the sampler's cost",
        "",
        f"Machine: {machine()}. CPU time per sample, measured at a short interval over a "
        f"{window:g} s window and scaled to the default 10 s interval (see the benchmark's "
        "doc for the method). Both sample CPU, memory, disk and network (autolog's sample "
        "also has its two disk-IO values; on a GPU machine both add the GPU's, and the "
        "measurement then includes NVML's calls).",
        "",
        "| sampler | CPU per sample | share of one core at 10 s | samples |",
        "|---|---|---|---|",
        row(f"autolog, its thread ({SHORT_INTERVAL_S:g} s interval)", *ours),
        row(f"autolog, whole process: thread + writer ({WRITER_INTERVAL_S:g} s interval)", *process),
        row(f"MLflow SystemMetricsMonitor, its thread ({SHORT_INTERVAL_S:g} s interval)", *theirs),
        "",
        *gpu,
    ])
    publish(SECTION, markdown, args.quick)


if __name__ == "__main__":
    main()
