"""Autologging for PyTorch Lightning (integration ``lightning``; both the ``lightning``
and the ``pytorch_lightning`` packages).

``Trainer.fit`` is wrapped to add an autolog Callback for the length of the call (and
take it out again afterwards); nothing inside the training loop is patched, no Logger is
added, and the user's loggers see nothing different. What is logged, with MLflow's names
where ``mlflow.pytorch.autolog`` logs the same thing:

* params, before the fit: ``epochs`` (max_epochs), ``max_steps``, ``precision``,
  ``accumulate_grad_batches``, ``gradient_clip_val`` and the Trainer's other settings
  that shape training; EarlyStopping's ``monitor``, ``mode``, ``patience``,
  ``min_delta``, ``stopped_epoch`` (as MLflow logs them); ModelCheckpoint's settings as
  ``checkpoint.*``;
* params, at ``on_fit_start``: ``optimizer_name`` and the optimizer's defaults (``lr``,
  ...; a second optimizer as ``optimizer_1.*``), each LR scheduler as ``lr_scheduler.*``,
  and the module's (and datamodule's) ``hparams``, nested keys joined with ``/``;
* metrics: every value the module logs with ``self.log`` at its own step: step values
  at ``global_step`` (``loss`` or, when also logged per epoch, ``loss_step``), once per
  optimizer step; epoch values (``loss``, ``loss_epoch``, validation metrics) at the
  epoch; the learning rate a step used (``lr``), when it changes; EarlyStopping's
  ``stopped_epoch``, ``restored_epoch``, ``best_score``, ``wait_count`` when it stopped
  training; the best checkpoint's ``checkpoint.best_model_score``, and its path as the
  tag ``checkpoint.best_model_path``;
* ``Trainer.validate``/``test``: the metrics they return, into the active run, or the run
  of this Trainer's last fit, or a new run.

Artifacts, under MLflow's names:

* ``model``: the LightningModule at the end of a fit that finished, in MLflow's
  ``pytorch`` flavor (``mlflow.pytorch.load_model``, ``mlflow.pyfunc.load_model``), as the
  model options say (``log_models``: True, False or ``"best"`` with ``monitor=``, ...; see
  :data:`autolog.models.options.MODEL_OPTIONS`). Its signature is the dtype and trailing
  shape of the first training batch's first tensor, read as that batch ends (attributes:
  no device sync). It is snapshotted after ``fit`` returns, when Lightning has moved it
  back to the CPU, and saved on autolog's model thread;
* ``model_summary.txt``: Lightning's ``ModelSummary(max_depth=-1)`` of the module, at fit
  start;
* with the option ``checkpoint=True`` (off by default, as MLflow's ``checkpoint`` is on
  only with its own callback): the best ``ModelCheckpoint`` file (else its last) under
  ``checkpoints/``, named by MLflow's tag ``mlflow.latest_checkpoint_artifact``, so that
  ``autolog.load_checkpoint(ModelClass, run_id)`` and ``mlflow.pytorch.load_checkpoint``
  restore it.

Options ``log_every_n_step`` and ``log_every_n_epoch`` (MLflow's names; default 1: every
step and every epoch, as cheap here as fewer): step values and the ``lr`` at steps n, 2n,
... of the run's step axis (None: no step values at all), epoch values (training and
validation) at epochs n-1, 2n-1, ... as MLflow's ``(epoch + 1) % n == 0``. Values
logged at the end of the fit (EarlyStopping's, the best checkpoint's) are always logged.

Several ``fit`` calls in one run continue its step and epoch axes: a fit that starts
behind what the run already has is offset to follow it (a Trainer that resumes, from
itself or a checkpoint, is already ahead and is not).

No device syncs: values are read as the tensors Lightning holds and converted to floats
in the writer thread. Step values come from Lightning's per-step cache, not from
``trainer.callback_metrics``, whose computation calls ``.item()`` on progress-bar
values. Epoch values are read only after Lightning has computed them on every rank
(right after the epoch-end hooks): rank 0 never starts a ``sync_dist`` reduction that the
other ranks are not running at that moment (a hang, or a reduction paired with another
collective), and values the module logs in its own ``on_*_epoch_end`` are included.

Private internals (each behind a probe, checked once as the integration is enabled; a
Lightning release without one loses that feature alone, with one warning): the per-step
values need the training loop's results (``fit_loop.epoch_loop._results``, each result's
``_forward_cache`` and ``meta``); the epoch values need ``_logger_connector._callback_metrics``;
``checkpoint.every_n_train_steps`` needs ``ModelCheckpoint._every_n_train_steps``.

Distributed: only global rank 0 gets a run and a logging callback; other ranks log
nothing and call nothing collective. With a launcher that starts processes through
multiprocessing (``ddp_spawn``, ``ddp_fork``) the training happens in those children,
where autolog cannot log into the parent's run; the parent warns once and logs the
Trainer's params only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import os
import weakref
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

from autolog_integrations.torch_autolog import (
    LR,
    STEP_HOOK,
    check_every,
    has_step_hook,
    metric_key,
    optimizer_params,
    prefixed,
)

from autolog import lifecycle
from autolog.artifacts.logged import log_bytes, log_file
from autolog.config import warn
from autolog.integration import Integration, Probe, assigns
from autolog.lifecycle import KILLED
from autolog.models.options import MODEL_OPTIONS, log_fitted
from autolog.patching import current_owner, guard, outermost
from autolog.run import Run, active_run
from autolog.schemas import schema_of

# Strategies that leave each rank a shard of the model (no whole model to log)
SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})
TRAINER_SETTINGS = (
    "max_steps", "min_epochs", "min_steps", "precision", "accumulate_grad_batches",
    "gradient_clip_val", "gradient_clip_algorithm", "val_check_interval",
    "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "num_nodes",
    "num_devices",
)
EARLY_STOPPING_SETTINGS = ("monitor", "mode", "patience", "min_delta", "stopped_epoch")  # MLflow's
CHECKPOINT_SETTINGS = ("monitor", "mode", "save_top_k", "save_last", "every_n_epochs",
                       "save_weights_only")
# attributes of a scheduler that are its state, not its settings
SCHEDULER_STATE = frozenset(("optimizer", "base_lrs", "last_epoch", "verbose", "best",
                             "num_bad_epochs", "cooldown_counter", "mode_worse"))
_SCALARS = (int, float, str, bool, type(None))
MODEL_SUMMARY = "model_summary.txt"  # MLflow's artifact name
CHECKPOINTS = "checkpoints"  # the artifact folder of the best checkpoint (checkpoint=True)
# MLflow's tag naming a run's latest checkpoint artifact; mlflow.pytorch.load_checkpoint
# and autolog.load_checkpoint read it
CHECKPOINT_TAG = "mlflow.latest_checkpoint_artifact"
EXAMPLE_ROWS = 5  # rows of the first batch kept as the model's input example

# the features that read Lightning's private internals (see LightningIntegration.probes)
STEP_VALUES = "per-step metrics (self.log(..., on_step=True))"
EPOCH_VALUES = "epoch and validation metrics"
STEP_LR = "the lr of each step"
EVERY_N_TRAIN_STEPS = "the param checkpoint.every_n_train_steps"
SPAWN_NOTICE = "the warning that ddp_spawn/ddp_fork train out of autolog's reach"
_RESULT = "trainer.connectors.logger_connector.result"


def _internal(package: ModuleType, module: str) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.{module}")


def _metadata_fields(package: ModuleType) -> bool:
    metadata = _internal(package, _RESULT)._Metadata
    fields = getattr(metadata, "__dataclass_fields__", {})
    parameters = inspect.signature(metadata.forked_name).parameters
    return {"name", "on_step"} <= set(fields) and list(parameters) == ["self", "on_step"]


class _Axis:
    """How far a run's step and epoch axes go, so that the next fit continues them."""

    __slots__ = ("steps", "epochs")

    def __init__(self) -> None:
        self.steps = 0  # the highest step logged
        self.epochs = 0  # one past the highest epoch logged


