"""XGBoost models and feature importance artifacts: what autolog saves opens with MLflow's
own loaders in a fresh process and predicts as the fitted object did, on the embedded
store and through a real ``mlflow server``; ``log_models`` options; a failing save never
breaks the fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from matplotlib.image import imread
from sklearn.datasets import make_classification, make_regression

import autolog
from autolog.models.saver import get_saver

pytest_plugins = ("mlflow_server",)


@pytest.fixture
def classification():
    X, y = make_classification(240, 6, n_informative=4, random_state=0)
    return X[:180], y[:180], X[180:], y[180:]


def client_for(uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str) -> list:
    """The runs of ``experiment`` as MLflow's client lists them, oldest first."""
    client = client_for(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])


def by_estimator(runs: list) -> dict:
    """The runs by the class of the model they fitted (xgboost.train's: ``Booster``)."""
    found = {run.data.tags.get("estimator_name", "Booster"): run for run in runs}
    assert len(found) == len(runs)
    return found


def artifact_names(uri: str, run_id: str, path: str | None = None) -> set[str]:
    return {entry.path for entry in client_for(uri).list_artifacts(run_id, path)}


# A fresh interpreter, nothing of autolog imported: MLflow's loaders, from the URI alone.
LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np, pandas as pd, xgboost as xgb
    import mlflow.pyfunc, mlflow.xgboost

    report = {}
    for case in json.loads(open(sys.argv[1]).read()):
        X = np.load(case["inputs"])
        if case["columns"]:
            X = pd.DataFrame(X, columns=case["columns"])
        native = mlflow.xgboost.load_model(case["uri"])
        predicted = native.predict(xgb.DMatrix(X) if isinstance(native, xgb.Booster) else X)
        pyfunc = mlflow.pyfunc.load_model(case["uri"])
        np.savez(case["out"], native=predicted, pyfunc=np.asarray(pyfunc.predict(X)))
        schema = pyfunc.metadata.get_input_schema()
        report[case["uri"]] = {"class": type(native).__name__,
                               "inputs": schema.to_dict() if schema is not None else None}
    print(json.dumps(report))
