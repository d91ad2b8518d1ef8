"""The scikit-learn integration: what a fit logs, searches, post-training metrics, joblib,
mixing with manual logging, and safety (faults, disable)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sklearn
from autolog_integrations import sklearn_autolog
from joblib import parallel_backend
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.cluster import DBSCAN, KMeans
from sklearn.datasets import make_classification, make_regression
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    RandomizedSearchCV,
    cross_val_score,
    cross_validate,
)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import autolog
from autolog.integration import get as get_integration

CLASSIFIER_METRICS = {
    "training_accuracy_score", "training_precision_score", "training_recall_score",
    "training_f1_score", "training_log_loss", "training_roc_auc", "training_score",
}
REGRESSOR_METRICS = {
    "training_mean_squared_error", "training_root_mean_squared_error",
    "training_mean_absolute_error", "training_r2_score", "training_score",
}


@pytest.fixture
def data():
    return make_classification(200, 5, n_informative=3, random_state=0)


@pytest.fixture
def on():
    autolog.autolog()


def runs():
    return autolog.search_runs()


def only_run():
    found = runs()
    assert len(found) == 1, [r.tags.get("estimator_name") for r in found]
    return found[0]


def children(parent_id):
    return [r for r in runs() if r.tags.get("mlflow.parentRunId") == parent_id]


def autolog_warnings(record):
    return [w for w in record if issubclass(w.category, autolog.AutologWarning)]


class VoteClassifier(ClassifierMixin, BaseEstimator):
    """A third-party estimator defined at import time, before autolog()."""

    def __init__(self, bias=0.0):
        self.bias = bias

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return self.classes_[(np.asarray(X)[:, 0] + self.bias > 0).astype(int)]


# -- what a fit logs -------------------------------------------------------------------------


def test_fit_creates_a_run_with_params_tags_and_training_metrics(on, data):
    X, y = data
    model = LogisticRegression(C=0.5).fit(X, y)
    run = only_run()
    assert run.status == "FINISHED"
    assert run.tags["autolog.integration"] == "sklearn"
    assert run.tags["estimator_name"] == "LogisticRegression"
    assert run.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert run.params == {k: str(v) for k, v in model.get_params(deep=True).items()}
    assert set(run.metrics) == CLASSIFIER_METRICS
    assert run.metrics["training_score"] == pytest.approx(model.score(X, y))


def mlflow_classifier_metrics(model, X, y, sample_weight=None, pos_label=None):
    """What MLflow computes, with scikit-learn's functions (mlflow/sklearn/utils.py)."""
    average = "weighted" if pos_label is None else "binary"
    y_pred, proba = model.predict(X), model.predict_proba(X)
    common = dict(pos_label=pos_label, average=average, sample_weight=sample_weight)
    out = {
        "training_precision_score": skm.precision_score(y, y_pred, **common),
        "training_recall_score": skm.recall_score(y, y_pred, **common),
        "training_f1_score": skm.f1_score(y, y_pred, **common),
        "training_accuracy_score": skm.accuracy_score(y, y_pred, sample_weight=sample_weight),
        "training_log_loss": skm.log_loss(y, proba, sample_weight=sample_weight),
        "training_score": model.score(X, y, sample_weight=sample_weight),
    }
    try:
        out["training_roc_auc"] = skm.roc_auc_score(
            y, proba[:, 1] if proba.shape[1] == 2 else proba, average="weighted",
            sample_weight=sample_weight, multi_class="ovo")
    except ValueError:  # multiclass one-vs-one takes no sample weights
        pass
    return out


@pytest.mark.parametrize("case", ["binary", "multiclass", "string-labels", "weighted",
                                  "weighted-multiclass", "forest", "pos_label", "svc"])
