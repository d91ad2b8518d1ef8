"""Lightning's models, checkpoints and model summary, and a plain torch module logged by
hand: what MLflow's own loaders and client read back (a fresh process loads the models)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import mlflow
import numpy
import pytest
import torch
from autolog_integrations.lightning_autolog import CHECKPOINT_TAG, first_tensor
from torch.utils.data import DataLoader, TensorDataset

import autolog
from autolog.models.saver import HISTORY_TAG

pytest_plugins = ("mlflow_server",)

torch.set_num_threads(1)
BATCHES = 4  # training batches per epoch

# Loads each model with MLflow's own loaders, as a user's serving process would: the
# flavor's and pyfunc's outputs on the saved inputs, against the fitted object's outputs.
LOADER = textwrap.dedent("""
    import json, sys
    import mlflow, numpy, torch

    results = {}
    for uri, inputs, expected in json.loads(sys.argv[1]):
        x, want = numpy.load(inputs), numpy.load(expected)
        model = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            direct = model(torch.from_numpy(x)).numpy()
        served = numpy.asarray(mlflow.pyfunc.load_model(uri).predict(x))
        signature = mlflow.models.get_model_info(uri).signature
        results[uri] = {"class": type(model).__name__, "direct": numpy.allclose(direct, want),
                        "pyfunc": numpy.allclose(served, want),
                        "signature": signature.inputs.to_dict() if signature else None}
    print(json.dumps(results))
