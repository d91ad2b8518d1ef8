"""System metrics (:mod:`autolog.system_metrics`): MLflow's names in MLflow's databases and
through its server, read back with MLflow's client; steps per run (nested, resumed, ended);
the opt-outs; a forked child; which GPUs; and one sampler per node in a real multi-process
``torch.distributed`` job.

conftest turns system metrics off for the suite (``AUTOLOG_DISABLE=system``); the tests
here turn them on, with a short interval."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import mlflow
import pytest

import autolog
from autolog import system_metrics
from autolog.system_metrics import Collector, metrics_prefix, visible_devices

pytest_plugins = ("mlflow_server", "databases")

INTERVAL = 0.2
TIMEOUT = 150  # a multi-process test, each process importing torch
NAMES = {
    "cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
    "disk_usage_percentage", "disk_usage_megabytes", "disk_available_megabytes",
    "network_receive_megabytes", "network_transmit_megabytes",
    "disk_read_megabytes", "disk_write_megabytes",  # autolog's additions
}
GPU_NAME = re.compile(r"gpu_\d+_(utilization_percentage|memory_usage_megabytes|memory_usage_percentage"
                      r"|power_usage_watts|power_usage_percentage)")
CPU_KEY = "system/cpu_utilization_percentage"


@pytest.fixture
def sampling(monkeypatch):
    """System metrics on, every INTERVAL seconds."""
    monkeypatch.delenv("AUTOLOG_DISABLE")
    autolog.autolog(system_metrics={"interval": INTERVAL})


def client(uri: str | None = None) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(uri or autolog.get_tracking_uri())


def steps(run_id: str, key: str = CPU_KEY, uri: str | None = None) -> list[int]:
    return [point.step for point in client(uri).get_metric_history(run_id, key)]


def wait_for_samples(run_id: str, count: int, uri: str | None = None) -> None:
    deadline = time.monotonic() + 30
    while len(steps(run_id, uri=uri)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} samples in 30 s"
        assert autolog.flush()
        time.sleep(INTERVAL / 2)


def sampler_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "autolog-system-metrics"]


def check_series(uri: str, run_id: str, prefix: str = "system/") -> int:
    """Every metric of the run is one of MLflow's system metrics under ``prefix``, each
    with steps 0, 1, 2... and one timestamp per step; returns how many steps."""
    mlflow_client = client(uri)
    run = mlflow_client.get_run(run_id)
    names = {key.removeprefix(prefix) for key in run.data.metrics}
    assert {key for key in run.data.metrics if not key.startswith(prefix)} == set()
    assert names - NAMES == {name for name in names - NAMES if GPU_NAME.fullmatch(name)}
    assert NAMES <= names
    histories = {key: mlflow_client.get_metric_history(run_id, key) for key in run.data.metrics}
    cpu = histories[prefix + "cpu_utilization_percentage"]
    assert [point.step for point in cpu] == list(range(len(cpu)))
    times = [point.timestamp for point in cpu]
    assert times == sorted(times) and run.info.start_time <= times[0]
    for key, history in histories.items():
        assert [(p.step, p.timestamp) for p in history] == [(p.step, p.timestamp) for p in cpu], key
    for point in histories[prefix + "system_memory_usage_percentage"]:
        assert 0 < point.value <= 100
    return len(cpu)


def test_every_metric_under_mlflows_names_in_each_database(sql_uri, sampling):
    autolog.set_tracking_uri(sql_uri)
    with autolog.start_run() as run:
        wait_for_samples(run.id, 3, sql_uri)
    assert autolog.flush()
    assert check_series(sql_uri, run.id) >= 3
    finished = client(sql_uri).get_run(run.id).info
    assert finished.status == "FINISHED"


def test_through_a_real_mlflow_server(mlflow_server, sampling):
    autolog.set_tracking_uri(mlflow_server.uri)
    with autolog.start_run() as run:
        wait_for_samples(run.id, 3, mlflow_server.uri)
    assert autolog.flush()
    assert check_series(mlflow_server.uri, run.id) >= 3
    assert mlflow_server.refused_log_batches() == []


def test_on_by_default_without_autolog_and_mlflows_interval_variable(store_uri, monkeypatch):
    monkeypatch.delenv("AUTOLOG_DISABLE")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", str(INTERVAL))
    with autolog.start_run() as run:
        wait_for_samples(run.id, 2)
    assert check_series(store_uri, run.id) >= 2


@pytest.mark.parametrize("opt_out", ["keyword", "AUTOLOG_DISABLE", "disable", "MLflow's variable"])
def test_opting_out(store_uri, monkeypatch, opt_out):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", str(INTERVAL))
    if opt_out != "AUTOLOG_DISABLE":
        monkeypatch.delenv("AUTOLOG_DISABLE")
    if opt_out == "keyword":
        autolog.autolog(system_metrics=False)
    elif opt_out == "disable":
        autolog.autolog(disable=True)
    elif opt_out == "MLflow's variable":
        monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    else:
        monkeypatch.setenv("AUTOLOG_DISABLE", "system,torch")
        autolog.autolog()  # "system" is no unknown integration (a warning is an error here)
    with autolog.start_run() as run:
        time.sleep(5 * INTERVAL)
        assert sampler_threads() == []
    assert client().get_run(run.id).data.metrics == {}


def test_disable_stops_the_sampler_of_open_runs(store_uri, sampling):
    with autolog.start_run() as run:
        wait_for_samples(run.id, 1)
        autolog.autolog(disable=True)
        assert sampler_threads() == []
        assert autolog.flush()
        logged = steps(run.id)
        time.sleep(4 * INTERVAL)
    assert steps(run.id) == logged


def test_bad_options_are_refused_at_the_callers_line(store_uri, monkeypatch):
    with pytest.raises(TypeError, match="unknown option.*intervl.*it takes: interval"):
        autolog.autolog(system_metrics={"intervl": 5})
    with pytest.raises(TypeError, match="True, False or a dict"):
        autolog.autolog(system_metrics="on")
    for interval in (0, -1, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="positive number of seconds"):
            autolog.autolog(system_metrics={"interval": interval})
    monkeypatch.delenv("AUTOLOG_DISABLE")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "ten")
    with pytest.raises(ValueError, match="MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        autolog.start_run()
    assert autolog.active_run() is None and autolog.search_runs() == []


def test_nested_runs_each_count_their_own_steps(store_uri, sampling):
    with autolog.start_run() as parent:
        wait_for_samples(parent.id, 2)
        with autolog.start_run(nested=True) as child:
            wait_for_samples(child.id, 2)
    assert autolog.flush()
    assert check_series(store_uri, parent.id) > check_series(store_uri, child.id) >= 2


def test_a_resumed_run_continues_its_steps(store_uri, sampling):
    with autolog.start_run() as run:
        wait_for_samples(run.id, 2)
    assert autolog.flush()
    first = len(steps(run.id))
    with autolog.start_run(run_id=run.id):
        wait_for_samples(run.id, first + 2)
    assert check_series(store_uri, run.id) >= first + 2


def test_an_ended_run_gets_no_more_samples(store_uri, sampling):
    with autolog.start_run() as run:
        wait_for_samples(run.id, 1)
    assert autolog.flush()
    logged = steps(run.id)
    time.sleep(4 * INTERVAL)
    assert steps(run.id) == logged
    assert sampler_threads() == []  # no run open: the thread ended
    # The race: a sample taken as the run ends is dropped for it, without an error.
    series = system_metrics._Series(next_step=len(logged))
    system_metrics._sampler._publish(run, series, {"cpu_utilization_percentage": 1.0}, 0)
    assert series.next_step == len(logged)


def test_a_sample_goes_into_a_run_whole_or_not_at_all(store_uri):
    run = autolog.start_run()

    class EndingSample(dict):
        """The run ends while the sample is being put into it."""

        def items(self):
            yield "cpu_utilization_percentage", 1.0
            run.end()
            yield "disk_usage_percentage", 2.0

    series = system_metrics._Series(next_step=0)
    system_metrics._sampler._publish(run, series, EndingSample(), 1000)
    assert series.next_step == 0
    assert autolog.flush()
    finished = client().get_run(run.id)
    assert finished.info.status == "FINISHED" and finished.data.metrics == {}
    # The queue an ended run has refuses a sample (its extend is deque's), queuing nothing.
    with pytest.raises(RuntimeError, match="has ended"):
        run.log_sample({CPU_KEY: 1.0}, 0, 1000)
    assert len(run.metric_queue) == 0


def test_a_sample_is_checked_before_any_point_is_queued(store_uri):
    with autolog.start_run() as run:
        with pytest.raises(TypeError, match="int or float values"):
            run.log_sample({CPU_KEY: 1.0, "system/disk_usage_percentage": True}, 0, 1000)
        with pytest.raises(ValueError, match="step"):
            run.log_sample({CPU_KEY: 1.0}, 2**63, 1000)
        assert len(run.metric_queue) == 0
        run.log_sample({CPU_KEY: 1.0, "system/disk_usage_percentage": 2.0}, 3, 1000)
    assert autolog.flush()
    assert [(p.key, p.step, p.timestamp) for p in client().get_metric_history(run.id, CPU_KEY)] \
        == [(CPU_KEY, 3, 1000)]


def test_resuming_reads_one_key_and_its_largest_step():
    asked = []

    def history(run_id, key):
        asked.append(key)
        return [SimpleNamespace(step=step) for step in (5, 2, 7, 3)]  # not sorted by step

    run = SimpleNamespace(id="r", store=SimpleNamespace(get_metric_history=history))
    series = system_metrics._series(["loss", "system/node_1/cpu_utilization_percentage",
                                     "system/disk_usage_percentage", CPU_KEY], "system/")
    assert series == system_metrics._Series(None, CPU_KEY)
    assert system_metrics.Sampler._step_after(run, series.key) == 8
    assert asked == [CPU_KEY]
    assert system_metrics._series(["loss"], "system/") == system_metrics._Series(0, None)


def test_ended_runs_are_let_go_at_the_next_watch(store_uri):
    sampler, plan = system_metrics.Sampler(), system_metrics.Plan("system/", 60.0)
    first = autolog.start_run()
    sampler.watch(first, plan)
    first.end()
    with autolog.start_run() as second:
        sampler.watch(second, plan)
        assert list(sampler._runs) == [second]
    sampler.stop()


def test_the_thread_starts_outside_the_lock(store_uri, monkeypatch):
    """SIGTERM's shutdown calls stop(), which takes the lock: it must not be held while a
    thread starts (the window where the signal could arrive)."""
    sampler, plan = system_metrics.Sampler(), system_metrics.Plan("system/", 60.0)
    start, held = threading.Thread.start, []

    def checked_start(thread):
        if thread.name == "autolog-system-metrics":
            held.append(sampler._lock.locked())
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", checked_start)
    with autolog.start_run() as run:
        sampler.watch(run, plan)
        sampler.watch(run, plan)  # a thread already: none started
        sampler.stop()
    assert held == [False]


FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing, time
    import autolog

    autolog.autolog(system_metrics={"interval": 0.2})


    def child(ids):
        with autolog.start_run(nested=True) as run:
            time.sleep(1.0)
        assert autolog.flush()
        ids.put(run.id)


    with autolog.start_run() as parent:
        time.sleep(0.5)
        context = multiprocessing.get_context("fork")
        ids = context.Queue()
        process = context.Process(target=child, args=(ids,))
        process.start()
        child_id = ids.get(timeout=60)
        process.join(60)
        assert process.exitcode == 0, process.exitcode
        time.sleep(0.5)
    print(parent.id, child_id)
""")


