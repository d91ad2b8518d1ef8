"""What autolog writes into a SQL database is MLflow's own, as MLflow itself reads it.

autolog logs into a fresh SQLite, PostgreSQL and MariaDB database (``sql_uri``). Every
check then goes through MLflow's code, never autolog's reading code: ``MlflowClient`` on
the same URI, ``mlflow server --backend-store-uri`` on it (REST), and its UI rendered by
headless Chromium. What MLflow's client stores for the same calls is the reference (MLflow
keeps ±inf as ±max float, NaN with a flag), so "equal" means: as if MLflow had logged it.
"""

from __future__ import annotations

import math
import time

import pytest
import requests
from browser import page_text, require_chromium, run_page_url

import autolog

pytest_plugins = ("mlflow_server", "databases")

EXPERIMENT = "schema-check"
PARENT, CHILD, DOOMED, REFERENCE = "autolog-parent", "autolog-child", "autolog-doomed", "mlflow-reference"
T0 = 1_700_000_000_000
PARAMS = {"lr": 0.01, "batch_size": 32, "optimizer": "adam", "layers": [64, 32]}
TAGS = {"team": "vision", "note": "naïve ✓ 文字"}
POINTS = [  # (key, step, value, timestamp), logged in this order
    ("loss", 0, 1.0, T0), ("loss", 1, 0.5, T0 + 1000), ("loss", 2, 0.25, T0 + 2000),
    ("loss", 1, 0.4, T0 + 3000),  # step 1 again, later: the latest stays step 2's
    ("special", 0, math.nan, T0), ("special", 1, math.inf, T0 + 1),
    ("special", 2, -math.inf, T0 + 2), ("special", 3, math.nan, T0 + 3),
]
BATCH = ({"accuracy": 0.875, "f1": 0.75}, 3, T0 + 5000)  # log_metrics(values, step, timestamp)


# -- what is logged -------------------------------------------------------------------------


def log_with_autolog(uri: str) -> dict[str, str]:
    """The plan, through autolog's API: a finished parent with a nested child, and a run
    that failed. Returns the run ids by name."""
    autolog.set_tracking_uri(uri)
    with autolog.start_run(run_name=PARENT, experiment=EXPERIMENT, tags={"origin": "start_run"}) as parent:
        autolog.log_params({key: value for key, value in PARAMS.items() if key != "lr"})
        autolog.log_param("lr", PARAMS["lr"])
        autolog.set_tags(TAGS)
        autolog.set_tag("stage", "dev")
        for key, step, value, timestamp in POINTS:
            autolog.log_metric(key, value, step=step, timestamp=timestamp)
        autolog.log_metrics(*BATCH)
        with autolog.start_run(run_name=CHILD, nested=True) as child:
            autolog.log_metric("fold_score", 0.5, step=7, timestamp=T0)
    with pytest.raises(RuntimeError, match="diverged"):
        with autolog.start_run(run_name=DOOMED, experiment=EXPERIMENT) as doomed:
            autolog.log_metric("loss", 9.0, step=0, timestamp=T0)
            raise RuntimeError("diverged")
    assert autolog.flush(), "autolog could not write everything"
    return {PARENT: parent.id, CHILD: child.id, DOOMED: doomed.id}


def log_reference_with_mlflow(client, experiment_id: str) -> str:
    """The parent's data, through MLflow's own client: how MLflow itself stores it."""
    from mlflow.entities import Param, RunTag

    run_id = client.create_run(experiment_id, run_name=REFERENCE, tags={"origin": "start_run"}).info.run_id
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in PARAMS.items()],
                     tags=[RunTag(key, value) for key, value in {**TAGS, "stage": "dev"}.items()])
    for key, step, value, timestamp in POINTS:
        client.log_metric(run_id, key, value, timestamp=timestamp, step=step)
    values, step, timestamp = BATCH
    for key, value in values.items():
        client.log_metric(run_id, key, value, timestamp=timestamp, step=step)
    client.set_terminated(run_id)
    return run_id


