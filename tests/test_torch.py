"""The ``torch`` integration: plain training loops, TensorBoard, ranks, faults, restore."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter

import pytest
import torch
from autolog_integrations import torch_autolog
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import autolog
from autolog import integration as integration_module
from autolog.patching import outermost

torch.set_num_threads(1)


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in autolog.get_metric_history(run_id, key)]


def approx_points(points: list[tuple[int, float]]) -> list[tuple[int, object]]:
    return [(step, pytest.approx(value)) for step, value in points]


def data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return x, x.sum(1, keepdim=True)


def train(steps: int, optimizer_factory=None, scheduler_factory=None, backwards: int = 1):
    """A plain loop; returns the losses passed to backward, as floats, per step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = (optimizer_factory or (lambda p: torch.optim.SGD(p, lr=0.05)))(model.parameters())
    scheduler = scheduler_factory(optimizer) if scheduler_factory else None
    x, y = data()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        step_losses = []
        for part_x, part_y in zip(x.chunk(backwards), y.chunk(backwards)):
            loss = torch.nn.functional.mse_loss(model(part_x), part_y)
            loss.backward()
            step_losses.append(loss.item())
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(step_losses)
    return losses


def test_plain_loop_logs_loss_per_step_and_optimizer_params():
    autolog.autolog()
    with autolog.start_run() as run:
        losses = train(25, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4))
    loss_history = history(run.id, "train_loss")
    assert [step for step, _ in loss_history] == list(range(1, 26))
    assert [value for _, value in loss_history] == pytest.approx([s[0] for s in losses])
    params = autolog.get_run(run.id).params
    assert params["optimizer_name"] == "SGD"
    assert (params["lr"], params["momentum"], params["weight_decay"]) == ("0.1", "0.9", "0.0001")
    assert params["num_trainable_params"] == "5"
    assert history(run.id, "lr") == [(1, 0.1)]
    assert run.status == "FINISHED"  # the user's run: ended by the user, not by autolog


def test_adam_params_use_mlflows_names():
    autolog.autolog()
    with autolog.start_run() as run:
        train(2, lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99)))
    params = autolog.get_run(run.id).params
    assert params["optimizer_name"] == "Adam"
    assert (params["betas"], params["eps"], params["amsgrad"]) == ("(0.8, 0.99)", "1e-08", "False")


def test_lr_is_logged_at_the_steps_where_a_scheduler_changes_it():
    autolog.autolog()
    with autolog.start_run() as run:
        train(6, scheduler_factory=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5))
    assert history(run.id, "lr") == [(1, 0.05), (3, 0.025), (5, 0.0125)]


def test_accumulated_losses_are_averaged_into_one_point_per_step():
    autolog.autolog()
    with autolog.start_run() as run:
        losses = train(4, backwards=2)
    loss_history = history(run.id, "train_loss")
    assert [step for step, _ in loss_history] == [1, 2, 3, 4]
    assert [value for _, value in loss_history] == pytest.approx([sum(s) / 2 for s in losses])


def test_grad_scaler_records_the_unscaled_loss():
    autolog.autolog()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = data()
    losses = []
    with autolog.start_run() as run:
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
    assert [value for _, value in history(run.id, "train_loss")] == pytest.approx(losses)


def train_gan() -> torch.nn.Module:
    """Two optimizers (Adam, then SGD) built before the first step, stepped alternately
    (SGD first) twice; returns the discriminator."""
    generator, discriminator = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=0.1)
    x, _ = data()
    for _ in range(2):
        for optimizer, sign in ((opt_d, 1), (opt_g, -1)):
            optimizer.zero_grad()
            (sign * discriminator(generator(x)).mean()).backward()
            optimizer.step()
    return discriminator