def test_a_forked_child_samples_into_its_own_runs_only(store_uri, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "AUTOLOG_DISABLE"}
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    parent_id, child_id = done.stdout.split()
    assert check_series(store_uri, parent_id) >= 4  # no step twice: the child logged none
    assert check_series(store_uri, child_id) >= 2  # the child's own thread sampled


class FakeNvml:
    """Two calls answer, one fails: the failing one's metric alone is skipped."""

    class NVMLError(Exception):
        pass

    @staticmethod
    def nvmlDeviceGetMemoryInfo(handle):  # noqa: N802 - NVML's names
        return type("Memory", (), {"used": 40e9, "total": 80e9})

    @classmethod
    def nvmlDeviceGetUtilizationRates(cls, handle):  # noqa: N802
        raise cls.NVMLError("Not Supported")

    @staticmethod
    def nvmlDeviceGetPowerUsage(handle):  # noqa: N802
        return 350_000

    @staticmethod
    def nvmlDeviceGetEnforcedPowerLimit(handle):  # noqa: N802
        return 700_000


class FakeNvmlGpus(FakeNvml):
    """Three GPUs, the second of which NVML gives no handle for."""

    @staticmethod
    def nvmlInit():  # noqa: N802
        pass

    @staticmethod
    def nvmlShutdown():  # noqa: N802
        pass

    @staticmethod
    def nvmlDeviceGetCount():  # noqa: N802
        return 3

    @classmethod
    def nvmlDeviceGetHandleByIndex(cls, index):  # noqa: N802
        if index == 1:
            raise cls.NVMLError("GPU is lost")
        return index

    @staticmethod
    def nvmlDeviceGetUUID(handle):  # noqa: N802
        return f"GPU-{handle}".encode()


