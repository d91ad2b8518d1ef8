"""MLflow's conventions that launchers and MLflow users rely on: ``MLFLOW_RUN_ID`` and
``MLFLOW_EXPERIMENT_ID`` (MLflow Projects, job launchers), ``log_every_n_step`` and
``log_every_n_epoch`` (MLflow's option names for torch and Lightning), and
``AUTOLOG_DISABLE=all``. What autolog wrote is read back with MLflow's own client."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mlflow
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_lightning import loader, regressor, trainer
from test_torch import train
from torch.utils.tensorboard import SummaryWriter

import autolog

torch.set_num_threads(1)
pytest_plugins = ("mlflow_server", "databases")


@pytest.fixture
def client(store_uri):
    return mlflow.MlflowClient(store_uri)


def xy():
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)).numpy()
    return x, (x[:, 0] > 0).astype(int)


def metric_steps(client, run_id: str, key: str) -> list[int]:
    autolog.flush()
    return [m.step for m in client.get_metric_history(run_id, key)]


# -- MLFLOW_RUN_ID -----------------------------------------------------------------------------


def test_the_first_fit_resumes_the_launchers_run_and_the_next_fit_gets_its_own(
        client, monkeypatch):
    experiment_id = client.create_experiment("launched")
    launched = client.create_run(experiment_id, run_name="from-the-launcher",
                                 tags={"launcher": "slurm"}).info.run_id
    client.set_terminated(launched, "SCHEDULED")  # as a launcher leaves it before the job
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    autolog.autolog(sklearn={"log_models": False, "log_diagnostics": False,
                             "log_datasets": False})
    LogisticRegression().fit(*xy())
    assert "MLFLOW_RUN_ID" not in os.environ  # taken, as MLflow's start_run takes it
    LogisticRegression(C=0.5).fit(*xy())
    autolog.flush()
    run = client.get_run(launched)
    assert run.info.status == "FINISHED" and run.info.run_name == "from-the-launcher"
    assert run.data.params["C"] == "1.0" and "training_accuracy_score" in run.data.metrics
    assert run.data.tags["launcher"] == "slurm"
    assert "autolog.integration" not in run.data.tags  # the launcher's run, not the fit's
    (other,) = [r for r in client.search_experiments()
                if r.experiment_id != experiment_id and r.name == "Default"]
    (second,) = client.search_runs([other.experiment_id])
    assert second.info.run_id != launched and second.data.params["C"] == "0.5"


def test_a_script_started_with_mlflow_run_id_logs_into_that_run_and_ends_it(
        client, store_uri, tmp_path):
    launched = client.create_run(client.create_experiment("job")).info.run_id
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import autolog
        autolog.log_param("lr", 0.1)
        for step in range(3):
            autolog.log_metric("loss", 1.0 / (step + 1), step=step)
    """))
    env = {**os.environ, "AUTOLOG_TRACKING_URI": store_uri, "MLFLOW_RUN_ID": launched}
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=120)
    run = client.get_run(launched)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert [m.step for m in client.get_metric_history(launched, "loss")] == [0, 1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.parametrize("backend", ["server", "postgres", "mysql"])
def test_the_launchers_run_on_an_mlflow_server_or_database(request, monkeypatch, backend):
    """A job launched against a tracking server (REST, through the spool) or a shared
    MLflow database resumes its run there."""
    uri = (request.getfixturevalue("sqlite_server").uri if backend == "server"
           else request.getfixturevalue(f"{backend}_uri"))
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment(f"launched-{os.getpid()}-{backend}")
    launched = client.create_run(experiment_id).info.run_id
    autolog.set_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    with autolog.start_run(tags={"stage": "train"}) as run:
        autolog.log_metric("loss", 0.5, step=1)
    assert run.id == launched and autolog.flush()
    got = client.get_run(launched)
    assert got.info.status == "FINISHED" and got.data.tags["stage"] == "train"
    assert [(m.step, m.value) for m in client.get_metric_history(launched, "loss")] == [(1, 0.5)]


def test_an_explicit_run_id_and_a_nested_run_do_not_take_the_launchers_run(client, monkeypatch):
    launched = client.create_run(client.create_experiment("job")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    with autolog.start_run(run_name="parent") as parent:
        assert parent.id == launched  # the first run resumes it
        with autolog.start_run(nested=True) as child:
            assert child.id != launched
    with autolog.start_run() as later:
        assert later.id != launched  # once only


def test_an_unknown_mlflow_run_id_is_an_error_at_the_call(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(LookupError, match="0" * 32):
        autolog.start_run()


# -- MLFLOW_EXPERIMENT_ID ----------------------------------------------------------------------


def test_runs_go_to_the_experiment_of_mlflow_experiment_id(client, monkeypatch):
    experiment_id = client.create_experiment("by-id")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
    with autolog.start_run() as run:
        autolog.log_metric("m", 1.0)
    assert client.get_run(run.id).info.experiment_id == experiment_id
    assert [r.info.run_id for r in autolog.search_runs()] == [run.id]  # the current experiment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "by-name")  # a name wins, as in MLflow
    with autolog.start_run() as named:
        pass
    by_name = client.get_experiment_by_name("by-name")
    assert client.get_run(named.id).info.experiment_id == by_name.experiment_id


@pytest.mark.parametrize(("value", "error", "match"), [
    ("not-a-number", ValueError, "MLFLOW_EXPERIMENT_ID must be an experiment id"),
    ("987654", autolog.StoreError, "experiment 987654 is missing"),
])
def test_a_bad_mlflow_experiment_id_is_an_error_at_the_call(monkeypatch, value, error, match):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", value)
    with pytest.raises(error, match=match):
        autolog.start_run()


# -- AUTOLOG_DISABLE=all -----------------------------------------------------------------------


def test_autolog_disable_all_turns_every_integration_off_but_not_manual_logging(
        client, monkeypatch):
    monkeypatch.setenv("AUTOLOG_DISABLE", "all")
    autolog.autolog()
    LogisticRegression().fit(*xy())
    train(3)
    assert autolog.search_runs() == []
    with autolog.start_run() as run:
        autolog.log_metric("manual", 1.0)
    autolog.flush()
    assert client.get_run(run.id).data.metrics == {"manual": 1.0}


# -- log_every_n_step / log_every_n_epoch --------------------------------------------------------


def test_torch_log_every_n_step_logs_the_loss_lr_and_summary_scalars_every_n(client, tmp_path):
    autolog.autolog(torch={"log_every_n_step": 3})
    with autolog.start_run() as run:
        train(10)
        writer = SummaryWriter(str(tmp_path / "tb"))
        for step in range(7):
            writer.add_scalar("acc", step / 10, global_step=step)
        writer.close()
    assert metric_steps(client, run.id, "train_loss") == [3, 6, 9]
    assert metric_steps(client, run.id, "lr") == [3]  # logged when it changes, on those steps
    assert metric_steps(client, run.id, "acc") == [0, 3, 6]


def test_torch_log_every_n_step_none_logs_no_step_values_but_the_params(client):
    autolog.autolog(torch={"log_every_n_step": None})
    with autolog.start_run() as run:
        train(4)
    autolog.flush()
    data = client.get_run(run.id).data
    assert data.metrics == {} and data.params["optimizer_name"] == "SGD"


def test_lightning_log_every_n_step_and_epoch(client, tmp_path):
    import lightning.pytorch as pl

    autolog.autolog(lightning={"log_every_n_step": 3, "log_every_n_epoch": 2, "log_models": False})
    fit = trainer(pl, tmp_path, max_epochs=4)
    fit.fit(regressor(pl)(), loader(), loader(32, seed=1))  # 4 steps an epoch
    (run,) = autolog.search_runs()
    run_id = run.info.run_id
    assert metric_steps(client, run_id, "train_loss_step") == [3, 6, 9, 12, 15]
    for key in ("train_loss_epoch", "val_loss"):
        assert metric_steps(client, run_id, key) == [1, 3], key
    # a second fit in the same run keeps the cadence on the run's axes
    with autolog.start_run() as mine:
        for _ in range(2):
            trainer(pl, tmp_path, max_epochs=1).fit(regressor(pl)(), loader())
    assert metric_steps(client, mine.id, "train_loss_step") == [3, 6]
    assert metric_steps(client, mine.id, "train_loss_epoch") == [1]


@pytest.mark.parametrize(("integration", "options", "match"), [
    ("torch", {"log_every_n_step": 0}, "log_every_n_step must be a positive int or None"),
    ("torch", {"log_every_n_step": True}, "log_every_n_step must be a positive int or None"),
    ("lightning", {"log_every_n_step": 2.5}, "log_every_n_step must be a positive int or None"),
    ("lightning", {"log_every_n_epoch": None}, "log_every_n_epoch must be a positive int, got None"),
])
def test_bad_log_every_values_are_refused_at_autolog(integration, options, match):
    with pytest.raises(ValueError, match=match):
        autolog.autolog(**{integration: options})
