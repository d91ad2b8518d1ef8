"""The XGBoost integration: train, cv and the scikit-learn API; early stopping; feature
importance; one run per fit whoever else is patched; safety."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xgboost as xgb
from autolog_integrations import xgboost_autolog
from joblib import parallel_backend
from sklearn.datasets import make_classification, make_regression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV

import autolog

ROUNDS = 8


@pytest.fixture
def on():
    autolog.autolog()


@pytest.fixture
def data():
    X, y = make_classification(240, 6, n_informative=4, random_state=0)
    return X[:180], y[:180], X[180:], y[180:]


@pytest.fixture
def dmatrices(data):
    X, y, X_val, y_val = data
    return xgb.DMatrix(X, y), xgb.DMatrix(X_val, y_val)


PARAMS = {"objective": "binary:logistic", "max_depth": 3, "eval_metric": ["logloss", "auc"]}


def runs():
    return autolog.search_runs()


def only_run():
    found = runs()
    assert len(found) == 1, [r.tags.get("autolog.integration") for r in found]
    return found[0]


def history(run, key):
    return autolog.get_metric_history(run.run_id, key)


def test_train_logs_params_and_one_point_per_iteration(on, dmatrices):
    dtrain, dval = dmatrices
    xgb.train(PARAMS, dtrain, ROUNDS, evals=[(dtrain, "train"), (dval, "val")], verbose_eval=False)
    run = only_run()
    assert run.status == "FINISHED" and run.tags["autolog.integration"] == "xgboost"
    assert run.params == {
        "objective": "binary:logistic", "max_depth": "3", "eval_metric": "['logloss', 'auc']",
        "num_boost_round": str(ROUNDS), "maximize": "None", "early_stopping_rounds": "None",
        "verbose_eval": "False", "custom_metric": "None",
    }
    assert set(run.metrics) == {"train-logloss", "train-auc", "val-logloss", "val-auc"}
    points = history(run, "val-logloss")
    assert [p.step for p in points] == list(range(ROUNDS))
    assert points[0].value > points[-1].value


def test_positional_arguments_are_bound_by_name(on, dmatrices):
    dtrain, dval = dmatrices
    callbacks = [xgb.callback.EvaluationMonitor(period=100)]
    xgb.train(dict(PARAMS), dtrain, 3, evals=[(dval, "val")], callbacks=callbacks, verbose_eval=False)
    run = only_run()
    assert run.params["num_boost_round"] == "3"
    assert len(history(run, "val-auc")) == 3
    assert len(callbacks) == 1  # the caller's list is left as it was


def test_early_stopping_logs_best_and_stopped_iterations(on, dmatrices):
    dtrain, dval = dmatrices
    evaluated = {}
    booster = xgb.train({"objective": "binary:logistic", "eta": 0.9, "max_depth": 6}, dtrain, 200,
                        evals=[(dval, "val")], early_stopping_rounds=2, verbose_eval=False,
                        evals_result=evaluated)
    run = only_run()
    # the last iteration XGBoost evaluated (2.1's booster has one round more than that)
    stopped = len(evaluated["val"]["logloss"]) - 1
    assert stopped < 199
    assert run.metrics["best_iteration"] == booster.best_iteration
    assert run.metrics["stopped_iteration"] == stopped
    points = history(run, "val-logloss")
    assert len(points) == stopped + 2  # one per iteration, and the best one again after them
    assert points[-1].step == stopped + 1
    assert points[-1].value == points[booster.best_iteration].value


def test_an_early_stopping_callback_counts_as_early_stopping(on, dmatrices):
    dtrain, dval = dmatrices
    stop = xgb.callback.EarlyStopping(rounds=2)
    xgb.train({"objective": "binary:logistic", "eta": 0.9}, dtrain, 200, evals=[(dval, "val")],
              callbacks=[stop], verbose_eval=False)
    assert {"best_iteration", "stopped_iteration"} <= set(only_run().metrics)


def test_feature_importance_tags(on, dmatrices):
    dtrain, dval = dmatrices
    booster = xgb.train(PARAMS, dtrain, ROUNDS)
    tags = only_run().tags
    for kind in ("weight", "gain"):
        logged = json.loads(tags[f"feature_importance_{kind}"])
        assert logged == pytest.approx(booster.get_score(importance_type=kind))
        assert list(logged.values()) == sorted(logged.values(), reverse=True)


def test_feature_importance_is_cut_to_the_tag_limit():
    text = xgboost_autolog._importance_tag({f"feature_{i:05d}": float(i) for i in range(2000)})
    assert len(text) <= 8000
    kept = json.loads(text)
    assert 100 < len(kept) < 2000 and "feature_01999" in kept and "feature_00000" not in kept


def test_cv_logs_mean_and_std_per_iteration(on, dmatrices):
    dtrain, _ = dmatrices
    result = xgb.cv({"objective": "binary:logistic", "eval_metric": "auc"}, dtrain, 5, nfold=3,
                    seed=1)
    run = only_run()
    assert run.params["nfold"] == "3" and run.params["seed"] == "1"
    assert run.params["num_boost_round"] == "5" and run.params["eval_metric"] == "auc"
    assert set(run.metrics) == {"train-auc-mean", "train-auc-std", "test-auc-mean", "test-auc-std"}
    points = history(run, "test-auc-mean")
    assert [p.value for p in points] == pytest.approx(list(result["test-auc-mean"]))


def test_cv_with_early_stopping(on, dmatrices):
    dtrain, _ = dmatrices
    result = xgb.cv({"objective": "binary:logistic", "eta": 0.9, "max_depth": 6}, dtrain, 200,
                    nfold=3, early_stopping_rounds=2, seed=0)
    metrics = only_run().metrics
    assert metrics["best_iteration"] == len(result) - 1
    assert metrics["stopped_iteration"] > metrics["best_iteration"]


def test_sklearn_api_is_one_fit_logged_once(on, data):
    X, y, X_val, y_val = data
    model = xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=3).fit(
        X, y, eval_set=[(X_val, y_val)], verbose=False)
    run = only_run()
    assert run.tags["autolog.integration"] == "xgboost"
    assert run.tags["estimator_name"] == "XGBClassifier"
    assert run.tags["estimator_class"] == "xgboost.sklearn.XGBClassifier"
    assert run.params["max_depth"] == "3" and run.params["num_boost_round"] == str(ROUNDS)
    assert set(run.metrics) == {"validation_0-logloss"}  # no sklearn training_* metrics
    assert len(history(run, "validation_0-logloss")) == ROUNDS
    assert model.predict(X_val).shape == y_val.shape


def test_params_left_to_xgboost_hold_the_value_the_booster_used(on, data):
    X, y, _, _ = data
    model = xgb.XGBClassifier(n_estimators=3)
    assert model.get_params()["learning_rate"] is None
    model.fit(X, y)
    run = only_run()
    assert run.params["learning_rate"] == "0.3" and run.params["max_depth"] == "6"
    assert run.params["reg_lambda"] == "1" and run.params["eval_metric"] == "logloss"
    assert run.params["verbosity"] == "None"  # not in the booster's config: left as given
    resolved = run.tags[xgboost_autolog.FROM_BOOSTER_TAG].split(", ")
    assert {"learning_rate", "max_depth", "reg_lambda"} <= set(resolved)
    assert "verbosity" not in resolved and "objective" not in resolved


@pytest.mark.parametrize("estimator", ["regressor", "ranker"])
def test_regressor_and_ranker(on, estimator):
    X, y = make_regression(120, 5, random_state=0)
    if estimator == "regressor":
        xgb.XGBRegressor(n_estimators=4, early_stopping_rounds=2).fit(
            X[:90], y[:90], eval_set=[(X[90:], y[90:])], verbose=False)
    else:
        relevance = (y > np.median(y)).astype(int)
        xgb.XGBRanker(n_estimators=4).fit(X, relevance, qid=np.repeat(np.arange(12), 10))
    run = only_run()
    assert run.params["num_boost_round"] == "4"
    if estimator == "regressor":
        assert {"best_iteration", "stopped_iteration", "validation_0-rmse"} <= set(run.metrics)
    else:
        assert run.tags["estimator_name"] == "XGBRanker"


def test_post_training_metrics_of_an_xgboost_model(on, data):
    X, y, X_test, y_test = data
    model = xgb.XGBClassifier(n_estimators=3).fit(X, y)
    acc = accuracy_score(y_test, model.predict(X_test))
    assert only_run().metrics["accuracy_score_X_test"] == pytest.approx(acc)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_inside_a_search_only_the_search_is_logged(on, data, n_jobs):
    X, y, _, _ = data
    with parallel_backend("threading", n_jobs=2):
        GridSearchCV(xgb.XGBClassifier(n_estimators=2, n_jobs=1), {"max_depth": [2, 3]}, cv=2,
                     n_jobs=n_jobs).fit(X, y)
    found = runs()
    assert all(r.tags["autolog.integration"] == "sklearn" for r in found)
    assert len(found) == 3  # the search and its two candidates


def test_in_a_user_run_next_to_manual_logging(on, dmatrices):
    dtrain, dval = dmatrices
    with autolog.start_run() as run:
        autolog.log_param("max_depth", 3)  # the same value as the booster's: no conflict
        xgb.train(PARAMS, dtrain, 2, evals=[(dval, "val")], verbose_eval=False)
        autolog.log_metric("holdout_auc", 0.9)
    record = only_run()
    assert record.run_id == run.id and record.params["objective"] == "binary:logistic"
    assert {"holdout_auc", "val-auc"} <= set(record.metrics)


def test_conflicts_with_manual_params(on, dmatrices):
    dtrain, _ = dmatrices
    with autolog.start_run():
        autolog.log_param("max_depth", 5)
        with pytest.warns(autolog.AutologWarning, match="xgboost.max_depth"):
            xgb.train(PARAMS, dtrain, 2)
        with pytest.raises(autolog.ParamConflictError, match="num_boost_round"):
            autolog.log_param("num_boost_round", 3)
    params = only_run().params
    assert params["max_depth"] == "5" and params["xgboost.max_depth"] == "3"


def test_a_failing_training_ends_its_run_failed(on, dmatrices):
    dtrain, _ = dmatrices
    with pytest.raises(xgb.core.XGBoostError):
        xgb.train({"objective": "no-such-objective"}, dtrain, 2)
    assert only_run().status == "FAILED"


def test_opting_out_logs_nothing_not_even_through_sklearn(data):
    X, y, _, _ = data
    autolog.autolog(xgboost=False)
    xgb.XGBClassifier(n_estimators=2).fit(X, y)
    xgb.train(PARAMS, xgb.DMatrix(X, y), 2)
    assert runs() == []


def test_a_fault_in_the_callback_is_one_warning_and_the_model_is_unchanged(monkeypatch, dmatrices):
    dtrain, dval = dmatrices
    expected = xgb.train(PARAMS, dtrain, 4, evals=[(dval, "val")], verbose_eval=False).predict(dval)
    monkeypatch.delenv("AUTOLOG_STRICT")
    autolog.autolog()
    run_class = type(autolog.start_run())
    autolog.end_run()

    def broken(self, *args, **kwargs):
        raise RuntimeError("injected fault: xgboost callback")

    monkeypatch.setattr(run_class, "log_metric", broken)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        booster = xgb.train(PARAMS, dtrain, 4, evals=[(dval, "val")], verbose_eval=False)
    messages = [str(w.message) for w in record if issubclass(w.category, autolog.AutologWarning)]
    assert len(messages) == 1 and "injected fault: xgboost callback" in messages[0]
    np.testing.assert_array_equal(booster.predict(dval), expected)


def test_in_strict_mode_a_fault_raises(monkeypatch, on, dmatrices):
    monkeypatch.setattr(xgboost_autolog, "_importance_tag",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("injected fault: strict")))
    with pytest.raises(RuntimeError, match="injected fault: strict"):
        xgb.train(PARAMS, dmatrices[0], 2)


def _own_attributes():
    import xgboost.sklearn
    import xgboost.training

    owners = [xgb, xgboost.training, xgboost.sklearn, xgb.XGBModel, xgb.XGBClassifier,
              xgb.XGBRegressor, xgb.XGBRanker]
    return {(owner, name): vars(owner).get(name, "<absent>")
            for owner in owners for name in ("train", "cv", "fit")}


def test_disable_restores_the_exact_originals(data):
    before = _own_attributes()
    autolog.autolog()
    during = _own_attributes()
    changed = {key for key in before if during[key] is not before[key]}
    assert (xgb, "train") in changed and (xgb, "cv") in changed
    assert (xgb.XGBClassifier, "fit") in changed and (xgb.XGBModel, "fit") in changed
    assert (xgb.XGBRegressor, "fit") not in changed  # inherited: wrapped where defined
    autolog.autolog(disable=True)
    after = _own_attributes()
    assert all(after[key] is before[key] for key in before)
