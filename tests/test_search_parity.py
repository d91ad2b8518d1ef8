"""Search parity: autolog's search finds the same runs, in the same order, as MLflow's
``MlflowClient.search_runs`` on the same store.

The runs are made by MLflow's own client (never by autolog's writing code): 40 active
runs and a deleted one, in two experiments, with params, tags, metrics (NaN and missing
ones included), the four statuses, repeated names and shared start times (so ties are
broken by MLflow's own rule). Every expression is checked on an MLflow SQLite database
through :func:`search_runs_with_mlflow`, on a fresh PostgreSQL database, and a subset
through a real ``mlflow server`` (the REST path) with ``autolog.search_runs``.
"""

from __future__ import annotations

import math
import random
import sys

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow_server import MlflowServer

import autolog
from autolog.stores.sql import search
from autolog.stores.sql.search import search_runs_with_mlflow

pytest_plugins = ("mlflow_server", "databases")

EXPERIMENTS = ("parity/a", "parity/b")
BASE_TIME = 1_700_000_000_000
NAMES = ("baseline", "cnn-wide", "cnn-deep", "rnn", "Baseline-2")
MODELS = ("cnn", "rnn", "mlp")
LEARNING_RATES = ("0.1", "0.01", "0.001", "1e-4")
TEAMS = ("vision", "Vision", "nlp")
STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING")

# (filter, order_by, max_results, experiments): ``{run_N}`` is the id of the Nth run made.
CASES = [
    ("", (), 1000, EXPERIMENTS),
    ("", (), 7, EXPERIMENTS),
    ("", (), 1000, EXPERIMENTS[1:]),
    ("metrics.acc > 0.5", (), 1000, EXPERIMENTS),
    ("metrics.acc >= 0.5 AND metrics.loss < 0.5", ("metrics.acc DESC",), 1000, EXPERIMENTS),
    ("metrics.acc != 0.25", (), 1000, EXPERIMENTS),
    ("metrics.loss <= 0.3", ("metrics.loss ASC",), 1000, EXPERIMENTS),
    ("metrics.acc = 0.5", (), 1000, EXPERIMENTS),
    ("metrics.missing > 0", (), 1000, EXPERIMENTS),
    ("params.model = 'cnn'", (), 1000, EXPERIMENTS),
    ("params.model != 'cnn'", ("params.lr DESC",), 1000, EXPERIMENTS),
    ("params.lr LIKE '0.0%'", (), 1000, EXPERIMENTS),
    ("params.model ILIKE 'CN%'", (), 1000, EXPERIMENTS),
    ("params.dropout IS NULL", ("params.layers ASC",), 1000, EXPERIMENTS),
    ("params.dropout = '0.5' AND tags.team != 'nlp'", (), 1000, EXPERIMENTS),
    ("tags.team = 'vision'", (), 1000, EXPERIMENTS),
    ("tags.team ILIKE 'vision'", (), 1000, EXPERIMENTS),
    ("tags.team LIKE 'V%'", (), 1000, EXPERIMENTS),
    ("tags.priority IS NOT NULL", ("tags.priority DESC",), 1000, EXPERIMENTS),
    ("tags.`mlflow.runName` = 'baseline'", (), 1000, EXPERIMENTS),
    ("attributes.run_name = 'baseline'", ("attributes.start_time ASC",), 1000, EXPERIMENTS),
    ("run_name LIKE 'cnn%'", (), 1000, EXPERIMENTS),
    ("run_name ILIKE '%BASE%'", (), 1000, EXPERIMENTS),
    ("attributes.run_name != 'baseline'", ("run_name ASC",), 10, EXPERIMENTS),
    ("attributes.status = 'FAILED'", (), 1000, EXPERIMENTS),
    ("status != 'RUNNING'", ("metrics.acc ASC",), 1000, EXPERIMENTS),
    (f"attributes.start_time > {BASE_TIME + 10_000}", (), 1000, EXPERIMENTS),
    (f"attributes.start_time >= {BASE_TIME + 4_000} AND attributes.start_time < {BASE_TIME + 15_000}",
     ("attributes.start_time DESC",), 1000, EXPERIMENTS),
    (f"attributes.end_time < {BASE_TIME + 12_000}", ("attributes.end_time DESC",), 1000, EXPERIMENTS),
    ("attributes.run_id IN ('{run_3}', '{run_17}', '{run_30}', '{run_40}')", (), 1000, EXPERIMENTS),
    ("attributes.run_id NOT IN ('{run_0}', '{run_1}')", ("metrics.loss DESC",), 1000, EXPERIMENTS),
    ("", ("metrics.acc DESC",), 1000, EXPERIMENTS),
    ("", ("metrics.acc ASC", "params.model DESC"), 1000, EXPERIMENTS),
    ("", ("params.lr ASC", "attributes.run_name DESC"), 1000, EXPERIMENTS),
    ("", ("tags.team ASC",), 1000, EXPERIMENTS),
    ("", ("attributes.status ASC", "metrics.loss DESC"), 1000, EXPERIMENTS),
    ("metrics.acc > 0.2", ("metrics.acc DESC",), 5, EXPERIMENTS),
    ("metrics.acc > 0.2 AND params.model = 'rnn' AND attributes.status = 'FINISHED'",
     ("start_time ASC",), 1000, EXPERIMENTS),
]
REST_CASES = CASES[::3]  # every third, through a real server


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """An MLflow SQLite database, made and filled by MLflow's own client."""
    directory = tmp_path_factory.mktemp("parity")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    return Dataset(uri, str(directory / "mlruns"))