def test_training_metrics_equal_mlflows(case):
    classes = 3 if case in ("multiclass", "weighted-multiclass", "forest") else 2
    X, y = make_classification(300, 6, n_informative=4, n_classes=classes, random_state=1)
    weights = np.random.RandomState(0).rand(len(y)) if case.startswith("weighted") else None
    if case == "string-labels":
        y = np.array(["cat", "dog"])[y]
    model = {"forest": RandomForestClassifier(10, max_depth=3, random_state=0),
             "svc": SVC(probability=True, random_state=0)}.get(case, LogisticRegression())
    pos_label = 1 if case == "pos_label" else None
    autolog.autolog(sklearn={"pos_label": pos_label})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=True) in 1.9
        model.fit(X, y, sample_weight=weights)
    autolog.autolog(disable=True)  # or the calls below would be post-training metrics
    expected = mlflow_classifier_metrics(model, X, y, weights, pos_label)
    logged = only_run().metrics
    assert set(logged) == set(expected)
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_regressor_metrics(on):
    X, y = make_regression(150, 4, noise=5.0, random_state=0)
    model = Ridge(alpha=2.0).fit(X, y)
    autolog.autolog(disable=True)
    logged = only_run().metrics
    assert set(logged) == REGRESSOR_METRICS
    y_pred = model.predict(X)
    assert logged["training_mean_squared_error"] == pytest.approx(skm.mean_squared_error(y, y_pred))
    assert logged["training_root_mean_squared_error"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(y, y_pred)))
    assert logged["training_mean_absolute_error"] == pytest.approx(skm.mean_absolute_error(y, y_pred))
    assert logged["training_r2_score"] == pytest.approx(skm.r2_score(y, y_pred))
    assert logged["training_score"] == pytest.approx(model.score(X, y))


class NanRegressor(RegressorMixin, BaseEstimator):
    """A model whose predictions are not numbers (a diverged fit)."""

    def fit(self, X, y):
        self.fitted_ = True
        return self

    def predict(self, X):
        return np.full(len(X), np.nan)


def test_a_metric_of_nan_predictions_is_left_out_not_logged_as_nan(on):
    X, y = make_regression(50, 3, random_state=0)
    NanRegressor().fit(X, y)  # scikit-learn refuses NaN predictions: MLflow logs nothing
    run = only_run()
    assert run.metrics == {} and run.tags["estimator_name"] == "NanRegressor"


def test_clusterers_log_their_score_where_one_exists(on, data):
    X, _ = data
    model = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
    run = only_run()
    assert run.metrics == {"training_score": pytest.approx(model.score(X))}
    assert run.params["n_clusters"] == "3"
    DBSCAN(eps=3.0).fit(X)  # no score: params only
    dbscan = next(r for r in runs() if r.tags["estimator_name"] == "DBSCAN")
    assert dbscan.metrics == {} and dbscan.params["eps"] == "3.0"


class CountingClassifier(VoteClassifier):
    """Counts its predictions: the training metrics make one over the whole training set."""

    def predict(self, X):
        self.predictions = getattr(self, "predictions", 0) + 1
        return super().predict(X)


def test_training_metrics_can_be_skipped_and_params_and_post_training_metrics_stay(data):
    X, y = data
    autolog.autolog()
    default = CountingClassifier().fit(X, y)
    assert default.predictions == 1  # the training metrics' prediction
    autolog.autolog(sklearn={"log_training_metrics": False})
    model = CountingClassifier(bias=0.1).fit(X[:150], y[:150])
    assert getattr(model, "predictions", 0) == 0  # the fit predicted nothing
    X_test = X[150:]
    accuracy = skm.accuracy_score(y[150:], model.predict(X_test))
    model.score(X_test, y[150:])
    search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0, 10.0]}, cv=2).fit(X, y)

    by_name = {}
    for run in runs():
        if "mlflow.parentRunId" not in run.tags:
            by_name[(run.tags["estimator_name"], run.params.get("bias"))] = run
    assert set(by_name["CountingClassifier", "0.0"].metrics) == {
        "training_accuracy_score", "training_precision_score", "training_recall_score",
        "training_f1_score", "training_score"}
    skipped = by_name["CountingClassifier", "0.1"]
    assert skipped.params == {"bias": "0.1"}
    assert skipped.tags["estimator_class"].endswith(".CountingClassifier")
    assert skipped.metrics == {"accuracy_score_X_test": pytest.approx(accuracy),
                               "CountingClassifier_score_X_test": pytest.approx(accuracy)}
    parent = by_name["GridSearchCV", None]
    assert parent.params["best_C"] == str(search.best_params_["C"])
    assert parent.metrics == {"best_cv_score": pytest.approx(search.best_score_)}
    kids = children(parent.run_id)
    assert len(kids) == 3 and all("mean_test_score" in kid.metrics for kid in kids)
    assert not any(key.startswith("training_") for kid in kids for key in kid.metrics)


