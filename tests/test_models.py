"""``autolog.log_model`` and the registry, checked with MLflow's own loaders and client.

Models logged by hand open with ``mlflow.sklearn.load_model``/``mlflow.pyfunc.load_model``
in a fresh process; registered versions, aliases and ``models:/name@alias`` are what
``MlflowClient`` sees, on MLflow databases (SQLite, PostgreSQL, MariaDB) and through a real
``mlflow server``. A save that fails never breaks the caller and never loses what the run
already holds. (The integrations' own models: tests/test_*_models.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import mlflow
import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

import autolog
from autolog.models.saver import HISTORY_TAG, get_saver

pytest_plugins = ("mlflow_server", "databases")


@pytest.fixture
def mlflow_uri():
    """``mlflow_uri(uri)`` points MLflow's own client at ``uri`` for this test only."""
    yield mlflow.set_tracking_uri
    mlflow.set_tracking_uri(None)  # MLflow's unset state: later tests read their environment


@pytest.fixture
def data():
    return make_classification(300, 6, random_state=0)


def fitted(data, C: float = 1.0) -> LogisticRegression:
    X, y = data
    return LogisticRegression(C=C, max_iter=500).fit(X, y)


def run_fresh(code: str, tracking_uri: str, tmp_path) -> str:
    """``code`` in a new Python process with MLflow's tracking URI set; its stdout."""
    script = tmp_path / "fresh.py"
    script.write_text("import mlflow, numpy as np\n"
                      f"mlflow.set_tracking_uri({tracking_uri!r})\n" + textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_logged_model_opens_with_mlflows_loaders_in_a_fresh_process(store_uri, data, tmp_path):
    X, y = data
    model = fitted(data)
    with autolog.start_run() as run:
        autolog.log_param("C", 1.0)
        info = autolog.log_model(model, "classifier", input_example=X[:3])
    assert info.model_uri == f"runs:/{run.id}/classifier" and info.flavor == "sklearn"
    assert autolog.flush()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", model.predict(X))
    out = run_fresh(f"""
        X, expected = np.load("X.npy"), np.load("expected.npy")
        native = mlflow.sklearn.load_model({info.model_uri!r})
        pyfunc = mlflow.pyfunc.load_model({info.model_uri!r})
        assert (native.predict(X) == expected).all()
        assert (pyfunc.predict(X) == expected).all()
        local = mlflow.artifacts.download_artifacts({info.model_uri!r})
        import json
        print(json.dumps([pyfunc.metadata.signature.inputs.to_dict(), sorted(pyfunc.metadata.flavors),
                          open(local + "/requirements.txt").read().split()]))
    """, store_uri, tmp_path)
    schema, flavors, requirements = json.loads(out.strip().splitlines()[-1])
    assert schema == [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 6]}}]
    assert flavors == ["python_function", "sklearn"]
    names = {line.split("==")[0] for line in requirements}
    assert {"mlflow", "scikit-learn", "cloudpickle", "numpy"} <= names
    history = json.loads(mlflow.MlflowClient(store_uri).get_run(run.id).data.tags[HISTORY_TAG])
    assert [(h["artifact_path"], h["run_id"]) for h in history] == [("classifier", run.id)]
    assert "sklearn" in history[0]["flavors"]


def test_the_snapshot_is_the_model_as_it_was_logged(store_uri, data, tmp_path, mlflow_uri):
    """The user refits the same object right after logging: the logged model is the first."""
    X, y = data
    model = LogisticRegression(C=0.001, max_iter=500).fit(X, y)
    before = model.predict_proba(X)
    with autolog.start_run():
        info = autolog.log_model(model)
        model.set_params(C=100.0).fit(X, 1 - y)  # refit in place, labels flipped
    assert autolog.flush()
    mlflow_uri(store_uri)
    loaded = mlflow.sklearn.load_model(info.model_uri)
    assert np.allclose(loaded.predict_proba(X), before)
    assert loaded.get_params()["C"] == 0.001


