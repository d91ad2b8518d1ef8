"""The spool in front of an MLflow server: nothing is lost while the server is down or
the process dies, nothing arrives twice, and the training loop never waits on the
network. Faults are real: the server is SIGKILLed and restarted on the same port, the
logging process is SIGKILLed. What reached the server is checked with MLflow's client."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

import autolog
from autolog.cli import main
from autolog.stores import close_all, open_store
from autolog.stores.local_files import default_spool_dir
from autolog.stores.mlflow_rest import MlflowRestClient
from autolog.stores.spool.remote import SpoolStore
from autolog.stores.spool.rows import pack_rows, unpack_rows
from autolog.stores.spool.sender import LOCAL_RUN_ID_TAG
from autolog.stores.spool.spool_file import SpoolFile, sync_command

pytest_plugins = ("mlflow_server",)
pytestmark = pytest.mark.usefixtures("spool_dir")


@contextmanager
def recorded_warnings():
    """Every warning, from any thread, while the block runs (the sender warns from its own)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen


def messages(seen) -> str:
    return "\n".join(str(w.message) for w in seen if issubclass(w.category, autolog.AutologWarning))


def steps(server, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in server.client().get_metric_history(run_id, key))


def sync(*args: str):
    return CliRunner().invoke(main, ["sync", *args])