class Dataset:
    """The runs, made by MLflow's client on ``uri``; ``run_ids[i]`` is the ith run made."""

    def __init__(self, uri: str, artifact_root: str):
        self.uri, self.artifact_root = uri, artifact_root
        self.client = MlflowClient(uri)
        self.experiment_ids = {name: self.client.create_experiment(name) for name in EXPERIMENTS}
        self.run_ids = [self._make_run(i, random.Random(i)) for i in range(41)]
        self.client.delete_run(self.run_ids[40])  # deleted: no search may find it

    def _make_run(self, i: int, rng: random.Random) -> str:
        experiment = EXPERIMENTS[0] if i % 5 < 3 else EXPERIMENTS[1]
        start = BASE_TIME + (i // 2) * 1000  # pairs of runs share a start time
        run = self.client.create_run(self.experiment_ids[experiment], start_time=start,
                                     run_name=NAMES[i % len(NAMES)], tags={"team": TEAMS[i % 3]})
        run_id = run.info.run_id
        params = [Param("model", MODELS[i % 3]), Param("lr", LEARNING_RATES[i % 4]),
                  Param("layers", str(2 + i % 4))]
        if i % 4 == 0:
            params.append(Param("dropout", "0.5"))
        tags = [RunTag("priority", ("high", "low")[i % 2])] if i % 5 == 0 else []
        acc = [round(rng.random(), 2) for _ in range(3)]
        if i % 9 == 0:
            acc[-1] = math.nan  # the latest value is NaN
        elif i % 10 == 7:
            acc[-1] = 0.5  # ties on the latest value
        metrics = [Metric("acc", value, start + step, step) for step, value in enumerate(acc)]
        if i % 6:
            metrics.append(Metric("loss", round(i / 40, 3), start, 0))
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        status = STATUSES[i % 4]
        if status != "RUNNING":
            self.client.set_terminated(run_id, status, end_time=start + 500 + 37 * (i % 7))
        return run_id

    def ids(self, experiments) -> list[str]:
        return [self.experiment_ids[name] for name in experiments]

    def expression(self, filter_string: str) -> str:
        return filter_string.format(**{f"run_{i}": run_id for i, run_id in enumerate(self.run_ids)})

    def mlflow_search(self, filter_string, order_by, max_results, experiments):
        return self.client.search_runs(self.ids(experiments), self.expression(filter_string),
                                       order_by=list(order_by), max_results=max_results)


def comparable(record) -> dict:
    """A record's content with NaN as a string (NaN != NaN would fail any comparison)."""
    data = record.to_dict()
    data["metrics"] = {key: "NaN" if math.isnan(value) else value
                       for key, value in data["metrics"].items()}
    return data


def mlflow_comparable(run) -> dict:
    info = run.info
    return {
        "run_id": info.run_id, "experiment_id": info.experiment_id, "run_name": info.run_name,
        "status": info.status, "start_time": info.start_time, "end_time": info.end_time,
        "artifact_uri": info.artifact_uri,
        "params": dict(sorted(run.data.params.items())),
        "tags": dict(sorted(run.data.tags.items())),
        "metrics": {key: "NaN" if math.isnan(value) else value
                    for key, value in sorted(run.data.metrics.items())},
    }


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0] or '-'} | {', '.join(c[1]) or '-'} | {c[2]}"
                                             for c in CASES])
