"""The scikit-learn integration's models and diagnostics: every autologged model opens with
MLflow's own loaders in a fresh process (embedded store and a real ``mlflow server``) and
predicts what the fitted object predicts; the model options (``log_models`` False and
"best", signatures, input examples); MLflow's diagnostic artifacts; an estimator that
cannot be pickled never breaks its fit."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import autolog

pytest_plugins = ("mlflow_server",)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSIFIER_PLOTS = {"training_confusion_matrix.png", "training_roc_curve.png",
                    "training_precision_recall_curve.png"}


@pytest.fixture
def data():
    return make_classification(200, 5, n_informative=3, random_state=0)


@pytest.fixture
def experiment():
    """An experiment of the test's own (the server is shared by the session's tests)."""
    name = f"sklearn-models-{uuid.uuid4().hex[:8]}"
    autolog.set_experiment(name)
    return name


def mlflow_runs(tracking_uri: str, experiment: str) -> dict[str, mlflow.entities.Run]:
    """The experiment's top-level runs by estimator name, as MLflow's client reads them."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {run.data.tags["estimator_name"]: run for run in found
            if "mlflow.parentRunId" not in run.data.tags}


def artifact_paths(tracking_uri: str, run_id: str, path: str | None = None) -> set[str]:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    return {entry.path for entry in client.list_artifacts(run_id, path)}


def flushed() -> bool:
    return autolog.flush(timeout=120)


# -- loading with MLflow's loaders in a fresh process ------------------------------------

LOAD_AND_COMPARE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import mlflow.pyfunc, mlflow.sklearn

    X = np.load(sys.argv[1])
    for uri, expected in json.loads(sys.argv[2]).items():
        expected = np.load(expected)
        np.testing.assert_array_equal(mlflow.sklearn.load_model(uri).predict(X), expected)
        np.testing.assert_array_equal(np.asarray(mlflow.pyfunc.load_model(uri).predict(X)), expected)
        print("ok", uri)
