"""Parity with MLflow's autologging on the same scikit-learn and XGBoost scripts.

Each script runs once under ``mlflow.autolog(log_models=False, log_datasets=False)`` (in a
subprocess, against its own SQLite store, read back with ``MlflowClient``) and once under
``autolog.autolog()``. For every run MLflow made, autolog made one too, with every param
MLflow logged (name and value), every metric name with the same number of points, and
the same ``estimator_name``/``estimator_class`` tags. Metric values are compared too,
except timings.

One difference is by design: where XGBoost's scikit-learn API leaves a param at ``None``
(XGBoost's default), MLflow logs ``None`` and autolog logs the value the booster used,
listing the param in the tag ``autolog.xgboost.params_from_booster``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from autolog_integrations.xgboost_autolog import FROM_BOOSTER_TAG

import autolog

PRELUDE = """
import numpy as np
import xgboost as xgb
from sklearn.cluster import KMeans
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

X, y = make_classification(240, 6, n_informative=4, random_state=0)
X3, y3 = make_classification(240, 6, n_informative=4, n_classes=3, random_state=0)
Xr, yr = make_regression(240, 6, noise=3.0, random_state=0)
"""

SCRIPTS = {
    "logistic_regression": """
model = LogisticRegression(C=0.5).fit(X[:180], y[:180])
X_test = X[180:]
accuracy_score(y[180:], model.predict(X_test))
f1_score(y[180:], model.predict(X_test))
model.score(X_test, y[180:])
""",
    "random_forest_multiclass": """
RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(X3, y3)
""",
    "ridge": """
Ridge(alpha=0.5).fit(Xr, yr)
""",
    "pipeline": """
Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(C=2.0))]).fit(X, y)
""",
    "grid_search": """
GridSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1.0, 10.0]}, cv=3).fit(X, y)
""",
    "randomized_search": """
RandomizedSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1.0], "fit_intercept": [True, False]},
                   n_iter=4, cv=2, random_state=0).fit(X, y)
""",
    "kmeans": """
KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
""",
    "cross_val_score": """
cross_val_score(LogisticRegression(), X, y, cv=3)
""",
    "xgboost_train": """
dtrain, dval = xgb.DMatrix(X[:180], y[:180]), xgb.DMatrix(X[180:], y[180:])
xgb.train({"objective": "binary:logistic", "eta": 0.5, "eval_metric": ["logloss", "auc"]},
          dtrain, 50, evals=[(dtrain, "train"), (dval, "val")], early_stopping_rounds=3,
          verbose_eval=False)
""",
    "xgb_classifier": """
clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(
    X[:180], y[:180], eval_set=[(X[180:], y[180:])], verbose=False)
X_holdout = X[180:]
accuracy_score(y[180:], clf.predict(X_holdout))
""",
    "xgb_regressor_early_stopping": """
xgb.XGBRegressor(n_estimators=60, learning_rate=0.5, early_stopping_rounds=3).fit(
    Xr[:180], yr[:180], eval_set=[(Xr[:180], yr[:180]), (Xr[180:], yr[180:])], verbose=False)
""",
}

MLFLOW_RUNNER = """
import json, sys, warnings
warnings.filterwarnings("ignore")
import mlflow
from mlflow import MlflowClient

scripts, prelude = json.loads(sys.argv[1]), sys.argv[2]
mlflow.autolog(log_models=False, log_datasets=False, silent=True)
client, out = MlflowClient(), {}
for name, script in scripts.items():
    experiment_id = mlflow.set_experiment(name).experiment_id
    exec(prelude + script, {"__name__": "__main__"})
    out[name] = []
    for run in client.search_runs([experiment_id]):
        out[name].append({
            "params": run.data.params,
            "tags": run.data.tags,
            "metrics": {key: [point.value for point in client.get_metric_history(run.info.run_id, key)]
                        for key in run.data.metrics},
        })
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def mlflow_runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}",
           "GIT_PYTHON_REFRESH": "quiet"}
    env.pop("AUTOLOG_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-c", MLFLOW_RUNNER, json.dumps(SCRIPTS), PRELUDE],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.rsplit("RESULT", 1)[1])


def autolog_runs(name: str) -> list[dict]:
    autolog.autolog(experiment=name)
    exec(textwrap.dedent(PRELUDE + SCRIPTS[name]), {"__name__": "__main__"})
    autolog.flush()
    return [{
        "params": run.params,
        "tags": run.tags,
        "metrics": {key: [point.value for point in autolog.get_metric_history(run.run_id, key)]
                    for key in run.metrics},
    } for run in autolog.search_runs(experiment=name)]


def _key(run: dict, parents: bool) -> str:
    """Children of a search are told apart by their params; a script has one parent run."""
    return "parent" if parents else json.dumps(sorted(run["params"].items()))


def _pairs(theirs: list[dict], ours: list[dict]):
    pairs = []
    for is_parent in (True, False):
        mine = {_key(r, is_parent): r for r in ours
                if ("mlflow.parentRunId" not in r["tags"]) == is_parent}
        other = {_key(r, is_parent): r for r in theirs
                 if ("mlflow.parentRunId" not in r["tags"]) == is_parent}
        assert len(mine) == len(other), f"{len(other)} runs from MLflow, {len(mine)} from autolog"
        for key, run in other.items():
            assert key in mine, f"no autolog run like MLflow's {key}"
            pairs.append((run, mine[key]))
    return pairs


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_autolog_logs_everything_mlflow_logs(name, mlflow_runs):
    theirs, ours = mlflow_runs[name], autolog_runs(name)
    for mlflow_run, run in _pairs(theirs, ours):
        from_booster = set(run["tags"].get(FROM_BOOSTER_TAG, "").split(", "))
        for key, value in mlflow_run["params"].items():
            assert key in run["params"], f"param {key} missing"
            if value == "None" and key in from_booster:
                assert run["params"][key] != "None"  # the booster's value instead
                continue
            assert run["params"][key] == value, f"param {key}: {run['params'][key]!r} != {value!r}"
        for key in ("estimator_name", "estimator_class"):
            if key in mlflow_run["tags"]:
                assert run["tags"][key] == mlflow_run["tags"][key]
        for key, values in mlflow_run["metrics"].items():
            assert key in run["metrics"], f"metric {key} missing"
            assert len(run["metrics"][key]) == len(values), f"metric {key}: number of points"
            if "time" not in key:
                assert run["metrics"][key] == pytest.approx(values, rel=1e-9), key