def test_a_second_optimizer_with_other_settings_is_prefixed():
    autolog.autolog()
    with autolog.start_run() as run:
        discriminator = train_gan()
        torch.optim.SGD(discriminator.parameters(), lr=0.1)  # the same settings again: no new keys
    params = autolog.get_run(run.id).params
    assert (params["optimizer_name"], params["lr"]) == ("Adam", "0.0002")
    assert params["num_trainable_params"] == "20"
    assert (params["optimizer_1.optimizer_name"], params["optimizer_1.lr"]) == ("SGD", "0.1")
    assert not any(key.startswith("optimizer_2.") for key in params)
    assert [step for step, _ in history(run.id, "train_loss")] == [1, 2, 3, 4]  # every step counts
    assert history(run.id, "optimizer_1.lr") == [(1, 0.1)] and history(run.id, "lr") == [(2, 2e-4)]


def test_an_optimizer_made_before_the_run_logs_its_params_at_its_first_step():
    autolog.autolog()
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    assert autolog.active_run() is None  # constructing alone starts no run
    x, y = data()
    with autolog.start_run() as run:
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    assert autolog.get_run(run.id).params["lr"] == "0.3"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fails", [False, True])
def test_without_a_run_one_is_started_and_ended_at_exit(store_uri, tmp_path, fails):
    script = textwrap.dedent(f"""
        import autolog, torch
        autolog.autolog()
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 4)
        for _ in range(5):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
        assert autolog.active_run() is not None
        if {fails}:
            raise RuntimeError("the training script failed")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "AUTOLOG_TRACKING_URI": store_uri}, timeout=110)
    assert (result.returncode != 0) == fails, result.stderr
    runs = autolog.search_runs()
    assert len(runs) == 1
    assert runs[0].status == ("FAILED" if fails else "FINISHED")
    assert runs[0].tags["autolog.integration"] == "torch"
    assert [step for step, _ in history(runs[0].info.run_id, "train_loss")] == [1, 2, 3, 4, 5]


def test_summary_writer_scalars_and_hparams(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    autolog.autolog()
    with autolog.start_run() as run:
        writer = SummaryWriter(str(tmp_path / "tb"))
        for step in range(3):
            writer.add_scalar("loss", torch.tensor(1.0 / (step + 1)), step)
            writer.add_scalars("acc", {"train": 0.5 + step / 10, "val": 0.4}, global_step=step)
        writer.add_scalar("acc@1 (top)", 0.7)  # no step: 0, as in MLflow; key made valid
        writer.add_hparams({"batch_size": 32, "optimizer": "adam"}, {"hparam/accuracy": 0.9})
        writer.close()
    assert history(run.id, "loss") == approx_points([(0, 1.0), (1, 0.5), (2, 1 / 3)])
    assert history(run.id, "acc/train") == approx_points([(0, 0.5), (1, 0.6), (2, 0.7)])
    assert history(run.id, "acc/val") == approx_points([(0, 0.4), (1, 0.4), (2, 0.4)])
    assert history(run.id, "acc_1 _top_") == approx_points([(0, 0.7)])
    assert history(run.id, "hparam/accuracy") == approx_points([(0, 0.9)])
    params = autolog.get_run(run.id).params
    assert (params["batch_size"], params["optimizer"]) == ("32", "adam")


def test_nothing_is_logged_inside_another_autologged_call():
    autolog.autolog()
    with autolog.start_run() as run, outermost("lightning"):
        train(3)
    record = autolog.get_run(run.id)
    assert record.params == {} and record.metrics == {}


def test_ranks_other_than_zero_log_nothing(monkeypatch):
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it
    autolog.autolog()
    train(3)
    assert autolog.active_run() is None and autolog.search_runs() == []
    with autolog.start_run() as run:  # a run the user opened on every rank
        train(3)
    record = autolog.get_run(run.id)
    assert record.params == {} and record.metrics == {}


_SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def count_syncs(monkeypatch) -> list[str]:
    """Counts calls, on this thread, of the Tensor methods that wait for the device."""
    calls: list[str] = []
    main = threading.get_ident()
    for name in _SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, __name=name, __original=original, **kwargs):
            if threading.get_ident() == main:
                calls.append(__name)
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@pytest.fixture
def main_thread_syncs(monkeypatch):
    return count_syncs(monkeypatch)


def test_the_loop_gets_no_device_sync_from_autolog(main_thread_syncs):
    autolog.autolog()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    x, y = data()
    with autolog.start_run() as run:
        for _ in range(20):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            scheduler.step()
        assert main_thread_syncs == []
    assert len(history(run.id, "train_loss")) == 20


class OpsOnThisThread(TorchDispatchMode):
    """Counts the aten ops dispatched on the thread that entered it (dispatch modes are
    thread-local). A read of a value by the host dispatches ``_local_scalar_dense`` or
    ``_to_copy`` whatever Python method asked for it, except ``tolist()`` and ``numpy()``
    of a CPU tensor, which the method-level count above covers."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_autolog_dispatches_no_op_on_the_training_thread_but_detaching_and_averaging():
    """The device-independent form of "no device sync": autolog's ops on the training
    thread are pinned to the ``detach`` of each loss and the average of accumulated ones,
    so any op added there (a ``_local_scalar_dense``, a ``_to_copy``...) fails this test.
    The values are read by the writer thread, whose ops this mode does not see."""
    x, y = data()

    def dispatched_ops(steps: int) -> Counter:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
        with OpsOnThisThread() as recorder:
            for _ in range(steps):
                optimizer.zero_grad()
                for part_x, part_y in zip(x.chunk(2), y.chunk(2)):  # two backwards per step
                    torch.nn.functional.mse_loss(model(part_x), part_y).backward()
                optimizer.step()
                scheduler.step()
        return recorder.ops

    without_autolog = dispatched_ops(10)
    autolog.autolog()
    with autolog.start_run() as run:
        with_autolog = dispatched_ops(10)
    added = with_autolog - without_autolog
    assert added == Counter({"aten.detach.default": 20, "aten.add.Tensor": 10,
                             "aten.div.Tensor": 10})
    assert len(history(run.id, "train_loss")) == 10


def test_a_backward_given_its_gradient_records_only_real_scalar_losses():
    autolog.autolog()
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    with autolog.start_run() as run:
        (weight * 2).backward(torch.ones(3))  # a vector with its gradient: not a loss
        optimizer.step()
        (weight.sum() * (1 + 1j)).backward(torch.tensor(1 + 0j))  # complex: not a loss
        optimizer.step()
        loss = (weight**2).sum()
        loss.backward(gradient=torch.tensor(1.0))  # a real scalar, its gradient given
        optimizer.step()
    assert history(run.id, "train_loss") == approx_points([(3, loss.item())])


class Fault(Exception):
    pass


def test_a_fault_in_autolog_is_one_warning_and_training_goes_on(monkeypatch):
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    baseline = train(5)

    def broken(self, optimizer):
        raise Fault("injected into the torch step hook")

    monkeypatch.setattr(torch_autolog._Loop, "register", broken)
    autolog.autolog()
    with autolog.start_run(), pytest.warns(autolog.AutologWarning) as warned:
        assert train(5) == baseline
    (warning,) = [w for w in warned if w.category is autolog.AutologWarning]
    assert "injected into the torch step hook" in str(warning.message)


def test_in_strict_mode_a_fault_in_autolog_raises(monkeypatch):
    def broken(self, optimizer):
        raise Fault("strict mode surfaces it")

    monkeypatch.setattr(torch_autolog._Loop, "register", broken)
    autolog.autolog()
    with autolog.start_run(), pytest.raises(Fault, match="strict mode surfaces it"):
        train(1)


def test_disable_restores_the_exact_originals():
    from torch.amp.grad_scaler import GradScaler
    from torch.optim.optimizer import Optimizer, _global_optimizer_post_hooks
    from torch.utils.tensorboard import SummaryWriter

    patched = [(torch.Tensor, "backward"), (GradScaler, "scale"), (Optimizer, "__init__"),
               (SummaryWriter, "add_scalar"), (SummaryWriter, "add_scalars"),
               (SummaryWriter, "add_hparams")]
    originals = [vars(owner)[name] for owner, name in patched]
    hooks = dict(_global_optimizer_post_hooks)
    autolog.autolog()
    assert all(vars(owner)[name] is not original
               for (owner, name), original in zip(patched, originals))
    assert len(_global_optimizer_post_hooks) == len(hooks) + 1
    autolog.autolog(disable=True)
    assert all(vars(owner)[name] is original for (owner, name), original in zip(patched, originals))
    assert dict(_global_optimizer_post_hooks) == hooks
    with autolog.start_run() as run:
        train(2)
    assert autolog.get_run(run.id).metrics == {}
    assert not integration_module.get("torch").patcher


@pytest.mark.timeout(120)
def test_dataloader_workers_fork_without_hangs_or_duplicates():
    autolog.autolog()
    x, y = data(256)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, num_workers=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with autolog.start_run() as run:
        for _ in range(3):
            for batch_x, batch_y in loader:
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(batch_x), batch_y).backward()
                optimizer.step()
    assert [step for step, _ in history(run.id, "train_loss")] == list(range(1, 25))
    assert len(autolog.search_runs()) == 1