@pytest.mark.parametrize(("spec", "expected"), [
    (None, {"gpu_0_", "gpu_2_"}),  # each GPU keeps its number
    ("2,1,0", {"gpu_0_", "gpu_2_"}),  # cuda:1 is the lost one
    ("GPU-2,GPU-0", {"gpu_0_", "gpu_1_"}),
])
def test_a_gpu_without_a_handle_skips_that_gpu_alone(monkeypatch, spec, expected):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvmlGpus)
    if spec is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", spec)
    collector = Collector()
    gpus = {key[:6] for key in collector.sample() if key.startswith("gpu_")}
    collector.close()
    assert gpus == expected


def test_gpu_metrics_skip_a_failed_nvml_call():
    collector = Collector()
    values: dict[str, float] = {}
    collector._nvml = FakeNvml
    collector._sample_gpu("gpu_1_", object(), values)
    assert values == {"gpu_1_memory_usage_megabytes": 40000.0, "gpu_1_memory_usage_percentage": 50.0,
                      "gpu_1_power_usage_watts": 350.0, "gpu_1_power_usage_percentage": 50.0}


GPUS = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-bbcc-3333", "GPU-dddd-4444"]


@pytest.mark.parametrize(("spec", "others", "expected"), [
    (None, [], [0, 1, 2, 3]),  # unset: every GPU
    ("", [], []),
    ("-1", [], []),
    ("2,0", [], [2, 0]),  # cuda:0 is NVML's GPU 2
    (" 3 , 1 ", [], [3, 1]),
    ("1,-1,2", [], [1]),  # the list ends at the first invalid entry
    ("0,7,1", [], [0]),  # no GPU 7
    ("1,1", [], [1]),  # a device named twice ends it
    ("GPU-dddd-4444,GPU-aaaa", [], [3, 0]),  # a whole UUID, or a prefix naming one device
    ("GPU-bb", [], []),  # a prefix naming two
    ("MIG-ffff", ["MIG-ffff-9999"], [4]),  # MIG instances come after the GPUs
    ("none", [], []),
])
def test_which_gpus_this_process_sees(spec, others, expected):
    assert visible_devices(spec, GPUS, others) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "system/"),
    ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "system/"),
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"}, "system/node_1/"),
    ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}, "system/node_0/"),
    ({"NODE_RANK": "3"}, "system/node_3/"),
    ({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}, "system/node_3/"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "1"}, "system/node_1/"),
    ({"GROUP_RANK": "1", "MLFLOW_SYSTEM_METRICS_NODE_ID": "worker-a"}, "system/worker-a/"),
])
def test_the_node_prefix(environ, expected):
    assert metrics_prefix(environ) == expected