""")


def regressor(L, score=None):  # noqa: N803
    """A small LightningModule of package ``L``, defined here so that cloudpickle saves it
    by value and a fresh process loads it. ``score``: a fixed ``val_loss`` to log."""

    class Regressor(L.LightningModule):
        def __init__(self, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            self.log("val_loss", loss if score is None else score)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Regressor


def loader(n: int = 16 * BATCHES, seed: int = 0) -> DataLoader:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def trainer(L, tmp_path, **kwargs):  # noqa: N803
    settings = dict(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    return L.Trainer(**{**settings, **kwargs})


def client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    return sorted(entry.path for entry in client(uri).list_artifacts(run_id, path))


def fit_once(L, tmp_path, **kwargs):  # noqa: N803
    """One autologged fit in a run of its own: (the fitted module, its run id)."""
    model = regressor(L, **kwargs)()
    trainer(L, tmp_path).fit(model, loader(), loader(32, seed=1))
    return model, autolog.search_runs(order_by=["attributes.start_time DESC"])[0].info.run_id


def load_in_fresh_process(tracking_uri: str, tmp_path, models: dict) -> dict:
    """``models``: model URI -> the fitted module; each is loaded by MLflow in another
    process and its outputs compared with the module's on the same inputs."""
    cases = []
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(7))
    for index, (uri, module) in enumerate(models.items()):
        with torch.no_grad():
            want = module.eval()(x).numpy()
        numpy.save(tmp_path / f"x{index}.npy", x.numpy())
        numpy.save(tmp_path / f"want{index}.npy", want)
        cases.append((uri, str(tmp_path / f"x{index}.npy"), str(tmp_path / f"want{index}.npy")))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "AUTOLOG_"))}
    # MLflow 3 loads pickled models only when told to (as for models its own autolog logs)
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true")
    result = subprocess.run([sys.executable, "-c", LOADER, json.dumps(cases)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


TENSOR_4 = [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]


def test_a_fit_logs_its_model_and_summary_and_mlflow_loads_both_models_in_a_fresh_process(
        tmp_path, store_uri):
    """And a plain torch loop logs no model of itself; ``autolog.log_model`` logs its module."""
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    autolog.autolog()
    fitted, run_id = fit_once(L, tmp_path)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for x, y in loader():
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
    torch_run = autolog.active_run()  # the torch integration's run, still open: no end, no model
    assert torch_run is not None and torch_run.id != run_id
    assert autolog.flush()
    assert artifacts(store_uri, torch_run.id) == []
    info = autolog.log_model(net, "net")
    autolog.end_run()
    assert autolog.flush()

    assert artifacts(store_uri, run_id) == ["model", "model_summary.txt"]
    record = client(store_uri).get_run(run_id)
    (logged,) = json.loads(record.data.tags[HISTORY_TAG])
    assert logged["artifact_path"] == "model" and "pytorch" in logged["flavors"]
    summary = client(store_uri).download_artifacts(run_id, "model_summary.txt", str(tmp_path / "summary"))
    summary_class = importlib.import_module("lightning.pytorch.utilities.model_summary").ModelSummary
    with open(summary) as text:
        assert text.read() == str(summary_class(regressor(L)(), max_depth=-1))
    assert info.model_uri == f"runs:/{torch_run.id}/net"

    loaded = load_in_fresh_process(store_uri, tmp_path, {f"runs:/{run_id}/model": fitted,
                                                          info.model_uri: net})
    lightning = loaded[f"runs:/{run_id}/model"]
    assert lightning == {"class": "Regressor", "direct": True, "pyfunc": True, "signature": TENSOR_4}
    assert loaded[info.model_uri] == {"class": "Sequential", "direct": True, "pyfunc": True,
                                      "signature": None}


def test_through_an_mlflow_server_mlflow_loads_the_model(sqlite_server, tmp_path):
    L = importlib.import_module("pytorch_lightning")  # noqa: N806
    autolog.autolog(tracking_uri=sqlite_server.uri, experiment="lightning-models")
    fitted, run_id = fit_once(L, tmp_path)
    assert autolog.flush()
    assert artifacts(sqlite_server.uri, run_id) == ["model", "model_summary.txt"]
    assert load_in_fresh_process(sqlite_server.uri, tmp_path, {f"runs:/{run_id}/model": fitted}) == {
        f"runs:/{run_id}/model": {"class": "Regressor", "direct": True, "pyfunc": True,
                                  "signature": TENSOR_4}}


def test_log_models_false_and_best(tmp_path, store_uri):
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    autolog.autolog(lightning={"log_models": False})
    _, off = fit_once(L, tmp_path, score=5.0)
    autolog.autolog(lightning={"log_models": "best", "monitor": "val_loss"})
    runs = [fit_once(L, tmp_path, score=score)[1] for score in (0.5, 0.9, 0.1)]
    assert autolog.flush()
    assert artifacts(store_uri, off) == ["model_summary.txt"]
    assert [("model" in artifacts(store_uri, run_id)) for run_id in runs] == [True, False, True]


def test_options_that_cannot_work_are_refused_at_autolog():
    with pytest.raises(ValueError, match="monitor"):
        autolog.autolog(lightning={"log_models": "best"})
    with pytest.raises(TypeError, match="checkpoint must be True or False"):
        autolog.autolog(lightning={"checkpoint": "best"})


def test_log_input_examples_saves_the_first_rows_of_the_first_batch(tmp_path, store_uri):
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    autolog.autolog(lightning={"log_input_examples": True})
    _, run_id = fit_once(L, tmp_path)
    assert autolog.flush()
    local = client(store_uri).download_artifacts(run_id, "model", str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    first_rows = next(iter(loader()))[0][:5].numpy()
    assert example.dtype == numpy.float32 and numpy.array_equal(example, first_rows)


def test_the_signature_comes_from_the_first_tensor_of_a_batch():
    x = torch.zeros(2, 3, dtype=torch.float64)
    for batch in (x, [x, torch.ones(2)], (x,), {"x": x, "y": torch.ones(2)}, [{"x": [x]}]):
        assert first_tensor(batch) is x
    for batch in ([], {}, "text", [numpy.zeros(3)], None):
        assert first_tensor(batch) is None


def test_checkpoint_logs_the_best_file_which_restores_and_resumes(tmp_path, store_uri, monkeypatch):
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    model_class = regressor(L)
    autolog.autolog(lightning={"checkpoint": True})
    best = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_loss", save_top_k=1)
    fit = trainer(L, tmp_path, enable_checkpointing=True, callbacks=[best])
    fit.fit(model_class(), loader(), loader(32, seed=1))
    run_id = autolog.search_runs()[0].info.run_id
    assert autolog.flush()
    name = os.path.basename(best.best_model_path)
    assert client(store_uri).get_run(run_id).data.tags[CHECKPOINT_TAG] == f"checkpoints/{name}"
    assert artifacts(store_uri, run_id, "checkpoints") == [f"checkpoints/{name}"]

    saved = torch.load(best.best_model_path, weights_only=False)
    restored = autolog.load_checkpoint(model_class, run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    by_mlflow = mlflow.pytorch.load_checkpoint(model_class, run_id)  # MLflow reads the same tag
    for module in (restored, by_mlflow):
        state = module.state_dict()
        assert state.keys() == saved["state_dict"].keys()
        assert all(torch.equal(state[key], saved["state_dict"][key]) for key in state)

    downloaded = autolog.download_artifacts(run_id, f"checkpoints/{name}", tmp_path / "download")
    resumed = trainer(L, tmp_path, max_epochs=3, enable_checkpointing=True)
    resumed.fit(model_class(), loader(), ckpt_path=downloaded)
    assert resumed.global_step == 3 * BATCHES
    latest = autolog.search_runs(order_by=["attributes.start_time DESC"])[0].info.run_id
    first_step = autolog.get_metric_history(latest, "train_loss")[0].step
    assert first_step == saved["global_step"] + 1


def test_checkpoint_without_a_checkpoint_file_warns_and_load_checkpoint_says_so(tmp_path):
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    autolog.autolog(lightning={"checkpoint": True})
    with pytest.warns(autolog.AutologWarning, match="saved no checkpoint"):
        _, run_id = fit_once(L, tmp_path)
    with pytest.raises(ValueError, match="has no logged checkpoint"):
        autolog.load_checkpoint(regressor(L), run_id)
    with pytest.raises(TypeError, match="LightningModule class"):
        autolog.load_checkpoint(torch.nn.Linear, run_id)


def unpicklable(L):  # noqa: N803
    class Locked(regressor(L)):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()  # cloudpickle cannot copy it

    return Locked()


def test_a_model_that_cannot_be_saved_never_breaks_the_fit(tmp_path, monkeypatch):
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    autolog.autolog()
    fit = trainer(L, tmp_path)
    with pytest.warns(autolog.AutologWarning, match="lock") as warned:
        fit.fit(unpicklable(L), loader(), loader(32, seed=1))
    assert len([w for w in warned if w.category is autolog.AutologWarning]) == 1
    assert fit.global_step == 2 * BATCHES
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED" and run.params["optimizer_name"] == "SGD"
    assert {"train_loss", "val_loss"} <= set(run.metrics)


def test_in_strict_mode_a_model_that_cannot_be_saved_raises(tmp_path):
    L = importlib.import_module("lightning.pytorch")  # noqa: N806
    autolog.autolog()
    with pytest.raises(TypeError, match="lock"):
        trainer(L, tmp_path).fit(unpicklable(L), loader())
    assert autolog.search_runs()[0].status == "FAILED"
