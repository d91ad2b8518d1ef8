"""The SQL store in MLflow's schema: created by MLflow's migrations, written the way
MLflow's own store writes (checked table by table against it), many processes at once."""

import math
import multiprocessing
import os
import sqlite3
import stat
import time

import pytest
from databases import mysql_uri, postgres_uri  # noqa: F401 - fixtures

from autolog.stores.base import Metric, ParamRefusedError, RunNotFoundError, StoreError
from autolog.stores.sql.schema import TESTED_REVISIONS
from autolog.stores.sql.store import SqlStore


@pytest.fixture
def store(tmp_path):
    opened = SqlStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield opened
    opened.close()


def test_a_new_file_gets_mlflows_schema_at_a_tested_revision(store):
    conn = sqlite3.connect(store.dialect.path)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] in TESTED_REVISIONS
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # MLflow's Default experiment, its artifacts where MLflow's client puts them
    assert conn.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall() == [
        (0, "Default", f"{os.getcwd()}/mlruns/0")]
    assert stat.S_IMODE(os.stat(store.dialect.path).st_mode) == 0o600


def test_another_revision_is_refused_naming_mlflow_db_upgrade(tmp_path):
    path = tmp_path / "old.db"
    SqlStore(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
    conn.commit()
    with pytest.raises(StoreError, match=f"mlflow db upgrade sqlite:///{path}"):
        SqlStore(f"sqlite:///{path}")


def test_an_autolog_0_1_file_is_refused_naming_the_sync_command(tmp_path):
    path = tmp_path / "autolog.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE metric_chunks (chunk_id INTEGER PRIMARY KEY); "
                       "PRAGMA user_version = 1;")
    conn.close()
    with pytest.raises(StoreError, match=f"autolog sync --from sqlite:///{path} "
                                         "--to sqlite:///mlflow.db"):
        SqlStore(f"sqlite:///{path}")