def test_fit_inside_a_user_run_logs_there_next_to_manual_logging(on, data):
    X, y = data
    with autolog.start_run(run_name="mine") as run:
        autolog.log_param("data_version", "v3")
        LogisticRegression().fit(X, y)
        autolog.log_metric("test_acc", 0.93)
        assert autolog.active_run() is run  # the fit did not end it
    record = only_run()
    assert record.run_id == run.id and record.status == "FINISHED"
    assert "autolog.integration" not in record.tags
    assert record.params["data_version"] == "v3" and record.params["C"] == "1.0"
    assert {"test_acc", "training_score"} <= set(record.metrics)


def test_pipeline_is_one_fit(on, data):
    X, y = data
    pipe = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(C=2.0))]).fit(X, y)
    run = only_run()
    assert run.tags["estimator_name"] == "Pipeline"
    assert run.params["lr__C"] == "2.0" and run.params["scale__with_mean"] == "True"
    assert run.metrics["training_score"] == pytest.approx(pipe.score(X, y))


def test_estimators_found_at_run_time_including_classes_defined_later(on, data):
    X, y = data
    VoteClassifier(bias=0.5).fit(X, y)  # defined before autolog() was called

    class LaterClassifier(ClassifierMixin, BaseEstimator):  # defined after autolog()
        def __init__(self, k=1):
            self.k = k

        def fit(self, X, y):
            self.classes_ = np.unique(y)
            return self

        def predict(self, X):
            return np.full(len(X), self.classes_[0])

    class Subclass(LogisticRegression):  # its fit calls super().fit(): one fit, one run
        def fit(self, X, y, sample_weight=None):
            return super().fit(X, y, sample_weight=sample_weight)

    LaterClassifier(k=3).fit(X, y)
    Subclass(C=0.25).fit(X, y)
    by_name = {r.tags["estimator_name"]: r for r in runs()}
    assert set(by_name) == {"VoteClassifier", "LaterClassifier", "Subclass"}
    assert by_name["VoteClassifier"].params == {"bias": "0.5"}
    assert by_name["LaterClassifier"].params == {"k": "3"}
    assert by_name["LaterClassifier"].metrics["training_accuracy_score"] == pytest.approx(
        np.mean(y == np.unique(y)[0]))
    assert by_name["Subclass"].params["C"] == "0.25"


def test_transformer_defined_while_patched_keeps_set_output_and_is_restored(on, data):
    X, y = data

    class Doubler(TransformerMixin, BaseEstimator):
        def fit(self, X, y=None):
            self.n_features_in_ = X.shape[1]
            return self

        def transform(self, X):
            return np.asarray(X) * 2

        def get_feature_names_out(self, input_features=None):
            return np.array([f"d{i}" for i in range(self.n_features_in_)])

    out = Doubler().set_output(transform="pandas").fit_transform(X)
    assert list(out.columns)[:2] == ["d0", "d1"]  # scikit-learn's output wrapping still works
    assert only_run().tags["estimator_name"] == "Doubler"
    autolog.autolog(disable=True)
    assert not hasattr(vars(Doubler)["fit"], "__wrapped__")
    assert list(Doubler().set_output(transform="pandas").fit_transform(X).columns)[0] == "d0"


def test_fit_transform_and_fit_predict_are_one_fit_each(on, data):
    X, _ = data
    PCA(n_components=2).fit_transform(X)
    KMeans(n_clusters=2, n_init=1, random_state=0).fit_predict(X)
    names = sorted(r.tags["estimator_name"] for r in runs())
    assert names == ["KMeans", "PCA"]


def test_preprocessing_alone_is_not_a_run_unless_asked(data):
    X, _ = data
    autolog.autolog()
    StandardScaler().fit(X)
    assert runs() == []
    autolog.autolog(sklearn={"exclude": ()})
    StandardScaler().fit(X)
    assert only_run().tags["estimator_name"] == "StandardScaler"