def test_a_script_that_exits_right_after_logging_still_saves_its_model(tmp_path, mlflow_uri):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import autolog
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression
        X, y = make_classification(200, 4, random_state=0)
        with autolog.start_run() as run:
            info = autolog.log_model(LogisticRegression().fit(X, y))
        print(info.model_uri)
    """))
    uri = f"sqlite:///{tmp_path / 'exit.db'}"
    env = {**__import__("os").environ, "AUTOLOG_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    model_uri = done.stdout.strip()
    mlflow_uri(uri)
    assert mlflow.sklearn.load_model(model_uri).predict([[0, 0, 0, 0]]).shape == (1,)


def test_what_is_not_a_model_is_refused_at_the_callers_line(store_uri):
    with autolog.start_run():
        with pytest.raises(TypeError, match="scikit-learn estimators, XGBoost models"):
            autolog.log_model({"weights": [1, 2]})
        with pytest.raises(ValueError, match="artifact_path"):
            autolog.log_model(LogisticRegression(), "")
        with pytest.raises(ValueError, match=r"\.\."):
            autolog.log_model(LogisticRegression(), "../outside")
    with pytest.raises(ValueError, match='log_models="best" needs monitor'):
        autolog.autolog(xgboost={"log_models": "best"})
    with pytest.raises(ValueError, match="log_models must be"):
        autolog.autolog(xgboost={"log_models": "sometimes"})
    with pytest.raises(ValueError, match="an alias is"):
        autolog.set_model_alias("m", "latest", 1)
    with pytest.raises(ValueError, match="a model version is"):
        autolog.set_model_alias("m", "champion", 0)


def test_an_unpicklable_model_raises_at_the_call_and_the_run_keeps_its_data(store_uri, data):
    model = fitted(data)
    model.lock = threading.Lock()
    with autolog.start_run() as run:
        autolog.log_param("kept", 1)
        autolog.log_metric("acc", 0.5)
        with pytest.raises(TypeError, match="pickle"):
            autolog.log_model(model)
    record = mlflow.MlflowClient(store_uri).get_run(run.id)
    assert record.data.params == {"kept": "1"} and record.data.metrics == {"acc": 0.5}


@pytest.mark.parametrize("strict", [True, False])
def test_a_staging_area_that_cannot_be_written_fails_the_save_not_the_run(
        store_uri, data, tmp_path, monkeypatch, strict):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the staging folder should be")
    monkeypatch.setenv("AUTOLOG_STAGING_DIR", str(blocker / "staging"))
    if not strict:
        monkeypatch.delenv("AUTOLOG_STRICT")
    with autolog.start_run() as run:
        autolog.log_param("kept", 1)
        autolog.log_metric("acc", 0.5)
        autolog.log_model(fitted(data))  # the snapshot is taken; the save fails later
    if strict:
        with pytest.raises(autolog.ModelSaveError, match="saving model 'model'"):
            autolog.flush()
    else:
        with pytest.warns(autolog.AutologWarning, match="saving model 'model' of run .* failed"):
            assert autolog.flush() is False
    assert get_saver().take_failures() == []  # reported once
    record = mlflow.MlflowClient(store_uri).get_run(run.id)
    assert record.data.params == {"kept": "1"} and record.data.metrics == {"acc": 0.5}
    assert record.info.status == "FINISHED" and HISTORY_TAG not in record.data.tags


# -- the registry -------------------------------------------------------------------------------


def champion_and_challenger(tracking_uri: str, data, tmp_path) -> None:
    """Register two versions, alias them, move ``champion``; MLflow's client agrees."""
    autolog.set_tracking_uri(tracking_uri)
    X, _ = data
    first, second = fitted(data, C=0.01), fitted(data, C=10.0)
    with autolog.start_run() as run_one:
        one = autolog.log_model(first)
    with autolog.start_run():
        two = autolog.log_model(second)
    v1 = autolog.register_model(one.model_uri, "churn", alias="champion")
    v2 = autolog.register_model(two.model_uri, "churn", alias="challenger", tags={"stage": "ab"})
    assert (str(v1.version), str(v2.version)) == ("1", "2")  # MLflow's SQL store: ints
    assert v1.run_id == (run_one.server_id or run_one.id) and v1.source.endswith("/model")
    assert str(autolog.get_model_version_by_alias("churn", "champion").version) == "1"

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert client.get_model_version_by_alias("churn", "challenger").tags == {"stage": "ab"}

    def aliases() -> dict[str, str]:
        registered = client.get_registered_model("churn")
        return {alias: str(version) for alias, version in registered.aliases.items()}

    autolog.set_model_alias("churn", "champion", 2)  # the A/B test is won: one write
    assert aliases() == {"champion": "2", "challenger": "2"}
    autolog.delete_model_alias("churn", "challenger")
    assert aliases() == {"champion": "2"}
    assert str(autolog.get_model_version_by_alias("churn", "champion").version) == "2"

    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", second.predict_proba(X)[:, 1])
    run_fresh("""
        X, expected = np.load("X.npy"), np.load("expected.npy")
        model = mlflow.sklearn.load_model("models:/churn@champion")
        assert np.allclose(model.predict_proba(X)[:, 1], expected)
    """, tracking_uri, tmp_path)


def test_champion_and_challenger_in_an_mlflow_database(sql_uri, data, tmp_path):
    champion_and_challenger(sql_uri, data, tmp_path)


def test_champion_and_challenger_through_an_mlflow_server(mlflow_server, data, tmp_path):
    champion_and_challenger(mlflow_server.uri, data, tmp_path)
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):
        autolog.get_model_version_by_alias("churn", "nobody")