""")


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_every_autologged_model_opens_with_mlflows_loaders_in_a_fresh_process(
        where, request, store_uri, classification, tmp_path):
    uri = request.getfixturevalue("sqlite_server").uri if where == "server" else store_uri
    experiment = f"xgboost-models-{uuid.uuid4().hex[:8]}"
    autolog.autolog(tracking_uri=uri, experiment=experiment, xgboost={"log_input_examples": True})
    X, y, X_test, _ = classification
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(X, y), 6)
    classifier = xgb.XGBClassifier(n_estimators=6, max_depth=3).fit(X, y)
    X_reg, y_reg = make_regression(150, 4, random_state=0)
    columns = ["age", "income", "height", "score"]
    regressor = xgb.XGBRegressor(n_estimators=6).fit(pd.DataFrame(X_reg, columns=columns), y_reg)
    assert autolog.flush()

    found = by_estimator(runs_of(uri, experiment))
    booster_run, classifier_run, regressor_run = (
        found["Booster"], found["XGBClassifier"], found["XGBRegressor"])
    expected = {
        booster_run.info.run_id: (X_test, None, booster.predict(xgb.DMatrix(X_test)), "Booster"),
        classifier_run.info.run_id: (X_test, None, classifier.predict(X_test), "XGBClassifier"),
        regressor_run.info.run_id: (X_reg[:30], columns,
                                    regressor.predict(pd.DataFrame(X_reg[:30], columns=columns)),
                                    "XGBRegressor"),
    }
    cases = []
    for index, (run_id, (inputs, names, _, _)) in enumerate(expected.items()):
        np.save(tmp_path / f"inputs{index}.npy", inputs)
        cases.append({"uri": f"runs:/{run_id}/model", "inputs": str(tmp_path / f"inputs{index}.npy"),
                      "columns": names, "out": str(tmp_path / f"predicted{index}.npz")})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AUTOLOG_", "MLFLOW_", "PYTHONPATH"))}
    env["MLFLOW_TRACKING_URI"] = uri
    done = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "cases.json")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    for index, (run_id, (_, _, predictions, cls)) in enumerate(expected.items()):
        loaded = np.load(tmp_path / f"predicted{index}.npz")
        np.testing.assert_array_equal(loaded["native"], predictions)
        np.testing.assert_array_equal(loaded["pyfunc"], predictions)
        assert report[f"runs:/{run_id}/model"]["class"] == cls
    signatures = {run_id: report[f"runs:/{run_id}/model"]["inputs"] for run_id in expected}
    assert signatures[booster_run.info.run_id] is None  # a DMatrix: no signature
    assert signatures[classifier_run.info.run_id] == [
        {"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 6]}}]
    assert [column["name"] for column in signatures[regressor_run.info.run_id]] == columns
    assert "model/input_example.json" in artifact_names(uri, regressor_run.info.run_id, "model")
    for run in (booster_run, classifier_run, regressor_run):  # MLflow's record of the model
        history = json.loads(run.data.tags["mlflow.log-model.history"])
        assert [entry["artifact_path"] for entry in history] == ["model"]
        assert "xgboost" in history[0]["flavors"]


def importance_files(uri: str, run_id: str, tmp_path: Path) -> dict[str, Path]:
    folder = client_for(uri).download_artifacts(run_id, "", str(tmp_path / run_id))
    return {path.name: path for path in Path(folder).glob("feature_importance_*")}


def test_feature_importance_artifacts_are_mlflows(store_uri, classification, tmp_path):
    autolog.autolog()
    X, y, _, _ = classification
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(X, y), 5)
    autolog.autolog(xgboost={"importance_types": ["weight", "cover"]})
    X3, y3 = make_classification(90, 6, n_informative=4, n_classes=3, random_state=0)
    linear = xgb.XGBClassifier(booster="gblinear", n_estimators=5).fit(X3, y3)  # scores per class
    assert autolog.flush()
    found = by_estimator(runs_of(store_uri, "Default"))
    tree_run, linear_run = found["Booster"].info.run_id, found["XGBClassifier"].info.run_id

    files = importance_files(store_uri, tree_run, tmp_path)
    assert set(files) == {f"feature_importance_{kind}.{ext}" for kind in ("weight", "gain")
                          for ext in ("json", "png")}
    for kind in ("weight", "gain"):
        assert json.loads(files[f"feature_importance_{kind}.json"].read_text()) == \
            booster.get_score(importance_type=kind)
        image = imread(files[f"feature_importance_{kind}.png"])
        assert image.shape[:2] == (480, 640) and image.std() > 0  # MLflow's figure size, drawn

    files = importance_files(store_uri, linear_run, tmp_path)
    assert set(files) == {"feature_importance_weight.json", "feature_importance_weight.png"}
    scores = json.loads(files["feature_importance_weight.json"].read_text())
    assert scores == linear.get_booster().get_score(importance_type="weight")
    assert all(len(value) == 3 for value in scores.values())  # one per class
    assert imread(files["feature_importance_weight.png"]).shape[:2] == (480 + 30, 640)
    tags = client_for(store_uri).get_run(linear_run).data.tags  # deprecated, kept one release
    assert json.loads(tags["feature_importance_weight"]) == scores


def test_cv_and_log_models_false_log_no_model(store_uri, classification):
    X, y, _, _ = classification
    autolog.autolog()
    xgb.cv({"objective": "binary:logistic"}, xgb.DMatrix(X, y), 3, nfold=2)
    autolog.autolog(xgboost={"log_models": False})
    xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(X, y), 3)
    assert autolog.flush()
    runs = runs_of(store_uri, "Default")
    (cv_run,), (train_run,) = ([run for run in runs if ("nfold" in run.data.params) == cv]
                               for cv in (True, False))
    assert artifact_names(store_uri, cv_run.info.run_id) == set()
    assert "mlflow.log-model.history" not in cv_run.data.tags
    names = artifact_names(store_uri, train_run.info.run_id)
    assert "model" not in names and "feature_importance_weight.json" in names


def test_log_models_best_logs_only_a_model_that_beats_the_experiments_best(store_uri, classification):
    X, y, _, _ = classification
    autolog.autolog(xgboost={"log_models": "best", "monitor": "validation_0-logloss", "mode": "min"})
    for rounds in (10, 2, 30):  # on the training set, more rounds: a lower logloss
        xgb.XGBClassifier(n_estimators=rounds).fit(X, y, eval_set=[(X, y)], verbose=False)
        assert autolog.flush()
    runs = runs_of(store_uri, "Default")
    losses = [run.data.metrics["validation_0-logloss"] for run in runs]
    assert losses[1] > losses[0] > losses[2]
    assert ["model" in artifact_names(store_uri, run.info.run_id) for run in runs] == [True, False, True]


@pytest.mark.parametrize("strict", [False, True])
def test_a_failing_save_never_breaks_the_fit(strict, store_uri, classification, tmp_path, monkeypatch):
    """The staging area cannot be written (a full or read-only disk: here a path under a
    file, which fails for root too): the fit returns its model, params and metrics are
    logged; one warning, or ModelSaveError from flush() in strict mode."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("AUTOLOG_STAGING_DIR", str(blocker / "staging"))
    if not strict:
        monkeypatch.delenv("AUTOLOG_STRICT")
    X, y, X_test, y_test = classification
    autolog.autolog(xgboost={"importance_types": []})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = xgb.XGBClassifier(n_estimators=4).fit(X, y, eval_set=[(X_test, y_test)], verbose=False)
        assert get_saver().wait(120) is False
    assert model.predict(X_test).shape == (60,)
    messages = [str(w.message) for w in caught if issubclass(w.category, autolog.AutologWarning)]
    assert len(messages) == 1 and "saving model 'model'" in messages[0], messages
    if strict:
        with pytest.raises(autolog.ModelSaveError, match="saving model 'model'"):
            autolog.flush()
    else:
        with pytest.warns(autolog.AutologWarning, match="saving model 'model'"):
            assert autolog.flush() is False
    assert autolog.flush()  # told once; the run itself is complete
    run = client_for(store_uri).get_run(runs_of(store_uri, "Default")[0].info.run_id)
    assert run.data.params["num_boost_round"] == "4" and run.info.status == "FINISHED"
    assert len(client_for(store_uri).get_metric_history(run.info.run_id, "validation_0-logloss")) == 4
    assert "mlflow.log-model.history" not in run.data.tags