# -- one sampler per node, in a real multi-process job ------------------------------------------

DDP_SCRIPT = textwrap.dedent("""
    import os, time
    import torch
    import torch.distributed as dist
    import autolog

    torch.set_num_threads(1)
    autolog.autolog(system_metrics={"interval": 0.2})
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    job_run = os.environ["MLFLOW_RUN_ID"]
    if rank == 0:  # resumes the job's run; the other node leaders attach to it in autolog()
        run = autolog.start_run()
        assert run.id == job_run
    elif local_rank > 0:  # a run of its own (not the launcher's): never sampled
        del os.environ["MLFLOW_RUN_ID"]
        autolog.start_run(run_name=f"rank-{rank}")
    dist.init_process_group("gloo")
    tensor = torch.ones(1)
    for _ in range(4):
        dist.all_reduce(tensor)
        time.sleep(0.4)
    dist.barrier()
    if rank == 0:
        run.end()
        print(run.end_time)
    else:  # had a node leader ended the job's run at its exit, it would be after rank 0
        time.sleep(0.6)
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_job(tmp_path, store_uri: str, nodes: int, per_node: int) -> tuple[str, str]:
    """The script on ``nodes`` x ``per_node`` processes, as torchrun starts them, all given
    the run the test created as MLFLOW_RUN_ID; returns the run id and rank 0's output."""
    mlflow_client = client(store_uri)
    run_id = mlflow_client.create_run(mlflow_client.create_experiment("job")).info.run_id
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "AUTOLOG_DISABLE"}
    env.update(AUTOLOG_TRACKING_URI=store_uri, MLFLOW_RUN_ID=run_id, MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE=str(nodes * per_node),
               LOCAL_WORLD_SIZE=str(per_node), OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank % per_node),
                                   "GROUP_RANK": str(rank // per_node)})
             for rank in range(nodes * per_node)]
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    assert [process.returncode for process in ranks] == [0] * len(ranks), [err for _, err in outputs]
    return run_id, outputs[0][0]


