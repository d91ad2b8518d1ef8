"""Dataset inputs: each autologged fit records its training and evaluation data as MLflow
records them (``log_inputs``), and MLflow's own client reads them back, from SQLite,
PostgreSQL and MariaDB, through a server, and after the server was down. What a dataset
is described as (schema, profile) is checked against MLflow's own NumpyDataset and
PandasDataset of the same data; the digest against the promise that it reads a sample."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import sqlalchemy
import xgboost as xgb
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.numpy_dataset import from_numpy
from mlflow.data.pandas_dataset import from_pandas
from mlflow.data.schema import TensorDatasetSchema
from mlflow.types import Schema
from sklearn.linear_model import LogisticRegression
from test_spool import messages, recorded_warnings

import autolog
from autolog.cli import main
from autolog.datasets import SAMPLE_ELEMENTS, SAMPLE_ROWS, describe
from autolog.source import SOURCE_NAME, SOURCE_TYPE, USER
from autolog.stores import close_all
from autolog.stores.mlflow_rest import MlflowRestClient

pytest_plugins = ("mlflow_server", "databases")

CONTEXT = "mlflow.data.context"


def frame(rows: int = 60, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": rng.integers(18, 90, rows), "income": rng.normal(50, 10, rows),
                      "ratio": rng.random(rows).astype(np.float32)})
    return X, (X["income"].to_numpy() > 50).astype(int)


def arrays(rows: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 4))
    return X, (X[:, 0] > 0).astype(int)


def inputs_of(client: MlflowClient, run_id: str) -> dict[str, tuple]:
    """name -> (digest, context, dataset) of a run's dataset inputs, read by MLflow."""
    found = {}
    for item in client.get_run(run_id).inputs.dataset_inputs:
        tags = {tag.key: tag.value for tag in item.tags}
        assert item.dataset.name not in found, f"{item.dataset.name} twice"
        found[item.dataset.name] = (item.dataset.digest, tags.get(CONTEXT), item.dataset)
    return found


def assert_described(dataset, expected) -> None:
    """``dataset`` (read back by MLflow) is ``expected`` (autolog's DatasetInput), and its
    fields parse with MLflow's own classes."""
    assert (dataset.name, dataset.digest, dataset.source_type) == (
        expected.name, expected.digest, "code")
    assert json.loads(dataset.profile) == json.loads(expected.profile)
    assert dataset.schema == expected.schema
    schema = json.loads(dataset.schema)
    if "mlflow_tensorspec" in schema:
        TensorDatasetSchema.from_dict(schema)
    else:
        Schema.from_json(json.dumps(schema["mlflow_colspec"]))
    source = CodeDatasetSource.from_dict(json.loads(dataset.source))
    assert {USER, SOURCE_NAME, SOURCE_TYPE} <= set(source.to_dict()["tags"])


# -- what a dataset is described as ---------------------------------------------------------


def _numpy_cases():
    X, y = arrays()
    rng = np.random.default_rng(2)
    return {
        "float64 with int targets": (X, y, X, y),
        "float32, 3-d, no targets": (X.astype(np.float32).reshape(60, 2, 2), None,) * 2,
        "text": (np.array(["a", "bc", "d"]), None) * 2,
        "a pandas Series as targets": (X, pd.Series(y, name="label"), X, pd.Series(y, name="label")),
        "sparse csr with targets": (scipy.sparse.csr_matrix(rng.random((30, 5)) > 0.7, dtype=np.float64),
                                    y[:30], None, y[:30]),
    }


@pytest.mark.parametrize("case", list(_numpy_cases()))
def test_arrays_are_described_as_mlflows_numpy_dataset(case):
    features, targets, reference_features, reference_targets = _numpy_cases()[case]
    if reference_features is None:  # MLflow describes a sparse matrix as its dense array
        reference_features = features.toarray()
    mine = describe(features, targets)
    reference = from_numpy(reference_features, targets=reference_targets, digest="unused",
                           source=CodeDatasetSource({}))._to_mlflow_entity()
    assert json.loads(mine.schema) == json.loads(reference.schema)
    assert json.loads(mine.profile) == json.loads(reference.profile)
    TensorDatasetSchema.from_dict(json.loads(mine.schema))
    assert (mine.name, mine.context, mine.source_type) == ("dataset", "train", "code")
    assert len(mine.digest) == 8 and int(mine.digest, 16) >= 0


