"""Real 2-process CPU runs: Lightning's DDP (``strategy="ddp"``, which re-launches the
script for rank 1, and ``ddp_spawn``, which trains in spawned children) and plain
``torch.distributed`` started as ``torchrun`` does. Only rank 0 logs, nothing is logged
twice, and no rank waits on autolog (a hang fails the timeout).

Each run is a script in a subprocess, so the test process stays single-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import mlflow
import pytest

import autolog

TIMEOUT = 150

LIGHTNING_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset
    import autolog

    torch.set_num_threads(1)
    autolog.autolog()


    class Regressor(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            # sync_dist epoch values: reading them on rank 0 alone would hang the job
            self.log("train_loss", loss, on_step=True, on_epoch=True, sync_dist=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]),
                     sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)


    def data():
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


    if __name__ == "__main__":
        torch.manual_seed(0)
        strategy = "ddp_spawn" if sys.argv[1] == "spawn" else "ddp"
        trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_epochs=2,
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, num_sanity_val_steps=0)
        if sys.argv[1] == "user-run":  # every rank opens its own run
            with autolog.start_run(run_name=f"rank-{trainer.global_rank}"):
                trainer.fit(Regressor(), data(), data())
        else:
            trainer.fit(Regressor(), data(), data())
""")

TORCH_SCRIPT = textwrap.dedent("""
    import torch
    import torch.distributed as dist
    import autolog

    torch.set_num_threads(1)
    autolog.autolog()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(dist.get_rank()))
    for _ in range(10):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        optimizer.step()
    dist.destroy_process_group()
""")


def run_script(source: str, tmp_path, store_uri: str, *args: str, env: dict | None = None):
    script = tmp_path / "train.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=TIMEOUT, env={**os.environ, "AUTOLOG_TRACKING_URI": store_uri,
                              "AUTOLOG_STRICT": "1", **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def steps(run_id: str, key: str) -> list[int]:
    return [m.step for m in autolog.get_metric_history(run_id, key)]


def artifacts(store_uri: str, run_id: str) -> list[str]:
    """The run's artifacts, as MLflow's client lists them (the script saved its model and
    uploaded it before it exited)."""
    return sorted(entry.path for entry in mlflow.MlflowClient(store_uri).list_artifacts(run_id))


@pytest.mark.timeout(TIMEOUT + 30)
def test_lightning_ddp_logs_one_run_from_rank_zero(tmp_path, store_uri):
    run_script(LIGHTNING_SCRIPT, tmp_path, store_uri, "auto")
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED" and run.tags["autolog.integration"] == "lightning"
    assert (run.params["strategy"], run.params["num_devices"]) == ("DDPStrategy", "2")
    # 64 samples, 2 ranks, batches of 8: 4 optimizer steps per epoch, each logged once
    assert steps(run.info.run_id, "train_loss_step") == list(range(1, 9))
    assert steps(run.info.run_id, "train_loss_epoch") == [0, 1]
    assert steps(run.info.run_id, "val_loss") == [0, 1]
    assert artifacts(store_uri, run.info.run_id) == ["model", "model_summary.txt"]


@pytest.mark.timeout(TIMEOUT + 30)
def test_lightning_ddp_rank_one_logs_nothing_into_its_own_run(tmp_path, store_uri):
    run_script(LIGHTNING_SCRIPT, tmp_path, store_uri, "user-run")
    runs = {run.info.run_name: run for run in autolog.search_runs()}
    assert set(runs) == {"rank-0", "rank-1"}
    assert runs["rank-1"].params == {} and runs["rank-1"].metrics == {}
    assert artifacts(store_uri, runs["rank-1"].info.run_id) == []  # no model from rank 1
    assert artifacts(store_uri, runs["rank-0"].info.run_id) == ["model", "model_summary.txt"]
    assert runs["rank-0"].params["epochs"] == "2"
    assert steps(runs["rank-0"].info.run_id, "train_loss_step") == list(range(1, 9))


@pytest.mark.timeout(TIMEOUT + 30)
def test_lightning_ddp_spawn_logs_params_and_warns_but_never_twice(tmp_path, store_uri):
    result = run_script(LIGHTNING_SCRIPT, tmp_path, store_uri, "spawn")
    assert "only the Trainer's params are logged" in result.stderr
    (run,) = autolog.search_runs()  # the children log nothing, not even through torch
    assert run.status == "FINISHED" and run.tags["autolog.integration"] == "lightning"
    assert run.params["epochs"] == "2" and run.metrics == {}
    assert artifacts(store_uri, run.info.run_id) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(TIMEOUT + 30)
def test_torch_distributed_logs_one_run_from_rank_zero(tmp_path, store_uri):
    script = tmp_path / "train.py"
    script.write_text(TORCH_SCRIPT)
    env = {**os.environ, "AUTOLOG_TRACKING_URI": store_uri, "AUTOLOG_STRICT": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, text=True,
                              stderr=subprocess.PIPE, env={**env, "RANK": str(rank)})
             for rank in range(2)]
    try:
        errors = [process.communicate(timeout=TIMEOUT)[1] for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    assert [process.returncode for process in ranks] == [0, 0], errors
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED" and run.tags["autolog.integration"] == "torch"
    assert steps(run.info.run_id, "train_loss") == list(range(1, 11))
    assert run.params["optimizer_name"] == "SGD"