def test_a_fit_in_another_thread_neither_ends_nor_joins_this_threads_loop_run():
    """The plain loop's run is this thread's: a scikit-learn fit in a worker thread gets
    a run of its own, and the loop goes on logging into the same run."""
    from sklearn.linear_model import LogisticRegression

    autolog.autolog()
    model, optimizer = loop_parts()
    steps(model, optimizer, 3)
    loop_run = autolog.active_run()
    worker = threading.Thread(target=lambda: LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    worker.start()
    worker.join()
    steps(model, optimizer, 2)
    assert autolog.active_run() is loop_run and loop_run.status == "RUNNING"
    autolog.end_run()
    runs = {run.tags["autolog.integration"]: run for run in autolog.search_runs()}
    assert set(runs) == {"torch", "sklearn"}
    assert runs["torch"].info.run_id == loop_run.id and runs["sklearn"].status == "FINISHED"
    assert [step for step, _ in history(loop_run.id, "train_loss")] == [1, 2, 3, 4, 5]


# -- a new loop, a new run ---------------------------------------------------------------------


def loop_parts(optimizer_class=torch.optim.SGD, **settings):
    model = torch.nn.Linear(4, 1)
    return model, optimizer_class(model.parameters(), **(settings or {"lr": 0.1}))


def steps(model, optimizer, count: int) -> None:
    x, y = data()
    for _ in range(count):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def mlflow_run(run_id: str):
    import mlflow

    from autolog.config import settings

    autolog.flush()
    return mlflow.MlflowClient(settings.resolved_tracking_uri()).get_run(run_id)


def test_a_new_optimizer_after_a_plain_loop_stepped_starts_a_new_run():
    autolog.autolog()
    steps(*loop_parts(lr=0.1), 3)
    first = autolog.active_run()
    model, optimizer = loop_parts(torch.optim.Adam, lr=0.01)  # the next experiment's loop
    assert first.status == "RUNNING"  # building an optimizer decides nothing
    steps(model, optimizer, 2)
    assert first.status == "FINISHED"  # the first optimizer is gone: a new loop began
    assert mlflow_run(first.id).info.status == "FINISHED"
    second = autolog.active_run()
    assert second is not first and second.status == "RUNNING"
    autolog.end_run()
    for run, lr, optimizer_name, points in ((first, "0.1", "SGD", [1, 2, 3]),
                                            (second, "0.01", "Adam", [1, 2])):
        data = mlflow_run(run.id).data
        assert (data.params["lr"], data.params["optimizer_name"]) == (lr, optimizer_name)
        assert not any(key.startswith("optimizer_1.") for key in [*data.params, *data.metrics])
        assert history(run.id, "lr") == [(1, float(lr))]
        assert [step for step, _ in history(run.id, "train_loss")] == points


def test_optimizers_built_before_the_first_step_share_the_run_it_starts():
    autolog.autolog()
    train_gan()
    (run,) = autolog.search_runs()
    assert autolog.active_run().id == run.info.run_id
    autolog.end_run()
    assert [step for step, _ in history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    params = mlflow_run(run.info.run_id).data.params
    assert (params["optimizer_name"], params["optimizer_1.optimizer_name"]) == ("SGD", "Adam")


def test_an_inner_optimizer_per_batch_joins_the_loops_run():
    """Adversarial training (PGD), MAML, test-time adaptation: an optimizer built and
    stepped every batch while the loop's own optimizer lives is not a new loop."""
    autolog.autolog()
    model, optimizer = loop_parts(lr=0.1)
    x, y = data()
    for _ in range(5):
        delta = torch.zeros_like(x, requires_grad=True)
        attack = torch.optim.SGD([delta], lr=0.01)
        attack.zero_grad()
        (-torch.nn.functional.mse_loss(model(x + delta), y)).backward()
        attack.step()
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x + delta.detach()), y).backward()
        optimizer.step()
    (run,) = autolog.search_runs()
    autolog.end_run()
    params = mlflow_run(run.info.run_id).data.params  # the attack steps first: its lr is lr
    assert (params["lr"], params["optimizer_1.lr"]) == ("0.01", "0.1")
    assert [step for step, _ in history(run.info.run_id, "train_loss")] == list(range(1, 11))