def test_a_database_of_something_else_is_not_migrated(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    with pytest.raises(StoreError, match="not MLflow's schema"):
        SqlStore(f"sqlite:///{path}")
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [("users",)]


def test_read_only_open_of_a_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no MLflow database"):
        SqlStore(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_metrics_round_trip(store):
    exp = store.get_or_create_experiment("e")
    run = store.create_run(exp.experiment_id, "r", 1, {"t": "v"})
    rows = [("a", float(i), 1000 + i, i) for i in range(10)] + [
        ("b", math.nan, 5, 0), ("b", math.inf, 6, 1), ("b", -2.5, 7, 1)]
    store.log_batch(run.run_id, metrics=rows[:6])
    store.log_batch(run.run_id, metrics=rows[6:])
    store.log_batch(run.run_id, metrics=rows[6:])  # replayed: each point stored once
    assert store.get_metric_history(run.run_id, "a") == [
        Metric("a", float(i), 1000 + i, i) for i in range(10)]
    b = store.get_metric_history(run.run_id, "b")
    assert math.isnan(b[0].value) and b[1:] == [
        Metric("b", math.inf if False else 1.7976931348623157e308, 6, 1), Metric("b", -2.5, 7, 1)]
    assert store.get_run(run.run_id).metrics == {"a": 9.0, "b": -2.5}  # same step: later time wins
    assert store.get_metric_history(run.run_id, "none") == []
    assert store.metric_counts(run.run_id) == {"a": 10, "b": 3}
    pages = list(store.iter_metric_history(run.run_id, "a", page=4))
    assert [len(page) for page in pages] == [4, 4, 2]
    assert [row[3] for page in pages for row in page] == list(range(10))


def test_param_conflict_refuses_the_whole_batch(store):
    exp = store.get_or_create_experiment("e")
    run = store.create_run(exp.experiment_id, "r", 1, {})
    store.log_batch(run.run_id, params={"p": "1"})
    store.log_batch(run.run_id, params={"p": "1"})  # identical again: accepted
    with pytest.raises(ParamRefusedError, match="Changing param values is not allowed"):
        store.log_batch(run.run_id, params={"q": "2", "p": "3"}, metrics=[("m", 1.0, 1, 0)])
    record = store.get_run(run.run_id)
    assert record.params == {"p": "1"} and record.metrics == {}


def test_unknown_run(store):
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")
    with pytest.raises(RunNotFoundError):
        store.log_batch("nope", metrics=[("m", 1.0, 1, 0)])
    with pytest.raises(RunNotFoundError):
        store.update_run("nope", "FINISHED", 1)


# -- the same batches through MLflow's own store and through ours: the same tables --------

BATCHES = [
    [("loss", 1.0, 100, 0), ("loss", 0.5, 100, 1), ("acc", math.nan, 100, 1)],
    [("loss", 0.7, 90, 1), ("loss", 0.9, 110, 1), ("acc", 0.2, 100, 1), ("acc", math.inf, 100, 1)],
    [("loss", 0.9, 110, 1), ("acc", -math.inf, 50, 2), ("lr", 0.1, 5, -3), ("lr", 0.1, 5, -3)],
    [("loss", 0.95, 110, 1), ("acc", -math.inf, 49, 2), ("acc", -math.inf, 49, 2)],
]


def _dump(path, run_id: str) -> dict[str, list]:
    conn = sqlite3.connect(path)
    query = {"metrics": 'SELECT "key", value, timestamp, step, is_nan FROM metrics',
             "latest_metrics": 'SELECT "key", value, timestamp, step, is_nan FROM latest_metrics',
             "params": 'SELECT "key", value FROM params', "tags": 'SELECT "key", value FROM tags'}
    return {table: sorted(conn.execute(f"{sql} WHERE run_uuid = ?", (run_id,)).fetchall())
            for table, sql in query.items()}


def test_tables_equal_what_mlflows_own_store_writes(tmp_path):
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.entities import Param, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    theirs = SqlAlchemyStore(f"sqlite:///{tmp_path / 'theirs.db'}", str(tmp_path / "mlruns"))
    their_run = theirs.create_run("0", "user", 1, [], "r").info.run_id
    ours = SqlStore(f"sqlite:///{tmp_path / 'ours.db'}")
    our_run = ours.create_run("0", "r", 1, {}).run_id
    for batch in BATCHES:
        theirs.log_batch(their_run, [MlflowMetric(*row) for row in batch],
                         [Param("p", "1")], [RunTag("t", str(len(batch)))])
        ours.log_batch(our_run, batch, {"p": "1"}, {"t": str(len(batch))})
    mine, reference = _dump(tmp_path / "ours.db", our_run), _dump(tmp_path / "theirs.db", their_run)
    assert mine["tags"] == [("mlflow.runName", "r"), ("t", "3")]
    assert {table: rows for table, rows in reference.items() if table != "tags"} == {
        table: rows for table, rows in mine.items() if table != "tags"}
    theirs.engine.dispose()
    ours.close()


# -- many processes on one new file --------------------------------------------------------

POINTS, PARAMS, PROCESSES = 20_000, 20, 16


def _writer_process(uri, index, start_at, errors, points=POINTS):
    import warnings

    warnings.simplefilter("error")
    try:
        import autolog

        autolog.set_tracking_uri(uri)
        time.sleep(max(0.0, start_at - time.time()))  # all start at the same instant
        with autolog.start_run(run_name=f"proc-{index}", experiment="concurrent"):
            autolog.log_params({f"p{i}": i * index for i in range(PARAMS)})
            for step in range(points):
                autolog.log_metric("loss", step * 0.5, step=step)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"process {index}: {type(exc).__name__}: {exc}")


def test_sixteen_processes_start_at_once_on_a_fresh_file(tmp_path):
    """MLflow's own client failed 7 of 8 here; MLflow's client reads the result."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    start_at = time.time() + 5.0
    processes = [context.Process(target=_writer_process, args=(uri, i, start_at, errors))
                 for i in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"proc-{i}" for i in range(PROCESSES))
    for run in runs:
        index = int(run.info.run_name.split("-")[1])
        assert run.info.status == "FINISHED"
        assert run.data.params == {f"p{i}": str(i * index) for i in range(PARAMS)}
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(POINTS))
        assert all(m.value == m.step * 0.5 for m in history)
    assert [e.name for e in client.search_experiments()] == ["concurrent", "Default"]


# -- SIGKILL: at most one flush interval lost -----------------------------------------------

_LOG_UNTIL_KILLED = """
import sys, time
import autolog
run = autolog.start_run()
print("run", run.id, flush=True)
step = 0
while True:
    for _ in range(500):
        autolog.log_metric("m", float(step), step=step)
        step += 1
    print("logged", step, time.time(), flush=True)
    time.sleep(0.01)
"""


def test_sigkill_loses_at_most_one_flush_interval(tmp_path):
    """The writer commits every AUTOLOG_FLUSH_INTERVAL: what was logged up to one
    interval (plus one write in progress) before the kill is in the database, read by
    MLflow's client, as a gapless prefix of the steps."""
    import signal
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'killed.db'}"
    interval, one_write = 0.2, 0.5  # the write in progress may take this long under load
    child = subprocess.Popen([sys.executable, "-c", _LOG_UNTIL_KILLED], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "AUTOLOG_TRACKING_URI": uri,
                                             "AUTOLOG_FLUSH_INTERVAL": str(interval)})
    run_id = child.stdout.readline().split()[1]
    logged: list[tuple[int, float]] = []
    started = time.time()
    while time.time() - started < 3.0:
        _, step, at = child.stdout.readline().split()
        logged.append((int(step), float(at)))
    child.send_signal(signal.SIGKILL)
    killed_at = time.time()
    child.wait(timeout=30)
    steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "m"))
    assert steps == list(range(len(steps)))  # what is there has no gap
    surely_written = max(step for step, at in logged if at <= killed_at - interval - one_write)
    assert len(steps) >= surely_written, (len(steps), surely_written, logged[-1])
    assert MlflowClient(uri).get_run(run_id).info.status == "RUNNING"  # killed: no end