# -- MLflow's view of runs ------------------------------------------------------------------


def _value(value: float) -> float | str:
    return "NaN" if math.isnan(value) else value  # NaN != NaN: compare a marker


def run_view(client, run_id: str) -> dict:
    """One run as MLflow's client reads it, ids, names and times aside: status, params, the
    user's tags (not the system tags either tool adds), latest metrics, every metric point."""
    run = client.get_run(run_id)
    return {
        "status": run.info.status,
        "lifecycle_stage": run.info.lifecycle_stage,
        "params": run.data.params,
        "tags": {key: value for key, value in run.data.tags.items()
                 if not key.startswith(("mlflow.", "autolog."))},
        "latest": {key: _value(value) for key, value in run.data.metrics.items()},
        "history": {key: sorted((m.step, m.timestamp, _value(m.value))
                                for m in client.get_metric_history(run_id, key))
                    for key in run.data.metrics},
    }


def database_dump(client) -> dict:
    """Every experiment and run of a tracking store, with every metric point, as MLflow's
    client reads them."""
    from mlflow.entities import ViewType

    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL,
                              max_results=10_000)
    return {
        "experiments": {e.experiment_id: dict(e) for e in experiments},
        "runs": {r.info.run_id: {"info": dict(r.info), "all_tags": r.data.tags,
                                 **run_view(client, r.info.run_id)} for r in runs},
    }


def _ids(runs) -> set[str]:
    return {run.info.run_id for run in runs}


# -- tests ----------------------------------------------------------------------------------