def test_frames_are_described_as_mlflows_pandas_dataset():
    X = pd.DataFrame({
        "n": [1, 2, 3, 4], "x": [0.5, 1.5, np.nan, 2.0], "f": np.arange(4, dtype=np.float32),
        "s": ["a", "b", None, "d"], "b": [True, False, True, True],
        "t": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]),
        "cat": pd.Categorical(["u", "v", "u", "v"]), "i8": np.arange(4, dtype=np.int8),
        "nullable": pd.array([1, None, 3, 4], dtype="Int64"),
        "text": pd.array(["p", "q", "r", "s"], dtype="string"),
        "lists": [[1, 2], [3], [], [4]], "empty": [None] * 4,
    })
    mine = describe(X, context="eval", name="customers")
    reference = from_pandas(X, source=CodeDatasetSource({}))._to_mlflow_entity()
    assert json.loads(mine.schema) == json.loads(reference.schema)
    assert json.loads(mine.profile) == json.loads(reference.profile) == {"num_rows": 4,
                                                                         "num_elements": 48}
    Schema.from_json(json.dumps(json.loads(mine.schema)["mlflow_colspec"]))
    assert (mine.name, mine.context) == ("customers", "eval")


@pytest.mark.parametrize("column", [np.array([1, 2], dtype=np.uint64), [1, "a"]])
def test_a_frame_mlflow_has_no_schema_for_is_described_without_one(column):
    X = pd.DataFrame({"ok": [1.0, 2.0], "odd": column})
    reference = from_pandas(X, source=CodeDatasetSource({}))._to_mlflow_entity()
    mine = describe(X)
    assert mine.schema is None and reference.schema is None
    assert json.loads(mine.profile) == {"num_rows": 2, "num_elements": 4}


def test_the_digest_reads_a_sample_not_the_whole_array():
    big = np.zeros(SAMPLE_ELEMENTS * 50)
    digest = describe(big).digest
    big[SAMPLE_ELEMENTS + 7] = 1.0  # past the sample: not read
    assert describe(big).digest == digest
    big[7] = 1.0  # in the sample
    assert describe(big).digest != digest
    assert describe(big.reshape(-1, 50)).digest != describe(big).digest  # the shape counts

    # Not contiguous: the sample is the first elements in C order, whatever the strides.
    columns = np.zeros((SAMPLE_ELEMENTS * 3, 2)).T  # row 0 holds the first 30,000 elements
    digest = describe(columns).digest
    columns[1, 0] = 1.0
    assert describe(columns).digest == digest
    columns[0, SAMPLE_ELEMENTS - 1] = 1.0
    assert describe(columns).digest != digest

    # 10**12 elements (8 TB) that exist only as a broadcast view: a pass over them could
    # not end, a sample is read at once.
    huge = np.broadcast_to(np.float64(3.0), (10**6, 10**6))
    profile = json.loads(describe(huge).profile)
    assert profile == {"features_shape": [10**6, 10**6], "features_size": 10**12,
                       "features_nbytes": 8 * 10**12}


def test_the_digest_of_a_frame_reads_its_first_rows():
    X = pd.DataFrame({"a": np.zeros(SAMPLE_ROWS * 3), "b": ["x"] * (SAMPLE_ROWS * 3)})
    digest = describe(X).digest
    X.loc[SAMPLE_ROWS + 1, "b"] = "changed"
    assert describe(X).digest == digest
    X.loc[3, "a"] = 1.0
    assert describe(X).digest != digest
    assert describe(X.iloc[:-1]).digest != describe(X).digest  # the row count counts
    assert describe(X, pd.Series(np.ones(len(X)))).digest != describe(X).digest  # and targets


def test_log_input_refuses_what_it_cannot_describe_at_the_call():
    X, y = arrays()
    with pytest.raises(TypeError, match="numpy array, a pandas DataFrame"):
        autolog.log_input([[1.0, 2.0]])
    with pytest.raises(TypeError, match="targets must be"):
        autolog.log_input(X, targets=[0, 1])
    with pytest.raises(ValueError, match="dataset name .* 501 characters; the limit is 500"):
        autolog.log_input(X, name="n" * 501)
    with pytest.raises(ValueError, match="dataset context .* the limit is 500"):
        autolog.log_input(X, context="c" * 501)
    with pytest.raises(TypeError, match="context must be a string"):
        autolog.log_input(X, context=3)
    assert autolog.active_run() is None  # refused before a run was started


# -- what autologged fits record, read by MLflow's client -----------------------------------


def fit_everything(uri: str) -> dict[str, str]:
    """A scikit-learn fit, xgboost.train with evals, and an XGBClassifier fit with an
    eval set, each in its own run; the run ids by name."""
    autolog.autolog(tracking_uri=uri, experiment="datasets")
    X, y = frame()
    Xa, ya = arrays()
    ids = {}
    with autolog.start_run(run_name="sklearn") as run:
        LogisticRegression(max_iter=200).fit(X, y)
    ids["sklearn"] = run.id
    with autolog.start_run(run_name="train") as run:
        dtrain = xgb.DMatrix(Xa[:40], label=ya[:40], feature_names=list("abcd"))
        dval = xgb.DMatrix(Xa[40:], label=ya[40:], feature_names=list("abcd"))
        xgb.train({"objective": "binary:logistic", "nthread": 1}, dtrain, num_boost_round=3,
                  evals=[(dtrain, "train"), (dval, "val")], verbose_eval=False)
    ids["train"] = run.id
    with autolog.start_run(run_name="classifier") as run:
        xgb.XGBClassifier(n_estimators=3, n_jobs=1).fit(Xa[:40], ya[:40], eval_set=[(Xa[40:], ya[40:])],
                                                        verbose=False)
    ids["classifier"] = run.id
    assert autolog.flush(timeout=60)
    return ids


