"""End-to-end demo on the default store, MLflow's own ``./mlflow.db``: one autolog() line,
real fits (each saving its model), each in a child run of one parent with the manual
logging, the scikit-learn model registered as ``demo-classifier@champion`` and loaded back
with MLflow's own loader, then the runs as
`autolog runs list` and `autolog runs show` print them, and as MLflow's client reads them
(``mlflow ui`` in this directory shows the same). One fit per run is how MLflow's UI
compares them: three frameworks in one run would log three values for the params they
share (XGBoost's and Lightning's ``maximize``, say), which autolog keeps apart with a
warning.

    .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np

import autolog


def train_sklearn(X, y, X_test, y_test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    model = LogisticRegression(C=0.5, max_iter=200).fit(X, y)  # autologged, model included
    accuracy_score(y_test, model.predict(X_test))  # logged as accuracy_score_X_test
    return model


def train_xgboost(X, y, X_test, y_test) -> None:
    import xgboost as xgb

    train, test = xgb.DMatrix(X, label=y), xgb.DMatrix(X_test, label=y_test)
    xgb.train({"objective": "binary:logistic", "eval_metric": "logloss", "max_depth": 3},
              train, num_boost_round=20, evals=[(test, "test")], verbose_eval=False)


def train_lightning(X, y) -> None:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class MLP(pl.LightningModule):
        def __init__(self, hidden: int = 16, lr: float = 0.01):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 1))

        def training_step(self, batch, _index):
            features, target = batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                self.net(features).squeeze(-1), target)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    data = TensorDataset(torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(MLP(), DataLoader(data, batch_size=64))


def main() -> None:
    autolog.autolog()  # the one line: every installed framework

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 10))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    X_test, y_test = X[1500:], y[1500:]
    X, y = X[:1500], y[:1500]

    with autolog.start_run(run_name="demo", tags={"purpose": "readme"}) as run:
        autolog.log_param("data_version", "v3")  # manual, next to the autologged params
        # One child run per fit, linked to this one by mlflow.parentRunId.
        with autolog.start_run(run_name="sklearn", nested=True) as sklearn_run:
            classifier = train_sklearn(X, y, X_test, y_test)
        with autolog.start_run(run_name="xgboost", nested=True):
            train_xgboost(X, y, X_test, y_test)
        with autolog.start_run(run_name="lightning", nested=True):
            train_lightning(X, y)
        autolog.log_metric("test_acc", float(((X_test[:, 0] + X_test[:, 1] > 0) == y_test).mean()))
        # Artifacts: secured on disk at once, written to ./mlruns by a background thread.
        autolog.log_dict({"features": X.shape[1], "train_rows": len(X)}, "data/config.json")
        autolog.log_text("demo of autolog: one line, every fit recorded\n", "README.txt")
    autolog.flush()  # waits for the models and the artifacts too

    # The autologged model, registered and aliased in MLflow's registry (the A/B "champion").
    version = autolog.register_model(f"runs:/{sklearn_run.id}/model", "demo-classifier",
                                     alias="champion")
    print(f"\nregistered runs:/{sklearn_run.id}/model as demo-classifier version {version.version}, "
          f"alias champion")
    show_model_with_mlflow(classifier, X_test)

    cli = shutil.which("autolog") or os.path.join(os.path.dirname(sys.executable), "autolog")
    for command in (["runs", "list"], ["runs", "show", run.id], ["runs", "show", sklearn_run.id],
                    ["artifacts", "list", run.id]):
        print(f"\n$ autolog {' '.join(command)}")
        subprocess.run([cli, *command], check=True)
    show_with_mlflow(run.id)


def show_model_with_mlflow(classifier, X_test) -> None:
    """Load the champion with MLflow's own loader, as a serving process would."""
    try:
        import mlflow
    except ImportError:
        return
    mlflow.set_tracking_uri("sqlite:///mlflow.db")  # MLflow's default, written explicitly
    champion = mlflow.pyfunc.load_model("models:/demo-classifier@champion")
    same = (champion.predict(X_test) == classifier.predict(X_test)).all()
    print(f"mlflow.pyfunc.load_model('models:/demo-classifier@champion') predicts as the fitted "
          f"model: {bool(same)}")
    if not same:
        raise SystemExit("the registered model does not predict as the fitted one")


def show_with_mlflow(run_id: str) -> None:
    """The same runs through MLflow's own client, where MLflow is installed."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        print("\n(pip install mlflow, then `mlflow ui` here, to browse these runs)")
        return
    client = MlflowClient()  # MLflow's default tracking URI: sqlite:///mlflow.db, here
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    print(f"\nMLflowClient().get_run({run_id!r}): {parent.info.run_name}, {parent.info.status}, "
          f"params {parent.data.params}, metrics {parent.data.metrics}")
    print(f"children: {sorted(child.info.run_name for child in children)}")
    print(f"artifacts: {[(f.path, f.file_size) for f in client.list_artifacts(run_id)]}")
    print("Browse them: mlflow ui   (or: autolog ui), then open http://127.0.0.1:5000")


if __name__ == "__main__":
    main()