def test_sqlite_search_matches_mlflow(mlflow_db, case):
    filter_string, order_by, max_results, experiments = case
    ours = search_runs_with_mlflow(mlflow_db.uri, mlflow_db.artifact_root, mlflow_db.ids(experiments),
                                   mlflow_db.expression(filter_string), order_by, max_results)
    theirs = mlflow_db.mlflow_search(*case)
    assert [r.run_id for r in ours] == [r.info.run_id for r in theirs]
    assert [comparable(r) for r in ours] == [mlflow_comparable(r) for r in theirs]


def test_api_on_an_mlflow_database_matches_mlflow(mlflow_db, monkeypatch):
    """``autolog.search_runs`` on the database itself: a plain listing is the SQL store's
    own query, a filter or an order MLflow's search; both as MLflow orders them."""
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", mlflow_db.uri)
    for case in CASES:
        filter_string, order_by, max_results, experiments = case
        ours = autolog.search_runs(list(experiments), mlflow_db.expression(filter_string),
                                   order_by=list(order_by), max_results=max_results)
        theirs = mlflow_db.mlflow_search(*case)
        assert [comparable(r) for r in ours] == [mlflow_comparable(r) for r in theirs], case


def test_the_cases_are_not_trivial(mlflow_db):
    """The data set gives each case something to tell apart: most cases find some runs but
    not all, and the deleted run is never found."""
    found = [len(mlflow_db.mlflow_search(*case)) for case in CASES]
    assert len(CASES) >= 30
    assert sum(0 < n < 40 for n in found) >= 25, found
    everything = search_runs_with_mlflow(mlflow_db.uri, mlflow_db.artifact_root,
                                         mlflow_db.ids(EXPERIMENTS))
    assert len(everything) == 40 and mlflow_db.run_ids[40] not in {r.run_id for r in everything}
    nan_runs = [r for r in everything if math.isnan(r.metrics["acc"])]
    assert {r.run_id for r in nan_runs} == {mlflow_db.run_ids[i] for i in range(0, 40, 9)}


def test_results_are_paged_past_mlflows_page_limit(mlflow_db, monkeypatch):
    monkeypatch.setattr(search, "MLFLOW_PAGE_LIMIT", 7)  # 40 runs: 6 pages
    case = ("", ("metrics.acc DESC",), 1000, EXPERIMENTS)
    ours = search_runs_with_mlflow(mlflow_db.uri, mlflow_db.artifact_root, mlflow_db.ids(EXPERIMENTS),
                                   "", case[1], 1000)
    assert [r.run_id for r in ours] == [r.info.run_id for r in mlflow_db.mlflow_search(*case)]
    assert len(search_runs_with_mlflow(mlflow_db.uri, mlflow_db.artifact_root,
                                       mlflow_db.ids(EXPERIMENTS), "", (), 23)) == 23


@pytest.mark.parametrize(("filter_string", "order_by", "message"), [
    ("metrics.acc >> 0.5", (), "Invalid comparator '>>'"),
    ("params.model > 'cnn'", (), "Invalid comparator '>' not one of"),
    ("attributes.run_name IN ('a')", (), r"Only \['run_id'\] attributes support comparison with a list"),
    ("", ("metrics.acc SIDEWAYS",), "Invalid ordering key in order_by clause"),
    ("", ("metrics.acc", "metrics.acc DESC"), "`order_by` contains duplicate fields"),
])
def test_a_refused_expression_is_a_value_error_with_mlflows_message(mlflow_db, filter_string,
                                                                    order_by, message):
    with pytest.raises(ValueError, match=message) as refused:
        search_runs_with_mlflow(mlflow_db.uri, mlflow_db.artifact_root, mlflow_db.ids(EXPERIMENTS),
                                filter_string, order_by)
    with pytest.raises(MlflowException) as mlflows:  # MLflow's own client: the same words
        mlflow_db.client.search_runs(mlflow_db.ids(EXPERIMENTS), filter_string, order_by=list(order_by))
    assert str(refused.value) == mlflows.value.message