""")


@pytest.fixture(params=["embedded", "server"])
def tracking_uri(request, store_uri, spool_dir):
    if request.param == "embedded":
        return store_uri
    server = request.getfixturevalue("sqlite_server")
    autolog.set_tracking_uri(server.uri)
    return server.uri


def test_every_autologged_model_loads_with_mlflows_loaders_in_a_fresh_process(
        tracking_uri, experiment, data, tmp_path):
    X, y = data
    autolog.autolog()
    plain = LogisticRegression(C=0.5).fit(X, y)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 1.0]}, cv=2).fit(X, y)
    assert flushed()

    runs = mlflow_runs(tracking_uri, experiment)
    assert set(runs) == {"LogisticRegression", "Pipeline", "GridSearchCV"}
    history = json.loads(runs["GridSearchCV"].data.tags["mlflow.log-model.history"])
    assert sorted(entry["artifact_path"] for entry in history) == ["best_estimator", "model"]
    assert all("sklearn" in entry["flavors"] and "python_function" in entry["flavors"]
               for entry in history)
    expected = {}
    for name, path, model in [("LogisticRegression", "model", plain), ("Pipeline", "model", pipeline),
                              ("GridSearchCV", "model", search),
                              ("GridSearchCV", "best_estimator", search.best_estimator_)]:
        expected[f"runs:/{runs[name].info.run_id}/{path}"] = str(tmp_path / f"{name}-{path}.npy")
        np.save(expected[f"runs:/{runs[name].info.run_id}/{path}"], model.predict(X))
    np.save(tmp_path / "X.npy", X)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", LOAD_AND_COMPARE, str(tmp_path / "X.npy"),
                          json.dumps(expected)], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split().count("ok") == 4


# -- options ---------------------------------------------------------------------------------


def test_log_models_false_logs_no_model_and_keeps_the_rest(store_uri, experiment, data):
    autolog.autolog(sklearn={"log_models": False})
    LogisticRegression().fit(*data)
    assert flushed()
    run = mlflow_runs(store_uri, experiment)["LogisticRegression"]
    assert "training_score" in run.data.metrics
    assert artifact_paths(store_uri, run.info.run_id) == CLASSIFIER_PLOTS | {"estimator.html"}
    assert "mlflow.log-model.history" not in run.data.tags


def test_log_models_best_logs_only_a_model_that_beats_the_experiments_best(store_uri, experiment, data):
    X, y = data
    autolog.autolog(sklearn={"log_models": "best", "monitor": "training_score", "mode": "max"})
    for C in (1.0, 1e-4):  # the first is the best so far; the second is worse
        LogisticRegression(C=C).fit(X, y)
        assert flushed()
    RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)  # about 1.0 on its training set
    assert flushed()
    client = mlflow.MlflowClient(tracking_uri=store_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])
    scores = [run.data.metrics["training_score"] for run in runs]
    assert scores[1] < scores[0] < scores[2]
    logged = ["model" in artifact_paths(store_uri, run.info.run_id) for run in runs]
    assert logged == [True, False, True]


def test_log_models_best_against_a_threshold_and_a_searchs_cv_score(store_uri, experiment, data):
    X, y = data
    autolog.autolog(sklearn={"log_models": "best", "monitor": "best_cv_score", "mode": "max",
                             "threshold": 0.6})
    weak = GridSearchCV(LogisticRegression(), {"C": [1e-5, 1e-4]}, cv=2).fit(X, y)
    strong = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert weak.best_score_ < 0.6 < strong.best_score_
    assert flushed()
    client = mlflow.MlflowClient(tracking_uri=store_uri)
    for search, models in ((weak, set()), (strong, {"model", "best_estimator"})):
        (run,) = [run for run in client.search_runs(
            [client.get_experiment_by_name(experiment).experiment_id])
            if run.data.metrics.get("best_cv_score") == pytest.approx(search.best_score_)]
        assert artifact_paths(store_uri, run.info.run_id) & {"model", "best_estimator"} == models


def test_signature_from_the_frames_columns_and_an_input_example(store_uri, experiment, data):
    X, y = data
    frame = pd.DataFrame(X, columns=[f"feature_{i}" for i in range(X.shape[1])])
    labels = np.array(["no", "yes"])[y]  # text labels: MLflow's "str", not numpy's "<U3"
    autolog.autolog(sklearn={"log_input_examples": True})
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, labels)
    assert flushed()
    run_id = mlflow_runs(store_uri, experiment)["Pipeline"].info.run_id
    assert "model/input_example.json" in artifact_paths(store_uri, run_id, "model")
    client = mlflow.MlflowClient(tracking_uri=store_uri)
    saved = mlflow.models.Model.load(client.download_artifacts(run_id, "model"))
    assert saved.signature.inputs.input_names() == list(frame.columns)
    assert [spec.type.name for spec in saved.signature.inputs.inputs] == ["double"] * 5
    assert json.loads(saved.signature.outputs.to_json()) == [
        {"type": "tensor", "tensor-spec": {"dtype": "str", "shape": [-1]}}]
    example = json.loads(open(client.download_artifacts(run_id, "model/input_example.json")).read())
    assert example["columns"] == list(frame.columns) and len(example["data"]) == 5
    assert example["data"][0] == pytest.approx(frame.iloc[0].tolist())
    assert model.predict(frame).dtype.kind == "U"


# -- diagnostics -----------------------------------------------------------------------------


def download(tracking_uri: str, run_id: str, path: str) -> bytes:
    with open(mlflow.MlflowClient(tracking_uri=tracking_uri).download_artifacts(run_id, path), "rb") as f:
        return f.read()


def assert_png(data: bytes) -> None:
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    image = Image.open(io.BytesIO(data))
    image.verify()
    assert image.size == (1050, 700)  # MLflow's 6 x 4 inches at 175 dpi


def test_diagnostics_under_mlflows_names(store_uri, experiment, data):
    X, y = data
    autolog.autolog()
    grid = [{"C": [0.1, 1.0]}, {"fit_intercept": [False], "class_weight": ["balanced", None]}]
    search = GridSearchCV(LogisticRegression(), grid, cv=2).fit(X, y)  # params each candidate lacks
    X3, y3 = make_classification(300, 6, n_informative=4, n_classes=3, random_state=0)
    RandomForestClassifier(n_estimators=5, random_state=0).fit(X3, y3)
    assert flushed()
    runs = mlflow_runs(store_uri, experiment)

    search_run = runs["GridSearchCV"].info.run_id
    assert artifact_paths(store_uri, search_run) == CLASSIFIER_PLOTS | {
        "cv_results.csv", "estimator.html", "model", "best_estimator"}
    for name in CLASSIFIER_PLOTS:
        assert_png(download(store_uri, search_run, name))
    csv = download(store_uri, search_run, "cv_results.csv").decode()
    assert csv == pd.DataFrame(search.cv_results_).to_csv(index=False)  # MLflow's own writing
    html = download(store_uri, search_run, "estimator.html").decode()
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="UTF-8"/>' in html
    assert "GridSearchCV" in html and "LogisticRegression" in html

    # multiclass: the confusion matrix only, as MLflow (its curves are binary)
    forest_run = runs["RandomForestClassifier"].info.run_id
    assert artifact_paths(store_uri, forest_run) == {"training_confusion_matrix.png",
                                                     "estimator.html", "model"}
    assert_png(download(store_uri, forest_run, "training_confusion_matrix.png"))


class CountingSVC(LinearSVC):
    """Counts its passes over data: the diagnostics make none of their own."""

    calls = {"decision_function": 0}

    def decision_function(self, X):
        CountingSVC.calls["decision_function"] += 1
        return super().decision_function(X)


def test_a_linear_classifiers_curves_come_from_the_one_decision_function_the_metrics_made(
        store_uri, experiment, data):
    """LinearSVC has no predict_proba: its predict is the sign of decision_function, so the
    metrics compute that once and the ROC and PR curves are drawn from it."""
    X, y = data
    autolog.autolog()
    model = CountingSVC().fit(X, y)
    assert CountingSVC.calls == {"decision_function": 1}
    assert flushed()
    run = mlflow_runs(store_uri, experiment)["CountingSVC"]
    assert run.data.metrics["training_accuracy_score"] == pytest.approx(
        float(np.mean(model.predict(X) == y)))
    assert CLASSIFIER_PLOTS <= artifact_paths(store_uri, run.info.run_id)


def test_diagnostics_off_and_without_training_metrics(store_uri, experiment, data):
    X, y = data
    autolog.autolog(sklearn={"log_diagnostics": False})
    LogisticRegression().fit(X, y)
    assert flushed()
    run_id = mlflow_runs(store_uri, experiment)["LogisticRegression"].info.run_id
    assert artifact_paths(store_uri, run_id) == {"model"}

    autolog.set_experiment(experiment + "-no-metrics")
    autolog.autolog(sklearn={"log_training_metrics": False})  # nothing predicted: no plots
    LogisticRegression().fit(X, y)
    assert flushed()
    run_id = mlflow_runs(store_uri, experiment + "-no-metrics")["LogisticRegression"].info.run_id
    assert artifact_paths(store_uri, run_id) == {"model", "estimator.html"}


# -- an estimator that cannot be pickled -----------------------------------------------------


class Locking(ClassifierMixin, BaseEstimator):
    """Holds a lock once fitted: cloudpickle refuses it, so its model cannot be saved."""

    def __init__(self, bias=0.0):
        self.bias = bias

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.lock_ = threading.Lock()
        return self

    def predict(self, X):
        return self.classes_[(np.asarray(X)[:, 0] + self.bias > 0).astype(int)]


def test_an_unpicklable_estimator_is_one_warning_and_its_fit_and_run_are_intact(
        monkeypatch, store_uri, experiment, data):
    X, y = data
    monkeypatch.delenv("AUTOLOG_STRICT")
    autolog.autolog()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = Locking(bias=0.5).fit(X, y)
        assert flushed()
    ours = [w for w in record if issubclass(w.category, autolog.AutologWarning)]
    assert len(ours) == 1 and "pickle" in str(ours[0].message), [str(w.message) for w in ours]
    assert isinstance(model.lock_, type(threading.Lock()))
    run = mlflow_runs(store_uri, experiment)["Locking"]
    assert run.info.status == "FINISHED" and run.data.params == {"bias": "0.5"}
    assert run.data.metrics["training_accuracy_score"] == pytest.approx(float(np.mean(model.predict(X) == y)))
    assert artifact_paths(store_uri, run.info.run_id) == {"training_confusion_matrix.png"}


def test_in_strict_mode_an_unpicklable_estimator_raises_after_its_params_and_metrics(
        store_uri, experiment, data):
    autolog.autolog()
    with pytest.raises(TypeError, match="pickle"):
        Locking(bias=0.5).fit(*data)
    assert flushed()
    run = mlflow_runs(store_uri, experiment)["Locking"]
    assert run.data.params == {"bias": "0.5"} and "training_accuracy_score" in run.data.metrics