def test_a_second_optimizer_while_the_first_lives_joins_the_run_outside_a_notebook():
    autolog.autolog()
    model, first_optimizer = loop_parts(lr=0.1)
    steps(model, first_optimizer, 2)
    steps(model, torch.optim.Adam(model.parameters(), lr=0.01), 2)
    (run,) = autolog.search_runs()
    autolog.end_run()
    params = mlflow_run(run.info.run_id).data.params
    assert (params["optimizer_name"], params["optimizer_1.optimizer_name"]) == ("SGD", "Adam")


def test_a_new_optimizer_never_ends_a_users_run():
    autolog.autolog()
    with autolog.start_run() as run:
        steps(*loop_parts(lr=0.1), 2)
        steps(*loop_parts(torch.optim.Adam, lr=0.01), 2)
        assert autolog.active_run() is run and run.status == "RUNNING"
    params = mlflow_run(run.id).data.params
    assert (params["lr"], params["optimizer_1.lr"]) == ("0.1", "0.01")


def test_a_run_that_has_not_stepped_takes_the_new_optimizer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    autolog.autolog()
    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_scalar("data/size", 64)  # starts the run, before the loop
    writer.close()
    run = autolog.active_run()
    steps(*loop_parts(lr=0.3), 2)
    assert autolog.active_run() is run
    autolog.end_run()
    data = mlflow_run(run.id).data
    assert (data.params["lr"], set(data.metrics)) == ("0.3", {"data/size", "train_loss", "lr"})


def test_an_optimizer_built_in_another_thread_leaves_this_threads_loop_run_alone():
    autolog.autolog()
    model, optimizer = loop_parts()
    steps(model, optimizer, 2)
    loop_run = autolog.active_run()
    worker = threading.Thread(target=loop_parts)
    worker.start()
    worker.join()
    assert loop_run.status == "RUNNING"
    steps(model, optimizer, 1)
    assert autolog.active_run() is loop_run
    autolog.end_run()
    assert [step for step, _ in history(loop_run.id, "train_loss")] == [1, 2, 3]


def test_start_run_after_a_plain_loop_ends_the_loops_run_and_starts_the_users():
    autolog.autolog()
    steps(*loop_parts(), 2)
    loop_run = autolog.active_run()
    with autolog.start_run(run_name="mine") as mine:
        assert loop_run.status == "FINISHED" and autolog.active_run() is mine
    assert autolog.active_run() is None
    steps(*loop_parts(), 1)
    loop_run = autolog.active_run()
    with autolog.start_run(nested=True) as child:  # nested: a child of the loop's run
        assert child.parent_id == loop_run.id and loop_run.status == "RUNNING"
    autolog.end_run()