# -- many processes on one PostgreSQL and one MySQL database --------------------------------

SERVER_PROCESSES, SERVER_POINTS = 8, 5_000


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_many_processes_start_at_once_on_a_new_server_database(backend, request):
    """They create MLflow's schema once (the others wait on the database's lock) and
    write at once; MLflow's client reads every point."""
    from mlflow import MlflowClient

    uri = request.getfixturevalue(f"{backend}_uri")
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    start_at = time.time() + 5.0
    processes = [context.Process(target=_writer_process,
                                 args=(uri, i, start_at, errors, SERVER_POINTS))
                 for i in range(SERVER_PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == [] and all(p.exitcode == 0 for p in processes), reported
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(runs) == SERVER_PROCESSES
    for run in runs:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(SERVER_POINTS))


# -- a password in a database URI ----------------------------------------------------------


_LOG_THEN_LOSE_ACCESS = """
import sys
import autolog
run = autolog.start_run()
autolog.log_metric("m", 1.0, step=0)
assert autolog.flush()
print(run.id, flush=True)
sys.stdin.readline()  # the parent revokes this user's rights meanwhile
autolog.log_metric("m", 2.0, step=1)
"""


def test_a_password_is_never_shown_nor_spooled_and_sync_takes_it_from_the_configured_uri(
        request, tmp_path):
    """MariaDB with a user that has a password, whose rights are revoked mid-run: what the
    database refuses goes to the spool at exit, under the URI without the password, and
    no message shows it; `autolog sync` gets it back from the configured URI."""
    import subprocess
    import sys
    import uuid

    import pymysql
    from mlflow import MlflowClient

    database = request.getfixturevalue("mysql_uri").rsplit("/", 1)[1]
    user, password = f"al_{uuid.uuid4().hex[:8]}", "s3cret-pw!"
    uri = f"mysql+pymysql://{user}:{password}@127.0.0.1:3306/{database}"
    env = {**os.environ, "AUTOLOG_TRACKING_URI": uri, "AUTOLOG_SPOOL_DIR": str(tmp_path / "spool"),
           "AUTOLOG_END_TIMEOUT": "1", "AUTOLOG_EXIT_TIMEOUT": "1"}
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (password,))
            cursor.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
        child = subprocess.Popen([sys.executable, "-c", _LOG_THEN_LOSE_ACCESS], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        run_id = child.stdout.readline().strip()
        with admin.cursor() as cursor:
            cursor.execute(f"REVOKE ALL ON `{database}`.* FROM '{user}'@'%'")
        _, stderr = child.communicate("go\n", timeout=120)
        assert child.returncode == 0, stderr
        shown = f"mysql+pymysql://{user}@127.0.0.1:3306/{database}"
        assert f"could not be written to {shown}; kept in" in stderr, stderr
        assert password not in stderr
        spooled = list((tmp_path / "spool").iterdir())
        assert spooled and not any(password.encode() in path.read_bytes() for path in spooled)
        with admin.cursor() as cursor:
            cursor.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
        sync = subprocess.run([sys.executable, "-m", "autolog.cli", "sync"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert sync.returncode == 0 and password not in sync.stdout + sync.stderr, sync
        client = MlflowClient(uri)
        history = client.get_metric_history(run_id, "m")
        assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 2.0)]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()