def test_a_failing_fit_ends_its_run_failed_and_raises_unchanged(on):
    with pytest.raises(ValueError, match="Found input variables with inconsistent numbers"):
        LogisticRegression().fit(np.zeros((5, 2)), [0, 1])
    assert only_run().status == "FAILED"


def test_ctrl_c_in_a_fit_ends_its_run_killed(on, data):
    class Interrupted(BaseEstimator):
        def fit(self, X, y=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Interrupted().fit(*data)
    assert only_run().status == "KILLED"


# -- searches --------------------------------------------------------------------------------


def test_grid_search_logs_best_params_and_top_candidates_as_child_runs(on, data):
    X, y = data
    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept":
                                                 [True, False]}, cv=3).fit(X, y)
    parent = next(r for r in runs() if "mlflow.parentRunId" not in r.tags)
    assert parent.tags["estimator_name"] == "GridSearchCV"
    assert parent.params["cv"] == "3" and "estimator__C" not in parent.params  # not deep
    assert parent.params["best_C"] == str(search.best_params_["C"])
    assert parent.metrics["best_cv_score"] == pytest.approx(search.best_score_)
    assert CLASSIFIER_METRICS <= set(parent.metrics)
    kids = children(parent.run_id)
    assert len(kids) == 5 and len(runs()) == 6  # the 40 inner fits made no runs
    ranks = search.cv_results_["rank_test_score"]
    best_five = sorted(ranks)[:5]
    assert sorted(k.metrics["rank_test_score"] for k in kids) == best_five
    for kid in kids:
        assert kid.tags["estimator_name"] == "LogisticRegression"
        assert kid.tags["autolog.integration"] == "sklearn"
        assert {"mean_test_score", "std_test_score", "mean_fit_time"} <= set(kid.metrics)
        assert not any(k.startswith(("split", "param")) for k in kid.metrics)
        row = next(i for i, p in enumerate(search.cv_results_["params"])
                   if str(p["C"]) == kid.params["C"]
                   and str(p["fit_intercept"]) == kid.params["fit_intercept"])
        assert kid.metrics["mean_test_score"] == pytest.approx(search.cv_results_["mean_test_score"][row])
        assert kid.params["max_iter"] == "100"  # the seed's other params are there too


def test_a_search_in_a_user_run_puts_its_children_under_it_in_its_experiment(on, data):
    with autolog.start_run(experiment="team/search") as run:
        GridSearchCV(LogisticRegression(), {"C": [0.1, 1, 10]}, cv=2).fit(*data)
    found = autolog.search_runs("team/search")
    assert len(found) == 4 and runs() == []
    assert {r.tags.get("mlflow.parentRunId") for r in found if r.run_id != run.id} == {run.id}
    assert all(r.status == "FINISHED" for r in found)


@pytest.mark.parametrize("limit, expected", [(2, 2), (None, 4), (0, 0)])
def test_max_tuning_runs(data, limit, expected):
    autolog.autolog(sklearn={"max_tuning_runs": limit})
    GridSearchCV(LogisticRegression(), {"C": [0.1, 1, 10, 100]}, cv=2).fit(*data)
    parent = next(r for r in runs() if "mlflow.parentRunId" not in r.tags)
    assert len(children(parent.run_id)) == expected


def test_a_search_that_raises_ends_failed_with_no_child_run(on, data):
    """Children are logged from the finished search's results, so a search that raises
    leaves its run FAILED and no child behind (none could end FINISHED)."""
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.model_selection import GridSearchCV

    class Diverges(ClassifierMixin, BaseEstimator):
        def __init__(self, rate=1.0):
            self.rate = rate

        def fit(self, X, y):
            raise FloatingPointError("the user's estimator diverged")

    X, y = data
    search = GridSearchCV(Diverges(), {"rate": [0.1, 1.0]}, cv=2, error_score="raise")
    with pytest.raises(FloatingPointError, match="diverged"):
        search.fit(X, y)
    (run,) = runs()
    assert run.status == "FAILED" and run.tags["estimator_name"] == "GridSearchCV"


