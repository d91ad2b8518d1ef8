"""Probes of private framework internals, and tested version ranges, on the real frameworks.

A release without an internal is simulated by taking it away (``monkeypatch.delattr``)
while ``autolog()`` probes, and putting it back before the fit: the framework itself still
works, and autolog must have turned off that one feature, with one warning, and log
everything else.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from test_lightning import BATCHES, loader, regressor, steps, trainer
from test_torch import data, history

import autolog
from autolog.integration import assigns, get

RESULT = "lightning.pytorch.trainer.connectors.logger_connector.result"
CONNECTOR = "lightning.pytorch.trainer.connectors.logger_connector.logger_connector"


@pytest.fixture
def pl():
    return importlib.import_module("lightning.pytorch")


def autolog_without(monkeypatch, owner, name: str, match: str) -> None:
    """``autolog()`` while ``owner.name`` is missing: exactly one warning, matching."""
    with monkeypatch.context() as gone, pytest.warns(autolog.AutologWarning, match=match) as told:
        gone.delattr(owner, name)
        autolog.autolog()
    assert len([w for w in told if issubclass(w.category, autolog.AutologWarning)]) == 1


def fit_twice(pl, tmp_path) -> list:
    """Two fits of two epochs, each in its own run; a second warning would fail the test
    (pytest turns AutologWarning into an error)."""
    for _ in range(2):
        trainer(pl, tmp_path).fit(regressor(pl)(), loader(), loader(32, seed=1))
    runs = autolog.search_runs()
    assert len(runs) == 2 and {run.status for run in runs} == {"FINISHED"}
    return runs


def test_every_probe_passes_on_the_installed_releases():
    import lightning.pytorch  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import sklearn  # noqa: F401
    import xgboost  # noqa: F401

    autolog.autolog()  # a failing probe would warn, and fail this test
    for name in ("lightning", "torch", "xgboost", "sklearn"):
        integration = get(name)
        assert integration.probes and integration.features_off == {}, name


def test_assigns_finds_attributes_set_in_init_or_a_helper_and_nothing_else():
    class Base:
        def __init__(self):
            self._cache = None

    class Child(Base):
        def __init__(self):
            super().__init__()
            self.__setup()

        def __setup(self):
            self._every = 3

        def read(self):
            return self._missing

    assert assigns(Child, "_cache") and assigns(Child, "_every")
    assert not assigns(Child, "_missing") and not assigns(Child.read, "_every")


def test_lightning_without_its_results_loses_per_step_values_only(pl, tmp_path, monkeypatch):
    result = importlib.import_module(RESULT)
    autolog_without(monkeypatch, result._ResultCollection, "valid_items",
                    r"lightning\.pytorch \S+ has no _ResultCollection\.valid_items\(\); "
                    r"per-step metrics \(self\.log\(\.\.\., on_step=True\)\) not logged")
    assert not get("lightning").feature_on("per-step metrics (self.log(..., on_step=True))")
    for run in fit_twice(pl, tmp_path):
        run_id = run.info.run_id
        assert run.params["epochs"] == "2" and run.params["optimizer_name"] == "SGD"
        assert "train_loss_step" not in run.metrics
        for key in ("train_loss", "train_loss_epoch", "val_loss"):
            assert steps(run_id, key) == [0, 1], key  # every epoch value, at its epoch
        assert steps(run_id, "lr") == [1, BATCHES + 1]  # StepLR halves it each epoch


def test_lightning_without_callback_metrics_loses_epoch_values_only(pl, tmp_path, monkeypatch):
    autolog_without(monkeypatch, importlib.import_module(CONNECTOR), "_LoggerConnector",
                    r"lightning\.pytorch \S+ has no _LoggerConnector\._callback_metrics; "
                    r"epoch and validation metrics not logged")
    for run in fit_twice(pl, tmp_path):
        run_id = run.info.run_id
        assert run.params["epochs"] == "2" and run.params["lr"] == "0.05"
        assert steps(run_id, "train_loss_step") == list(range(1, 2 * BATCHES + 1))
        assert steps(run_id, "lr") == [1, BATCHES + 1]
        assert not {"train_loss", "train_loss_epoch", "val_loss"} & set(run.metrics)


def test_torch_without_the_step_hook_loses_step_values_in_both_integrations(
        pl, tmp_path, monkeypatch):
    optimizer_module = importlib.import_module("torch.optim.optimizer")
    with monkeypatch.context() as gone, pytest.warns(autolog.AutologWarning) as told:
        gone.delattr(optimizer_module, "register_optimizer_step_post_hook")
        autolog.autolog()
    messages = sorted(str(w.message) for w in told if issubclass(w.category, autolog.AutologWarning))
    assert len(messages) == 2, messages
    assert "autolog (lightning): " in messages[0] and "; the lr of each step not logged" in messages[0]
    assert "autolog (torch): torch " in messages[1]
    assert "train_loss and lr at each optimizer step not logged" in messages[1]
    for run in fit_twice(pl, tmp_path):  # Lightning: everything but the lr
        assert steps(run.info.run_id, "train_loss_step") == list(range(1, 2 * BATCHES + 1))
        assert steps(run.info.run_id, "val_loss") == [0, 1] and "lr" not in run.metrics
    # a plain loop: the optimizer's params and SummaryWriter's scalars, no step values
    from torch.utils.tensorboard import SummaryWriter

    x, y = data()
    with autolog.start_run() as run:
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        writer = SummaryWriter(str(tmp_path / "tb"))
        for step in range(5):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            writer.add_scalar("loss", loss.item(), step)
        writer.close()
    record = autolog.get_run(run.id)
    assert record.params["optimizer_name"] == "Adam" and record.params["lr"] == "0.01"
    assert [step for step, _ in history(run.id, "loss")] == list(range(5))
    assert "train_loss" not in record.metrics and "lr" not in record.metrics


def test_xgboost_without_a_readable_booster_config_logs_none_for_unset_params(monkeypatch):
    import xgboost
    from sklearn.datasets import make_classification

    autolog_without(monkeypatch, xgboost.Booster, "save_config",
                    r"autolog \(xgboost\): xgboost \S+ has no the layout of "
                    r"Booster\.save_config\(\) that autolog reads; the values the booster used "
                    r"for params given as None not logged")
    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    model = xgboost.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1)
    model.fit(X, y, eval_set=[(X, y)], verbose=False)
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED" and run.params["max_depth"] == "2"
    assert run.params["learning_rate"] == "None"  # as MLflow logs it
    assert "autolog.xgboost.params_from_booster" not in run.tags
    assert [m.step for m in autolog.get_metric_history(run.info.run_id, "validation_0-logloss")] == [0, 1, 2]
    assert "feature_importance_weight" in run.tags


@pytest.mark.parametrize("version", ["9.0.0", "3.3.0"])
def test_a_newer_xgboost_is_autologged_with_one_notice(monkeypatch, version):
    import xgboost

    monkeypatch.setattr(xgboost, "__version__", version)
    with pytest.warns(autolog.AutologWarning,
                      match=rf"xgboost {version} is newer than the releases the xgboost "
                            r"integration is tested on \(>=2\.1\.1,<3\.3\); autologging it"):
        autolog.autolog()
    autolog.autolog()  # no second notice
    dtrain = xgboost.DMatrix(*data(32))
    xgboost.train({"max_depth": 2}, dtrain, 4, evals=[(dtrain, "train")], verbose_eval=False)
    (run,) = autolog.search_runs()
    assert run.params["max_depth"] == "2"
    assert [m.step for m in autolog.get_metric_history(run.info.run_id, "train-rmse")] == [0, 1, 2, 3]


def test_an_older_xgboost_is_not_autologged_with_one_warning(monkeypatch):
    import xgboost

    monkeypatch.setattr(xgboost, "__version__", "2.0.3")
    with pytest.warns(autolog.AutologWarning,
                      match=r"xgboost 2\.0\.3 is older than the xgboost integration supports "
                            r"\(>=2\.1\.1,<3\.3\); not autologging it"):
        autolog.autolog()
    autolog.autolog()
    dtrain = xgboost.DMatrix(*data(32))
    xgboost.train({"max_depth": 2}, dtrain, 2)
    assert autolog.search_runs() == []


def test_a_newer_lightning_is_autologged_with_one_notice(pl, tmp_path, monkeypatch):
    monkeypatch.setattr(pl, "__version__", "2.7.0")
    with pytest.warns(autolog.AutologWarning) as told:
        autolog.autolog()
    assert [str(w.message) for w in told] == [
        "autolog: lightning 2.7.0 is newer than the releases the lightning integration is "
        "tested on (>=2.2,<2.7); autologging it all the same"]
    for run in fit_twice(pl, tmp_path):  # no second notice, and everything logged
        assert run.params["epochs"] == "2"
        assert steps(run.info.run_id, "train_loss_step") == list(range(1, 2 * BATCHES + 1))
        assert steps(run.info.run_id, "val_loss") == [0, 1]


def test_sklearn_without_the_closure_cell_logs_metrics_called_through_the_module(monkeypatch):
    import sklearn.metrics
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score as imported_before  # bound before autolog()

    autolog_without(monkeypatch, sklearn.metrics.accuracy_score, "__wrapped__",
                    "closure cell of validate_params' wrapper; post-training metrics of "
                    "functions imported before autolog")
    X, y = data_for_sklearn()
    with autolog.start_run() as run:
        model = LogisticRegression().fit(X, y)
        imported_before(y, model.predict(X))
        sklearn.metrics.accuracy_score(y, model.predict(X))
    metrics = autolog.get_run(run.id).metrics
    assert [key for key in metrics if key.startswith("accuracy_score")] == ["accuracy_score_X"]
    assert metrics["training_accuracy_score"] == metrics["accuracy_score_X"]


def test_sklearn_without_its_search_base_class_logs_a_search_as_one_plain_fit(monkeypatch):
    import sklearn.model_selection._search as search
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    autolog_without(monkeypatch, search, "BaseSearchCV", "search child runs")
    X, y = data_for_sklearn()
    GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    (run,) = autolog.search_runs()  # no child runs
    assert "best_cv_score" not in run.metrics and run.params["cv"] == "2"
    assert "training_accuracy_score" in run.metrics


def data_for_sklearn():
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    return X, (X[:, 0] > 0).astype(int)
