"""Nothing logged is lost when the store itself fails: a locked or full embedded store,
``os.chdir``, SIGTERM, back-pressure, a value the store cannot encode (issue 14).

Every fault is real: another connection (or process) holding ``BEGIN IMMEDIATE``, a
tmpfs that is full, a real signal. Each test counts the points that reach the store
against the points logged, and reads the messages the user would read.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from click.testing import CliRunner

import autolog
from autolog.cli import main
from autolog.stores.sql.store import SqlStore
from autolog.writer import BATCH_POINTS, get_writer


def _stored(db_path, run_id: str, key: str = "m") -> tuple[list[int], str]:
    """Steps of ``key`` in the store at ``db_path``, sorted, and the run's status."""
    store = SqlStore(f"sqlite:///{db_path}", create=False)
    try:
        steps = [m.step for m in store.get_metric_history(run_id, key)]
        return sorted(steps), store.get_run(run_id).status
    finally:
        store.close()


class Lock:
    """Another connection holds the store's write lock, as another process would."""

    def __init__(self, db_path):
        self._conn = sqlite3.connect(str(db_path), isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


def _env(tmp_path, db_path, **extra: str) -> dict[str, str]:
    return {**os.environ, "AUTOLOG_TRACKING_URI": f"sqlite:///{db_path}",
            "AUTOLOG_SPOOL_DIR": str(tmp_path / "spool"), "AUTOLOG_EXIT_TIMEOUT": "1",
            "AUTOLOG_SQLITE_BUSY_TIMEOUT": "0.3", **extra}


def _sync(spool_dir) -> str:
    result = CliRunner().invoke(main, ["sync", "--spool-dir", str(spool_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def _kept_line(stderr: str, points: int, status: str, db_path, spool_dir) -> str:
    """The exit line for a run whose data went to the fallback spool; returns the run id."""
    match = re.search(
        rf"autolog: {points} metric points and the status {status} of run (\w+) could not be "
        rf"written to sqlite:///{re.escape(str(db_path))}; kept in "
        rf"{re.escape(str(spool_dir))}/[\w-]+\.spool; write them with: autolog sync "
        rf"--spool-dir {re.escape(str(spool_dir))}", stderr)
    assert match, stderr
    return match.group(1)


# -- end_run on a locked store ---------------------------------------------------------------


def test_end_run_on_a_locked_store_keeps_every_point_and_writes_them_later(
        tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLOG_SQLITE_BUSY_TIMEOUT", "0.2")
    monkeypatch.setattr(get_writer(), "end_timeout", 1.0)
    db_path = tmp_path / "mlflow.db"
    run = autolog.start_run()
    writer_lock = get_writer()._io_lock
    writer_lock.acquire()  # the thread's own attempts wait: the warnings come here
    lock = Lock(db_path)
    try:
        for step in range(10_000):
            autolog.log_metric("m", float(step), step=step)
        started = time.monotonic()
        with pytest.warns(autolog.AutologWarning) as warned:
            autolog.end_run()
        assert time.monotonic() - started < 10  # bounded (it was 120 s)
        texts = [str(w.message) for w in warned]
        assert any("could not write to" in t and "locked" in t and "kept and retried" in t
                   for t in texts), texts
        assert any(f"run {run.id} ended FINISHED, but 10000 metric points and its status are "
                   "not written" in t for t in texts), texts
        assert not any("works again" in t for t in texts)  # nothing was written
        with pytest.raises(RuntimeError, match="has ended"):
            run.log_metric("m", 1.0)  # a late point is refused at once
        assert run.pending_count() == 10_000  # kept, not discarded
        assert _stored(db_path, run.id) == ([], "RUNNING")
        with pytest.warns(autolog.AutologWarning, match=f"writing run {run.id} .* works again"):
            lock.release()
            writer_lock.release()
            writer_lock = None
            assert get_writer().flush()  # what the background thread has not written yet
    finally:
        lock.release()
        if writer_lock is not None:
            writer_lock.release()
    assert _stored(db_path, run.id) == (list(range(10_000)), "FINISHED")


# -- a full or locked embedded store spools at exit -------------------------------------------


@pytest.fixture
def small_tmpfs(mount_tmpfs):
    """A tmpfs of 1,200 KiB: room for a new MLflow database (930 KiB of empty tables and
    indexes), not for its data."""
    return mount_tmpfs("1200k")


def test_a_full_disk_spools_at_exit_and_sync_writes_every_point(tmp_path, small_tmpfs):
    db_path = small_tmpfs / "mlflow.db"
    script = textwrap.dedent("""
        import autolog
        autolog.start_run()
        for step in range(40_000):
            autolog.log_metric("m", float(step), step=step)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=_env(tmp_path, db_path), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "database or disk is full" in out.stderr  # the writer said why it failed
    run_id = _kept_line(out.stderr, 40_000, "FINISHED", db_path, tmp_path / "spool")
    assert "lost" not in out.stderr
    assert _stored(db_path, run_id) == ([], "RUNNING")
    # Room again, then the command the line gave.
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    assert "sent 40,000 metric points" in _sync(tmp_path / "spool")
    assert _stored(db_path, run_id) == (list(range(40_000)), "FINISHED")
    assert list((tmp_path / "spool").glob("*.spool")) == []  # sent and removed


def test_a_full_disk_under_the_store_and_the_spool_says_how_many_points_are_lost(
        tmp_path, small_tmpfs):
    db_path = small_tmpfs / "mlflow.db"
    spool_dir = small_tmpfs / "spool"
    script = textwrap.dedent("""
        import autolog
        run = autolog.start_run()
        print(run.id, flush=True)
        with open(r"{filler}", "wb", buffering=0) as filler:
            try:  # the rest of the disk: not even the spool has room
                while True:
                    filler.write(bytes(4096))
            except OSError:
                pass
        for step in range(40_000):
            autolog.log_metric("m", float(step), step=step)
    """).format(filler=small_tmpfs / "filler")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**_env(tmp_path, db_path), "AUTOLOG_SPOOL_DIR": str(spool_dir)},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert re.search(
        rf"autolog: 40000 metric points and the status FINISHED of run {run_id} could not be "
        rf"written to sqlite:///{re.escape(str(db_path))}, nor kept in a spool in "
        rf"{re.escape(str(spool_dir))} \(.*full.*\); they are lost", out.stderr), out.stderr
    assert "kept in" not in out.stderr.replace("nor kept in", "")  # no false comfort
    assert _stored(db_path, run_id) == ([], "RUNNING")  # indeed: none of them is anywhere


_LOG_AFTER_GO = textwrap.dedent("""
    import sys, autolog
    run = autolog.start_run()
    print(run.id, flush=True)
    sys.stdin.readline()  # the parent locks the store meanwhile
    autolog.log_param("lr", 0.1)
    autolog.set_tag("team", "vision")
    for step in range({points}):
        autolog.log_metric("m", float(step), step=step)
""")


def _start_and_lock(tmp_path, db_path, script: str, **env: str):
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(tmp_path, db_path, **env))
    run_id = process.stdout.readline().strip()
    assert run_id, process.communicate()[1]
    lock = Lock(db_path)
    process.stdin.write("go\n")
    process.stdin.flush()
    return process, run_id, lock


def test_a_store_locked_at_exit_spools_and_sync_writes_every_point(tmp_path):
    db_path = tmp_path / "mlflow.db"
    process, run_id, lock = _start_and_lock(tmp_path, db_path,
                                            _LOG_AFTER_GO.format(points=20_000))
    try:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert _kept_line(stderr, 20_000, "FINISHED", db_path, tmp_path / "spool") == run_id
        assert "locked" in stderr
    finally:
        lock.release()
    assert _stored(db_path, run_id) == ([], "RUNNING")
    assert "sent 20,000 metric points" in _sync(tmp_path / "spool")
    assert _stored(db_path, run_id) == (list(range(20_000)), "FINISHED")
    record = SqlStore(f"sqlite:///{db_path}", create=False).get_run(run_id)
    assert record.params == {"lr": "0.1"} and record.tags["team"] == "vision"


def test_sync_leaves_the_spool_while_the_store_is_still_locked(tmp_path):
    db_path = tmp_path / "mlflow.db"
    process, run_id, lock = _start_and_lock(tmp_path, db_path,
                                            _LOG_AFTER_GO.format(points=1_000))
    try:
        stderr = process.communicate(timeout=120)[1]
        _kept_line(stderr, 1_000, "FINISHED", db_path, tmp_path / "spool")
        os.environ["AUTOLOG_SQLITE_BUSY_TIMEOUT"] = "0.2"
        try:
            result = CliRunner().invoke(main, ["sync", "--spool-dir", str(tmp_path / "spool")])
        finally:
            del os.environ["AUTOLOG_SQLITE_BUSY_TIMEOUT"]
        assert result.exit_code == 1, result.output
        assert "cannot take data now" in result.output and "locked" in result.output
        assert "1,000 metric points" in result.output  # what is left, and where
    finally:
        lock.release()
    assert "sent 1,000 metric points" in _sync(tmp_path / "spool")
    assert _stored(db_path, run_id) == (list(range(1_000)), "FINISHED")


# -- back-pressure -----------------------------------------------------------------------------


def test_back_pressure_on_a_locked_store_is_bounded_and_spills_to_the_spool(tmp_path):
    """600,000 points into a locked store, with the high-water mark at 50,000: no call
    waits long, memory stays bounded, and sync writes every point."""
    db_path = tmp_path / "mlflow.db"
    script = textwrap.dedent("""
        import sys, time, autolog
        from autolog import run as run_module
        run_module.HIGH_WATER_POINTS = 50_000
        run = autolog.start_run()
        print(run.id, flush=True)
        sys.stdin.readline()
        longest = queued = 0
        clock = time.perf_counter
        for step in range(600_000):
            started = clock()
            autolog.log_metric("m", float(step), step=step)
            longest = max(longest, clock() - started)
            queued = max(queued, len(run.metric_queue))
        print(longest, queued, flush=True)
    """)
    process, run_id, lock = _start_and_lock(tmp_path, db_path, script,
                                            AUTOLOG_BACKPRESSURE_WAIT="0.2")
    try:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    finally:
        lock.release()
    longest, queued = stdout.split()
    # A sanity bound, not a benchmark: the wait (0.2 s) plus one spill of 50,000 points.
    assert float(longest) < 3.0, (longest, stderr)
    # Spilled, not piled up in memory: past the high-water mark the queue goes to the spool;
    # a write of the writer's that fails puts its batch (at most BATCH_POINTS) back on top.
    assert int(queued) <= 50_001 + BATCH_POINTS
    # Spilled while it ran, and the rest at exit: one line counts them all.
    _kept_line(stderr, 600_000, "FINISHED", db_path, tmp_path / "spool")
    assert "sent 600,000 metric points" in _sync(tmp_path / "spool")
    assert _stored(db_path, run_id) == (list(range(600_000)), "FINISHED")


# -- the store path, and its mode --------------------------------------------------------------


def test_chdir_after_start_run_keeps_writing_to_the_same_store(tmp_path, monkeypatch):
    autolog.set_tracking_uri("sqlite:///mlflow.db")  # relative, the default's form
    run = autolog.start_run()
    elsewhere = tmp_path / "outputs" / "2026-11-27"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # what Hydra does
    for step in range(1_000):
        autolog.log_metric("m", float(step), step=step)
    # A thread that opens its connection now (the writer's, say) writes to the same file.
    flusher = threading.Thread(target=get_writer().flush)
    flusher.start()
    flusher.join()
    assert run.pending_count() == 0
    autolog.end_run()
    assert not (elsewhere / "mlflow.db").exists()  # no empty store created here
    assert _stored(tmp_path / "mlflow.db", run.id) == (list(range(1_000)), "FINISHED")
    assert run.store.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_store_files_are_created_0600(tmp_path):
    previous = os.umask(0o022)  # the usual umask, which would give 0644
    try:
        db_path = tmp_path / "private" / "mlflow.db"
        autolog.set_tracking_uri(f"sqlite:///{db_path}")
        with autolog.start_run():
            autolog.log_metric("m", 1.0)
            assert autolog.flush()
            files = {suffix: db_path.with_name(db_path.name + suffix)
                     for suffix in ("", "-wal", "-shm")}
            assert all(path.exists() for path in files.values())
            modes = {suffix: stat.S_IMODE(path.stat().st_mode) for suffix, path in files.items()}
        assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        os.umask(previous)


# -- SIGTERM -------------------------------------------------------------------------------------


_LOG_THEN_WAIT = textwrap.dedent("""
    import signal, sys, time, autolog
    {before}
    run = autolog.start_run()
    for step in range(100_000):
        autolog.log_metric("m", float(step), step=step)
    print(run.id, flush=True)  # all 100,000 are queued: the writer waits a minute
    time.sleep(60)
""")


def _terminate(tmp_path, before: str = "") -> tuple[subprocess.CompletedProcess, str]:
    db_path = tmp_path / "mlflow.db"
    process = subprocess.Popen(
        [sys.executable, "-c", _LOG_THEN_WAIT.format(before=before)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env=_env(tmp_path, db_path, AUTOLOG_FLUSH_INTERVAL="60", AUTOLOG_EXIT_TIMEOUT="10"))
    run_id = process.stdout.readline().strip()
    assert run_id, process.communicate()[1]
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), run_id


def test_sigterm_writes_every_point_ends_the_run_killed_and_terminates(tmp_path):
    out, run_id = _terminate(tmp_path)
    assert out.returncode == -signal.SIGTERM, out.stderr
    assert out.stderr == ""  # nothing was left, so nothing to say
    assert _stored(tmp_path / "mlflow.db", run_id) == (list(range(100_000)), "KILLED")


def test_sigterm_chains_to_the_users_own_handler(tmp_path):
    before = textwrap.dedent("""
        def handler(signum, frame):
            print("user handler ran", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, handler)
    """)
    out, run_id = _terminate(tmp_path, before)
    assert out.returncode == 3, out.stderr
    assert out.stdout == "user handler ran\n"
    assert _stored(tmp_path / "mlflow.db", run_id) == (list(range(100_000)), "KILLED")


# -- values the store cannot encode --------------------------------------------------------------


def test_a_value_the_store_cannot_encode_is_set_aside_and_the_rest_flows(store_uri):
    """A safety net behind the call-site checks: the values are put in the queues as a
    caller that escaped those checks would (the store's own encoder refuses them)."""
    run = autolog.start_run()
    with get_writer()._io_lock:  # the thread waits: its warnings would come on its side
        for step in range(1_000):
            autolog.log_metric("m", float(step), step=step)
        run.metric_queue.append(("m", 10**400, 0, 1_000))  # beyond a float
        run.metric_queue.append(("m", 1.0, 0, 2**63))  # a step beyond int64
        for step in range(1_001, 2_000):
            autolog.log_metric("m", float(step), step=step)
        run.pending_params.append({"data": "/data/\udcff.csv", "lr": "0.1"})  # a surrogate
        with pytest.warns(autolog.AutologWarning) as warned:
            assert autolog.flush()
    texts = sorted(str(w.message) for w in warned)
    assert len(texts) == 2, texts
    assert texts[0].startswith(f"autolog: 1 params of run {run.id} dropped")
    assert "UnicodeEncodeError" in texts[0] and "'data'" in texts[0]
    assert texts[1].startswith(f"autolog: 2 metric point(s) of run {run.id} dropped")
    assert "OverflowError" in texts[1]
    autolog.log_metric("after", 1.0)  # the writer is not jammed
    autolog.end_run()
    record = autolog.get_run(run.id)
    assert record.status == "FINISHED"
    assert record.params == {"lr": "0.1"}
    assert [m.step for m in autolog.get_metric_history(run.id, "m")] == [
        step for step in range(2_000) if step != 1_000]
    assert len(autolog.get_metric_history(run.id, "after")) == 1


def test_a_loop_faster_than_the_store_is_paced_by_it_and_spools_nothing(tmp_path):
    """A healthy store slower than the loop: back-pressure waits for it (the writer takes
    batch after batch) instead of spilling to the spool, which only `autolog sync` empties."""
    db_path = tmp_path / "mlflow.db"
    script = textwrap.dedent("""
        import autolog
        with autolog.start_run() as run:
            for step in range(800_000):
                autolog.log_metric("m", float(step), step=step)
        print(run.id)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**_env(tmp_path, db_path), "AUTOLOG_EXIT_TIMEOUT": "60"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "spool" not in out.stderr, out.stderr
    assert _stored(db_path, out.stdout.strip()) == (list(range(800_000)), "FINISHED")
    assert not list((tmp_path / "spool").glob("*.spool"))