def check_everything(client: MlflowClient, ids: dict[str, str]) -> None:
    X, y = frame()
    Xa, ya = arrays()
    sklearn = inputs_of(client, ids["sklearn"])
    assert list(sklearn) == ["dataset"]
    assert sklearn["dataset"][1] == "train"
    assert_described(sklearn["dataset"][2], describe(X, y))
    assert json.loads(sklearn["dataset"][2].profile) == {"num_rows": 60, "num_elements": 180}

    train = inputs_of(client, ids["train"])
    assert {name: context for name, (_, context, _) in train.items()} == {
        "dataset": "train", "train": "eval", "val": "eval"}
    assert train["dataset"][0] == train["train"][0]  # dtrain, once as the data, once as an eval set
    assert train["val"][0] != train["dataset"][0]
    for name, rows in (("dataset", 40), ("val", 20)):
        dataset = train[name][2]
        assert json.loads(dataset.profile) == {"features_shape": [rows, 4], "features_size": rows * 4,
                                               "features_nbytes": rows * 16}
        assert json.loads(json.loads(dataset.schema)["mlflow_tensorspec"]["features"]) == [
            {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
        TensorDatasetSchema.from_dict(json.loads(dataset.schema))

    classifier = inputs_of(client, ids["classifier"])  # X, y and eval_set; not the DMatrix
    assert {name: context for name, (_, context, _) in classifier.items()} == {
        "dataset": "train", "validation_0": "eval"}
    assert_described(classifier["dataset"][2], describe(Xa[:40], ya[:40]))
    assert_described(classifier["validation_0"][2],
                     describe(Xa[40:], ya[40:], context="eval", name="validation_0"))


def test_fits_record_their_data_in_each_mlflow_database(sql_uri):
    ids = fit_everything(sql_uri)
    check_everything(MlflowClient(tracking_uri=sql_uri), ids)


def test_a_fit_without_a_run_of_the_users_records_its_data_in_its_own_run():
    autolog.autolog()
    X, y = arrays()
    LogisticRegression().fit(X, y)
    assert autolog.flush()
    client = MlflowClient(tracking_uri=autolog.get_tracking_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.info.status == "FINISHED"
    (item,) = run.inputs.dataset_inputs
    assert (item.dataset.digest, [(t.key, t.value) for t in item.tags]) == (
        describe(X, y).digest, [(CONTEXT, "train")])


def test_log_datasets_false_records_no_input():
    autolog.autolog(sklearn={"log_datasets": False, "log_models": False},
                    xgboost={"log_datasets": False, "log_models": False})
    X, y = arrays()
    LogisticRegression().fit(X, y)  # each fit in a run of its own
    xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(X, y), 2, evals=[(xgb.DMatrix(X, y), "val")])
    xgb.XGBClassifier(n_estimators=2).fit(X, y, eval_set=[(X, y)], verbose=False)
    assert autolog.flush()
    client = MlflowClient(tracking_uri=autolog.get_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert len(runs) == 3 and all(run.data.metrics for run in runs)
    assert [run.inputs.dataset_inputs for run in runs] == [[], [], []]


def test_a_dataset_is_stored_once_per_experiment_and_an_input_once_per_run(sql_uri):
    X, y = arrays()
    autolog.set_tracking_uri(sql_uri)
    runs = []
    for _ in range(2):
        with autolog.start_run(experiment="datasets/shared") as run:
            autolog.log_input(X, y)
            autolog.log_input(X, y)  # again: one input
            autolog.flush()
            autolog.log_input(X, y, context="eval")  # again, written apart: still one input
        runs.append(run.id)
    with autolog.start_run(experiment="datasets/other") as other:
        autolog.log_input(X, y)
    assert autolog.flush()
    client = MlflowClient(tracking_uri=sql_uri)
    for run_id in runs:
        assert [(t.key, t.value) for item in client.get_run(run_id).inputs.dataset_inputs
                for t in item.tags] == [(CONTEXT, "train")]  # the first context stays
    assert len(client.get_run(other.id).inputs.dataset_inputs) == 1
    engine = sqlalchemy.create_engine(sql_uri, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        datasets = conn.execute(sqlalchemy.text(
            "SELECT experiment_id, COUNT(*) FROM datasets GROUP BY experiment_id")).all()
        inputs = conn.execute(sqlalchemy.text("SELECT COUNT(*) FROM inputs")).scalar()
    engine.dispose()
    assert sorted(count for _, count in datasets) == [1, 1]  # one per experiment
    assert inputs == 3


# -- through an MLflow server, and while it is down -------------------------------------------


def test_fits_record_their_data_through_a_server(mlflow_server, spool_dir):
    ids = fit_everything(mlflow_server.uri)
    check_everything(mlflow_server.client(), ids)

    # sent again (an acknowledgement that was lost): the server keeps one input
    client = MlflowRestClient(mlflow_server.uri)
    X, y = arrays()
    client.log_inputs(ids["classifier"], [describe(X[:40], y[:40])])
    client.close()
    assert len(mlflow_server.client().get_run(ids["classifier"]).inputs.dataset_inputs) == 2


def test_inputs_logged_while_the_server_is_down_arrive_when_it_answers(fault_server, spool_dir):
    fault_server.kill()
    autolog.autolog(tracking_uri=fault_server.uri, experiment="datasets/outage")
    X, y = frame()
    with recorded_warnings() as seen:
        LogisticRegression(max_iter=200).fit(X, y)  # its run starts offline
        started = re.search(r"run (offline-\w+) started offline", messages(seen))
        assert started, messages(seen)
        fault_server.start()
        assert autolog.flush(timeout=60)
    run_id = started.group(1)
    remote = fault_server.run_by_local_id(run_id)
    assert remote.info.status == "FINISHED"
    (item,) = remote.inputs.dataset_inputs
    assert_described(item.dataset, describe(X, y))
    assert [(t.key, t.value) for t in item.tags] == [(CONTEXT, "train")]


def test_inputs_spooled_by_a_process_that_exited_are_sent_by_autolog_sync(fault_server, spool_dir):
    fault_server.kill()
    autolog.set_tracking_uri(fault_server.uri)
    X, y = arrays()
    with recorded_warnings():
        with autolog.start_run(experiment="datasets/sync") as run:
            autolog.log_input(X, y, name="features")
            autolog.log_input(X[:10], y[:10], context="eval", name="holdout")
        close_all()  # what the exit does: the spool stays on disk
    assert list(spool_dir.glob("*.spool"))

    fault_server.start()
    for _ in range(2):  # sent once, then nothing is left to send (and nothing is doubled)
        result = CliRunner().invoke(main, ["sync"])
        assert result.exit_code == 0, result.output
        remote = fault_server.run_by_local_id(run.id)
        found = inputs_of(fault_server.client(), remote.info.run_id)
        assert {name: (digest, context) for name, (digest, context, _) in found.items()} == {
            "features": (describe(X, y).digest, "train"),
            "holdout": (describe(X[:10], y[:10]).digest, "eval")}
    assert list(spool_dir.glob("*.spool")) == []


# -- the embedded store, locked at exit ---------------------------------------------------------


_LOG_INPUT_AFTER_GO = textwrap.dedent("""
    import sys, numpy, autolog
    run = autolog.start_run()
    print(run.id, flush=True)
    sys.stdin.readline()  # the parent locks the store meanwhile
    autolog.log_input(numpy.arange(12.0).reshape(4, 3), name="locked")
""")


def test_inputs_a_locked_store_cannot_take_at_exit_are_spooled_then_written(tmp_path):
    db_path = tmp_path / "mlflow.db"
    spool = tmp_path / "exit-spool"
    env = {**os.environ, "AUTOLOG_TRACKING_URI": f"sqlite:///{db_path}",
           "AUTOLOG_SPOOL_DIR": str(spool), "AUTOLOG_EXIT_TIMEOUT": "1",
           "AUTOLOG_SQLITE_BUSY_TIMEOUT": "0.3"}
    process = subprocess.Popen([sys.executable, "-c", _LOG_INPUT_AFTER_GO], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run_id = process.stdout.readline().strip()
    assert run_id, process.communicate()[1]
    lock = sqlite3.connect(str(db_path), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # as another process writing would
    try:
        process.stdin.write("go\n")
        process.stdin.flush()
        stderr = process.communicate(timeout=120)[1]
        assert process.returncode == 0, stderr
        assert f"of run {run_id} could not be written" in stderr and "kept in" in stderr
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{db_path}")
    assert client.get_run(run_id).inputs.dataset_inputs == []
    result = CliRunner().invoke(main, ["sync", "--spool-dir", str(spool)])
    assert result.exit_code == 0, result.output
    (item,) = client.get_run(run_id).inputs.dataset_inputs
    assert (item.dataset.name, item.dataset.digest) == (
        "locked", describe(np.arange(12.0).reshape(4, 3)).digest)
    assert client.get_run(run_id).info.status == "FINISHED"
