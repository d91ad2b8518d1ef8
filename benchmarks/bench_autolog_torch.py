"""What autologging adds to PyTorch and Lightning training, beside MLflow's autolog.

    python benchmarks/bench_autolog_torch.py           # full run, rewrites its RESULTS.md section
    python benchmarks/bench_autolog_torch.py --quick   # fewer rounds, prints only

``bench_autolog.py`` runs it too, as its section ``bench_autolog_torch``: the cost here is
per training step, measured on whole training runs, where that file times many short fits.

Each workload is timed in one process with no autolog, with ``autolog.autolog()`` and
with ``mlflow.pytorch.autolog()`` (SQLite stores in a temp dir, runs ended and flushed
inside the timing), the three modes back to back in every round:

* Lightning: an MLP on 20,000 x 20, batch 64, 2 epochs (626 steps), ``self.log`` of the
  loss every step; no logger, progress bar or checkpointing, so the loop itself is all
  there is to add to.
* plain PyTorch, 10,000 steps of the same MLP on the same data: once through a
  ``DataLoader`` as in the Lightning case, and once on pre-sliced batches, the cheapest
  step there is (about 0.5 ms here), so the most sensitive to a per-step cost. MLflow's
  autolog captures nothing from a plain loop; its column shows it adds nothing either.

The cost autolog adds is per step and does not grow with the model, so the table also
gives it in µs per step. Target: autolog adds at most 3 % to each workload.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

SECTION = "bench_autolog_torch"  # its RESULTS.md section, also run by bench_autolog.py
TARGET = 0.03
MODES = ("none", "autolog", "mlflow")
ROWS, FEATURES, BATCH = 20_000, 20, 64
LIGHTNING_EPOCHS = 2
TORCH_STEPS = 10_000


def data():
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    return x, (x[:, :5].sum(1, keepdim=True) > 0).float()


def mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))


def lightning_mlp():
    """The MLP as a LightningModule class that logs its loss every step."""
    import lightning.pytorch as L
    import torch

    class MLP(L.LightningModule):
        def __init__(self, lr: float = 0.01):
            super().__init__()
            self.save_hyperparameters()
            self.net = mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    return MLP


def lightning_workload():
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    MLP = lightning_mlp()  # noqa: N806 - a class
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    def fit(root: str) -> None:
        trainer = L.Trainer(max_epochs=LIGHTNING_EPOCHS, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False,
                            default_root_dir=root)
        trainer.fit(MLP(), loader)

    return fit


def train_steps(model, optimizer, batches, steps: int) -> None:
    """The plain PyTorch loop: ``steps`` steps over the ``(x, y)`` pairs of ``batches``."""
    import torch

    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    for _, (batch_x, batch_y) in zip(range(steps), batches):
        optimizer.zero_grad()
        loss_fn(model(batch_x), batch_y).backward()
        optimizer.step()


def presliced_training():
    """One MLP and its Adam optimizer on the pre-sliced batches: a function that trains it
    ``steps`` steps further at each call (the loop the per-step benchmarks take apart)."""
    import torch

    x, y = data()
    batches = itertools.cycle(list(zip(x.split(BATCH), y.split(BATCH))))
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def train(steps: int) -> None:
        train_steps(model, optimizer, batches, steps)

    return train


def torch_workload(data_loader: bool):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x, y = data()
    if data_loader:
        loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
    else:
        batches = list(zip(x.split(BATCH), y.split(BATCH)))

    def endless():
        while True:
            yield from (loader if data_loader else batches)

    def train(_root: str) -> None:
        model = mlp()
        train_steps(model, torch.optim.Adam(model.parameters(), lr=0.01), endless(), TORCH_STEPS)

    return train


class Modes:
    """Switches autologging between none, autolog and MLflow's autolog in this process.
    Without MLflow installed (a GPU machine, say) only the first two are :attr:`names`."""

    def __init__(self, root: Path):
        import autolog

        self.autolog, self.root = autolog, root
        autolog.set_tracking_uri(f"sqlite:///{root / 'autolog.db'}")
        autolog.set_experiment("bench")
        try:
            import mlflow
        except ImportError:
            self.mlflow = None
            return
        self.mlflow = mlflow
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_experiment("bench")

    @property
    def names(self) -> tuple[str, ...]:
        return MODES if self.mlflow else MODES[:2]

    def enable(self, mode: str) -> None:
        if mode == "autolog":  # models off, as MLflow's below: their cost is bench_autolog.py's
            self.autolog.autolog(lightning={"log_models": False})
        elif mode == "mlflow":
            self.mlflow.pytorch.autolog(log_models=False, checkpoint=False, silent=True)

    def disable(self) -> None:
        self.autolog.autolog(disable=True)
        if self.mlflow is not None:
            self.mlflow.pytorch.autolog(disable=True)

    def run(self, mode: str, workload, wrap_in_run: bool) -> tuple[float, float]:
        """Wall and CPU time (all threads) of one workload call in ``mode``."""
        autolog, mlflow = self.autolog, self.mlflow
        self.enable(mode)
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            if wrap_in_run and mode == "autolog":
                with autolog.start_run():
                    workload(str(self.root))
            elif wrap_in_run and mode == "mlflow":
                with mlflow.start_run():
                    workload(str(self.root))
            else:
                workload(str(self.root))
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            self.disable()

    def points(self, mode: str) -> int:
        """Metric points stored by the latest run of ``mode``."""
        if mode == "autolog":
            run = self.autolog.search_runs("bench", max_results=1)[0]
            return sum(len(self.autolog.get_metric_history(run.info.run_id, key))
                       for key in run.metrics)
        if mode == "mlflow":
            client = self.mlflow.MlflowClient()
            run = self.mlflow.search_runs(experiment_names=["bench"], max_results=1,
                                          output_format="list")[0]
            return sum(len(client.get_metric_history(run.info.run_id, key))
                       for key in run.data.metrics)
        return 0


class Result:
    def __init__(self, modes: tuple[str, ...]) -> None:
        self.wall: dict[str, list[float]] = {mode: [] for mode in modes}
        self.cpu: dict[str, list[float]] = {mode: [] for mode in modes}
        self.points: dict[str, int] = {}

    def median(self, mode: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[mode])

    def per_step_us(self, mode: str, steps: int) -> float:
        """Median over rounds of the wall time ``mode`` added to the same round's run
        without autologging, per training step."""
        added = (t - base for t, base in zip(self.wall[mode], self.wall["none"]))
        return statistics.median(added) / steps * 1e6

    def ratios(self, mode: str, cpu: bool = False) -> list[float]:
        """Per round, (time in ``mode``) / (time with none in the same round) - 1: the modes
        of one round ran back to back, under the same load."""
        times = self.cpu if cpu else self.wall
        return [t / base - 1 for t, base in zip(times[mode], times["none"])]

    def added(self, mode: str, cpu: bool = False) -> float:
        """The median of :meth:`ratios`."""
        return statistics.median(self.ratios(mode, cpu))

    def spread(self, mode: str) -> str:
        """The quartiles of the wall-time ratios: how far one round may land from the median."""
        low, _, high = statistics.quantiles(self.ratios(mode), n=4)
        return f"{low:+.1%}..{high:+.1%}"


def measure(modes: Modes, workload, rounds: int, wrap_in_run: bool) -> Result:
    names = modes.names
    for mode in names:  # warm-up: imports, store schemas, first-call costs
        modes.run(mode, workload, wrap_in_run)
    result = Result(names)
    for round_ in range(rounds):
        turn = round_ % len(names)  # no mode always runs first
        order = names[turn:] + names[:turn]
        for mode in order:
            wall, cpu = modes.run(mode, workload, wrap_in_run)
            result.wall[mode].append(wall)
            result.cpu[mode].append(cpu)
            if round_ == 0:
                result.points[mode] = modes.points(mode)
    return result


def report(rounds: int) -> tuple[str, bool]:
    """Measure every workload; the RESULTS.md section and whether every target was met."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric",
                 # levels of their own, set by Lightning (MLflow's autolog imports the second)
                 "lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    lightning_steps = -(-ROWS // BATCH) * LIGHTNING_EPOCHS
    workloads = [
        (f"Lightning MLP, {ROWS:,}×{FEATURES}, batch {BATCH}, {LIGHTNING_EPOCHS} epochs "
         f"({lightning_steps} steps), `self.log` per step", lightning_workload(), False,
         lightning_steps),
        (f"plain PyTorch loop, same MLP, {TORCH_STEPS:,} steps, DataLoader",
         torch_workload(data_loader=True), True, TORCH_STEPS),
        (f"plain PyTorch loop, same MLP, {TORCH_STEPS:,} steps, pre-sliced batches",
         torch_workload(data_loader=False), True, TORCH_STEPS),
    ]
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        modes = Modes(Path(tmp))
        for name, workload, wrap_in_run, steps in workloads:
            result = measure(modes, workload, rounds, wrap_in_run)
            ours, theirs = result.added("autolog"), result.added("mlflow")
            ratio = statistics.median(a / m for a, m in zip(result.wall["autolog"],
                                                             result.wall["mlflow"]))
            rows.append(
                f"| {name} | {result.median('none'):.2f} | {result.median('autolog'):.2f} | "
                f"**{ours:+.1%}** ({result.spread('autolog')}) | "
                f"{result.added('autolog', cpu=True):+.1%} | "
                f"{result.per_step_us('autolog', steps):.0f} | {result.points['autolog']:,} | "
                f"{result.median('mlflow'):.2f} | {theirs:+.1%} | "
                f"{result.added('mlflow', cpu=True):+.1%} | {result.points['mlflow']:,} | "
                f"{ratio:.2f}× |")
            checks.append((ours <= TARGET, f"{name}: autolog adds {ours:+.1%} ≤ {TARGET:.0%}"))
            print(rows[-1], flush=True)
    table = "\n".join([
        "| workload | none (s) | autolog (s) | added, wall | added, CPU | µs/step | points "
        "| MLflow autolog (s) | added, wall | added, CPU | points | autolog / MLflow, wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    verdicts = "\n".join(f"- {'met' if ok else 'MISSED'}: {text}" for ok, text in checks)
    markdown = (
        "## PyTorch and Lightning autologging overhead (`bench_autolog_torch.py`)\n\n"
        f"Machine: {machine()}; torch {torch.__version__}, CPU, 1 intra-op thread; load "
        f"average {os.getloadavg()[0]:.1f} at the end. {rounds} rounds, the three modes "
        "back to back in each (rotating order), in one process; runs ended and flushed "
        "inside the timing. Times: medians. *added*: median over rounds of the ratio to the "
        "same round's run without autologging, on wall time (in brackets: its quartiles over "
        "the rounds, this machine's noise) and on the CPU time of all "
        "threads (writer included); *µs/step*: the wall time it added, per training step. "
        "*points*: metric points one run stored (MLflow's autolog "
        "logs Lightning's values per epoch only, and nothing from a plain loop).\n\n"
        f"{table}\n\nTargets:\n{verdicts}\n"
    )
    return markdown, all(ok for ok, _ in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, print only")
    args = parser.parse_args()
    markdown, met = report(rounds=3 if args.quick else 7)
    publish(SECTION, markdown, args.quick)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