def test_the_spool_lives_in_the_home_directory_unless_told(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTOLOG_SPOOL_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_spool_dir() == tmp_path / ".autolog" / "spool"
    assert sync_command(default_spool_dir()) == "autolog sync"
    assert sync_command(tmp_path / "my spool") == f"autolog sync --spool-dir '{tmp_path}/my spool'"


def test_spooled_metric_rows_round_trip_as_plain_values():
    class Key(str):
        pass

    class Value(float):
        pass

    rows = [("a", 1.5, 1, 2), ("b/ü", float("nan"), 3, -4), ("a", float("-inf"), 2**62, 2**63 - 1),
            (Key("a"), Value(2.5), 5, 6), ("c", 7, 8, 9)]
    back = unpack_rows(pack_rows(rows))
    assert [type(key) for key, *_ in back] == [str] * 5
    assert [type(value) for _, value, *_ in back] == [float] * 5
    assert back[0] == ("a", 1.5, 1, 2) and back[2] == ("a", float("-inf"), 2**62, 2**63 - 1)
    assert back[1][1] != back[1][1] and back[3] == ("a", 2.5, 5, 6) and back[4] == ("c", 7.0, 8, 9)
    assert unpack_rows(pack_rows([])) == []


def test_logging_never_waits_on_a_dead_server(spool_dir, capsys, unused_uri):
    autolog.set_tracking_uri(unused_uri)
    with recorded_warnings() as seen:
        started = time.perf_counter()
        run = autolog.start_run(run_name="no-server")
        assert time.perf_counter() - started < 1.0  # connection refused: offline at once
        log_metric = run.log_metric
        calls = 200_000
        started = time.perf_counter()
        for step in range(calls):
            log_metric("loss", 0.5, step)
        per_call = (time.perf_counter() - started) / calls
        started = time.perf_counter()
        run.store.log_batch(run.id, metrics=[("direct", 1.0, 1, i) for i in range(50_000)])
        assert time.perf_counter() - started < 1.0  # committed locally, not sent
        run.end()
        close_all()
    assert per_call < 10e-6, f"{per_call * 1e6:.2f} µs per log_metric with the server down"
    assert f"run {run.id} started offline" in messages(seen)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "250,000 metric points" in line
    assert line.endswith(f"send them with: {sync_command(spool_dir)}")


def test_server_killed_mid_run_then_restarted_and_synced(fault_server, spool_dir, capsys):
    autolog.set_tracking_uri(fault_server.uri)
    with recorded_warnings() as seen:
        with autolog.start_run(run_name="interrupted", experiment="spool/killed") as run:
            autolog.log_params({"lr": 0.1, "epochs": 3})
            for step in range(1500):
                autolog.log_metric("loss", 1 / (step + 1), step=step)
            assert autolog.flush(timeout=30)
            fault_server.kill()
            for step in range(1500, 3000):
                autolog.log_metric("loss", 1 / (step + 1), step=step)
            autolog.set_tag("phase", "after the kill")
        close_all()
    assert run.id == run.store.server_run_id(run.id)  # created online: one id
    assert "does not take data now" in messages(seen)
    err = capsys.readouterr().err
    assert f"send them with: {sync_command(spool_dir)}" in err

    fault_server.start()
    result = sync()
    assert result.exit_code == 0, result.output
    assert "sent 1,500 metric points" in result.output
    remote = fault_server.client().get_run(run.id)
    assert remote.info.status == "FINISHED"
    assert remote.data.params == {"lr": "0.1", "epochs": "3"}
    assert remote.data.tags["phase"] == "after the kill"
    assert steps(fault_server, run.id, "loss") == list(range(3000))

    again = sync()
    assert again.exit_code == 0 and "nothing to send" in again.output
    assert steps(fault_server, run.id, "loss") == list(range(3000))
    assert fault_server.refused_log_batches() == []


def test_server_down_from_the_first_second(fault_server, spool_dir, capsys):
    fault_server.kill()
    autolog.set_tracking_uri(fault_server.uri)
    with recorded_warnings() as seen:
        with autolog.start_run(run_name="offline", experiment="spool/offline",
                               tags={"purpose": "fault"}) as run:
            autolog.log_param("lr", 0.5)
            for step in range(2500):
                autolog.log_metric("loss", float(step), step=step)
            autolog.log_metric("nan", float("nan"), step=0)
        assert run.id.startswith("offline-")
        assert run.store.server_run_id(run.id) is None
        close_all()
    assert f"run {run.id} started offline" in messages(seen)
    assert "send them with" in capsys.readouterr().err

    fault_server.start()
    result = sync()
    assert result.exit_code == 0, result.output
    remote = fault_server.run_by_local_id(run.id)
    assert remote.info.status == "FINISHED"
    assert remote.info.run_name == "offline"
    assert remote.data.params == {"lr": "0.5"}
    assert remote.data.tags["purpose"] == "fault"
    assert fault_server.client().get_experiment(remote.info.experiment_id).name == "spool/offline"
    assert steps(fault_server, remote.info.run_id, "loss") == list(range(2500))
    assert len(steps(fault_server, remote.info.run_id, "nan")) == 1

    assert sync().exit_code == 0
    assert fault_server.run_by_local_id(run.id).info.run_id == remote.info.run_id  # one run
    assert steps(fault_server, remote.info.run_id, "loss") == list(range(2500))
    # the local id the user saw still reads the run, from any process
    store = open_store(fault_server.uri)
    assert store.server_run_id(run.id) == remote.info.run_id
    assert autolog.get_run(run.id).info.run_id == remote.info.run_id
    with autolog.start_run(run_id=run.id) as resumed:
        autolog.log_metric("loss", 2500.0, step=2500)
    assert resumed.id == remote.info.run_id
    assert resumed.store.wait_until_sent(30)
    assert steps(fault_server, remote.info.run_id, "loss") == list(range(2501))


def test_offline_run_is_created_as_soon_as_the_server_answers(fault_server):
    fault_server.kill()
    autolog.set_tracking_uri(fault_server.uri)
    with recorded_warnings() as seen:
        run = autolog.start_run(experiment="spool/late-server")
        for step in range(500):
            autolog.log_metric("m", float(step), step=step)
        fault_server.start()
        for step in range(500, 1000):
            autolog.log_metric("m", float(step), step=step)
        run.end()
        assert run.store.wait_until_sent(30)
        deadline = time.monotonic() + 5  # the sender says so once it has sent the backlog
        while "answers again" not in messages(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    server_id = run.store.server_run_id(run.id)
    assert server_id is not None and server_id != run.id
    assert "answers again" in messages(seen)
    remote = fault_server.client().get_run(server_id)
    assert remote.data.tags[LOCAL_RUN_ID_TAG] == run.id
    assert remote.info.status == "FINISHED"
    assert steps(fault_server, server_id, "m") == list(range(1000))
    assert autolog.get_run(run.id).info.run_id == server_id


CHILD = textwrap.dedent("""
    import sys, time, autolog
    autolog.set_tracking_uri(sys.argv[1])
    run = autolog.start_run(run_name="sigkilled")
    print("run", run.id, flush=True)
    step = 0
    while True:
        autolog.log_metric("x", float(step), step=step)
        if step % 20 == 0:
            print("logged", step, time.time(), flush=True)
        step += 1
        time.sleep(0.0005)
""")


def test_sigkilled_process_leaves_its_data_for_autolog_sync(fault_server, spool_dir, monkeypatch):
    fault_server.kill()
    interval = 0.2
    env = dict(os.environ, AUTOLOG_SPOOL_DIR=str(spool_dir), AUTOLOG_FLUSH_INTERVAL=str(interval),
               PYTHONWARNINGS="ignore")
    child = subprocess.Popen([sys.executable, "-c", CHILD, fault_server.uri], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        run_id = child.stdout.readline().split()[1]
        logged: list[tuple[int, float]] = []
        while not logged or logged[-1][1] - logged[0][1] < 2.0:
            _, step, at = child.stdout.readline().split()
            logged.append((int(step), float(at)))
        child.send_signal(signal.SIGKILL)
        killed_at = time.time()
    finally:
        child.kill()
        child.wait(10)
    # A point is durable once the writer's next pass (one interval) committed it.
    must_have = max(step for step, at in logged if at < killed_at - interval - 0.1)
    assert list(spool_dir.glob("*.spool")), "the killed process left no spool"

    fault_server.start()
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", fault_server.uri)  # the server sync may send to
    result = sync()
    assert result.exit_code == 0, result.output
    remote = fault_server.run_by_local_id(run_id)
    sent = steps(fault_server, remote.info.run_id, "x")
    assert sent == list(range(len(sent)))  # every point once, in order, none missing
    assert sent[-1] >= must_have
    assert remote.info.status == "RUNNING"  # it never ended
    assert list(spool_dir.glob("*.spool")) == []


def test_a_lost_acknowledgement_replays_without_duplicates(sqlite_server, monkeypatch):
    """The server got the batch but the spool could not record it: it is sent again, and
    MLflow keeps one copy of each point and accepts the same param again."""
    refused_before = len(sqlite_server.refused_log_batches())
    delete = SpoolFile.delete
    calls = []

    def flaky_delete(self, seq):
        calls.append(seq)
        if len(calls) in (1, 3):  # the params batch, then the first metrics batch
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        delete(self, seq)

    monkeypatch.setattr(SpoolFile, "delete", flaky_delete)
    autolog.set_tracking_uri(sqlite_server.uri)
    with recorded_warnings() as seen:
        with autolog.start_run() as run:
            autolog.log_params({"a": 1, "b": "x"})
            autolog.flush()
            for step in range(2500):
                autolog.log_metric("m", float(step), step=step)
        deadline = time.monotonic() + 30
        while not run.store.wait_until_sent(5) and time.monotonic() < deadline:
            pass
        assert run.store.backlog().empty
    assert "simulated" in messages(seen)
    assert len(calls) >= 5
    assert sqlite_server.client().get_run(run.id).data.params == {"a": "1", "b": "x"}
    assert steps(sqlite_server, run.id, "m") == list(range(2500))
    assert len(sqlite_server.refused_log_batches()) == refused_before

    # the same batch through the REST client twice: stored once
    client = MlflowRestClient(sqlite_server.uri)
    rows = [("again", float(i), 7, i) for i in range(1500)]
    client.log_batch(run.id, metrics=rows, params={"a": "1"})
    client.log_batch(run.id, metrics=rows, params={"a": "1"})
    assert steps(sqlite_server, run.id, "again") == list(range(1500))
    client.close()


def test_a_refused_batch_is_kept_for_autolog_sync(scripted_server, spool_dir, capsys):
    info = {"run_id": "r1", "experiment_id": "1", "run_name": "x", "status": "RUNNING",
            "start_time": 1}
    scripted_server.script = [
        (200, {"experiment": {"experiment_id": "1", "name": "e"}}),  # experiments/get-by-name
        (200, {"run": {"info": info, "data": {}}}),  # runs/create
        (400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "no such thing"}),  # log-batch
    ]
    store = SpoolStore(scripted_server.uri)
    run = store.create_run(store.get_or_create_experiment("e").experiment_id, "x", 1, {})
    with recorded_warnings() as seen:
        store.log_batch(run.run_id, metrics=[("m", 1.0, 5, 0), ("m", 2.0, 6, 1)])
        assert store.wait_until_sent(10)  # nothing sendable: the batch was refused for good
        deadline = time.monotonic() + 5
        while "refused a metrics batch" not in messages(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        assert not store.flush(30)  # it will never be acknowledged: no wait for the timeout
        assert time.monotonic() - started < 5
    assert "will not take all that was logged before flush()" in messages(seen)
    assert "1 batch(es) the server refused" in messages(seen)
    assert "refused a metrics batch of run r1" in messages(seen)
    assert "no such thing" in messages(seen)
    assert store.backlog().failed == 1
    store.close()
    assert "1 batch(es) the server refused" in capsys.readouterr().err

    result = sync("--to", scripted_server.uri)  # tries again: the server takes it now
    assert result.exit_code == 0, result.output
    assert "sent 2 metric points" in result.output
    body = json.loads(scripted_server.seen[-1]["body"])
    assert body["run_id"] == "r1" and [m["value"] for m in body["metrics"]] == [1.0, 2.0]
    assert list(spool_dir.glob("*.spool")) == []


def test_param_conflicts_never_reach_the_server(sqlite_server):
    refused_before = len(sqlite_server.refused_log_batches())
    autolog.set_tracking_uri(sqlite_server.uri)
    with autolog.start_run() as run:
        autolog.log_param("lr", 0.1)
    with autolog.start_run(run_id=run.id) as resumed:  # the ledger is seeded from the server
        with pytest.raises(autolog.ParamConflictError, match="'lr'"):
            autolog.log_param("lr", 0.2)
        autolog.log_param("lr", "0.1")  # the same value: fine
        sqlite_server.client().log_param(run.id, "momentum", "0.5")  # another process
        with recorded_warnings() as seen:
            autolog.log_params({"momentum": 0.9, "epochs": 5})
            assert not autolog.flush(timeout=30)  # answered, but 'momentum' was dropped
            assert resumed.store.backlog().empty
    assert "param dropped" in messages(seen) and "'momentum' is '0.5'" in messages(seen)
    assert sqlite_server.client().get_run(run.id).data.params == {
        "lr": "0.1", "momentum": "0.5", "epochs": "5"}
    assert len(sqlite_server.refused_log_batches()) == refused_before


def test_a_forked_child_logs_through_its_own_spool(sqlite_server):
    autolog.set_tracking_uri(sqlite_server.uri)
    with autolog.start_run() as run:
        autolog.log_metric("parent", 1.0)
        autolog.flush()
        pid = os.fork()
        if pid == 0:  # the child: log, send, leave without running the parent's teardown
            code = 1
            try:
                for step in range(300):
                    autolog.log_metric("child", float(step), step=step)
                code = 0 if autolog.flush(timeout=30) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert run.store.wait_until_sent(30)
    assert steps(sqlite_server, run.id, "child") == list(range(300))
    assert steps(sqlite_server, run.id, "parent") == [0]


def _exit_script(uri: str, spool_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import sys, autolog
        autolog.set_tracking_uri(sys.argv[1])
        with autolog.start_run(run_name="exit") as run:
            for step in range(100):
                autolog.log_metric("m", float(step), step=step)
        print(run.id)
    """)
    env = dict(os.environ, AUTOLOG_SPOOL_DIR=str(spool_dir), AUTOLOG_EXIT_TIMEOUT=str(timeout),
               PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", script, uri], env=env, capture_output=True,
                          text=True, timeout=60)


def test_exit_waits_a_bounded_time_then_prints_the_sync_command(spool_dir, sqlite_server, unused_uri):
    started = time.monotonic()
    down = _exit_script(unused_uri, spool_dir, timeout=2)
    assert time.monotonic() - started < 10
    assert down.returncode == 0, down.stderr
    lines = [line for line in down.stderr.splitlines() if "autolog sync" in line]
    assert len(lines) == 1
    assert "100 metric points" in lines[0]
    assert lines[0].endswith(f"send them with: {sync_command(spool_dir)}")
    assert len(list(spool_dir.glob("*.spool"))) == 1

    up = _exit_script(sqlite_server.uri, spool_dir, timeout=10)
    assert up.returncode == 0, up.stderr
    assert "autolog sync" not in up.stderr
    assert steps(sqlite_server, up.stdout.strip(), "m") == list(range(100))
    assert len(list(spool_dir.glob("*.spool"))) == 1  # its own spool was removed once empty


def test_credentials_never_reach_the_spool_or_the_messages(spool_dir, monkeypatch, capsys,
                                                          unused_uri):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-from-env-123")
    uri = unused_uri.replace("//", "//bob:pw-in-uri-456@")
    store = SpoolStore(uri)
    assert "pw-in-uri-456" not in repr(store) and "pw-in-uri-456" not in store.uri
    autolog.set_tracking_uri(uri)
    with recorded_warnings() as seen:
        with autolog.start_run() as run:
            autolog.log_metric("m", 1.0)
        close_all()
    assert run.id.startswith("offline-")
    shown = messages(seen) + capsys.readouterr().err
    spooled = b"".join(path.read_bytes() for path in spool_dir.iterdir())
    for secret in ("pw-from-env-123", "pw-in-uri-456"):
        assert secret not in shown
        assert secret.encode() not in spooled


# -- the spool is a fallback, not a gate -----------------------------------------------------


@pytest.fixture
def unwritable_spool(tmp_path, monkeypatch):
    """A spool folder that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "afile").write_text("not a folder")
    directory = tmp_path / "afile" / "spool"
    monkeypatch.setenv("AUTOLOG_SPOOL_DIR", str(directory))
    return directory


def test_an_unwritable_spool_sends_straight_to_a_healthy_server(sqlite_server, unwritable_spool):
    refused_before = len(sqlite_server.refused_log_batches())
    logged = 20_000
    autolog.set_tracking_uri(sqlite_server.uri)
    with recorded_warnings() as seen:
        with autolog.start_run(run_name="no-spool") as run:
            autolog.log_params({"lr": 0.1})
            autolog.set_tag("phase", "direct")
            for step in range(logged):
                autolog.log_metric("m", float(step), step=step)
        close_all()
    spool_warnings = [w for w in messages(seen).splitlines() if "cannot be written" in w]
    assert len(spool_warnings) == 1, messages(seen)
    assert str(unwritable_spool) in spool_warnings[0]
    assert f"goes straight to {sqlite_server.uri}" in spool_warnings[0]
    assert "could not write" not in messages(seen)  # no write failed
    remote = sqlite_server.client().get_run(run.id)
    assert remote.info.status == "FINISHED"
    assert remote.data.params == {"lr": "0.1"} and remote.data.tags["phase"] == "direct"
    assert steps(sqlite_server, run.id, "m") == list(range(logged))
    assert not unwritable_spool.exists()
    assert sqlite_server.refused_log_batches()[refused_before:] == []


def test_an_unwritable_spool_and_a_dead_server_keep_the_data_in_memory(fault_server,
                                                                        unwritable_spool):
    logged = 5_000
    fault_server.kill()
    autolog.set_tracking_uri(fault_server.uri)
    with recorded_warnings() as seen:
        run = autolog.start_run(run_name="no-spool-no-server", experiment="spool/unwritable")
        for step in range(logged):
            autolog.log_metric("m", float(step), step=step)
        assert not autolog.flush()  # nowhere to go yet: kept, not raised
        fault_server.start()
        deadline = time.monotonic() + 60
        while not autolog.flush() and time.monotonic() < deadline:
            time.sleep(0.2)
        run.end()
        close_all()
    shown = messages(seen)
    assert "kept in memory (the spool cannot be written)" in shown
    assert f"run {run.id} started offline" in shown
    assert run.id.startswith("offline-")
    remote = fault_server.run_by_local_id(run.id)
    assert remote.info.status == "FINISHED" and remote.info.run_name == "no-spool-no-server"
    assert steps(fault_server, remote.info.run_id, "m") == list(range(logged))
    assert fault_server.refused_log_batches() == []


def test_an_unwritable_spool_and_a_dead_server_at_exit_count_what_is_lost(
        unused_uri, unwritable_spool):
    script = textwrap.dedent("""
        import sys, autolog
        autolog.set_tracking_uri(sys.argv[1])
        run = autolog.start_run(run_name="exit")  # left open: ended at exit
        for step in range(1000):
            autolog.log_metric("m", float(step), step=step)
        print(run.id)
    """)
    env = dict(os.environ, AUTOLOG_SPOOL_DIR=str(unwritable_spool), AUTOLOG_EXIT_TIMEOUT="2",
               PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", script, unused_uri], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # start_run raised nothing
    assert done.stdout.strip().startswith("offline-")
    assert "Traceback" not in done.stderr
    lost = [line for line in done.stderr.splitlines() if "lost" in line]
    assert len(lost) == 1 and re.search(r"\b1,?000 metric points\b", lost[0]), done.stderr