def test_registered_model_name_registers_once_the_files_are_up(mlflow_server, data):
    autolog.set_tracking_uri(mlflow_server.uri)
    with autolog.start_run() as run:
        info = autolog.log_model(fitted(data), registered_model_name="auto-registered")
    assert autolog.flush()
    client = mlflow.MlflowClient(mlflow_server.uri)
    versions = client.search_model_versions(f"name = '{info.registered_model_name}'")
    assert [v.run_id for v in versions] == [run.id]
    files = {f.path for f in client.list_artifacts(run.id, "model")}
    assert {"model/MLmodel", "model/model.pkl", "model/requirements.txt"} <= files


def test_autolog_runs_show_prints_the_model_uri(store_uri, data):
    from click.testing import CliRunner

    from autolog.cli import main

    with autolog.start_run() as run:
        autolog.log_model(fitted(data), "classifier")
    assert autolog.flush()
    shown = CliRunner().invoke(main, ["runs", "show", run.id])
    assert shown.exit_code == 0, shown.output
    assert f"runs:/{run.id}/classifier  (sklearn)" in shown.output
    assert HISTORY_TAG not in shown.output  # shown as its models, not as raw JSON


def test_a_model_whose_save_failed_is_not_registered(store_uri, data, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("AUTOLOG_STAGING_DIR", str(blocker / "staging"))
    with autolog.start_run():
        info = autolog.log_model(fitted(data))
    with pytest.raises(autolog.ModelSaveError, match="not registered as 'churn'.*saving model 'model'"):
        autolog.register_model(info.model_uri, "churn", alias="champion")
    client = mlflow.MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
    assert client.search_registered_models() == []


def test_the_model_history_keeps_what_another_process_logged_into_the_run(store_uri, data, tmp_path):
    """A run resumed in a second process: its model joins the first process's in MLflow's
    ``mlflow.log-model.history`` tag (as MLflow's own ``record_logged_model`` appends)."""
    with autolog.start_run() as run:
        autolog.log_model(fitted(data), "first")
    assert autolog.flush()
    script = tmp_path / "second.py"
    script.write_text(textwrap.dedent(f"""
        import autolog
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression
        X, y = make_classification(100, 4, random_state=0)
        with autolog.start_run(run_id={run.id!r}):
            autolog.log_model(LogisticRegression().fit(X, y), "second")
    """))
    env = {**__import__("os").environ, "AUTOLOG_TRACKING_URI": store_uri}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    tags = mlflow.MlflowClient(store_uri).get_run(run.id).data.tags
    assert [entry["artifact_path"] for entry in json.loads(tags[HISTORY_TAG])] == ["first", "second"]


def test_requirements_name_the_packages_of_a_pipelines_steps(store_uri, data, mlflow_uri):
    """A Pipeline's class is scikit-learn's; its XGBoost step needs xgboost where it is served."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from xgboost import XGBClassifier

    X, y = data
    pipeline = make_pipeline(StandardScaler(), XGBClassifier(n_estimators=3)).fit(X, y)
    with autolog.start_run():
        info = autolog.log_model(pipeline)
    assert autolog.flush()
    mlflow_uri(store_uri)
    local = mlflow.artifacts.download_artifacts(f"{info.model_uri}/requirements.txt")
    names = {line.split("==")[0] for line in open(local).read().split()}
    assert {"mlflow", "scikit-learn"} <= names and names & {"xgboost", "xgboost-cpu"}


def test_a_save_in_progress_is_named_by_what_is_left(store_uri, data):
    """``flush(timeout)`` that ends during a save says which model it waited for."""
    started, release = threading.Event(), threading.Event()
    get_saver().run_later("a slow task", lambda: (started.set(), release.wait(30)))
    assert started.wait(30)
    try:
        with pytest.warns(autolog.AutologWarning, match="not done yet: a slow task"):
            assert autolog.flush(timeout=0.2) is False
    finally:
        release.set()
    assert autolog.flush()


def test_a_full_staging_disk_fails_the_save_not_the_fit(store_uri, data, mount_tmpfs, monkeypatch):
    from sklearn.ensemble import RandomForestClassifier

    small_tmpfs = mount_tmpfs("256k")  # room for the staging area's folders, not for a forest
    monkeypatch.setenv("AUTOLOG_STAGING_DIR", str(small_tmpfs / "staging"))
    X, y = data
    autolog.autolog(sklearn={"log_diagnostics": False})
    forest = RandomForestClassifier(n_estimators=150, random_state=0)  # its pickle: about 340 KB
    with autolog.start_run() as run:
        forest.fit(X, y)  # returns: the model is saved later, and does not fit on that disk
    assert forest.predict(X).shape == (len(X),)
    with pytest.raises(autolog.ModelSaveError, match="No space left on device"):
        autolog.flush()
    record = mlflow.MlflowClient(store_uri).get_run(run.id)
    assert record.data.params["n_estimators"] == "150" and "training_score" in record.data.metrics
    assert record.info.status == "FINISHED" and HISTORY_TAG not in record.data.tags
    left = sum(path.stat().st_size for path in (small_tmpfs / "staging").rglob("*") if path.is_file())
    assert left < 64 * 1024, left  # the half-staged forest (over 256 KiB) is not kept