def test_randomized_and_halving_searches(on, data):
    X, y = data
    RandomizedSearchCV(LogisticRegression(), {"C": [0.1, 1, 10]}, n_iter=2, cv=2,
                       random_state=0).fit(X, y)
    HalvingGridSearchCV(LogisticRegression(), {"C": [0.1, 1, 10]}, cv=2, random_state=0,
                        min_resources=40).fit(X, y)
    parents = {r.tags["estimator_name"]: r for r in runs() if "mlflow.parentRunId" not in r.tags}
    assert set(parents) == {"RandomizedSearchCV", "HalvingGridSearchCV"}
    assert len(children(parents["RandomizedSearchCV"].run_id)) == 2
    halving = children(parents["HalvingGridSearchCV"].run_id)
    assert len(halving) == 4 and all("n_resources" in k.metrics for k in halving)
    assert "best_C" in parents["HalvingGridSearchCV"].params


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_search_with_parallel_workers_logs_once(on, data, backend):
    X, y = data
    with parallel_backend(backend, n_jobs=2):
        GridSearchCV(LogisticRegression(), {"C": [0.1, 1, 10]}, cv=3, n_jobs=2).fit(X, y)
    parent = next(r for r in runs() if "mlflow.parentRunId" not in r.tags)
    assert len(runs()) == 1 + len(children(parent.run_id)) == 4


def test_forest_with_threads_is_one_run(on, data):
    RandomForestClassifier(n_estimators=8, n_jobs=2, random_state=0).fit(*data)
    assert only_run().tags["estimator_name"] == "RandomForestClassifier"


def test_meta_estimators_fitting_clones_in_threads_are_one_run(on, data):
    with parallel_backend("threading", n_jobs=2):
        OneVsRestClassifier(LogisticRegression(), n_jobs=2).fit(*data)
    assert only_run().tags["estimator_name"] == "OneVsRestClassifier"


def test_fits_in_two_threads_get_a_run_each(on, data):
    X, y = data
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: LogisticRegression(C=c).fit(X, y), [0.5, 2.0]))
    assert sorted(r.params["C"] for r in runs()) == ["0.5", "2.0"]
    assert all(r.status == "FINISHED" and len(r.metrics) == 7 for r in runs())


def test_cross_validation_helpers_make_no_run_per_fold(on, data):
    X, y = data
    model = LogisticRegression()
    cross_val_score(model, X, y, cv=3)
    with parallel_backend("threading", n_jobs=2):
        cross_validate(model, X, y, cv=3, n_jobs=2, return_estimator=True)
    assert runs() == []
    model.fit(X, y)  # once the helpers are done, the same estimator logs as usual
    assert only_run().tags["estimator_name"] == "LogisticRegression"


def test_a_searchs_best_estimator_refitted_later_by_the_user_logs(on, data):
    X, y = data
    search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1]}, cv=2).fit(X, y)
    before = len(runs())
    search.best_estimator_.fit(X, y)
    assert len(runs()) == before + 1


# -- post-training metrics -------------------------------------------------------------------


def test_post_training_metrics_go_to_the_models_run(on, data):
    X, y = data
    X_train, y_train, X_test, y_test = X[:150], y[:150], X[150:], y[150:]
    model = LogisticRegression().fit(X_train, y_train)
    acc = skm.accuracy_score(y_test, model.predict(X_test))
    f1 = sklearn.metrics.f1_score(y_test, model.predict(X_test))
    again = skm.accuracy_score(y_test, model.predict(X_test))
    score = model.score(X_test, y_test)
    X_test = X[100:]  # another object under the same name
    other = skm.accuracy_score(y[100:], model.predict(X_test))
    run = only_run()  # ended when the fit ended: the metrics still land there
    assert run.metrics["accuracy_score_X_test"] == pytest.approx(acc)
    assert run.metrics["f1_score_X_test"] == pytest.approx(f1)
    assert run.metrics["accuracy_score-2_X_test"] == pytest.approx(again)
    assert run.metrics["LogisticRegression_score_X_test"] == pytest.approx(score)
    assert run.metrics["accuracy_score-3_X_test-2"] == pytest.approx(other)
    assert set(run.metrics) == CLASSIFIER_METRICS | {  # nothing from inside score() or f1
        "accuracy_score_X_test", "f1_score_X_test", "accuracy_score-2_X_test",
        "LogisticRegression_score_X_test", "accuracy_score-3_X_test-2"}