def test_mlflow_client_reads_every_value_autolog_logged(sql_uri):
    from mlflow import MlflowClient

    started = int(time.time() * 1000)
    ids = log_with_autolog(sql_uri)
    client = MlflowClient(tracking_uri=sql_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None and experiment.lifecycle_stage == "active"
    reference = log_reference_with_mlflow(client, experiment.experiment_id)

    parent = client.get_run(ids[PARENT])
    assert parent.info.run_name == PARENT and parent.data.tags["mlflow.runName"] == PARENT
    assert parent.info.experiment_id == experiment.experiment_id
    assert started <= parent.info.start_time <= parent.info.end_time
    assert run_view(client, ids[PARENT]) == run_view(client, reference)
    view = run_view(client, ids[PARENT])
    assert view["params"] == {key: str(value) for key, value in PARAMS.items()}
    assert view["tags"] == {**TAGS, "stage": "dev", "origin": "start_run"}
    assert view["status"] == "FINISHED"
    assert [point[:2] for point in view["history"]["loss"]] == [(0, T0), (1, T0 + 1000), (1, T0 + 3000),
                                                                (2, T0 + 2000)]
    assert view["latest"]["loss"] == 0.25 and view["latest"]["accuracy"] == 0.875

    child = client.get_run(ids[CHILD])
    assert child.info.run_name == CHILD and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == ids[PARENT]
    assert child.info.experiment_id == experiment.experiment_id
    assert [(m.step, m.value) for m in client.get_metric_history(ids[CHILD], "fold_score")] == [(7, 0.5)]

    doomed = client.get_run(ids[DOOMED])
    assert doomed.info.run_name == DOOMED and doomed.info.status == "FAILED"
    assert doomed.info.end_time is not None and doomed.data.metrics == {"loss": 9.0}

    everything = {*ids.values(), reference}
    assert _ids(client.search_runs([experiment.experiment_id])) == everything
    search = {
        "params.optimizer = 'adam'": {ids[PARENT], reference},
        f"tags.mlflow.parentRunId = '{ids[PARENT]}'": {ids[CHILD]},
        "attributes.status = 'FAILED'": {ids[DOOMED]},
        f"attributes.run_name = '{CHILD}'": {ids[CHILD]},
        "metrics.accuracy > 0.8 AND tags.team = 'vision'": {ids[PARENT], reference},
        "metrics.loss >= 9": {ids[DOOMED]},
    }
    for filter_string, expected in search.items():
        assert _ids(client.search_runs([experiment.experiment_id], filter_string)) == expected, filter_string
    by_loss = client.search_runs([experiment.experiment_id], "metrics.loss > 0",
                                 order_by=["metrics.loss DESC"])
    assert [run.info.run_id for run in by_loss][0] == ids[DOOMED]


def test_mlflow_server_serves_what_autolog_logged_over_rest(sql_uri, mlflow_server_on):
    from mlflow import MlflowClient

    ids = log_with_autolog(sql_uri)
    server = mlflow_server_on(sql_uri)
    direct, over_rest = MlflowClient(tracking_uri=sql_uri), server.client()
    for run_id in ids.values():
        assert run_view(over_rest, run_id) == run_view(direct, run_id)

    api = f"{server.uri}/api/2.0/mlflow"
    run = requests.get(f"{api}/runs/get", params={"run_id": ids[PARENT]}, timeout=30).json()["run"]
    assert run["info"]["run_name"] == PARENT and run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {k: str(v) for k, v in PARAMS.items()}
    history = requests.get(f"{api}/metrics/get-history", params={"run_id": ids[PARENT], "metric_key": "loss"},
                           timeout=30).json()["metrics"]
    assert sorted((int(m["step"]), m["value"]) for m in history) == [(0, 1.0), (1, 0.4), (1, 0.5), (2, 0.25)]
    found = requests.post(f"{api}/runs/search", timeout=30, json={
        "experiment_ids": [run["info"]["experiment_id"]],
        "filter": f"tags.mlflow.parentRunId = '{ids[PARENT]}'",
    }).json()["runs"]
    assert [r["info"]["run_id"] for r in found] == [ids[CHILD]]


def test_mlflow_ui_shows_a_run_autolog_logged(sql_uri, mlflow_server_on):
    require_chromium()
    ids = log_with_autolog(sql_uri)
    server = mlflow_server_on(sql_uri)
    experiment_id = server.client().get_run(ids[PARENT]).info.experiment_id
    text = page_text(run_page_url(server.uri, experiment_id, ids[PARENT]),
                     expect=(PARENT, "accuracy 0.875"))
    assert PARENT in text and "accuracy 0.875" in text, text[:3000]
    assert "Finished" in text


def test_a_database_mlflow_created_and_filled_keeps_its_runs_untouched(sql_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sql_uri)  # MLflow creates the schema, then fills it
    experiment_id = client.create_experiment("mlflow-made", tags={"owner": "mlflow"})
    parent = client.create_run(experiment_id, run_name="mlflow-parent").info.run_id
    client.log_param(parent, "lr", "0.1")
    client.set_tag(parent, "team", "vision")
    for step in range(5):
        client.log_metric(parent, "loss", 1 / (step + 1), timestamp=T0 + step, step=step)
    client.log_metric(parent, "odd", math.nan, timestamp=T0, step=0)
    client.set_terminated(parent)
    child = client.create_run(experiment_id, run_name="mlflow-child",
                              tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_terminated(child, "FAILED")
    deleted = client.create_run(experiment_id, run_name="mlflow-deleted").info.run_id
    client.delete_run(deleted)
    client.delete_experiment(client.create_experiment("mlflow-deleted-experiment"))
    still_running = client.create_run("0", run_name="mlflow-running").info.run_id
    before = database_dump(client)
    assert set(before["runs"]) == {parent, child, deleted, still_running}

    autolog.set_tracking_uri(sql_uri)
    with autolog.start_run(run_name="autolog-in-mlflows-experiment", experiment="mlflow-made") as beside:
        autolog.log_param("lr", 0.2)
        for step in range(5):
            autolog.log_metric("loss", 2 / (step + 1), step=step)
    with autolog.start_run(run_name="autolog-in-default") as in_default:  # MLflow's "Default"
        autolog.log_metric("loss", 3.0)
        with autolog.start_run(run_name="autolog-nested", experiment="autolog-made", nested=True) as own:
            autolog.log_metric("loss", 4.0)
    assert autolog.flush()

    after = database_dump(client)
    for kind in ("experiments", "runs"):
        assert {key: after[kind][key] for key in before[kind]} == before[kind]
    assert after["runs"][beside.id]["info"]["experiment_id"] == experiment_id
    assert after["runs"][in_default.id]["info"]["experiment_id"] == "0"
    assert after["runs"][own.id]["all_tags"]["mlflow.parentRunId"] == in_default.id
    assert set(after["runs"]) == {*before["runs"], beside.id, in_default.id, own.id}
    assert {e["name"] for e in after["experiments"].values()} == {
        *(e["name"] for e in before["experiments"].values()), "autolog-made"}


def test_resuming_a_run_mlflow_created_seeds_the_param_ledger(sql_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sql_uri)
    run_id = client.create_run(client.create_experiment("resumed"), run_name="mlflow-started").info.run_id
    client.log_param(run_id, "lr", "0.1")
    client.log_param(run_id, "epochs", "10")
    client.log_metric(run_id, "loss", 1.0, timestamp=T0, step=0)
    client.set_terminated(run_id, "KILLED")

    autolog.set_tracking_uri(sql_uri)
    with autolog.start_run(run_id=run_id):
        assert client.get_run(run_id).info.status == "RUNNING"
        autolog.log_param("lr", 0.1)  # the same value again: accepted, not sent
        autolog.log_param("epochs", 10)
        with pytest.raises(autolog.ParamConflictError, match="'lr'"):
            autolog.log_param("lr", 0.2)
        autolog.log_metric("loss", 0.5, step=1, timestamp=T0 + 1)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "mlflow-started"
    assert run.data.params == {"lr": "0.1", "epochs": "10"}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(0, 1.0), (1, 0.5)]


def test_the_default_store_is_mlflows_default_and_mlflow_ui_shows_it(tmp_path, monkeypatch,
                                                                     mlflow_server_on):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv("AUTOLOG_TRACKING_URI")  # conftest's; MLFLOW_TRACKING_URI is unset too
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # as if no mlflow.set_tracking_uri

    with autolog.start_run(run_name="autolog-default-place") as run:
        autolog.log_metric("accuracy", 0.875)
    assert autolog.flush()
    assert (project / "mlflow.db").is_file()

    assert mlflow.get_tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"  # MLflow's default, here
    seen = mlflow.MlflowClient().get_run(run.id)
    assert seen.info.run_name == "autolog-default-place" and seen.info.status == "FINISHED"
    assert seen.data.metrics == {"accuracy": 0.875}

    require_chromium()
    server = mlflow_server_on(None, workdir=project)  # `mlflow ui`, no flag, in that directory
    text = page_text(run_page_url(server.uri, seen.info.experiment_id, run.id),
                     expect=("autolog-default-place", "accuracy 0.875"))
    assert "autolog-default-place" in text and "accuracy 0.875" in text, text[:3000]


def test_a_plain_mysql_uri_logs_through_pymysql(mysql_uri):
    """``mysql://``, the form a team's MLflow config often holds, logs with the driver
    autolog declares (PyMySQL: SQLAlchemy's default for it, mysqlclient, is not installed
    here) into the database MLflow reads through ``mysql+pymysql://``."""
    from mlflow import MlflowClient

    plain = mysql_uri.replace("mysql+pymysql://", "mysql://", 1)
    autolog.set_tracking_uri(plain)
    with autolog.start_run(run_name="plain-mysql", experiment=EXPERIMENT) as run:
        autolog.log_param("driver", "pymysql")
        autolog.log_metric("loss", 0.5, step=1)
    assert autolog.flush()

    seen = MlflowClient(tracking_uri=mysql_uri).get_run(run.id)
    assert seen.info.run_name == "plain-mysql" and seen.info.status == "FINISHED"
    assert seen.data.params == {"driver": "pymysql"} and seen.data.metrics == {"loss": 0.5}
