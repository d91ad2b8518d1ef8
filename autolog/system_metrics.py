"""System metrics: CPU, memory, disk, network and GPU use, sampled by one background thread
per process ("autolog-system-metrics") into every open run of the process, on by default
(as W&B and ClearML do; MLflow only on request), under MLflow's own names, so that MLflow's
UI shows them in its System metrics tab.

A sample (MLflow's names and units; a megabyte is 10**6 bytes, as MLflow's):

- ``system/cpu_utilization_percentage`` (all cores, since the previous sample),
  ``system/system_memory_usage_megabytes``, ``system/system_memory_usage_percentage``;
- ``system/disk_usage_percentage``, ``system/disk_usage_megabytes``,
  ``system/disk_available_megabytes``: the file system of ``/``;
- ``system/network_receive_megabytes``, ``system/network_transmit_megabytes``: cumulative
  since the sampler started (with the first run opened while none was open);
- autolog's additions, in the same style: ``system/disk_read_megabytes`` and
  ``system/disk_write_megabytes``, cumulative since the sampler started;
- per GPU this process can see (``CUDA_VISIBLE_DEVICES``, see :func:`visible_devices`),
  numbered as its ``cuda:<i>``: ``system/gpu_<i>_utilization_percentage``,
  ``_memory_usage_megabytes``, ``_memory_usage_percentage``, ``_power_usage_watts``,
  ``_power_usage_percentage``, read through NVML (``nvidia-ml-py``, imported in the thread,
  never by ``import autolog``). No NVML driver: no GPU metrics and nothing said (the CPU
  machine's normal case); an NVML call that fails skips that one metric (a GPU whose
  handle NVML cannot give, that GPU alone).

Each value is one ``psutil`` (or NVML) call: no subprocess, no scan of processes. Values
are rounded to 0.1 as MLflow rounds them (the network's are not, as in MLflow).

When: every ``interval`` seconds (10 by default; ``autolog(system_metrics={"interval":
5})``, else MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) while a run of this
process is open, the first one interval after the thread started. Each run gets each
sample at steps 0, 1, 2... of its own; a resumed run (``start_run(run_id=...)``)
continues after the largest step of its series, as MLflow's ``resume_logging`` (looked up
in the thread). With no run open the thread ends; the next run starts it again. A run
that ends gets no more samples; a sample goes into a run whole or not at all
(:meth:`~autolog.run.Run.log_sample`: one racing the end is dropped for that run), so every
key of a sample has its step.

Off: ``autolog(system_metrics=False)``, ``autolog(disable=True)`` (both stop the thread
now), ``AUTOLOG_DISABLE=system`` or MLflow's ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``
(read as each run starts). Turned on again (``autolog()`` after ``autolog(disable=True)``),
it samples the runs started from then on: runs that were open when it stopped get no more
samples. Likewise a new ``interval`` applies from the next run's start.

Distributed training, one sampler per node: only the process of local rank 0
(``LOCAL_RANK``, which torchrun, Lightning, accelerate and DeepSpeed set, else
``SLURM_LOCALID``) samples; the other local ranks never do, even into runs of their own.
On several nodes the names are ``system/node_<n>/...`` (``n``: ``GROUP_RANK``, else
``NODE_RANK``, else ``SLURM_NODEID``), or ``system/<id>/...`` with MLflow's
``MLFLOW_SYSTEM_METRICS_NODE_ID`` (MLflow's layout). A node leader that is not global
rank 0 has no run of its own (the integrations log from rank 0 only): when the launcher
gave the job a run (``MLFLOW_RUN_ID``), ``autolog()`` attaches this process's sampler to
it (:func:`attach`). The run is read, not resumed: this process never sets its status and
never ends it, at exit neither (an ``attached`` :class:`~autolog.run.Run`, which
:func:`autolog.lifecycle.shutdown` leaves alone); its points are written, or spooled at
exit, as any run's. Ending it is rank 0's, or the launcher's.

A node leader samples the GPUs its own ``CUDA_VISIBLE_DEVICES`` shows, not the node's: where
each task is bound to one GPU (SLURM ``--gpus-per-task=1``, a Kubernetes pod per GPU), the
node's other GPUs are not recorded.

The thread never raises into the user; it stops before the writer closes at exit
(:func:`autolog.lifecycle.shutdown`), and a forked child starts with none (its parent's
runs stay the parent's to sample).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autolog.config import disabled_names, env_float, launcher_run_id, settings, warn_from_thread
from autolog.run import Run
from autolog.stores.base import Store
from autolog.validation import check_metric_key

DISABLE_NAME = "system"  # its name in AUTOLOG_DISABLE
DEFAULT_INTERVAL_S = 10.0
OPTIONS = {"interval": DEFAULT_INTERVAL_S}  # autolog(system_metrics={...}) and defaults
PREFIX = "system/"
_MB = 1e6
_JOIN_TIMEOUT_S = 2.0  # how long stop() waits for a sample in progress


# -- options and environment -------------------------------------------------------------------


def check_options(option: bool | dict | None) -> dict | None:
    """``autolog(system_metrics=...)``: None or True (defaults), False (off, None here), or a
    dict of :data:`OPTIONS`; refused here, at ``autolog()``'s line, when it cannot work."""
    if option is None or option is True:
        return {}
    if option is False:
        return None
    if not isinstance(option, dict):
        raise TypeError(f"autolog(system_metrics=...) takes True, False or a dict of options, "
                        f"got {option!r}")
    unknown = sorted(set(option) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for system_metrics; it takes: "
                        f"{', '.join(sorted(OPTIONS))}")
    if "interval" in option:
        _check_interval(option["interval"], "system_metrics interval")
    return dict(option)