class LightningIntegration(Integration):
    name = "lightning"
    modules = ("lightning.pytorch", "pytorch_lightning")
    supported = ">=2.2,<2.7"  # 2.2.0 (CI's lowest-versions venv) to 2.6.x
    default_options = {**MODEL_OPTIONS, "checkpoint": False, "log_every_n_step": 1,
                       "log_every_n_epoch": 1}
    probes = (
        Probe(STEP_VALUES, "fit_loop.epoch_loop._results", lambda package: assigns(
            _internal(package, "loops.training_epoch_loop")._TrainingEpochLoop, "_results")),
        Probe(STEP_VALUES, "_ResultCollection.valid_items()", lambda package: callable(
            _internal(package, _RESULT)._ResultCollection.valid_items)),
        Probe(STEP_VALUES, "_ResultMetric._forward_cache", lambda package: assigns(
            _internal(package, _RESULT)._ResultMetric.update, "_forward_cache")),
        Probe(STEP_VALUES, "_Metadata.name, .on_step and .forked_name(on_step)", _metadata_fields),
        Probe(EPOCH_VALUES, "Trainer._logger_connector", lambda package: assigns(
            package.Trainer, "_logger_connector")),
        Probe(EPOCH_VALUES, "_LoggerConnector._callback_metrics", lambda package: assigns(
            _internal(package, "trainer.connectors.logger_connector.logger_connector")
            ._LoggerConnector, "_callback_metrics")),
        Probe(STEP_LR, STEP_HOOK, has_step_hook),
        Probe(EVERY_N_TRAIN_STEPS, "ModelCheckpoint._every_n_train_steps", lambda package: assigns(
            package.callbacks.ModelCheckpoint, "_every_n_train_steps")),
        Probe(SPAWN_NOTICE, "strategies.launchers.subprocess_script._SubprocessScriptLauncher",
              lambda package: isinstance(_internal(
                  package, "strategies.launchers.subprocess_script")._SubprocessScriptLauncher, type)),
    )

    def __init__(self) -> None:
        super().__init__()
        self._axes: weakref.WeakKeyDictionary[Run, _Axis] = weakref.WeakKeyDictionary()
        # Trainer -> id of the run its last fit created, for a later validate/test
        self._fit_runs: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def patch(self, module: ModuleType) -> None:
        trainer = module.Trainer
        self.patcher.wrap(trainer, "fit", functools.partial(self._on_fit, module))
        for name in ("validate", "test"):
            self.patcher.wrap(trainer, name, self._on_evaluate)
        self.patcher.wrap(trainer, "predict", self._on_predict)

    def unpatch(self) -> None:
        self._axes = weakref.WeakKeyDictionary()
        self._fit_runs = weakref.WeakKeyDictionary()

    def check_options(self, options: dict[str, Any]) -> None:
        super().check_options(options)
        checkpoint = options.get("checkpoint", False)
        if not isinstance(checkpoint, bool):
            raise TypeError(f"checkpoint must be True or False, got {checkpoint!r}")
        check_every(options, "log_every_n_step", none_allowed=True)
        check_every(options, "log_every_n_epoch", none_allowed=False)

    def axis(self, run: Run) -> _Axis:
        axis = self._axes.get(run)
        if axis is None:
            axis = self._axes[run] = _Axis()
        return axis

    def _is_global_zero(self, trainer: Any) -> bool:
        zero = False  # if it cannot be told, log nothing rather than log twice
        with self.guard():
            zero = trainer.is_global_zero
        return zero

    # -- fit --------------------------------------------------------------------------------

    def _on_fit(self, package: ModuleType, wrapped, trainer, args, kwargs):
        with outermost(self.name) as outer:  # also keeps the torch integration silent
            if not outer or not self._is_global_zero(trainer):
                return wrapped(*args, **kwargs)
            before = active_run()
            with self.fit_run() as run:
                created = run is not None and run is not before
                callback = None
                if run is not None:
                    with self.guard():
                        callback = callback_class(package)(self, run, package.__name__)
                        trainer.callbacks.append(callback)
                    with self.guard():
                        self._log_trainer(trainer, run)
                try:
                    result = wrapped(*args, **kwargs)
                except SystemExit as exc:  # Lightning turns Ctrl-C into sys.exit(1)
                    if created and isinstance(exc.__context__, KeyboardInterrupt):
                        with self.guard():
                            run.end(KILLED)
                    raise
                finally:
                    if callback is not None:
                        with self.guard():
                            trainer.callbacks.remove(callback)
                            callback.release()  # done by teardown, unless the fit never got there
                if callback is not None and callback.fitted_here(trainer):
                    self._log_fit_end(run, trainer, callback)
                if created:
                    self._fit_runs[trainer] = run.id
                return result

    def _log_trainer(self, trainer: Any, run: Run) -> None:
        launcher = getattr(trainer.strategy, "launcher", None)
        if (launcher is not None and type(launcher).__name__ != "_SubprocessScriptLauncher"
                and self.feature_on(SPAWN_NOTICE)):
            warn(f"autolog (lightning): {type(trainer.strategy).__name__} trains in processes "
                 "it starts through multiprocessing, which cannot log into this process's run; "
                 "only the Trainer's params are logged (use strategy='ddp' for full logging)")
        params = trainer_params(trainer)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and self.feature_on(EVERY_N_TRAIN_STEPS):
            every_n_train_steps = getattr(checkpoint, "_every_n_train_steps", None)
            if every_n_train_steps is not None:
                params["checkpoint.every_n_train_steps"] = every_n_train_steps
        run.log_autolog_params(params, self.name)

    def _log_fit_end(self, run: Run, trainer: Any, callback: _AutologCallback) -> None:
        """After a fit that finished in this process: the best checkpoint (``checkpoint=True``),
        then the model, each contained on its own. The module is read here, not in the
        callback's ``on_train_end``: the teardown of a strategy that holds the whole model
        (one device, DDP) has moved it back to the CPU, so its snapshot copies host memory
        and waits on no device. A sharded strategy (FSDP, DeepSpeed) leaves each rank a
        shard on its device: no model is logged, with one warning."""
        if self.options["checkpoint"]:
            with self.guard():
                log_checkpoint(run, trainer)
        strategy = type(trainer.strategy).__name__
        if self.options["log_models"] and strategy in SHARDED_STRATEGIES:
            warn(f"autolog (lightning): {strategy} leaves each rank a shard of the model; no model "
                 "is logged (gather it and call autolog.log_model, or log a checkpoint: "
                 "checkpoint=True)")
            return
        with self.guard():
            log_fitted(run, trainer.lightning_module, self.options, inputs=callback.model_inputs())

    # -- validate / test --------------------------------------------------------------------

    def _on_predict(self, wrapped, trainer, args, kwargs):
        """Nothing to log, as with MLflow; held so that the torch integration stays silent
        too (Lightning's TensorBoard logger writes a placeholder ``hp_metric`` through
        SummaryWriter, which would start a run of its own)."""
        with outermost(self.name):
            return wrapped(*args, **kwargs)

    def _on_evaluate(self, wrapped, trainer, args, kwargs):
        with outermost(self.name) as outer:
            if not outer or not self._is_global_zero(trainer):
                return wrapped(*args, **kwargs)
            with self._evaluation_run(trainer) as run:
                results = wrapped(*args, **kwargs)
                if run is not None:
                    with self.guard():
                        step = max(trainer.global_step, self.axis(run).steps)
                        for metrics in results or ():
                            for key, value in metrics.items():
                                run.log_metric(metric_key(key), value, step)
                return results

    @contextlib.contextmanager
    def _evaluation_run(self, trainer: Any) -> Iterator[Run | None]:
        """The active run; else the run this Trainer's last fit created (resumed, so test
        metrics land next to the training ones, as with MLflow); else a new run."""
        run_id = self._fit_runs.get(trainer)
        resumed = None
        if run_id is not None and active_run() is None:
            with self.guard():
                resumed = lifecycle.start_run(run_id=run_id)
        if resumed is None:
            with self.fit_run() as run:
                yield run
            return
        with lifecycle.ended_with_block(resumed, self.guard):
            yield resumed