def test_post_training_metrics_in_a_user_run_and_unnamed_data(on, data):
    X, y = data

    def evaluate(model, features, labels):  # the caller's name is the one used
        return skm.accuracy_score(labels, model.predict(features))

    with autolog.start_run():
        model = LogisticRegression().fit(X, y)
        holdout = X[:40]
        evaluate(model, holdout, y[:40])
        skm.accuracy_score(y[:10], model.predict(X[:10]))  # an expression has no name
    metrics = only_run().metrics
    assert "accuracy_score_holdout" in metrics
    assert "accuracy_score-2_unknown_dataset" in metrics


def test_predictions_of_other_models_and_the_option_off(data):
    X, y = data
    plain = LogisticRegression().fit(X, y)  # fitted before autolog: not tracked
    autolog.autolog(sklearn={"log_post_training_metrics": False})
    model = LogisticRegression().fit(X, y)
    skm.accuracy_score(y, plain.predict(X))
    skm.accuracy_score(y, model.predict(X))
    assert set(only_run().metrics) == CLASSIFIER_METRICS


# -- mixing with manual logging ------------------------------------------------------------


def test_manual_param_after_the_fit_that_differs_raises_at_the_users_line(on, data):
    with autolog.start_run():
        LogisticRegression(C=1.0).fit(*data)
        autolog.log_param("C", 1)  # the same value: fine
        with pytest.raises(autolog.ParamConflictError) as caught:
            autolog.log_param("C", 2.0)
    message = str(caught.value)
    assert "'C'" in message and "autolog:sklearn" in message and "manual" in message


def test_autologged_param_after_a_different_manual_one_is_namespaced(on, data):
    with autolog.start_run():
        autolog.log_param("C", 5)
        with pytest.warns(autolog.AutologWarning, match="sklearn.C"):
            LogisticRegression(C=1.0).fit(*data)
    params = only_run().params
    assert params["C"] == "5" and params["sklearn.C"] == "1.0"


def test_on_conflict_skip(data):
    autolog.autolog(on_conflict="skip")
    with autolog.start_run():
        autolog.log_param("C", 5)
        with pytest.warns(autolog.AutologWarning, match="skipped"):
            LogisticRegression(C=1.0).fit(*data)
    params = only_run().params
    assert params["C"] == "5" and "sklearn.C" not in params and params["solver"] == "lbfgs"


def test_on_conflict_raise(data):
    autolog.autolog(on_conflict="raise")
    model = LogisticRegression(C=1.0)
    with autolog.start_run():
        autolog.log_param("C", 5)
        with pytest.raises(autolog.ParamConflictError, match="'C'"):
            model.fit(*data)
    assert not hasattr(model, "coef_")  # raised before training, not after


# -- safety ------------------------------------------------------------------------------


def _break(monkeypatch, name, message):
    def broken(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(sklearn_autolog, name, broken)


def test_a_fault_in_autologs_code_is_one_warning_and_the_fit_is_unchanged(monkeypatch, data):
    X, y = data
    expected = LogisticRegression().fit(X, y).predict_proba(X)
    monkeypatch.delenv("AUTOLOG_STRICT")
    autolog.autolog()
    _break(monkeypatch, "training_metrics", "injected fault: training metrics")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = LogisticRegression().fit(X, y)
    assert len(autolog_warnings(record)) == 1
    assert "injected fault: training metrics" in str(autolog_warnings(record)[0].message)
    np.testing.assert_array_equal(model.predict_proba(X), expected)
    assert only_run().status == "FINISHED"


def test_a_fault_in_post_training_code_is_one_warning(monkeypatch, data):
    from autolog_integrations import _sklearn_post_training

    X, y = data
    monkeypatch.delenv("AUTOLOG_STRICT")
    autolog.autolog()
    model = LogisticRegression().fit(X, y)
    monkeypatch.setattr(_sklearn_post_training, "_dataset_name",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("injected fault: predict")))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predictions = model.predict(X)
    assert len(autolog_warnings(record)) == 1
    np.testing.assert_array_equal(predictions, LogisticRegression().fit(X, y).predict(X))


def test_in_strict_mode_a_fault_raises(monkeypatch, on, data):
    _break(monkeypatch, "training_metrics", "injected fault: strict")
    with pytest.raises(RuntimeError, match="injected fault: strict"):
        LogisticRegression().fit(*data)