def check_job(store_uri: str, run_id: str, rank_zero_output: str, prefixes: list[str]) -> None:
    mlflow_client = client(store_uri)
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.end_time == int(rank_zero_output)  # ended by rank 0 alone
    assert {key.rsplit("/", 1)[0] + "/" for key in run.data.metrics} == set(prefixes)
    for prefix in prefixes:  # one step sequence each: one sampler per node
        sampled = {key: value for key, value in run.data.metrics.items() if key.startswith(prefix)}
        assert {key.removeprefix(prefix) for key in sampled} >= NAMES
        history = [point.step for point in mlflow_client.get_metric_history(run_id, prefix + "cpu_"
                                                                            "utilization_percentage")]
        assert len(history) >= 2 and history == list(range(len(history))), (prefix, history)
    others = [r for r in mlflow_client.search_runs([run.info.experiment_id]) if r.info.run_id != run_id]
    for other in others:  # the local ranks > 0 started runs of their own: no samples there
        assert other.data.metrics == {}, other.info.run_name


def test_two_nodes_log_one_series_each_into_the_jobs_run(tmp_path, store_uri):
    run_id, output = run_job(tmp_path, store_uri, nodes=2, per_node=2)
    check_job(store_uri, run_id, output, ["system/node_0/", "system/node_1/"])


def test_one_node_logs_one_plain_series(tmp_path, store_uri):
    run_id, output = run_job(tmp_path, store_uri, nodes=1, per_node=2)
    check_job(store_uri, run_id, output, ["system/"])