# -- params -------------------------------------------------------------------------------------


def trainer_params(trainer: Any) -> dict[str, Any]:
    """The Trainer's settings, EarlyStopping's (MLflow's names) and ModelCheckpoint's
    public ones."""
    params: dict[str, Any] = {"epochs": trainer.max_epochs}
    params.update(_settings(trainer, TRAINER_SETTINGS))
    params["strategy"] = type(trainer.strategy).__name__
    early_stopping = trainer.early_stopping_callback
    if early_stopping is not None:
        params.update(_settings(early_stopping, EARLY_STOPPING_SETTINGS))
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None:
        params.update(prefixed("checkpoint.", _settings(checkpoint, CHECKPOINT_SETTINGS)))
    return params


def fit_params(trainer: Any, module: Any) -> dict[str, Any]:
    """Optimizers, LR schedulers, then the (data)module's hparams."""
    params: dict[str, Any] = {}
    for index, optimizer in enumerate(trainer.optimizers):
        if type(optimizer).__name__ == "LightningOptimizer":
            optimizer = optimizer.optimizer  # its public property: the torch optimizer
        params.update(prefixed(f"optimizer_{index}." if index else "", optimizer_params(optimizer)))
    for index, config in enumerate(trainer.lr_scheduler_configs):
        prefix = f"lr_scheduler_{index}." if index else "lr_scheduler."
        params[prefix + "name"] = type(config.scheduler).__name__
        params.update(prefixed(prefix, scheduler_settings(config.scheduler)))
        params[prefix + "interval"] = config.interval
        params[prefix + "frequency"] = config.frequency
        if config.monitor is not None:
            params[prefix + "monitor"] = config.monitor
    datamodule = getattr(trainer, "datamodule", None)
    for source in (datamodule, module):
        hparams = getattr(source, "hparams", None)
        if hparams:
            params.update(flatten(hparams))
    return params