def _check_interval(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (0 < value < math.inf):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Plan:
    """How this process samples, read from the environment as a run starts."""

    prefix: str
    interval: float


_options: dict | None = {}  # autolog()'s: None when off


def configure(options: dict | None) -> None:
    """Set by ``autolog()``: the checked options (:func:`check_options`), or None to stop
    sampling now (the thread ends; runs open now get no more samples)."""
    global _options
    _options = options
    if options is None:
        _sampler.stop()


def plan() -> Plan | None:
    """How this process samples into the run about to start, or None when it does not
    (opted out, or not local rank 0). Called before the run is created: a bad
    ``MLFLOW_SYSTEM_METRICS_*`` value raises :class:`ValueError` at the run's start line,
    and no run is left behind."""
    if _options is None or not _sampling_here():
        return None
    if "interval" in _options:
        interval = float(_options["interval"])
    else:
        interval = _check_interval(
            env_float("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", DEFAULT_INTERVAL_S),
            "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    prefix = metrics_prefix(os.environ)
    check_metric_key(f"{prefix}cpu_utilization_percentage")  # MLFLOW_SYSTEM_METRICS_NODE_ID
    return Plan(prefix, interval)


def _sampling_here() -> bool:
    """Not opted out (``AUTOLOG_DISABLE``, MLflow's switch) and local rank 0."""
    disabled = disabled_names()
    if DISABLE_NAME in disabled or "all" in disabled:
        return False
    switch = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    return switch not in ("false", "0", "no", "off") and _local_rank(os.environ) == 0


def _env_int(environ: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` set to an integer."""
    for name in names:
        try:
            return int(environ.get(name, "").strip())
        except ValueError:
            continue
    return None


def _local_rank(environ: Mapping[str, str]) -> int:
    return _env_int(environ, "LOCAL_RANK", "SLURM_LOCALID") or 0


def metrics_prefix(environ: Mapping[str, str]) -> str:
    """``system/``, or on several nodes ``system/node_<n>/`` (or ``system/<id>/`` with
    ``MLFLOW_SYSTEM_METRICS_NODE_ID``), from a launcher's environment (see the module doc)."""
    node_id = environ.get("MLFLOW_SYSTEM_METRICS_NODE_ID", "").strip()
    if node_id:
        return f"{PREFIX}{node_id}/"
    node = _env_int(environ, "GROUP_RANK", "NODE_RANK", "SLURM_NODEID")
    world = _env_int(environ, "WORLD_SIZE")
    local_world = _env_int(environ, "LOCAL_WORLD_SIZE")
    several = (node or 0) > 0 or (_env_int(environ, "SLURM_NNODES") or 1) > 1 or (
        world is not None and local_world is not None and world > local_world)
    if not several:
        return PREFIX
    if node is None:  # torchrun numbers the ranks node after node
        node = (_env_int(environ, "RANK") or 0) // max(local_world or 1, 1)
    return f"{PREFIX}node_{node}/"


def launcher_run_to_attach() -> str | None:
    """The launcher's run (``MLFLOW_RUN_ID``) when this process leads a node but is not
    global rank 0 (``RANK``, else ``SLURM_PROCID``): its sampler logs into that run (see
    :func:`attach`); None otherwise."""
    run_id = launcher_run_id()
    if run_id is None or _options is None or not _sampling_here():
        return None
    rank = _env_int(os.environ, "RANK", "SLURM_PROCID")
    return run_id if rank is not None and rank > 0 else None


# -- which GPUs ----------------------------------------------------------------------------------


def visible_devices(spec: str | None, gpus: Sequence[str], others: Sequence[str] = ()) -> list[int]:
    """The devices ``CUDA_VISIBLE_DEVICES=spec`` lets this process see, in its ``cuda:<i>``
    order: indices into ``gpus + others``, where ``gpus`` are NVML's GPU UUIDs in NVML's
    order (the integer entries index them) and ``others`` MIG instances' UUIDs.

    As CUDA reads it: unset (None) is every GPU; an empty value none; an entry is an
    integer or a UUID (``GPU-…``, ``MIG-…``), or a prefix of one that names a single
    device; the list ends at the first entry that is none of these (so ``-1``: none) or
    names a device twice. Integers are NVML's (PCI bus) order, which is CUDA's with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``."""
    if spec is None:
        return list(range(len(gpus)))
    uuids = [*gpus, *others]
    found: list[int] = []
    for entry in (part.strip() for part in spec.split(",")):
        if entry.isdigit():
            index = int(entry) if int(entry) < len(gpus) else None
        elif entry.startswith(("GPU-", "MIG-")):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
            index = matches[0] if len(matches) == 1 else None
        else:
            index = None
        if index is None or index in found:
            break
        found.append(index)
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _open_gpus() -> tuple[Any, list[Any]]:
    """NVML and the handles of the GPUs this process sees (see :func:`visible_devices`),
    in its ``cuda:<i>`` order, None for a GPU NVML gives no handle for (skipped, the
    others keep their numbers); (None, []) without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no driver: the CPU machine's normal case
        return None, []
    try:
        handles = [_gpu_handle(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
        spec = os.environ.get("CUDA_VISIBLE_DEVICES")
        if spec is None:
            return pynvml, handles
        uuids = [_gpu_uuid(pynvml, handle) for handle in handles]
        migs = _mig_handles(pynvml, [handle for handle in handles if handle is not None]) \
            if "MIG-" in spec else []
        candidates = handles + migs
        others = [_text(pynvml.nvmlDeviceGetUUID(handle)) for handle in migs]
        return pynvml, [candidates[i] for i in visible_devices(spec, uuids, others)]
    except Exception:  # noqa: BLE001 - NVML answers but not about its GPUs: none then
        pynvml.nvmlShutdown()
        return None, []


def _gpu_handle(pynvml: Any, index: int) -> Any:
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except pynvml.NVMLError:  # that GPU alone (lost, or not this process's to read)
        return None


def _gpu_uuid(pynvml: Any, handle: Any) -> str:
    """The GPU's UUID; "" (which no ``CUDA_VISIBLE_DEVICES`` UUID names) when unknown."""
    try:
        return "" if handle is None else _text(pynvml.nvmlDeviceGetUUID(handle))
    except pynvml.NVMLError:
        return ""


def _mig_handles(pynvml: Any, gpus: list[Any]) -> list[Any]:
    found = []
    for gpu in gpus:
        try:
            slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu)
        except pynvml.NVMLError:
            continue
        for slot in range(slots):
            try:
                found.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot))
            except pynvml.NVMLError:  # an empty slot
                continue
    return found


# -- sampling ------------------------------------------------------------------------------------


class Collector:
    """Reads one sample (see the module doc); made, and used, in the sampler thread."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        psutil.cpu_percent()  # primes it: its first value, against nothing, would be 0.0
        network, disk = self._read(psutil.net_io_counters), self._read(psutil.disk_io_counters)
        self._network0 = (network.bytes_recv, network.bytes_sent) if network else None
        self._disk0 = (disk.read_bytes, disk.write_bytes) if disk else None
        self._nvml, self._gpus = _open_gpus()

    @staticmethod
    def _read(call, *args) -> Any:
        try:
            return call(*args)
        except Exception:  # noqa: BLE001 - one failed reading skips its metrics
            return None

    def sample(self) -> dict[str, float]:
        psutil, read, values = self._psutil, self._read, {}
        cpu = read(psutil.cpu_percent)
        if cpu is not None:
            values["cpu_utilization_percentage"] = round(cpu, 1)
        memory = read(psutil.virtual_memory)
        if memory is not None:
            values["system_memory_usage_megabytes"] = round(memory.used / _MB, 1)
            values["system_memory_usage_percentage"] = round(memory.used / memory.total * 100, 1)
        disk = read(psutil.disk_usage, os.sep)
        if disk is not None:
            values["disk_usage_percentage"] = round(disk.percent, 1)
            values["disk_usage_megabytes"] = round(disk.used / _MB, 1)
            values["disk_available_megabytes"] = round(disk.free / _MB, 1)
        network = read(psutil.net_io_counters) if self._network0 else None
        if network is not None:
            values["network_receive_megabytes"] = (network.bytes_recv - self._network0[0]) / _MB
            values["network_transmit_megabytes"] = (network.bytes_sent - self._network0[1]) / _MB
        io = read(psutil.disk_io_counters) if self._disk0 else None
        if io is not None:
            values["disk_read_megabytes"] = round((io.read_bytes - self._disk0[0]) / _MB, 1)
            values["disk_write_megabytes"] = round((io.write_bytes - self._disk0[1]) / _MB, 1)
        for index, handle in enumerate(self._gpus):
            if handle is not None:
                self._sample_gpu(f"gpu_{index}_", handle, values)
        return values

    def _sample_gpu(self, name: str, handle: Any, values: dict[str, float]) -> None:
        nvml, read = self._nvml, self._read
        memory = read(nvml.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            values[f"{name}memory_usage_megabytes"] = round(memory.used / _MB, 1)
            if memory.total:
                values[f"{name}memory_usage_percentage"] = round(memory.used / memory.total * 100, 1)
        utilization = read(nvml.nvmlDeviceGetUtilizationRates, handle)
        if utilization is not None:
            values[f"{name}utilization_percentage"] = float(utilization.gpu)
        power = read(nvml.nvmlDeviceGetPowerUsage, handle)  # milliwatts
        if power is not None:
            values[f"{name}power_usage_watts"] = round(power / 1000, 1)
            limit = read(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            if limit:
                values[f"{name}power_usage_percentage"] = round(power / limit * 100, 1)

    def close(self) -> None:
        if self._nvml is not None:
            self._read(self._nvml.nvmlShutdown)


@dataclass
class _Series:
    """A run's place in the sampler: its next step, or (resumed, attached) None until the
    thread has looked up the largest step of ``key``, a metric of this series in the run."""

    next_step: int | None
    key: str | None = None


def _series(existing_keys: Sequence[str], prefix: str) -> _Series:
    """Where a run's series starts: at 0, or after the steps of one of its keys already in
    the run (all keys of a sample share its step): the CPU's, else any of this node's
    (``system/cpu_…``, not ``system/node_1/cpu_…``)."""
    own = [key for key in existing_keys if key.startswith(prefix) and "/" not in key[len(prefix):]]
    cpu = f"{prefix}cpu_utilization_percentage"
    key = cpu if cpu in own else min(own, default=None)
    return _Series(0 if key is None else None, key)


class Sampler:
    """The one sampler thread of the process and the runs it logs into."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[Run, _Series] = {}
        self._to_attach: list[tuple[Store, str]] = []
        self._plan = Plan(PREFIX, DEFAULT_INTERVAL_S)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    def watch(self, run: Run, plan: Plan, existing_keys: Sequence[str] = ()) -> None:
        """Log samples into ``run`` from now on; ``existing_keys``: a resumed run's metrics."""
        series = _series(existing_keys, plan.prefix)
        with self._lock:
            if self._closed:
                return
            self._drop_ended()  # not kept alive until the thread's next wake
            self._runs[run] = series
            thread = self._new_thread(plan)
        if thread is not None:
            thread.start()

    def attach(self, store: Store, run_id: str, plan: Plan) -> None:
        """Log samples into ``run_id`` of ``store`` without owning it (see the module doc);
        the thread reads the run. Once per run id."""
        with self._lock:
            known = {run.id for run in self._runs} | {pending for _, pending in self._to_attach}
            if self._closed or run_id in known:
                return
            self._to_attach.append((store, run_id))
            thread = self._new_thread(plan)
        if thread is not None:
            thread.start()

    def _new_thread(self, plan: Plan) -> threading.Thread | None:
        """Under the lock: the thread for the caller to start once it has released the
        lock (``stop``, which SIGTERM's shutdown calls, must never wait for ``start``),
        or None when there is one already."""
        self._plan = plan
        if self._thread is not None:
            return None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(self._stop,),
                                        name="autolog-system-metrics", daemon=True)
        return self._thread

    def _drop_ended(self) -> None:
        self._runs = {run: series for run, series in self._runs.items() if run.final_status is None}

    def stop(self, final: bool = False) -> None:
        """Stop sampling now and wait for a sample in progress; ``final`` (at exit): for
        good."""
        with self._lock:
            self._closed = self._closed or final
            thread, stop = self._thread, self._stop
            self._thread = None
            self._runs.clear()
            self._to_attach.clear()
        stop.set()
        # Not alive: not started yet (it will see ``stop`` and sample nothing), or done.
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(_JOIN_TIMEOUT_S)

    def after_fork_in_child(self) -> None:
        """A forked child starts with no thread and no runs (see the module doc)."""
        self._lock = threading.Lock()
        self._runs = {}
        self._to_attach = []
        self._thread = None
        self._stop = threading.Event()

    # -- the thread ------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        try:
            collector = Collector()
        except Exception as exc:  # noqa: BLE001 - never into the user
            warn_from_thread(f"system metrics not logged: {type(exc).__name__}: {exc}")
            self._end_thread(stop)
            return
        try:
            started = time.monotonic()
            while not stop.wait(max(started + self._plan.interval - time.monotonic(), 0)):
                started = time.monotonic()
                runs = self._runs_now(stop)
                if runs is None:
                    return
                timestamp = int(time.time() * 1000)
                values = collector.sample()
                for run, series in runs:
                    self._publish(run, series, values, timestamp)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: said once, the user's run goes on
            warn_from_thread(f"system metrics stopped: {type(exc).__name__}: {exc}")
            self._end_thread(stop)
        finally:
            collector.close()

    def _runs_now(self, stop: threading.Event) -> list[tuple[Run, _Series]] | None:
        """The open runs to log this sample into; None when the thread is to end (none
        open, or stopped)."""
        with self._lock:
            to_attach, self._to_attach = self._to_attach, []
        for store, run_id in to_attach:
            self._attach_now(store, run_id, stop)
        with self._lock:
            if stop.is_set():
                return None
            self._drop_ended()
            if not self._runs:
                self._thread = None  # a run started from now on starts a new thread
                return None
            return list(self._runs.items())

    def _attach_now(self, store: Store, run_id: str, stop: threading.Event) -> None:
        try:
            record = store.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - the store's error, said
            warn_from_thread(f"system metrics not logged into the launcher's run {run_id}: "
                             f"{type(exc).__name__}: {exc}")
            return
        run = Run(store, record.info, settings.on_conflict, attached=True)
        series = _series(list(record.metrics), self._plan.prefix)
        with self._lock:
            if not stop.is_set():
                self._runs[run] = series

    def _publish(self, run: Run, series: _Series, values: dict[str, float], timestamp: int) -> None:
        """One sample into one run, at its next step, whole; dropped if the run ended
        meanwhile (see :meth:`~autolog.run.Run.log_sample`)."""
        if series.next_step is None:
            series.next_step = self._step_after(run, series.key)
        prefix, step = self._plan.prefix, series.next_step
        try:
            run.log_sample({prefix + key: value for key, value in values.items()}, step, timestamp)
        except RuntimeError:  # the run ended since _runs_now (its queues refuse points)
            return
        series.next_step = step + 1

    @staticmethod
    def _step_after(run: Run, key: str | None) -> int:
        """After the largest step of ``key`` in the store, as MLflow's ``resume_logging``
        (0 when the store cannot say, as MLflow). A history is read: the store's latest
        metrics (:class:`~autolog.stores.base.RunRecord`) hold no steps."""
        try:
            history = run.store.get_metric_history(run.id, key) if key is not None else []
            return 1 + max((point.step for point in history), default=-1)
        except Exception:  # noqa: BLE001 - MLflow starts at 0 then too
            return 0

    def _end_thread(self, stop: threading.Event) -> None:
        with self._lock:
            if self._stop is stop:
                self._thread = None
                self._runs.clear()


_sampler = Sampler()


def watch(run: Run, plan: Plan | None, existing_keys: Sequence[str] = ()) -> None:
    """Sample into ``run`` (just started, or resumed with ``existing_keys``) when ``plan``
    (:func:`plan`, read before the run was created) says this process samples."""
    if plan is not None:
        _sampler.watch(run, plan, existing_keys)


def attach(store: Store, run_id: str) -> None:
    """A node leader's sampler logs into the launcher's run (see the module doc)."""
    sampling = plan()
    if sampling is not None:
        _sampler.attach(store, run_id, sampling)


def stop(final: bool = False) -> None:
    _sampler.stop(final)


def after_fork_in_child() -> None:
    _sampler.after_fork_in_child()
