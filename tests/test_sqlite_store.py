"""The embedded store: schema, migrations, chunked metrics, many processes at once."""

import math
import multiprocessing
import sqlite3
import time

import pytest

from autolog.stores.base import Metric, ParamRefusedError, RunNotFoundError, StoreError
from autolog.stores.sqlite import SCHEMA_VERSION, SQLiteStore


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def test_schema_version_and_wal(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade autolog"):
        SQLiteStore(f"sqlite:///{path}")


def test_read_only_open_of_a_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no autolog store"):
        SQLiteStore(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_metrics_round_trip_through_chunks(store):
    exp = store.get_or_create_experiment("e")
    run = store.create_run(exp.experiment_id, "r", 1, {"t": "v"})
    rows = [("a", float(i), 1000 + i, i) for i in range(10)] + [
        ("b", math.nan, 5, 0), ("b", math.inf, 6, 1), ("b", -2.5, 7, 1)]
    store.log_batch(run.run_id, metrics=rows[:6])
    store.log_batch(run.run_id, metrics=rows[6:])
    history = store.get_metric_history(run.run_id, "a")
    assert history == [Metric("a", float(i), 1000 + i, i) for i in range(10)]
    b = store.get_metric_history(run.run_id, "b")
    assert math.isnan(b[0].value) and b[1].value == math.inf and b[2].value == -2.5
    record = store.get_run(run.run_id)
    assert record.metrics == {"a": 9.0, "b": -2.5}  # same step: the later timestamp wins
    assert store.get_metric_history(run.run_id, "none") == []


def test_param_conflict_refuses_the_whole_batch(store):
    exp = store.get_or_create_experiment("e")
    run = store.create_run(exp.experiment_id, "r", 1, {})
    store.log_batch(run.run_id, params={"p": "1"})
    store.log_batch(run.run_id, params={"p": "1"})  # identical again: accepted
    with pytest.raises(ParamRefusedError, match="Changing param values is not allowed"):
        store.log_batch(run.run_id, params={"q": "2", "p": "3"})
    assert store.get_run(run.run_id).params == {"p": "1"}


def test_unknown_run(store):
    with pytest.raises(RunNotFoundError):
        store.get_run("nope")
    with pytest.raises(RunNotFoundError):
        store.log_batch("nope", metrics=[("m", 1.0, 1, 0)])


POINTS, PARAMS, PROCESSES = 20_000, 20, 8


def _writer_process(uri, index, start_at, errors):
    import warnings

    warnings.simplefilter("error")
    try:
        import autolog

        autolog.set_tracking_uri(uri)
        time.sleep(max(0.0, start_at - time.time()))  # all start at the same instant
        with autolog.start_run(run_name=f"proc-{index}", experiment="concurrent"):
            autolog.log_params({f"p{i}": i * index for i in range(PARAMS)})
            for step in range(POINTS):
                autolog.log_metric("loss", step * 0.5, step=step)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"process {index}: {type(exc).__name__}: {exc}")


def test_eight_processes_start_at_once_on_a_fresh_file(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    start_at = time.time() + 3.0
    processes = [context.Process(target=_writer_process, args=(uri, i, start_at, errors))
                 for i in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    store = SQLiteStore(uri, create=False)
    experiment = store.get_experiment_by_name("concurrent")
    runs = store.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"proc-{i}" for i in range(PROCESSES)]
    for record in runs:
        index = int(record.info.run_name.split("-")[1])
        assert record.status == "FINISHED"
        assert record.params == {f"p{i}": str(i * index) for i in range(PARAMS)}
        history = store.get_metric_history(record.run_id, "loss")
        assert [m.step for m in history] == list(range(POINTS))
        assert all(m.value == m.step * 0.5 for m in history)
    assert len(store.list_experiments()) == 1