def scheduler_settings(scheduler: Any) -> dict[str, Any]:
    """A scheduler's public, plain-valued attributes that are settings, not state."""
    return {
        key: value for key, value in vars(scheduler).items()
        if not key.startswith("_") and key not in SCHEDULER_STATE and _plain(value)
    }


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, _SCALARS) for item in value)
    return isinstance(value, _SCALARS)


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (and argparse namespaces) as ``outer/inner`` keys."""
    if isinstance(params, argparse.Namespace):
        params = vars(params)
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, argparse.Namespace)) and value:
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _settings(owner: Any, names: tuple[str, ...]) -> dict[str, Any]:
    missing = object()
    values = {name: getattr(owner, name, missing) for name in names}
    return {name: value for name, value in values.items() if value is not missing}


# -- models, checkpoints, the model summary ------------------------------------------------------


def first_tensor(batch: Any) -> Any:
    """The tensor a model's signature is read from: the batch itself, else the first item
    of a list or tuple, or the first value of a dict (nested); None if it is no tensor."""
    import torch

    while True:
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        elif isinstance(batch, Mapping) and batch:
            batch = next(iter(batch.values()))
        else:
            return batch if torch.is_tensor(batch) else None


def model_summary(package: str, module: Any) -> str:
    """Lightning's table of the module's layers, as MLflow logs it (``max_depth=-1``).

    Rendered on the training thread, at fit start: the table reads each layer's train or
    eval mode as it renders, and the sanity check's validation switches them right after,
    so a render on the model thread would show whichever mode training was in at that
    moment. It costs about 1 ms for a small module, 80 ms for one of 900 layers."""
    summary = importlib.import_module(f"{package}.utilities.model_summary").ModelSummary
    return str(summary(module, max_depth=-1))


def log_checkpoint(run: Run, trainer: Any) -> None:
    """Log the best file of the Trainer's ``ModelCheckpoint`` (else its last) under
    ``checkpoints/`` and name it in MLflow's tag. Staged (copied) now, on the training
    thread: its folder may be gone once ``fit`` returns (a temporary ``default_root_dir``)."""
    checkpoint = trainer.checkpoint_callback
    path = checkpoint and (checkpoint.best_model_path or checkpoint.last_model_path)
    if not path:
        warn("autolog (lightning): checkpoint=True, but this fit saved no checkpoint (no "
             "ModelCheckpoint, or enable_checkpointing=False); none is logged")
        return
    if not os.path.isfile(path):
        warn(f"autolog (lightning): checkpoint=True, but the best checkpoint {path!r} is not a "
             "local file; it is not logged")
        return
    run.set_tags({CHECKPOINT_TAG: log_file(run.artifact_target(), path, CHECKPOINTS)})


# -- the callback ---------------------------------------------------------------------------------


def _contained(hook):
    """A callback hook whose every error is autolog's own (it calls no user code), so it
    is contained: one warning (strict mode: raised), and Lightning's call goes on. It calls
    ``__wrapped__``, so a test can make the body raise in its place. The two per-step hooks
    contain their errors inline instead, since a ``with`` block costs them per step."""

    @functools.wraps(hook)
    def contained(self, *args, **kwargs):
        with self._guard():
            contained.__wrapped__(self, *args, **kwargs)

    return contained


class _AutologCallback:
    """Logs one fit of one Trainer into one run (see the module doc).

    Active only in the process that created it and on global rank 0. A copy in another
    process (pickled to a ``ddp_spawn`` child) logs nothing and only holds autolog's
    ownership of the call there, so the torch integration stays silent too.
    """

    def __init__(self, integration: LightningIntegration | None, run: Run | None, package: str):
        self._integration = integration
        self._run = run
        self._package = package
        self._axis = integration.axis(run) if run is not None else None
        self._pid = os.getpid()
        self._active = False
        self._silence: contextlib.AbstractContextManager | None = None
        self._lr_hook: Any = None  # torch's handle of _on_optimizer_step, while fitting
        self._step_offset = self._epoch_offset = 0
        self._last_step = 0
        self._last_values: dict[str, Any] = {}  # per result: the tensor last logged
        self._names: dict[str, str] = {}  # per result: its step metric's key
        self._step_lrs: dict[Any, Any] = {}  # optimizer -> the lr its step used
        self._last_lrs: dict[int, Any] = {}
        # read once at on_train_start, so a step does not walk Lightning's properties again:
        self._optimizers: dict[Any, int] = {}  # this Trainer's optimizers -> their index
        self._train_results: Any = None  # what trainer._results is in the training loop
        # (epoch, snapshot of callback_metrics): at on_train_start (epoch None: the fit's
        # start), then at the end of each epoch, until the next epoch start logs from it
        self._train_epoch: tuple[int | None, dict[str, Any]] | None = None
        self._validation: dict[str, Any] | None = None  # snapshot at validation start
        # the features whose probes passed, read once here (False in a silent copy)
        on = integration.feature_on if integration is not None else (lambda feature: False)
        options = integration.options if integration is not None else {"log_models": False}
        # log_every_n_step / log_every_n_epoch (None: no per-step values at all)
        self._every_step = options.get("log_every_n_step", 1) or 0
        self._every_epoch = options.get("log_every_n_epoch", 1)
        self._step_values = on(STEP_VALUES)
        self._step_lr = bool(self._every_step) and on(STEP_LR)
        self._epoch_values = False  # at setup: active, and the probes of EPOCH_VALUES passed
        self._epoch_values_on = on(EPOCH_VALUES)
        # the model's signature and input example, from the first training batch
        self._examples = bool(options["log_models"] and options["log_input_examples"])
        self._first_batch = bool(options["log_models"] and (
            options["log_model_signatures"] or self._examples))
        self._input: tuple[Any, tuple[int, ...]] | None = None  # its first tensor's dtype, shape
        self._example: Any = None  # that tensor's first rows (log_input_examples)

    # Lightning calls every callback's every hook, each call inside a profiler context,
    # about 3 µs each; it skips a hook that is not callable. These per-batch hooks are not
    # used here, so they cost nothing (about 18 µs per training step less).
    on_train_batch_start = on_before_zero_grad = on_before_backward = on_after_backward = None
    on_before_optimizer_step = None  # the lr is read by a torch optimizer hook instead
    on_validation_batch_start = on_validation_batch_end = None
    on_test_batch_start = on_test_batch_end = on_predict_batch_start = on_predict_batch_end = None

    def __reduce__(self):
        return (silent_callback, (self._package,))

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return guard(LightningIntegration.name)

    # -- lifecycle ----------------------------------------------------------------------------

    @_contained
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._active = (self._run is not None and os.getpid() == self._pid
                        and trainer.is_global_zero)
        self._epoch_values = self._active and self._epoch_values_on
        if self._active and self._step_lr and self._lr_hook is None:
            from torch.optim.optimizer import register_optimizer_step_post_hook

            self._lr_hook = register_optimizer_step_post_hook(self._on_optimizer_step)
        if not self._active and current_owner() is None:
            self._silence = outermost(LightningIntegration.name)
            self._silence.__enter__()

    @_contained
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.release()

    @_contained
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.release()

    @_contained
    def release(self) -> None:
        try:
            if self._lr_hook is not None:
                self._lr_hook.remove()
                self._lr_hook = None
        finally:  # never leave the thread silenced
            if self._silence is not None:
                self._silence.__exit__(None, None, None)
                self._silence = None

    @_contained
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self._active:
            with self._guard():  # a module Lightning cannot summarize still gets its params
                text = model_summary(self._package, pl_module)
                log_bytes(self._run.artifact_target(), text.encode(), MODEL_SUMMARY)
            self._run.log_autolog_params(fit_params(trainer, pl_module),
                                         LightningIntegration.name)

    @_contained
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._active:  # after a checkpoint restored the trainer's progress
            axis = self._axis
            self._last_step = trainer.global_step
            self._step_offset = max(0, axis.steps - trainer.global_step)
            self._epoch_offset = max(0, axis.epochs - trainer.current_epoch)
            self._optimizers = {optimizer: index
                                for index, optimizer in enumerate(trainer.optimizers)}
            if self._step_values:
                self._train_results = trainer.fit_loop.epoch_loop._results
            if self._epoch_values:
                self._train_epoch = (None, dict(_callback_metrics(trainer)))

    # -- steps (every hook here runs per step: try/except, no ``with`` block) ------------------

    def _failed(self, exc: Exception) -> None:
        with self._guard():
            raise exc

    def _on_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """torch's global optimizer step hook, held from ``setup`` to ``teardown``: the lr
        the step used (schedulers move it on before ``on_train_batch_end``; warm-up code in
        ``optimizer_step`` sets it just before). Not Lightning's ``on_before_optimizer_step``:
        Lightning calls every callback hook inside a profiler context, about 3 µs a step. An
        optimizer of another thread lands here too; ``_log_step`` reads only this Trainer's."""
        try:
            self._record_lr(optimizer)
        except Exception as exc:  # noqa: BLE001 - reported by _failed
            self._failed(exc)

    def _record_lr(self, optimizer: Any) -> None:
        self._step_lrs[optimizer] = optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._active:
            try:
                if self._first_batch:
                    self._first_batch = False
                    self._record_input(batch)
                self._log_step(trainer)
            except Exception as exc:  # noqa: BLE001 - reported by _failed
                self._failed(exc)

    def _record_input(self, batch: Any) -> None:
        """The dtype and shape of the first batch's first tensor (attributes: no device
        sync); with ``log_input_examples``, a copy of its first rows too, made on its device."""
        tensor = first_tensor(batch)
        shape = tuple(tensor.shape) if tensor is not None else ()
        if shape:  # (a scalar has no rows)
            self._input = (tensor.dtype, shape)
            if self._examples:
                self._example = tensor[:EXAMPLE_ROWS].detach().clone()

    def _log_step(self, trainer: Any) -> None:
        step = trainer.global_step
        if step == self._last_step:  # accumulating gradients: no optimizer step yet
            return
        self._last_step = step
        step += self._step_offset
        axis = self._axis
        if step > axis.steps:
            axis.steps = step
        every = self._every_step
        if every != 1 and (not every or step % every):
            return
        run, last, names = self._run, self._last_values, self._names
        results = self._train_results
        for key, result in results.valid_items() if results is not None else ():
            if not result.meta.on_step:
                continue
            value = result._forward_cache  # the tensor self.log gave this step, as is
            if value is None or last.get(key) is value:  # not logged again since
                continue
            last[key] = value
            if value.requires_grad:
                value = value.detach()
            name = names.get(key)
            if name is None:  # a new key: checked in full once (self.log keeps it a scalar)
                name = metric_key(result.meta.forked_name(True))
                run.log_metric(name, value, step)
                names[key] = name
            else:
                run.log_checked_tensor(name, value, step)
        if self._step_lrs:  # (not iterated: an optimizer of another thread may add to it)
            for optimizer, index in self._optimizers.items():
                lr = self._step_lrs.get(optimizer)
                if type(lr) in (float, int) and lr != self._last_lrs.get(index):
                    self._last_lrs[index] = lr
                    run.log_metric(f"optimizer_{index}.{LR}" if index else LR, lr, step)
            self._step_lrs.clear()

    # -- epochs -------------------------------------------------------------------------------

    @_contained
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._epoch_values:  # the values are computed after this hook; log them at the next
            self._train_epoch = (trainer.current_epoch, dict(_callback_metrics(trainer)))

    @_contained
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Log the last epoch's values, and those that callbacks which ran before this one
        set as this epoch starts (``LearningRateMonitor(logging_interval="epoch")``'s
        ``lr-SGD``) at this epoch. The two are told apart by name: the last epoch's are the
        training loop's own results (all of them, without the per-step values' probes)."""
        if self._epoch_values and self._train_epoch is not None:
            epoch, before = self._train_epoch
            self._train_epoch = None
            changed = _changed(trainer, before)
            if epoch is not None:
                training = self._training_keys()
                if training is None:
                    training = set(changed)
                self._log_at_epoch({k: v for k, v in changed.items() if k in training}, epoch)
                changed = {k: v for k, v in changed.items() if k not in training}
            if changed:
                self._log_at_epoch(changed, trainer.current_epoch)

    def _training_keys(self) -> set[str] | None:
        """Every key the training loop's results give ``callback_metrics`` (reset results
        keep their names until the next epoch logs them again); None if they cannot be
        read (the probes of the per-step values failed)."""
        if self._train_results is None:
            return None
        keys: set[str] = set()
        for result in self._train_results.values():
            meta = result.meta
            keys.update((meta.name, meta.forked_name(True), meta.forked_name(False)))
        return keys

    def _log_train_epoch(self, trainer: Any) -> None:
        if self._train_epoch is not None:
            epoch, before = self._train_epoch
            self._train_epoch = None
            if epoch is not None:  # an epoch ended (the fit may have stopped before one)
                self._log_at_epoch(_changed(trainer, before), epoch)

    @_contained
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._epoch_values and not trainer.sanity_checking:
            self._validation = dict(_callback_metrics(trainer))

    @_contained
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._epoch_values and self._validation is not None:
            before, self._validation = self._validation, None
            self._log_at_epoch(_changed(trainer, before), trainer.current_epoch)

    def _log_at_epoch(self, values: dict[str, Any], epoch: int) -> None:
        """At epochs n-1, 2n-1, ... (0-based) with ``log_every_n_epoch=n``, as MLflow's."""
        step = epoch + self._epoch_offset
        if (step + 1) % self._every_epoch == 0:
            for key, value in values.items():
                self._run.log_metric(metric_key(key), value, step)
        axis = self._axis
        if step + 1 > axis.epochs:
            axis.epochs = step + 1

    # -- the end ------------------------------------------------------------------------------

    def fitted_here(self, trainer: Any) -> bool:
        """Whether the fit trained in this process, on global rank 0, to its end: a
        ``ddp_spawn`` parent did not, nor did a fit interrupted by Ctrl-C that the Lightning
        release returns from (2.6 raises ``SystemExit`` instead)."""
        return self._active and not trainer.interrupted

    def model_inputs(self) -> Any:
        """What the model's signature (and input example) is read from: the first rows of
        the first batch as a numpy array (``log_input_examples``), else a tensor without
        data (on the ``meta`` device) of its dtype and trailing shape; None if no batch ran."""
        if self._example is not None and schema_of(self._example) is not None:
            return self._example.cpu().numpy()
        if self._input is None:
            return None
        import torch

        dtype, shape = self._input
        return torch.empty((0, *shape[1:]), dtype=dtype, device="meta")

    @_contained
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._active:
            return
        if self._epoch_values:
            self._log_train_epoch(trainer)
        step = max(self._axis.epochs - 1, 0)
        early_stopping = trainer.early_stopping_callback
        if early_stopping is not None and early_stopping.stopped_epoch:
            self._run.log_metrics(early_stopping_metrics(early_stopping), step)
        checkpoint = trainer.checkpoint_callback
        path = getattr(checkpoint, "best_model_path", None)
        if path:
            self._run.set_tags({"checkpoint.best_model_path": path})
        score = getattr(checkpoint, "best_model_score", None)
        if score is not None:
            self._run.log_metric("checkpoint.best_model_score", score, step)


