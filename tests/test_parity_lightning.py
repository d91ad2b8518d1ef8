"""Parity with MLflow: the same Lightning script under ``mlflow.pytorch.autolog`` and under
``autolog.autolog()``; every param (name and value) and every metric name MLflow logs must
be in autolog's run too."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autolog

mlflow = pytest.importorskip("mlflow")
torch.set_num_threads(1)


def script(L, root: str) -> None:  # noqa: N803
    """A fit that exercises what MLflow logs: step and epoch values, validation, an
    optimizer with a scheduler, and EarlyStopping that stops the training."""

    class Classifier(L.LightningModule):
        def __init__(self, lr=0.01, hidden=16):
            super().__init__()
            self.save_hyperparameters()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 3))

        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_epoch=True)
            self.log("batch_size", float(len(y)))  # on_step only
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.net(x)
            self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
            self.log("val_epoch", float(self.current_epoch))  # gets worse: stops the fit

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
    trainer = L.Trainer(max_epochs=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=root, num_sanity_val_steps=0,
                        callbacks=[L.callbacks.EarlyStopping(monitor="val_epoch", patience=2)])
    trainer.fit(Classifier(), train, val)
    assert trainer.current_epoch < 5, "EarlyStopping should have stopped the fit"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning.pytorch"])
def test_autolog_logs_everything_mlflow_logs(package, tmp_path):
    L = importlib.import_module(package)  # noqa: N806
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow-own.db'}")
    mlflow.pytorch.autolog(log_models=False, checkpoint=False, silent=True)
    try:
        with mlflow.start_run() as mlflow_run:
            script(L, str(tmp_path / "mlflow"))
    finally:
        mlflow.pytorch.autolog(disable=True)
    logged = mlflow.MlflowClient().get_run(mlflow_run.info.run_id).data
    assert "epochs" in logged.params and "val_loss" in logged.metrics  # MLflow did log

    autolog.autolog(lightning={"log_models": False})  # as MLflow's, above
    script(L, str(tmp_path / "autolog"))
    (run,) = autolog.search_runs()

    assert {key: run.params.get(key) for key in logged.params} == logged.params
    assert set(logged.metrics) <= set(run.metrics)
    client = mlflow.MlflowClient()
    for key in ("val_loss", "val_acc", "train_loss_epoch", "train_acc_epoch"):  # per epoch in both
        theirs = [(m.step, pytest.approx(m.value))
                  for m in client.get_metric_history(mlflow_run.info.run_id, key)]
        ours = [(m.step, m.value) for m in autolog.get_metric_history(run.info.run_id, key)]
        assert ours == theirs, key
    # MLflow finds EarlyStopping only as pytorch_lightning's class; autolog in both packages
    for key in ("stopped_epoch", "restored_epoch", "best_score", "wait_count"):
        if package == "pytorch_lightning":
            assert run.metrics[key] == pytest.approx(logged.metrics[key]), key
        assert key in run.metrics, key