def _own_attributes():
    import sklearn.model_selection._validation
    import sklearn.utils.parallel

    owners = [LogisticRegression, sklearn.base.BaseEstimator, sklearn.base.TransformerMixin,
              sklearn.base.ClassifierMixin, GridSearchCV.__mro__[1], SVC.__mro__[1],
              sklearn.utils._metadata_requests._MetadataRequester, sklearn.base._SetOutputMixin,
              sklearn.metrics, sklearn.model_selection, sklearn.utils.parallel.Parallel,
              sklearn.utils.parallel._FuncWrapper]
    names = ["fit", "fit_transform", "predict", "predict_proba", "score", "__call__",
             "__init_subclass__", "accuracy_score", "f1_score", "cross_val_score"]
    found = {(owner, name): vars(owner).get(name, "<absent>") for owner in owners for name in names}
    for function in (skm.accuracy_score, skm.f1_score, cross_val_score):  # patched in place
        for index, cell in enumerate(function.__closure__):
            found[(function, index)] = cell.cell_contents
    return found


def test_disable_restores_the_exact_originals(data):
    before = _own_attributes()
    autolog.autolog()
    during = _own_attributes()
    changed = [key for key in before if during[key] is not before[key]]
    assert len(changed) >= 15  # fit, predict, score, metrics, cross-validation, joblib...
    assert (sklearn.utils.parallel._FuncWrapper, "__call__") in changed
    assert (skm.accuracy_score, 0) in changed and (cross_val_score, 0) in changed
    assert (sklearn.metrics, "accuracy_score") not in changed  # the same object everywhere
    assert (sklearn.base._SetOutputMixin, "__init_subclass__") in changed
    autolog.autolog(disable=True)
    after = _own_attributes()
    assert all(after[key] is before[key] for key in before)
    LogisticRegression().fit(*data)
    assert runs() == []


def test_calling_autolog_twice_patches_once(data):
    autolog.autolog()
    patched = {name: len(get_integration(name).patcher) for name in ("sklearn", "xgboost")}
    autolog.autolog()
    assert {name: len(get_integration(name).patcher) for name in patched} == patched
    LogisticRegression().fit(*data)
    assert len(only_run().metrics) == 7


def test_opting_out_by_flag_or_environment(monkeypatch, data):
    autolog.autolog(sklearn=False)
    LogisticRegression().fit(*data)
    monkeypatch.setenv("AUTOLOG_DISABLE", "sklearn")
    autolog.autolog()
    LogisticRegression().fit(*data)
    assert runs() == []


def test_autolog_before_scikit_learn_is_imported(tmp_path):
    script = """
import autolog
autolog.autolog(sklearn={"log_models": False, "log_diagnostics": False})  # the hook, not models
from sklearn.linear_model import LogisticRegression
from sklearn.datasets import make_classification
LogisticRegression().fit(*make_classification(60, 4, random_state=0))
(run,) = autolog.search_runs()
print(run.tags["estimator_name"], len(run.metrics))
"""
    env = {**os.environ, "AUTOLOG_TRACKING_URI": f"sqlite:///{tmp_path / 'sub.db'}"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["LogisticRegression", "7"]


def test_a_param_too_long_is_cut_visibly_and_the_warning_points_at_the_fit(store_uri):
    """KMeans with an ndarray ``init``: its repr is over 6,000 characters. MLflow keeps
    5,997 and appends '...', so a reader can tell; the warning names the user's line."""
    from sklearn.cluster import KMeans

    X = np.random.default_rng(0).normal(size=(300, 30))  # init: 900 numbers, printed in full
    autolog.autolog()
    with pytest.warns(autolog.AutologWarning, match="'init' value .* truncated") as warned:
        KMeans(n_clusters=30, init=X[:30], n_init=1).fit(X); line = sys._getframe().f_lineno  # noqa: E702
    (warning,) = [w for w in warned if "truncated" in str(w.message)]
    assert (warning.filename, warning.lineno) == (__file__, line)
    (run,) = autolog.search_runs()
    assert len(run.params["init"]) == 6000 and run.params["init"].endswith("...")