def test_importing_autolog_does_not_import_mlflow():
    import subprocess

    code = "import sys, autolog; print('mlflow' in sys.modules, 'sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


# -- the REST path: a real mlflow server on the same database -------------------------------


@pytest.fixture(scope="module")
def parity_server(mlflow_db, tmp_path_factory):
    server = MlflowServer(mlflow_db.uri, tmp_path_factory.mktemp("parity-server")).start()
    yield server
    server.stop()


@pytest.fixture
def on_server(parity_server, spool_dir, monkeypatch):
    monkeypatch.setenv("AUTOLOG_TRACKING_URI", parity_server.uri)
    return parity_server


@pytest.mark.parametrize("case", REST_CASES, ids=[f"{c[0] or '-'} | {', '.join(c[1]) or '-'} | {c[2]}"
                                                  for c in REST_CASES])
def test_rest_search_matches_mlflow(mlflow_db, on_server, case):
    filter_string, order_by, max_results, experiments = case
    ours = autolog.search_runs(list(experiments), mlflow_db.expression(filter_string),
                               order_by=list(order_by), max_results=max_results)
    theirs = mlflow_db.mlflow_search(*case)
    assert [r.run_id for r in ours] == [r.info.run_id for r in theirs]
    assert [comparable(r) for r in ours] == [mlflow_comparable(r) for r in theirs]


def test_rest_search_refusal_is_a_value_error_with_mlflows_message(mlflow_db, on_server):
    with pytest.raises(ValueError, match="Invalid comparator '>>'"):
        autolog.search_runs(list(EXPERIMENTS), "metrics.acc >> 0.5")
    with pytest.raises(ValueError, match="no experiment named 'parity/nope'"):
        autolog.search_runs(["parity/a", "parity/nope"])


def test_pandas_output_is_shaped_like_mlflows(mlflow_db, on_server):
    import mlflow

    order = ["metrics.acc DESC"]
    ours = autolog.search_runs(list(EXPERIMENTS), "params.model != 'mlp'", order_by=order,
                               output_format="pandas")
    mlflow.set_tracking_uri(mlflow_db.uri)  # over whatever an earlier test of this process set
    try:
        theirs = mlflow.search_runs(mlflow_db.ids(EXPERIMENTS), "params.model != 'mlp'",
                                    order_by=order, output_format="pandas")
    finally:
        mlflow.set_tracking_uri(None)  # MLflow's own unset state
    theirs = theirs.drop(columns=["artifact_uri"])
    assert list(ours.columns[:5]) == ["run_id", "experiment_id", "status", "start_time", "end_time"]
    assert set(ours.columns) == set(theirs.columns)
    theirs = theirs[list(ours.columns)]
    assert len(ours) == len(theirs) > 0
    for column in ours.columns:
        assert ours[column].tolist() == theirs[column].tolist() or (
            ours[column].isna().tolist() == theirs[column].isna().tolist()
            and ours[column].dropna().tolist() == theirs[column].dropna().tolist()), column


def test_pandas_output_without_pandas_says_what_to_install(on_server, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=r'pip install "autolog-ml\[pandas\]"'):
        autolog.search_runs(list(EXPERIMENTS), output_format="pandas")


# -- PostgreSQL: a fresh database per test (databases.postgres_uri) ---------------------------


def test_postgres_search_matches_mlflow(postgres_uri, tmp_path):
    data = Dataset(postgres_uri, str(tmp_path / "mlruns"))
    for case in CASES:
        filter_string, order_by, max_results, experiments = case
        ours = search_runs_with_mlflow(postgres_uri, data.artifact_root, data.ids(experiments),
                                       data.expression(filter_string), order_by, max_results)
        theirs = data.mlflow_search(*case)
        assert [r.run_id for r in ours] == [r.info.run_id for r in theirs], case
        assert [comparable(r) for r in ours] == [mlflow_comparable(r) for r in theirs], case
    with pytest.raises(ValueError, match="Invalid comparator"):
        search_runs_with_mlflow(postgres_uri, data.artifact_root, data.ids(EXPERIMENTS),
                                "params.model > 'cnn'")
