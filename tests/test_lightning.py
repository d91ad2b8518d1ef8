"""The ``lightning`` integration: what a fit logs, axes across fits, ranks, faults, restore."""

from __future__ import annotations

import contextlib
import importlib
import pickle
from collections import Counter

import pytest
import torch
from autolog_integrations import lightning_autolog
from test_torch import Fault, OpsOnThisThread, approx_points, count_syncs, history
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import autolog
from autolog.patching import current_owner

torch.set_num_threads(1)

PACKAGES = ["lightning.pytorch", "pytorch_lightning"]
BATCHES = 4  # training batches per epoch


@pytest.fixture(params=PACKAGES)
def L(request):  # noqa: N802 - the package, named as users import it
    return importlib.import_module(request.param)


@pytest.fixture
def main_thread_syncs(monkeypatch):
    return count_syncs(monkeypatch)


@pytest.fixture
def pl():
    return importlib.import_module("lightning.pytorch")


def loader(n: int = 16 * BATCHES, seed: int = 0, **kwargs) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16, **kwargs)


def regressor(L, **hooks):  # noqa: N803
    """A small LightningModule of package ``L``; ``hooks`` are extra methods."""

    class Regressor(L.LightningModule):
        def __init__(self, lr=0.05, hidden=8, extra=None):
            super().__init__()
            self.save_hyperparameters()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(4, self.hparams.hidden),
                                           torch.nn.ReLU(), torch.nn.Linear(self.hparams.hidden, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
            return {"optimizer": optimizer,
                    "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}

    for name, hook in hooks.items():
        setattr(Regressor, name, hook)
    return Regressor


def trainer(L, tmp_path, **kwargs):  # noqa: N803
    settings = dict(max_epochs=2, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False,
                    default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    settings.update(kwargs)
    return L.Trainer(**settings)


def steps(run_id: str, key: str) -> list[int]:
    return [step for step, _ in history(run_id, key)]


def test_a_fit_logs_settings_hparams_and_every_logged_value(L, tmp_path):
    autolog.autolog()
    model = regressor(L)(lr=0.05, extra={"depth": 2, "act": "relu"})
    fit = trainer(L, tmp_path, max_epochs=3, gradient_clip_val=0.5,
                  callbacks=[L.callbacks.EarlyStopping(monitor="val_loss", patience=5)])
    callbacks = list(fit.callbacks)
    fit.fit(model, loader(), loader(32, seed=1))
    assert fit.callbacks == callbacks  # the autolog callback is gone again
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED" and run.tags["autolog.integration"] == "lightning"
    expected = {
        "epochs": "3", "max_steps": "-1", "precision": "32-true", "accumulate_grad_batches": "1",
        "gradient_clip_val": "0.5", "strategy": "SingleDeviceStrategy",
        "optimizer_name": "SGD", "lr": "0.05", "momentum": "0.9", "num_trainable_params": "49",
        "lr_scheduler.name": "StepLR", "lr_scheduler.step_size": "1", "lr_scheduler.gamma": "0.5",
        "lr_scheduler.interval": "epoch", "hidden": "8", "extra/depth": "2", "extra/act": "relu",
        "monitor": "val_loss", "mode": "min", "patience": "5", "stopped_epoch": "0",
    }
    assert {key: run.params.get(key) for key in expected} == expected
    run_id = run.info.run_id
    assert steps(run_id, "train_loss_step") == list(range(1, 3 * BATCHES + 1))
    for key in ("train_loss", "train_loss_epoch", "val_loss"):
        assert steps(run_id, key) == [0, 1, 2], key
    assert history(run_id, "lr") == approx_points([(1, 0.05), (5, 0.025), (9, 0.0125)])


def our_step_hooks() -> list:
    """autolog's callbacks among torch's global optimizer step hooks."""
    from torch.optim.optimizer import _global_optimizer_post_hooks

    return [hook for hook in _global_optimizer_post_hooks.values()
            if getattr(hook, "__self__", None).__class__.__name__ == "AutologCallback"]


def test_lr_is_logged_at_the_step_that_used_it_with_per_step_schedulers(L, tmp_path):
    """A per-step scheduler moves the lr after each step, a warm-up in ``optimizer_step``
    just before it: each point is the lr the optimizer stepped with."""
    used = []

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, 3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if self.trainer.global_step == 0:  # warm-up: the first step at a tenth
            optimizer.param_groups[0]["lr"] = 0.01
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step(closure=optimizer_closure)

    autolog.autolog()
    module = regressor(L, configure_optimizers=configure_optimizers,
                       optimizer_step=optimizer_step)()
    trainer(L, tmp_path).fit(module, loader())
    assert len(used) == 2 * BATCHES
    expected = [(step, lr) for step, lr in enumerate(used, 1) if step == 1 or lr != used[step - 2]]
    assert history(autolog.search_runs()[0].info.run_id, "lr") == approx_points(expected)
    assert our_step_hooks() == []  # held for the fit only


def test_each_optimizer_of_the_trainer_gets_its_lr_and_no_other_does(pl, tmp_path):
    """Manual optimization with two optimizers, and a third the Trainer does not know
    stepped inside the training step: only the Trainer's two are logged."""
    outside = torch.nn.Parameter(torch.zeros(1))
    stranger = torch.optim.SGD([outside], lr=0.5)

    def training_step(self, batch, batch_idx):
        for optimizer in self.optimizers():
            loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        outside.grad = torch.ones(1)
        stranger.step()

    def configure_optimizers(self):
        return (torch.optim.SGD(self.parameters(), lr=0.1),
                torch.optim.Adam(self.parameters(), lr=0.01))

    module = regressor(pl, training_step=training_step, configure_optimizers=configure_optimizers,
                       automatic_optimization=property(lambda self: False))()
    autolog.autolog()
    trainer(pl, tmp_path).fit(module, loader())
    run = autolog.search_runs()[0]
    lr_keys = sorted(key for key in run.metrics if key.endswith("lr"))
    assert lr_keys == ["lr", "optimizer_1.lr"]
    assert history(run.info.run_id, "lr") == approx_points([(2, 0.1)])
    assert history(run.info.run_id, "optimizer_1.lr") == approx_points([(2, 0.01)])


def test_the_optimizer_hook_is_gone_after_a_failing_fit(pl, tmp_path):
    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise ValueError("fails after one step")
        return self.net(batch[0]).sum()

    autolog.autolog()
    with pytest.raises(ValueError, match="fails after one step"):
        trainer(pl, tmp_path).fit(regressor(pl, training_step=training_step)(), loader())
    assert our_step_hooks() == []
    assert history(autolog.search_runs()[0].info.run_id, "lr") == approx_points([(1, 0.05)])


def test_user_loggers_and_callbacks_keep_working(pl, tmp_path):
    class CountBatches(pl.Callback):
        batches = 0

        def on_train_batch_end(self, *args):
            self.batches += 1

    autolog.autolog()
    counter = CountBatches()
    csv = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    fit = trainer(pl, tmp_path, logger=csv, callbacks=[counter], log_every_n_steps=1)
    fit.fit(regressor(pl)(), loader())
    assert counter.batches == 2 * BATCHES
    with open(f"{csv.log_dir}/metrics.csv") as rows:
        assert "train_loss_step" in rows.readline()
    assert len(history(autolog.search_runs()[0].info.run_id, "train_loss_step")) == 2 * BATCHES


def test_a_failing_fit_ends_its_run_failed_and_raises_unchanged(pl, tmp_path):
    error = ValueError("the model fails at batch 2")

    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise error
        return self.net(batch[0]).sum()

    autolog.autolog()
    with pytest.raises(ValueError) as raised:
        trainer(pl, tmp_path).fit(regressor(pl, training_step=training_step)(), loader())
    assert raised.value is error
    (run,) = autolog.search_runs()
    assert run.status == "FAILED"


def test_fits_in_one_run_continue_its_step_and_epoch_axes(pl, tmp_path):
    autolog.autolog()
    with autolog.start_run() as run:
        for _ in range(2):
            trainer(pl, tmp_path).fit(regressor(pl)(), loader(), loader(32, seed=1))
        assert autolog.active_run() is run  # the user's run is left open
    assert steps(run.id, "train_loss_step") == list(range(1, 4 * BATCHES + 1))
    assert steps(run.id, "val_loss") == [0, 1, 2, 3]
    assert steps(run.id, "train_loss_epoch") == [0, 1, 2, 3]


def test_a_fit_resumed_from_a_checkpoint_is_not_offset(pl, tmp_path):
    autolog.autolog()
    with autolog.start_run() as run:
        first = trainer(pl, tmp_path, enable_checkpointing=True)
        first.fit(regressor(pl)(), loader())
        checkpoint = first.checkpoint_callback.best_model_path
        with pytest.warns(autolog.AutologWarning, match="'lightning.epochs'"):  # now 3, not 2
            trainer(pl, tmp_path, max_epochs=3).fit(regressor(pl)(), loader(), ckpt_path=checkpoint)
    assert steps(run.id, "train_loss_step") == list(range(1, 3 * BATCHES + 1))
    assert steps(run.id, "train_loss_epoch") == [0, 1, 2]


def test_accumulated_batches_give_one_point_per_optimizer_step(pl, tmp_path):
    autolog.autolog()
    trainer(pl, tmp_path, accumulate_grad_batches=2).fit(regressor(pl)(), loader())
    run_id = autolog.search_runs()[0].info.run_id
    assert steps(run_id, "train_loss_step") == list(range(1, BATCHES + 1))


def test_early_stopping_and_the_best_checkpoint(pl, tmp_path):
    def validation_step(self, batch, batch_idx):
        self.log("val_score", float(self.current_epoch))  # gets worse every epoch

    autolog.autolog()
    stopping = pl.callbacks.EarlyStopping(monitor="val_score", patience=1)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_score")
    fit = trainer(pl, tmp_path, max_epochs=10, enable_checkpointing=True,
                  callbacks=[stopping, checkpoint])
    fit.fit(regressor(pl, validation_step=validation_step)(), loader(), loader(32, seed=1))
    run = autolog.search_runs()[0]
    run_id = run.info.run_id
    assert history(run_id, "stopped_epoch") == [(1, 1.0)]
    assert history(run_id, "restored_epoch") == [(1, 0.0)]
    assert history(run_id, "best_score") == [(1, 0.0)]
    assert history(run_id, "wait_count") == [(1, 1.0)]
    assert history(run_id, "checkpoint.best_model_score") == [(1, 0.0)]
    assert run.tags["checkpoint.best_model_path"] == checkpoint.best_model_path
    assert (run.params["checkpoint.monitor"], run.params["checkpoint.save_top_k"]) == ("val_score", "1")
    assert steps(run_id, "val_score") == [0, 1]


def test_values_logged_in_the_modules_epoch_end_hooks_are_included(pl, tmp_path):
    def on_train_epoch_end(self):
        self.log("epoch_hook", 10.0 + self.current_epoch)

    def on_validation_epoch_end(self):
        self.log("validation_hook", 20.0 + self.current_epoch)

    autolog.autolog()
    module = regressor(pl, on_train_epoch_end=on_train_epoch_end,
                       on_validation_epoch_end=on_validation_epoch_end)()
    trainer(pl, tmp_path).fit(module, loader(), loader(32, seed=1))
    run_id = autolog.search_runs()[0].info.run_id
    assert history(run_id, "epoch_hook") == [(0, 10.0), (1, 11.0)]
    assert history(run_id, "validation_hook") == [(0, 20.0), (1, 21.0)]


def test_validate_and_test_after_a_fit_log_into_the_fits_run(pl, tmp_path):
    autolog.autolog()
    model = regressor(pl)()
    fit = trainer(pl, tmp_path)
    fit.fit(model, loader())
    fit.validate(model, loader(32, seed=1))
    fit.test(model, loader(32, seed=2))
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED"
    assert steps(run.info.run_id, "test_loss") == [2 * BATCHES]
    assert steps(run.info.run_id, "val_loss") == [2 * BATCHES]


def test_a_test_on_its_own_gets_its_own_run(pl, tmp_path):
    autolog.autolog()
    trainer(pl, tmp_path).test(regressor(pl)(), loader(32))
    (run,) = autolog.search_runs()
    assert run.status == "FINISHED" and steps(run.info.run_id, "test_loss") == [0]


def test_a_value_set_as_an_epoch_starts_is_logged_at_that_epoch(L, tmp_path):  # noqa: N803
    """LearningRateMonitor puts ``lr-SGD`` into ``callback_metrics`` in its
    ``on_train_epoch_start``: one point per epoch, at that epoch, the first one included
    (as MLflow logs it), while the epoch's own values stay at their epoch."""
    autolog.autolog()
    monitor = L.callbacks.LearningRateMonitor(logging_interval="epoch")
    trainer(L, tmp_path, max_epochs=3, logger=True, callbacks=[monitor]).fit(
        regressor(L)(), loader(), loader(32, seed=1))
    (run,) = autolog.search_runs()
    run_id = run.info.run_id
    assert history(run_id, "lr-SGD") == approx_points([(0, 0.05), (1, 0.025), (2, 0.0125)])
    for key in ("train_loss_epoch", "val_loss"):
        assert steps(run_id, key) == [0, 1, 2], key


def test_a_stray_predict_never_absorbs_the_next_fit(pl, tmp_path):
    """A ``predict`` outside any fit starts no run, though Lightning's TensorBoard logger
    writes a placeholder ``hp_metric`` through SummaryWriter in it; and a run the torch
    integration leaves open (a SummaryWriter call outside any fit) never takes in the
    separate fit that follows."""
    autolog.autolog()

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    model = regressor(pl, predict_step=predict_step)
    trainer(pl, tmp_path, logger=True).predict(model(), loader())
    assert autolog.active_run() is None and autolog.search_runs() == []  # nothing to log
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        writer.add_scalar("stray", 1.0)  # a run that stays open: the torch integration's
    stray = autolog.active_run()
    trainer(pl, tmp_path, logger=True).fit(model(), loader())
    assert autolog.active_run() is None
    runs = {run.info.run_id: run for run in autolog.search_runs()}
    assert len(runs) == 2
    first = runs.pop(stray.id)
    (fit_run,) = runs.values()
    assert first.status == "FINISHED" and set(first.metrics) == {"stray"}
    assert first.tags["autolog.integration"] == "torch" and not first.params
    assert fit_run.status == "FINISHED" and fit_run.tags["autolog.integration"] == "lightning"
    assert {"train_loss", "lr"} <= set(fit_run.metrics) and fit_run.params["optimizer_name"] == "SGD"
    assert steps(fit_run.info.run_id, "train_loss") == [0, 1]


def test_the_torch_integration_stays_silent_inside_a_fit(pl, tmp_path):
    autolog.autolog()
    trainer(pl, tmp_path).fit(regressor(pl)(), loader())
    (run,) = autolog.search_runs()  # no second run from the torch integration
    assert steps(run.info.run_id, "train_loss") == [0, 1]  # the epoch values only


def test_the_training_thread_gets_no_device_sync_from_autolog(pl, tmp_path, main_thread_syncs):
    class Window(pl.Callback):
        """The host reads (Tensor methods) and aten ops between the start and the end of
        the training loop, on the training thread."""

        def on_train_start(self, *args):
            main_thread_syncs.clear()
            self.recorder = OpsOnThisThread()
            self.recorder.__enter__()

        def on_train_end(self, *args):
            self.recorder.__exit__(None, None, None)
            self.syncs = list(main_thread_syncs)

    def training_thread() -> tuple[list[str], Counter]:
        window = Window()
        fit = trainer(pl, tmp_path, callbacks=[window])
        fit.fit(regressor(pl)(), loader(), loader(32, seed=1))
        return window.syncs, window.recorder.ops

    training_thread()  # warm-up: Lightning's one-off work
    syncs_without, ops_without = training_thread()
    autolog.autolog()
    syncs_with, ops_with = training_thread()
    assert syncs_with == syncs_without
    added = ops_with - ops_without
    assert set(added) <= {"aten.detach.default"}, added  # no _local_scalar_dense, _to_copy...


def test_a_fault_in_the_callback_is_one_warning_and_training_goes_on(pl, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    baseline = regressor(pl)()
    trainer(pl, tmp_path).fit(baseline, loader())

    def broken(self, trainer):
        raise Fault("injected into the lightning callback")

    monkeypatch.setattr(lightning_autolog._AutologCallback, "_log_step", broken)
    autolog.autolog()
    model = regressor(pl)()
    with pytest.warns(autolog.AutologWarning) as warned:
        fit = trainer(pl, tmp_path)
        fit.fit(model, loader())
    (warning,) = [w for w in warned if w.category is autolog.AutologWarning]
    assert "injected into the lightning callback" in str(warning.message)
    assert fit.global_step == 2 * BATCHES
    for trained, reference in zip(model.parameters(), baseline.parameters()):
        assert torch.equal(trained, reference)
    assert autolog.search_runs()[0].status == "FINISHED"


def _callback_hooks() -> list[str]:
    """Every hook of autolog's callback, each contained or per-step (by its body's name)."""
    contained = [name for name, value in vars(lightning_autolog._AutologCallback).items()
                 if hasattr(value, "__wrapped__")]
    return sorted(contained) + ["_log_step", "_record_lr"]


def _inject(monkeypatch, name: str, fault: Exception) -> None:
    def broken(*args, **kwargs):
        raise fault

    hook = vars(lightning_autolog._AutologCallback)[name]
    if hasattr(hook, "__wrapped__"):
        monkeypatch.setattr(hook, "__wrapped__", broken)
    else:
        monkeypatch.setattr(lightning_autolog._AutologCallback, name, broken)


def _remove_step_hooks_left_by_a_faulty_release() -> None:
    from torch.optim.optimizer import _global_optimizer_post_hooks

    for key, hook in list(_global_optimizer_post_hooks.items()):
        if hook in our_step_hooks():
            del _global_optimizer_post_hooks[key]


def test_the_callback_hooks_are_all_covered_here():
    assert set(_callback_hooks()) >= {
        "setup", "teardown", "on_exception", "release", "on_fit_start", "on_train_start",
        "on_train_epoch_start", "on_train_epoch_end", "on_validation_start", "on_validation_end",
        "on_train_end", "_log_step", "_record_lr"}


@pytest.mark.parametrize("hook", _callback_hooks())
def test_a_fault_in_any_callback_hook_is_one_warning_and_the_fit_goes_on(pl, tmp_path,
                                                                        monkeypatch, hook):
    monkeypatch.setenv("AUTOLOG_STRICT", "0")
    failing_fit = hook == "on_exception"  # Lightning calls it only when the fit raises

    def diverges(self, batch, batch_idx):
        raise ArithmeticError("the user's own error")

    model_class = regressor(pl, training_step=diverges) if failing_fit else regressor(pl)
    baseline = model_class()
    with contextlib.suppress(ArithmeticError):
        trainer(pl, tmp_path).fit(baseline, loader(), loader(32, seed=1))
    fault = Fault(f"injected into {hook}")
    _inject(monkeypatch, hook, fault)
    autolog.autolog()
    model = model_class()
    with pytest.warns(autolog.AutologWarning) as warned:
        fit = trainer(pl, tmp_path)
        if failing_fit:
            with pytest.raises(ArithmeticError, match="the user's own error"):
                fit.fit(model, loader(), loader(32, seed=1))
        else:
            fit.fit(model, loader(), loader(32, seed=1))
    ours = [w for w in warned if w.category is autolog.AutologWarning]
    assert len(ours) == 1 and str(fault) in str(ours[0].message)
    assert fit.global_step == (0 if failing_fit else 2 * BATCHES)
    for trained, reference in zip(model.parameters(), baseline.parameters()):
        assert torch.equal(trained, reference)
    (run,) = autolog.search_runs()
    assert run.status == ("FAILED" if failing_fit else "FINISHED")
    _remove_step_hooks_left_by_a_faulty_release()


@pytest.mark.parametrize("hook", sorted(set(_callback_hooks()) - {"on_exception"}))
def test_in_strict_mode_a_fault_in_any_callback_hook_raises(pl, tmp_path, monkeypatch, hook):
    _inject(monkeypatch, hook, Fault(f"strict mode surfaces {hook}"))
    autolog.autolog()
    with pytest.raises(Fault, match=f"strict mode surfaces {hook}"):
        trainer(pl, tmp_path).fit(regressor(pl)(), loader(), loader(32, seed=1))
    _remove_step_hooks_left_by_a_faulty_release()


def test_in_strict_mode_a_fault_in_the_callback_raises(pl, tmp_path, monkeypatch):
    def broken(trainer, module):
        raise Fault("strict mode surfaces the callback's fault")

    monkeypatch.setattr(lightning_autolog, "fit_params", broken)
    autolog.autolog()
    with pytest.raises(Fault, match="strict mode surfaces"):
        trainer(pl, tmp_path).fit(regressor(pl)(), loader())


def test_disable_restores_the_exact_originals(L, tmp_path):
    names = ("fit", "validate", "test", "predict")
    originals = {name: vars(L.Trainer)[name] for name in names}
    autolog.autolog()
    assert all(vars(L.Trainer)[name] is not originals[name] for name in names)
    autolog.autolog(disable=True)
    assert all(vars(L.Trainer)[name] is originals[name] for name in names)
    trainer(L, tmp_path).fit(regressor(L)(), loader())
    assert autolog.search_runs() == []


def test_ranks_other_than_zero_log_nothing(pl, tmp_path, monkeypatch):
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    autolog.autolog()
    trainer(pl, tmp_path).fit(regressor(pl)(), loader())
    assert autolog.search_runs() == []  # neither lightning nor torch started a run
    with autolog.start_run() as run:  # a run the user opened on every rank
        trainer(pl, tmp_path).fit(regressor(pl)(), loader())
    record = autolog.get_run(run.id)
    assert record.params == {} and record.metrics == {}


def test_a_pickled_callback_is_silent_and_keeps_the_torch_integration_silent(pl, tmp_path):
    integration = autolog.integration.get("lightning")
    with autolog.start_run() as run:
        callback = lightning_autolog.callback_class(pl)(integration, run, pl.__name__)
        copy = pickle.loads(pickle.dumps(callback))
    assert isinstance(copy, pl.Callback) and copy._run is None
    fit = trainer(pl, tmp_path)
    copy.setup(fit, None, "fit")
    assert not copy._active and current_owner() == "lightning"
    copy.teardown(fit, None, "fit")
    assert current_owner() is None


@pytest.mark.timeout(120)
def test_dataloader_workers_fork_without_hangs_or_duplicates(pl, tmp_path):
    autolog.autolog()
    trainer(pl, tmp_path).fit(regressor(pl)(), loader(num_workers=2))
    (run,) = autolog.search_runs()
    assert steps(run.info.run_id, "train_loss_step") == list(range(1, 2 * BATCHES + 1))