def early_stopping_metrics(early_stopping: Any) -> dict[str, Any]:
    """What MLflow logs when EarlyStopping stopped the training, under its names."""
    stopped = early_stopping.stopped_epoch
    return {
        "stopped_epoch": stopped,
        "restored_epoch": stopped - max(1, early_stopping.patience),
        "best_score": early_stopping.best_score,
        "wait_count": early_stopping.wait_count,
    }


def _changed(trainer: Any, before: dict[str, Any]) -> dict[str, Any]:
    """The callback metrics Lightning has set since the snapshot ``before``."""
    return {key: value for key, value in _callback_metrics(trainer).items()
            if before.get(key) is not value}


def _callback_metrics(trainer: Any) -> dict[str, Any]:
    """Lightning's own dict of callback metrics, read without the property, which would
    compute (and sync) values on this rank alone."""
    return trainer._logger_connector._callback_metrics


_callback_classes: dict[str, type] = {}


def callback_class(package: ModuleType) -> type:
    """The autolog Callback as a subclass of ``package.Callback`` (one per package)."""
    cls = _callback_classes.get(package.__name__)
    if cls is None:
        cls = type("AutologCallback", (_AutologCallback, package.Callback),
                   {"__module__": __name__, "__doc__": _AutologCallback.__doc__})
        _callback_classes[package.__name__] = cls
    return cls


def silent_callback(package: str) -> Any:
    """What an autolog callback becomes when pickled into another process."""
    return callback_class(importlib.import_module(package))(None, None, package)
